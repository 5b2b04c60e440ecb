import keras
import tensorflow as tf

from keras_robust_iqa.layers import linalg
from keras_robust_iqa.layers.validation import (
    check_positive_int,
    check_rank4,
    float32_dtype_policy,
    orthogonal_conv_arguments,
)
from keras_robust_iqa.layers.weight_cache import DerivedWeightCache


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class BlockOrthoConv2D(keras.layers.Layer):
    """Orthogonal 2-D convolution with a compact `k x k` kernel (BCOP / AOC).

    The kernel is a product of orthogonal factors, each exactly orthogonal by
    a Cayley transform (no iterative orthogonalisation):
    - `k - 1` two-tap convolutions along each axis, `[P, I - P]`, with `P`
      a symmetric projector `Q Q^T` (`Q`: orthonormal columns). Such a
      convolution is orthogonal, and so is any product of them
      (Li et al., "Preventing Gradient Attenuation in Lipschitz Constrained
      Convolutional Networks", NeurIPS 2019);
    - one semi-orthogonal `filters x channels` matrix (a 1x1 convolution)
      on the narrower side, so that `filters != channels` gives an isometry
      (more outputs) or a co-isometry (fewer outputs);
    - for `strides=s`, a final `s x s` stride-`s` convolution whose taps form
      one semi-orthogonal matrix (RKO: space-to-depth, then a 1x1 orthogonal
      matrix), fused with the others into one `k x k` strided kernel
      (Boissin et al., "An Adaptive Orthogonal Convolution Scheme", 2025).
    The factors are merged into one kernel (a few small matrix products per
    step, independent of batch and image size), and the layer applies it as
    an ordinary convolution: at inference it is a plain `Conv2D`, at any
    input size.

    As a circular convolution (`padding="circular"`) the layer is orthogonal
    (isometry / co-isometry) at every input size divisible by the stride.
    `padding="same"` zero-pads exactly as `Conv2D(padding="same")`: that is
    a crop of the circular convolution of the zero-padded input, so the
    layer is 1-Lipschitz, though not exactly norm-preserving at the borders.

    Args:
        filters: number of output channels.
        kernel_size: `k`, or `(kh, kw)`; at least `strides`.
        strides: 1 or 2.
        padding: `"same"` or `"circular"`.
        groups: split the channels into this many independent orthogonal
            convolutions (a block-diagonal operator, still orthogonal); must
            divide the input channels and `filters`.
        use_bias: add a bias after the convolution.
        kernel_initializer: initializer of the free matrices the orthogonal
            factors are made from. Default (`None`): normal with standard
            deviation `1 / sqrt(n)` for matrices of `n` rows, which starts
            every factor well away from the identity.

    With `training=False` the merged kernel is cached and recomputed only when
    the weights change. Computation runs in float32 whatever the dtype policy.
    """

    def __init__(
        self,
        filters,
        kernel_size=3,
        strides=1,
        padding="same",
        groups=1,
        use_bias=True,
        kernel_initializer=None,
        bias_initializer="zeros",
        **kwargs,
    ):
        kwargs["dtype"] = float32_dtype_policy(kwargs.get("dtype"))
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.strides, self.padding = orthogonal_conv_arguments(
            filters, kernel_size, strides, padding
        )
        if any(k < s for k, s in zip(self.kernel_size, self.strides)):
            raise ValueError(
                f"Argument `kernel_size` must be at least `strides`={self.strides[0]} on both "
                f"axes, got kernel_size={kernel_size!r}."
            )
        self.groups = check_positive_int("groups", groups)
        if self.filters % self.groups:
            raise ValueError(
                f"Argument `groups`={groups} must divide `filters`={filters}, got groups={groups!r}."
            )
        self.use_bias = bool(use_bias)
        self.kernel_initializer = (
            None if kernel_initializer is None else keras.initializers.get(kernel_initializer)
        )
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    # Weights ------------------------------------------------------------------

    def build(self, input_shape):
        check_rank4(self, input_shape)
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                f"{type(self).__name__} needs a known number of input channels, got "
                f"input_shape={tuple(input_shape)}."
            )
        if channels % self.groups:
            raise ValueError(
                f"Argument `groups`={self.groups} must divide the input channels, got "
                f"input_shape={tuple(input_shape)}."
            )
        self._check_spatial(input_shape)
        g, s = self.groups, self.strides[0]
        self.input_channels = channels
        cin, cout = channels // g, self.filters // g
        kh, kw = self.kernel_size
        # Two-tap factors: kh - s along the height, then kw - s along the width.
        self._vertical = kh - s
        factors = (kh - s) + (kw - s)
        # The projectors act on the wider side (stride 1) or on the input
        # (strided: before the stride-s factor); the 1x1 factor on the other.
        width = max(cin, cout) if s == 1 else cin
        self.projector_kernel = None
        if factors and width // 2:
            self.projector_kernel = self._free_weight("projector_kernel", (g, factors, width, width // 2))
        self._factors = factors
        self.mixing_kernel = None
        if s == 1:
            self.mixing_kernel = self._free_weight("mixing_kernel", (g, cout, cin))
        elif factors:
            self.mixing_kernel = self._free_weight("mixing_kernel", (g, cin, cin))
        self.downsampling_kernel = (
            self._free_weight("downsampling_kernel", (g, cout, s * s * cin)) if s > 1 else None
        )
        self.bias = (
            self.add_weight(name="bias", shape=(self.filters,), initializer=self.bias_initializer)
            if self.use_bias
            else None
        )
        self._kernel_cache = DerivedWeightCache(
            self._free_weights(), (kh, kw, cin, self.filters), tf.float32, name=f"{self.name}_kernel"
        )

    def _free_weights(self):
        """The free matrices the kernel is made from, in `_merge`'s order."""
        weights = (self.projector_kernel, self.mixing_kernel, self.downsampling_kernel)
        return [w for w in weights if w is not None]

    def _free_weight(self, name, shape):
        initializer = self.kernel_initializer or keras.initializers.RandomNormal(
            stddev=1.0 / max(shape[-2], 1) ** 0.5
        )
        return self.add_weight(name=name, shape=shape, initializer=initializer)

    def _check_spatial(self, input_shape):
        if self.padding != "circular":
            return
        s = self.strides[0]
        for size, k in zip(input_shape[1:3], self.kernel_size):
            if size is not None and (size % s or size < k):
                raise ValueError(
                    f"{type(self).__name__}(padding='circular', strides={s}, kernel_size="
                    f"{self.kernel_size}) needs input sizes divisible by the stride and at "
                    f"least the kernel size, got input_shape={tuple(input_shape)}. Use "
                    "padding='same' for any size."
                )

    # The orthogonal kernel ------------------------------------------------------

    def orthogonal_kernel(self):
        """The merged `(kh, kw, channels // groups, filters)` kernel, Keras layout."""
        return self._merge(*(tf.cast(tf.convert_to_tensor(w), tf.float32) for w in self._free_weights()))

    def _merge(self, *free):
        free = list(free)
        projectors = _projectors(free.pop(0)) if self.projector_kernel is not None else None
        mixing = linalg.cayley(free.pop(0)) if self.mixing_kernel is not None else None
        downsampling = linalg.cayley(free.pop(0)) if self.downsampling_kernel is not None else None
        s = self.strides[0]
        g, cin = self.groups, self.input_channels // self.groups
        cout = self.filters // g
        # Tap arrays `(g, kh, kw, out, in)`: tap (a, b) maps inputs to outputs. There is
        # no mixing factor only for a strided kernel of size `strides` (the RKO factor alone).
        taps = mixing[:, None, None] if mixing is not None else None
        # Stride 1, more outputs: projectors on the output side (left products);
        # fewer outputs: on the input side (right products). Strided: on the input.
        left = s > 1 or cout >= cin
        for i in range(self._factors):
            axis = 1 if i < self._vertical else 2
            p = projectors[:, i, None, None] if projectors is not None else None
            taps = _two_tap(taps, p, axis, left)
        if downsampling is not None:
            down = tf.reshape(downsampling, (g, cout, s, s, cin))
            down = tf.transpose(down, (0, 2, 3, 1, 4))
            taps = down if taps is None else _compose(down, taps)
        # `(g, kh, kw, cout, cin)` -> `(kh, kw, cin, g * cout)`, groups major.
        kh, kw = self.kernel_size
        kernel = tf.transpose(taps, (1, 2, 4, 0, 3))
        return tf.reshape(kernel, (kh, kw, cin, self.filters))

    # Computation --------------------------------------------------------------

    def call(self, inputs, training=None):
        x = tf.cast(inputs, tf.float32)
        if training:
            kernel = self.orthogonal_kernel()
        else:
            kernel = self._kernel_cache.get(self._merge)
        s = self.strides[0]
        padding = "same"
        if self.padding == "circular":
            self._check_spatial(x.shape)
            x, padding = circular_pad(x, self.kernel_size, s), "valid"
        # keras.ops.conv, not tf.nn.conv2d: TensorFlow has no CPU gradient for
        # grouped convolutions, and Keras compiles those with XLA.
        y = keras.ops.conv(x, kernel, strides=s, padding=padding)
        if self.use_bias:
            y = y + self.bias
        return tf.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        s = self.strides[0]

        def out(n):
            if n is None:
                return None
            return n // s if self.padding == "circular" else -(-n // s)

        return (b, out(h), out(w), self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            groups=self.groups,
            use_bias=self.use_bias,
            kernel_initializer=(
                None if self.kernel_initializer is None
                else keras.initializers.serialize(self.kernel_initializer)
            ),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
        )
        return config


def _projectors(free):
    """`(..., n, r)` free matrices -> `(..., n, n)` symmetric projectors `Q Q^T` of rank `r`."""
    q = linalg.cayley(free)
    return tf.matmul(q, q, transpose_b=True)


def _two_tap(taps, projector, axis, left):
    """`taps` composed with the two-tap orthogonal convolution `[P, I - P]` along `axis`.

    `left`: the new factor comes after `taps` (`P @ taps`), else before
    (`taps @ P`). `projector=None` is `P = 0`: a shift by one tap.
    """
    if projector is None:
        first = tf.zeros_like(taps)
    else:
        first = tf.matmul(projector, taps) if left else tf.matmul(taps, projector)
    rest = taps - first
    pad_first = [[0, 0]] * 5
    pad_rest = [[0, 0]] * 5
    pad_first[axis] = [0, 1]
    pad_rest[axis] = [1, 0]
    return tf.pad(first, pad_first) + tf.pad(rest, pad_rest)


def _compose(outer, inner):
    """Tap arrays of `outer` after `inner`: a full 2-D convolution with matrix products.

    `(g, a, b, m, n)` and `(g, c, d, n, l)` -> `(g, a + c - 1, b + d - 1, m, l)`:
    tap `(i, j)` of the result sums `outer[i - i'] @ inner[i']` (stride-s
    outer taps fuse the same way: they read the inner output at `s p + i`).
    """
    a, b = outer.shape[1], outer.shape[2]
    c, d = inner.shape[1], inner.shape[2]
    total = 0.0
    for i in range(a):
        for j in range(b):
            product = tf.matmul(outer[:, i, j, None, None], inner)
            total += tf.pad(product, [[0, 0], [i, a - 1 - i], [j, b - 1 - j], [0, 0], [0, 0]])
    return total


def circular_pad(x, kernel_size, stride):
    """Wrap `x` around so that a VALID stride-`s` convolution is circular.

    The offsets match `padding="same"`'s: `(k - s) // 2` rows before, the
    rest after (the same taps, read from the other border instead of zeros).
    """
    for axis, k in zip((1, 2), kernel_size):
        before = (k - stride) // 2
        after = k - stride - before
        index = [slice(None)] * 4
        parts = []
        if before:
            index[axis] = slice(-before, None)
            parts.append(x[tuple(index)])
        parts.append(x)
        if after:
            index[axis] = slice(None, after)
            parts.append(x[tuple(index)])
        x = tf.concat(parts, axis=axis) if len(parts) > 1 else x
    return x
