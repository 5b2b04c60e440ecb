import keras
import numpy as np
import tensorflow as tf

from keras_robust_iqa.layers import contract, linalg
from keras_robust_iqa.layers.lowered_conv2d import LoweredOrthoConv2D
from keras_robust_iqa.layers.validation import (
    check_rank4,
    float32_dtype_policy,
    orthogonal_conv_arguments,
    strided_output_shape,
)
from keras_robust_iqa.layers.weight_cache import DerivedWeightCache


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class OrthoConv2D(contract.LayerContract, keras.layers.Layer):
    """Orthogonal 2-D convolution computed in the Fourier domain.

    `y = irfft2d(Q(u, v) @ rfft2d(x)(u, v)) + bias`, where each per-frequency
    matrix `Q(u, v)` is the Cayley transform of the (scaled) spectrum of a
    `kernel_size` kernel (Trockman & Kolter, ICLR 2021). The layer is an
    isometry when `filters >= input channels` and a co-isometry otherwise, so
    it never amplifies a perturbation: its Lipschitz constant is exactly 1.

    Args:
        filters: number of output channels.
        kernel_size: size of the free kernel that parameterises `Q`. The
            resulting orthogonal operator is a full-size circular convolution.
        strides: 1, or 2 through an invertible space-to-depth rearrangement
            (a permutation, hence orthogonal) followed by a stride-1 conv on
            `4 * channels`.
        padding: `"circular"` (exactly orthogonal) or `"same"` (zero-pad by
            `kernel_size - 1`, convolve circularly, crop: 1-Lipschitz, no
            longer exactly orthogonal, and no wrap-around across borders).
        use_bias: add a bias after the convolution.

    Input must have a static spatial size: the per-frequency matrices are
    built for it. With `training=False`, the matrices are cached and only
    recomputed when the weights change.

    Computation runs in float32 whatever the dtype policy: FFTs and matrix
    inverses in half precision are not accurate enough to stay orthogonal.

    Contract: Lipschitz 1; applies the circular kernel `irfft2d(Q(u, v))` over the
    whole FFT grid; output channels prunable (the free kernel loses the matching
    rows and columns, `alpha` keeps its scale); lowers to `LoweredOrthoConv2D`
    (real DFT matrix products); `start_from_kernel` takes a trained kernel as its
    free kernel.
    """

    def __init__(
        self,
        filters,
        kernel_size=3,
        strides=1,
        padding="same",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        kwargs["dtype"] = float32_dtype_policy(kwargs.get("dtype"))
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.strides, self.padding = orthogonal_conv_arguments(
            filters, kernel_size, strides, padding
        )
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.input_spec = keras.layers.InputSpec(ndim=4)
        # XLA has no complex linear solve: keep `jit_compile="auto"` off.
        self.supports_jit = False

    # Geometry -----------------------------------------------------------------

    def _fft_size(self, height, width):
        """Spatial size of the circular convolution for an input of this size."""
        s = self.strides[0]
        h, w = height // s, width // s
        if self.padding == "same":
            h, w = h + self.kernel_size[0] - 1, w + self.kernel_size[1] - 1
        return h, w

    def build(self, input_shape):
        check_rank4(self, input_shape)
        _, height, width, channels = input_shape
        if height is None or width is None or channels is None:
            raise ValueError(
                f"{type(self).__name__} needs a static input size (its "
                f"per-frequency matrices are built for it), got input_shape="
                f"{tuple(input_shape)}. Score larger images by patches."
            )
        s = self.strides[0]
        if height % s or width % s:
            raise ValueError(
                f"Argument `strides`={s} must divide the input size, got "
                f"input_shape={tuple(input_shape)}."
            )
        cin = channels * s * s
        self.input_channels = cin
        self.fft_size = self._fft_size(height, width)
        if self.kernel_size[0] > self.fft_size[0] or self.kernel_size[1] > self.fft_size[1]:
            raise ValueError(
                f"Argument `kernel_size`={self.kernel_size} is larger than the "
                f"input size {self.fft_size} after striding."
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(*self.kernel_size, cin, self.filters),
            initializer=self.kernel_initializer,
        )
        self.alpha = self.add_weight(
            name="alpha", shape=(), initializer=lambda shape, dtype=None: self.kernel_norm()
        )
        self.bias = (
            self.add_weight(name="bias", shape=(self.filters,), initializer=self.bias_initializer)
            if self.use_bias
            else None
        )
        self._build_inference_cache()

    def _build_inference_cache(self):
        h, w = self.fft_size
        self._cache = DerivedWeightCache(
            [self.kernel, self.alpha], (h * (w // 2 + 1), self.filters, self.input_channels),
            tf.complex64, name="q",
        )

    # Computation --------------------------------------------------------------

    def kernel_norm(self):
        """Frobenius norm of the kernel's spectrum: `alpha` starts there, so the
        Cayley transform first sees the raw spectrum (Trockman & Kolter)."""
        basis = linalg.DFTBasis.of(self.kernel, *self.fft_size)
        return basis.spectrum_norm(linalg.kernel_taps(self.kernel))

    def frequency_matrices(self):
        """The unitary per-frequency matrices, `(F, filters, in_channels)`."""
        return linalg.orthogonal_frequency_matrices(self.kernel, self.alpha, *self.fft_size)

    def _cached_frequency_matrices(self):
        # Comparing the weights costs a few thousand flops; recomputing costs
        # one matrix inverse per frequency.
        return self._cache.get(
            lambda kernel, alpha: linalg.orthogonal_frequency_matrices(kernel, alpha, *self.fft_size)
        )

    def call(self, inputs, training=None):
        x = tf.cast(inputs, tf.float32)
        s = self.strides[0]
        if s > 1:
            x = tf.nn.space_to_depth(x, s)
        height, width = x.shape[1], x.shape[2]
        fft_h, fft_w = self._fft_size(height * s, width * s)
        # Zero padding for "same" comes from the FFT length: rfft2d pads at
        # the bottom/right, which for a circular convolution is the same
        # operator as padding both sides (a shift commutes with it).
        x_hat = to_frequency(x, fft_h, fft_w)
        if training or (fft_h, fft_w) != tuple(self.fft_size):
            # A solve per frequency, without forming the orthogonal matrices:
            # the cheapest exact path when the weights change every step.
            y_hat = linalg.orthogonal_conv_apply(self.kernel, self.alpha, x_hat, fft_h, fft_w)
        else:
            y_hat = tf.matmul(self._cached_frequency_matrices(), x_hat)
        y = from_frequency(y_hat, fft_h, fft_w, crop=(height, width))
        if self.use_bias:
            y = y + self.bias
        return tf.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        # The stride divides the input size (checked in build): "same" and "circular" agree.
        return strided_output_shape(input_shape, self.filters, self.strides[0], self.padding)

    # The layer contract -----------------------------------------------------------

    def lipschitz_constant(self, input_shape=None):
        return 1.0

    def applied_kernel(self):
        """The taps of the circular convolution the layer computes, `(cin, fh, fw, cout)`.

        Not the free kernel it is parameterised by: the Cayley transform of a zero
        matrix is the identity, so a small free row does not make a quiet channel.
        """
        fh, fw = self.fft_size
        q = self.frequency_matrices()  # (fh * (fw // 2 + 1), cout, cin)
        q = tf.reshape(q, (fh, fw // 2 + 1, self.filters, self.input_channels))
        taps = tf.signal.irfft2d(tf.transpose(q, (2, 3, 0, 1)), fft_length=(fh, fw))
        return np.moveaxis(np.asarray(taps, np.float64), 0, -1)

    def channel_role(self):
        return contract.PRODUCER

    def kernel_inputs(self, kept_in):
        """Kernel input channels of the kept input channels.

        With `strides=s` the kernel reads the space-to-depth rearrangement, whose
        channel `k * C + c` (k < s * s) holds input channel `c`.
        """
        s = self.strides[0]
        channels = self.input_channels // (s * s)
        return [k * channels + c for k in range(s * s) for c in kept_in]

    def slice_channels(self, new, kept_in, kept_out):
        """The kept entries of the scaled free kernel `alpha * K / ||K||`."""
        copy_scaled_kernel(self, new, self.kernel_inputs(kept_in), kept_out)

    def lowered(self):
        return LoweredOrthoConv2D.from_ortho_conv(self)

    def start_from_kernel(self, kernel):
        return start_from_free_kernel(self, kernel)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            use_bias=self.use_bias,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
        )
        return config


def to_frequency(x, height=None, width=None):
    """rfft2d of NHWC `x`, laid out `(H * (W // 2 + 1), C, B)` for batched matmuls.

    `height`, `width`: FFT size, zero-padding `x` at the bottom and right.
    """
    height = height or x.shape[1]
    width = width or x.shape[2]
    batch, channels = tf.shape(x)[0], x.shape[3]
    x_hat = tf.signal.rfft2d(tf.transpose(x, (0, 3, 1, 2)), fft_length=(height, width))
    return tf.transpose(tf.reshape(x_hat, (batch, channels, -1)), (2, 1, 0))


def from_frequency(y_hat, height, width, crop=None):
    """Inverse of `to_frequency`: `(F, C, B)` complex -> `(B, h, w, C)` float32.

    `crop`: `(h, w)` of the top-left part to keep (cropped before the
    transpose back to NHWC, which then moves less data).
    """
    batch, channels = tf.shape(y_hat)[2], y_hat.shape[1]
    y_hat = tf.reshape(tf.transpose(y_hat, (2, 1, 0)), (batch, channels, height, width // 2 + 1))
    y = tf.signal.irfft2d(y_hat, fft_length=(height, width))
    if crop is not None and tuple(crop) != (height, width):
        y = y[:, :, : crop[0], : crop[1]]
    return tf.transpose(y, (0, 2, 3, 1))


def apply_frequency_matrices(x, q, height=None, width=None):
    """Convolution of NHWC float32 `x` given its per-frequency matrices.

    Args:
        x: `(B, h, w, cin)`.
        q: complex64 `(height * (width // 2 + 1), cout, cin)`.
        height, width: the FFT size (default: the input size, a circular
            convolution); a larger size zero-pads and crops back to `(h, w)`.
    """
    height = height or x.shape[1]
    width = width or x.shape[2]
    return from_frequency(tf.matmul(q, to_frequency(x, height, width)), height, width, crop=x.shape[1:3])


def copy_scaled_kernel(old, new, kept_in, kept_out):
    """Slice a Cayley layer's free kernel (`OrthoConv2D`, `OrthoDense`) into `new`.

    Same scale `alpha / ||K||` as before: the kept entries of the matrix the Cayley
    transform sees are unchanged. Its transform is orthogonal (or semi-orthogonal) by
    construction; the function of the kept channels changes a little (the Cayley
    transform of a block is not the block of the Cayley transform).
    """
    new.kernel.assign(contract.slice_kernel(old.kernel, kept_in, kept_out))
    new.alpha.assign(old.alpha * new.kernel_norm() / old.kernel_norm())
    if old.use_bias:
        new.bias.assign(keras.ops.convert_to_numpy(old.bias)[kept_out])


def start_from_free_kernel(layer, kernel):
    """A trained kernel of the layer's free kernel's shape becomes the free kernel.

    A Cayley layer's `alpha` becomes its norm: the layer then applies the Cayley
    transform of the trained kernel's scaled spectrum (an AOL layer, its rescaling).
    Returns False (and changes nothing) for another shape or an all-zero kernel.
    """
    source = np.asarray(keras.ops.convert_to_numpy(kernel))
    if tuple(layer.kernel.shape) != source.shape or not np.any(source):
        return False
    layer.kernel.assign(source)
    if hasattr(layer, "alpha"):
        layer.alpha.assign(layer.kernel_norm())
    return True
