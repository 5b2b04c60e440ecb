import keras
import tensorflow as tf

from keras_robust_iqa.layers import contract
from keras_robust_iqa.layers.aol_conv2d import AOLConv2D
from keras_robust_iqa.layers.block_ortho_conv2d import BlockOrthoConv2D
from keras_robust_iqa.layers.convex_combination import ConvexCombination
from keras_robust_iqa.layers.group_sort import GroupSort
from keras_robust_iqa.layers.ortho_conv2d import OrthoConv2D
from keras_robust_iqa.layers.validation import check_positive_int, check_rank4, float32_dtype_policy

# The 1-Lipschitz convolutions a RobustBlock (and robustify) can be built on.
CONVOLUTIONS = {"fourier": OrthoConv2D, "block": BlockOrthoConv2D, "aol": AOLConv2D}


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class RobustBlock(contract.LayerContract, keras.layers.Layer):
    """Orthogonal convolution, bias, then GroupSort: a 1-Lipschitz conv block.

    `f(x) = GroupSort(conv(x) + b)`, `conv` an orthogonal convolution. With a `bottleneck` of `N`
    channels (the paper's block narrows a stage to 200), `f = GroupSort . expand . GroupSort . conv
    . GroupSort . reduce`: `reduce` a 1x1 convolution to `N` channels, `conv` at `N` channels and
    `expand` a 1x1 convolution back to `filters`, each 1-Lipschitz. With `residual=True` the block
    returns the convex combination `lam * x + (1 - lam) * f(x)`,
    `lam = sigmoid(theta)` learnable: a convex combination of two 1-Lipschitz
    maps is 1-Lipschitz, whereas a plain `x + f(x)` could double a
    perturbation.

    Args:
        filters: output channels (with `residual=True`: equal to the input
            channels and `strides=1`).
        kernel_size, strides, padding: as in `OrthoConv2D`.
        conv: `"block"` (the default), `BlockOrthoConv2D` (a compact
            orthogonal kernel applied as a plain convolution; any input size),
            or `"fourier"`, the paper's `OrthoConv2D` (Cayley transform per
            frequency; a static input size). Both are exactly orthogonal. `"aol"`:
            `AOLConv2D`, 1-Lipschitz without being orthogonal (the block is then
            1-Lipschitz, not norm-preserving).
        group_size: GroupSort group size (2 is MaxMin); must divide `filters`.
        residual: add the convex residual connection.
        residual_init: initial `lam`, in (0, 1).
        bottleneck: None (the block works at `filters` channels) or the channels `N` it
            narrows to, a multiple of `group_size`: its weights then grow like `C N + N^2 k^2`
            instead of `C^2 k^2` (`C` the stage's width). Every part is 1-Lipschitz, so the
            block is (the paper's narrowing convolution is unconstrained).

    Contract: Lipschitz 1; applies its last convolution's kernel; its output channels are
    prunable in GroupSort groups (a residual block's are its input channels, tied to
    them; a bottleneck's inner channels all stay); lowers to the lowered convolution(s),
    lowered GroupSorts and a `ConvexCombination` for the residual.
    """

    def __init__(
        self,
        filters,
        kernel_size=3,
        strides=1,
        padding="same",
        group_size=2,
        residual=False,
        residual_init=0.5,
        conv="block",
        bottleneck=None,
        **kwargs,
    ):
        kwargs["dtype"] = float32_dtype_policy(kwargs.get("dtype"))
        super().__init__(**kwargs)
        if conv not in CONVOLUTIONS:
            raise ValueError(f"Argument `conv` must be one of {tuple(CONVOLUTIONS)}, got conv={conv!r}.")
        self.conv_type = conv
        if filters % group_size:
            raise ValueError(
                f"Argument `group_size`={group_size} must divide `filters`={filters}."
            )
        self.bottleneck = None if bottleneck is None else check_positive_int("bottleneck", bottleneck)
        if self.bottleneck is not None and self.bottleneck % group_size:
            raise ValueError(f"Argument `group_size`={group_size} must divide `bottleneck`={bottleneck}.")

        def part(width, size, name, activation_name, stride=1):
            layer = CONVOLUTIONS[conv](width, size, strides=stride, padding=padding, use_bias=True,
                                       dtype=self.dtype_policy, name=name)
            return layer, GroupSort(group_size, dtype=self.dtype_policy, name=activation_name)

        inner = filters if self.bottleneck is None else self.bottleneck
        self.conv, self.activation = part(inner, kernel_size, "conv", "groupsort", strides)
        # The bottleneck's 1x1 convolutions, narrowing before `conv` and widening after it.
        self.reduce = self.reduce_activation = self.expand = self.expand_activation = None
        if self.bottleneck is not None:
            self.reduce, self.reduce_activation = part(inner, 1, "reduce", "groupsort_reduce")
            self.expand, self.expand_activation = part(filters, 1, "expand", "groupsort_expand")
        if not 0.0 < residual_init < 1.0:
            raise ValueError(
                f"Argument `residual_init` must be in (0, 1), got residual_init={residual_init!r}."
            )
        self.residual = bool(residual)
        self.residual_init = float(residual_init)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    @property
    def filters(self):
        return self.parts()[-1][0].filters

    def parts(self):
        """The `(convolution, GroupSort)` pairs the block applies, in order."""
        if self.bottleneck is None:
            return [(self.conv, self.activation)]
        return [(self.reduce, self.reduce_activation), (self.conv, self.activation),
                (self.expand, self.expand_activation)]

    def build(self, input_shape):
        check_rank4(self, input_shape)
        if self.residual and (
            input_shape[-1] != self.filters or self.conv.strides[0] != 1
        ):
            raise ValueError(
                "`residual=True` needs `filters` equal to the input channels and "
                f"strides=1, got filters={self.filters}, strides={self.conv.strides}, "
                f"input_shape={tuple(input_shape)}."
            )
        shape = input_shape
        for conv, activation in self.parts():
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            activation.build(shape)
        if self.residual:
            logit = float(tf.math.log(self.residual_init / (1.0 - self.residual_init)))
            self.residual_logit = self.add_weight(
                name="residual_logit", shape=(),
                initializer=keras.initializers.Constant(logit),
            )

    def call(self, inputs, training=None):
        y = inputs
        for conv, activation in self.parts():
            y = activation(conv(y, training=training))
        if self.residual:
            lam = tf.sigmoid(tf.cast(self.residual_logit, tf.float32))
            y = lam * tf.cast(inputs, tf.float32) + (1.0 - lam) * y
        return tf.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        for conv, _ in self.parts():
            input_shape = conv.compute_output_shape(input_shape)
        return input_shape

    # The layer contract -----------------------------------------------------------

    def lipschitz_constant(self, input_shape=None):
        return 1.0

    def applied_kernel(self):
        return self.parts()[-1][0].applied_kernel()

    def channel_role(self):
        return contract.RESIDUAL if self.residual else contract.PRODUCER

    def tied_channels(self):
        return self.activation.group_size

    def slice_channels(self, new, kept_in, kept_out):
        # A bottleneck's inner channels all stay: only the outer sides are sliced.
        convs, new_convs = [c for c, _ in self.parts()], [c for c, _ in new.parts()]
        for i, (conv, copy) in enumerate(zip(convs, new_convs)):
            conv.slice_channels(copy, kept_in if i == 0 else list(range(conv.input_channels)),
                                kept_out if i == len(convs) - 1 else list(range(conv.filters)))
        if self.residual:
            new.residual_logit.assign(self.residual_logit)

    def lowered(self):
        """Each lowered convolution and GroupSort in turn, the convex residual as a `ConvexCombination`."""
        lowered = [(conv.lowered(), activation.lowered()) for conv, activation in self.parts()]
        first = self.parts()[0][0]
        inputs = keras.Input(getattr(lowered[0][0], "input_size", (None, None, first.input_channels)))
        y = inputs
        for conv, activation in lowered:
            y = activation(conv(y))
        if self.residual:
            # softmax([t, 0]) = [sigmoid(t), 1 - sigmoid(t)]: the block's own lambda.
            mix = ConvexCombination(name="residual", trainable=False)
            y = mix([inputs, y])
            mix.logits.assign([float(keras.ops.convert_to_numpy(self.residual_logit)), 0.0])
        return keras.Model(inputs, y, name=self.name)

    @classmethod
    def from_config(cls, config):
        # Files saved before the `conv` option hold Fourier-domain blocks.
        return cls(**{"conv": "fourier", **config})

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.conv.kernel_size,
            strides=self.conv.strides,
            padding=self.conv.padding,
            group_size=self.activation.group_size,
            residual=self.residual,
            residual_init=self.residual_init,
            conv=self.conv_type,
            bottleneck=self.bottleneck,
        )
        return config
