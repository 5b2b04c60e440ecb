"""The layer contract for Keras's own layers: one table of rules, and `contract_of(layer)`.

Keras's built-in layers cannot state the contract of `layers.contract` themselves, so each
known class gets a rule here (tfmot's `PruneRegistry` does the same for pruning): a small
`LayerContract` bound to the layer. A class's rule is that of the nearest class in its MRO
that the table holds, so a user's subclass of `Conv2D` is treated as a `Conv2D`.

A rule also says what `robustify(mode="replace")` makes of the layer (`replacement`), whether
it preprocesses the model's inputs itself, and whether it can end a resolution stage (where
`mode="insert"` may put a block). A class the table does not hold promises nothing: no
Lipschitz bound, channels left whole, exported as it is, refused by `replace`.
"""

import keras
import numpy as np

from keras_robust_iqa.layers import contract
from keras_robust_iqa.layers.contract import LayerContract, slice_kernel

# L2 Lipschitz constants of element-wise activations (the largest slope).
ACTIVATION_LIPSCHITZ = {
    "linear": 1.0,
    "relu": 1.0,
    "sigmoid": 0.25,  # sigmoid' = s (1 - s) <= 1/4, at 0
    "tanh": 1.0,  # tanh' = 1 - tanh^2 <= 1, at 0
    # The smooth activations `swap_activations` puts in (rounded up):
    "silu": 1.0999,  # s(x) (1 + x (1 - s(x))) peaks at 1.09984, near x = 2.3994
    "gelu": 1.1290,  # Phi(x) + x phi(x) peaks at 1.12890, at x = sqrt(2)
    "elu": 1.0,  # alpha = 1: slope e^x < 1 below 0, 1 above
}

# What `robustify(mode="replace")` puts in place of a layer (`LayerContract.replacement`):
REPLACEMENTS = (
    "keep",  # a copy of it: 1-Lipschitz already (or the identity at inference)
    "identity",  # dropped: a normalization, whose scale the orthogonal layers cannot follow
    "conv",  # an orthogonal convolution
    "depthwise_conv",  # a grouped orthogonal convolution
    "separable_conv",  # a grouped orthogonal convolution, then an orthogonal 1x1 (pointwise) one
    "dense",  # an OrthoDense
    "activation",  # an `Activation(fn)`: the replacement activation, or nothing for "linear"
    "nonlinearity",  # ReLU and its kin: the replacement activation
    "pooling",  # L2-norm pooling or space-to-depth
    "global_pooling",  # GlobalL2NormPooling2D
    "add",  # a ConvexCombination
    "product",  # a squeeze-excite gate becomes a ChannelGain; any other product is refused
)


def contract_of(layer):
    """What `layer` states about itself: the layer (a `LayerContract`), its rule, or None."""
    if isinstance(layer, LayerContract):
        return layer
    for cls in type(layer).__mro__:
        rule = RULES.get(cls)
        if rule is not None:
            return rule(layer)
    return None


def channels_last(layer):
    return getattr(layer, "data_format", "channels_last") == "channels_last"


class KerasRule(LayerContract):
    """The contract of one built-in Keras layer (`self.layer`); defaults: it promises nothing."""

    def __init__(self, layer):
        self.layer = layer

    def lowered(self):
        return self.layer


class _OneLipschitz(KerasRule):
    """Reshapes, pads, crops, the identity at inference: Lipschitz 1, kept by `replace`."""

    replacement = "keep"

    def lipschitz_constant(self, input_shape=None):
        return 1.0


class _ReshapeRule(_OneLipschitz):
    """Moves values between axes: channels cannot be followed; never a stage end."""

    ends_stage = False


class _PassRule(_OneLipschitz):
    """Channel-wise and Lipschitz 1: channels pass through."""

    def channel_role(self):
        return contract.PASS if channels_last(self.layer) else None


class _PaddingRule(_PassRule):
    ends_stage = False


class _InputRule(_OneLipschitz):
    ends_stage = False


class _ReLURule(KerasRule):
    """A (leaky, capped) ReLU: slopes 1, 0 and `negative_slope`; the largest bounds it."""

    replacement = "nonlinearity"

    def lipschitz_constant(self, input_shape=None):
        layer = self.layer
        slope = abs(float(getattr(layer, "negative_slope", 0.0) or 0.0))
        if float(getattr(layer, "threshold", 0.0) or 0.0) != 0.0:
            # A nonzero threshold makes a keras ReLU jump (from 0 to `threshold`).
            raise ValueError(
                f"lipschitz_bound cannot certify layer '{layer.name}' (ReLU with threshold="
                f"{layer.threshold}): it jumps at the threshold, so no Lipschitz constant holds."
            )
        return max(1.0, slope)

    def channel_role(self):
        return contract.PASS


class _NonlinearityRule(KerasRule):
    replacement = "nonlinearity"

    def channel_role(self):
        return contract.PASS


class _PReLURule(KerasRule):
    replacement = "nonlinearity"


class _ActivationRule(KerasRule):
    replacement = "activation"

    def _name(self):
        return getattr(self.layer.activation, "__name__", str(self.layer.activation))

    def lipschitz_constant(self, input_shape=None):
        return ACTIVATION_LIPSCHITZ.get(self._name())

    def channel_role(self):
        return None if self._name() in ("softmax", "log_softmax") else contract.PASS


class _DropoutRule(_PassRule):
    """The identity at inference."""


class _PoolingRule(KerasRule):
    replacement = "pooling"
    ends_stage = False

    def channel_role(self):
        return contract.PASS if channels_last(self.layer) else None


class _GlobalPoolingRule(_PoolingRule):
    replacement = "global_pooling"


class _UpSamplingRule(_PoolingRule):
    replacement = None


class _NormalizationRule(KerasRule):
    """`BatchNormalization`, `LayerNormalization`, `GroupNormalization`: dropped by `replace`."""

    replacement = "identity"


class _BatchNormalizationRule(_NormalizationRule):
    def channel_role(self):
        layer = self.layer
        if layer.built and layer.axis in (-1, len(layer.input.shape) - 1):
            return contract.CHANNELWISE
        return None

    def slice_channels(self, new, kept_in, kept_out):
        new.set_weights([w[kept_in] for w in self.layer.get_weights()])


class _RescalingRule(KerasRule):
    replacement = "keep"
    preprocesses_inputs = True

    def lipschitz_constant(self, input_shape=None):
        return float(np.max(np.abs(self.layer.scale)))


class _FixedNormalizationRule(_RescalingRule):
    """`keras.layers.Normalization`: `(x - mean) / std`, Lipschitz `1 / min std`."""

    def lipschitz_constant(self, input_shape=None):
        return float(np.max(1.0 / np.sqrt(np.maximum(np.asarray(self.layer.variance), 1e-12))))

    def lowered(self):
        """A fixed `Normalization` as the `Rescaling` it computes, `x / std - mean / std`.

        Keras keeps its mean and variance as eager tensors, which tf2onnx cannot freeze
        (they stay as graph inputs); a `Rescaling` makes them constants of the graph.
        """
        layer = self.layer
        axes = layer.axis if isinstance(layer.axis, (tuple, list)) else (layer.axis,)
        if layer.invert or tuple(axes) not in ((-1,), (len(layer.input.shape) - 1,)):
            return layer
        mean = keras.ops.convert_to_numpy(layer.mean).astype("float64").reshape(-1)
        variance = keras.ops.convert_to_numpy(layer.variance).astype("float64").reshape(-1)
        scale = 1.0 / np.maximum(np.sqrt(variance), keras.config.epsilon())
        return keras.layers.Rescaling(scale.astype("float32"), offset=(-mean * scale).astype("float32"),
                                      name=layer.name)


class _DenseRule(KerasRule):
    replacement = "dense"

    def channel_role(self):
        return contract.PRODUCER

    def applied_kernel(self):
        return keras.ops.convert_to_numpy(self.layer.kernel).astype(np.float64)

    def slice_channels(self, new, kept_in, kept_out):
        new.kernel.assign(slice_kernel(self.layer.kernel, kept_in, kept_out))
        if self.layer.use_bias:
            new.bias.assign(keras.ops.convert_to_numpy(self.layer.bias)[kept_out])


class _Conv2DRule(_DenseRule):
    replacement = "conv"

    def channel_role(self):
        # Subclasses may lay out their kernels differently; grouped kernels mix only within a group.
        layer = self.layer
        if type(layer) is keras.layers.Conv2D and layer.groups == 1 and channels_last(layer):
            return contract.PRODUCER
        return None


class _DepthwiseConv2DRule(KerasRule):
    replacement = "depthwise_conv"

    def channel_role(self):
        if self.layer.depth_multiplier == 1 and channels_last(self.layer):
            return contract.CHANNELWISE
        return None

    def slice_channels(self, new, kept_in, kept_out):
        new.set_weights([w[:, :, kept_in] if w.ndim == 4 else w[kept_in] for w in self.layer.get_weights()])


class _SeparableConv2DRule(KerasRule):
    """A depthwise convolution (`depth_multiplier` filters a channel), then a pointwise (1x1) one.

    Its output channels are the pointwise kernel's columns, the weights the pruning criterion
    reads (tfmot's `PruneRegistry` prunes `pointwise_kernel` alone too); an input channel `c`
    is its depthwise filters and the pointwise rows `c * depth_multiplier + j` they feed.
    """

    replacement = "separable_conv"

    def channel_role(self):
        return contract.PRODUCER if channels_last(self.layer) else None

    def applied_kernel(self):
        return keras.ops.convert_to_numpy(self.layer.pointwise_kernel).astype(np.float64)

    def slice_channels(self, new, kept_in, kept_out):
        layer = self.layer
        m = layer.depth_multiplier
        new.depthwise_kernel.assign(keras.ops.convert_to_numpy(layer.depthwise_kernel)[:, :, kept_in])
        rows = [c * m + j for c in kept_in for j in range(m)]
        new.pointwise_kernel.assign(slice_kernel(layer.pointwise_kernel, rows, kept_out))
        if layer.use_bias:
            new.bias.assign(keras.ops.convert_to_numpy(layer.bias)[kept_out])


class _MergeRule(KerasRule):
    def channel_role(self):
        return contract.MERGE


class _AddRule(_MergeRule):
    replacement = "add"


class _MultiplyRule(_MergeRule):
    replacement = "product"


class _ConcatenateRule(KerasRule):
    """Channels one after the other: the output's bound is the root sum of squares of the inputs'."""

    replacement = "keep"

    def merged_lipschitz(self, bounds):
        return float(np.sqrt(sum(b * b for b in bounds)))

    def channel_role(self):
        layer = self.layer
        return contract.CONCAT if layer.axis in (-1, len(layer.input[0].shape) - 1) else None


L = keras.layers
# Class -> rule. Ordered by kind; lookups follow the MRO, not this order.
RULES = {
    L.InputLayer: _InputRule,
    L.Flatten: _ReshapeRule,
    L.Reshape: _ReshapeRule,
    L.Cropping2D: _PaddingRule,
    L.ZeroPadding2D: _PaddingRule,
    L.Identity: _PassRule,
    L.Dropout: _DropoutRule,
    L.SpatialDropout2D: _DropoutRule,
    L.ReLU: _ReLURule,
    L.LeakyReLU: _ReLURule,
    L.ELU: _NonlinearityRule,
    L.PReLU: _PReLURule,
    L.Activation: _ActivationRule,
    L.MaxPooling2D: _PoolingRule,
    L.AveragePooling2D: _PoolingRule,
    L.GlobalAveragePooling2D: _GlobalPoolingRule,
    L.GlobalMaxPooling2D: _GlobalPoolingRule,
    L.UpSampling2D: _UpSamplingRule,
    L.BatchNormalization: _BatchNormalizationRule,
    L.LayerNormalization: _NormalizationRule,
    L.GroupNormalization: _NormalizationRule,
    L.Rescaling: _RescalingRule,
    L.Normalization: _FixedNormalizationRule,
    L.Dense: _DenseRule,
    L.Conv2D: _Conv2DRule,
    L.DepthwiseConv2D: _DepthwiseConv2DRule,
    L.SeparableConv2D: _SeparableConv2DRule,
    L.Add: _AddRule,
    L.Subtract: _MergeRule,
    L.Multiply: _MultiplyRule,
    L.Average: _MergeRule,
    L.Maximum: _MergeRule,
    L.Minimum: _MergeRule,
    L.Concatenate: _ConcatenateRule,
}
del L
