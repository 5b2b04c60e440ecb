"""Plain-op layers the orthogonal convolutions lower to for export (`LayerContract.lowered`)."""

import keras
import numpy as np
import tensorflow as tf

from keras_robust_iqa.layers.contract import LayerContract
from keras_robust_iqa.layers.validation import float32_dtype_policy


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class LoweredOrthoConv2D(LayerContract, keras.layers.Layer):
    """A frozen `OrthoConv2D` for one input size, in builtin ops only.

    TFLite has no IRFFT2D and no complex matmul, so the layer's
    `irfft2d(Q(u, v) rfft2d(x))` is spelled out as five real matrix products:
    the DFT along the width, then along the height (each zero-padding to the
    FFT size), one `(2 cin, 2 cout)` real matrix per frequency (the complex
    `Q(u, v)` with real and imaginary parts split), and the inverse DFTs,
    which keep only the top-left `(h, w)` outputs ("same" padding's crop).
    The transforms are separable, so their cost is `O(h w (h + w))` per
    channel, not the `O((h w)^2)` of one 2-D DFT matrix.

    Build it with `from_ortho_conv(layer)`; the per-frequency matrices are a
    non-trainable weight, the DFT matrices constants of the geometry.

    Args:
        filters: output channels.
        fft_size: `(Hf, Wf)`, the circular convolution's size.
        strides: 1, or 2 (space-to-depth first, as in `OrthoConv2D`).
        use_bias: add the bias.
    """

    def __init__(self, filters, fft_size, strides=1, use_bias=True, **kwargs):
        # float32 under a mixed-precision policy, as the OrthoConv2D it stands for (the call
        # computes in float32: float16 variables would not multiply with it).
        kwargs["dtype"] = float32_dtype_policy(kwargs.get("dtype"))
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.fft_size = tuple(int(n) for n in fft_size)
        self.strides = int(strides)
        self.use_bias = bool(use_bias)
        self.trainable = False

    @classmethod
    def from_ortho_conv(cls, layer):
        """The lowered twin of a built `OrthoConv2D`, with its current weights."""
        lowered = cls(
            layer.filters, layer.fft_size, strides=layer.strides[0],
            use_bias=layer.use_bias, name=layer.name,
        )
        # The input size the layer was built for: "same" pads by kernel_size - 1.
        s = layer.strides[0]
        pad = (0, 0) if layer.padding == "circular" else tuple(k - 1 for k in layer.kernel_size)
        height, width = ((n - p) * s for n, p in zip(layer.fft_size, pad))
        lowered.input_size = (height, width, layer.input_channels // (s * s))
        lowered.build((None, *lowered.input_size))
        q = keras.ops.convert_to_numpy(layer.frequency_matrices())
        lowered.frequency_matrices.assign(realified_frequency_matrices(q, *layer.fft_size))
        if layer.use_bias:
            lowered.bias.assign(keras.ops.convert_to_numpy(layer.bias))
        return lowered

    def lipschitz_constant(self, input_shape=None):
        # The frozen operator of an OrthoConv2D: orthogonal, or a crop of an orthogonal one.
        return 1.0

    def build(self, input_shape):
        _, height, width, channels = input_shape
        s = self.strides
        self.size = (height // s, width // s)
        cin = channels * s * s
        hf, wf = self.fft_size
        n_freq = hf * (wf // 2 + 1)
        self.frequency_matrices = self.add_weight(
            name="frequency_matrices", shape=(n_freq, 2 * cin, 2 * self.filters),
            initializer="zeros", trainable=False,
        )
        self.bias = (
            self.add_weight(name="bias", shape=(self.filters,), initializer="zeros", trainable=False)
            if self.use_bias else None
        )
        # NumPy, made constants of each traced graph (never variables).
        self._dft = dft_matrices(self.size, self.fft_size)

    def call(self, inputs):
        x = tf.cast(inputs, tf.float32)
        if self.strides > 1:
            x = tf.nn.space_to_depth(x, self.strides)
        h, w = self.size
        hf, wf = self.fft_size
        v = wf // 2 + 1
        cin, cout = x.shape[-1], self.filters
        d = {k: tf.constant(v) for k, v in self._dft.items()}
        # Width DFT: (N, h, cin, w) @ (w, [v, re/im]).
        z = tf.reshape(tf.transpose(x, (0, 1, 3, 2)), (-1, w)) @ d["width"]
        # Height DFT: (N, cin, v, [re/im, h]) @ ([re/im, h], [u, re/im]).
        z = tf.transpose(tf.reshape(z, (-1, h, cin * v * 2)), (0, 2, 1))
        z = tf.reshape(z, (-1, 2 * h)) @ d["height"]
        # Per frequency, ordered (v, u): (F, N, [re/im, cin]) @ (F, [re/im, cin], [cout, re/im]).
        z = tf.transpose(tf.reshape(z, (-1, cin, v * hf, 2)), (2, 0, 3, 1))
        z = tf.matmul(tf.reshape(z, (v * hf, -1, 2 * cin)), self.frequency_matrices)
        # Inverse height DFT, cropped to h: (N, cout, v, [u, re/im]) @ ([u, re/im], [re/im, h]).
        z = tf.transpose(tf.reshape(z, (v, hf, -1, 2)), (2, 0, 1, 3))
        z = tf.reshape(z, (-1, 2 * hf)) @ d["inverse_height"]
        # Inverse width DFT (real part), cropped to w: (N, h, cout, [v, re/im]) @ ([v, re/im], w).
        z = tf.transpose(tf.reshape(z, (-1, cout, 2 * v, h)), (0, 3, 1, 2))
        y = tf.reshape(z, (-1, 2 * v)) @ d["inverse_width"]
        y = tf.transpose(tf.reshape(y, (-1, h, cout, w)), (0, 1, 3, 2))
        if self.use_bias:
            y = y + self.bias
        return y

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        return (b, h // self.strides, w // self.strides, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters, fft_size=self.fft_size, strides=self.strides, use_bias=self.use_bias
        )
        return config


def dft_matrices(size, fft_size):
    """Real matrices of the zero-padded DFTs and the cropped inverse DFTs.

    Layouts (rows x columns, `[a, b]` means `a` major): width `(w, [v, re/im])`,
    height `([re/im, h], [u, re/im])`, inverse height `([u, re/im], [re/im, h])`,
    inverse width `([v, re/im], w)`; `v` runs over the `Wf // 2 + 1` rfft bins.
    """
    (h, w), (hf, wf) = size, fft_size
    v = np.arange(wf // 2 + 1)
    # rfft along the width: X_v = sum_j x_j exp(-2 pi i v j / Wf).
    phase = 2 * np.pi * np.outer(np.arange(w), v) / wf
    width = np.stack([np.cos(phase), -np.sin(phase)], axis=-1).reshape(w, -1)
    # Complex DFT along the height: E = cos - i sin; [re, im] rows, [re, im] columns.
    phase = 2 * np.pi * np.outer(np.arange(h), np.arange(hf)) / hf
    c, s = np.cos(phase), np.sin(phase)
    height = np.empty((2, h, hf, 2))  # [re/im in, j, u, re/im out]
    height[0, ..., 0], height[0, ..., 1] = c, -s
    height[1, ..., 0], height[1, ..., 1] = s, c
    height = height.reshape(2 * h, 2 * hf)
    # Inverse along the height, rows j < h only: G = (cos + i sin) / Hf.
    c, s = c.T / hf, s.T / hf  # (hf, h)
    inverse_height = np.empty((hf, 2, 2, h))  # [u, re/im in, re/im out, j]
    inverse_height[:, 0, 0], inverse_height[:, 0, 1] = c, s
    inverse_height[:, 1, 0], inverse_height[:, 1, 1] = -s, c
    inverse_height = inverse_height.reshape(2 * hf, 2 * h)
    # irfft along the width, columns j < w: Hermitian bins count twice, except
    # the DC and Nyquist bins, whose imaginary parts (sin = 0) drop out.
    weight = np.where((v == 0) | (2 * v == wf), 1.0, 2.0)[:, None] / wf
    phase = 2 * np.pi * np.outer(v, np.arange(w)) / wf
    inverse_width = np.stack([weight * np.cos(phase), -weight * np.sin(phase)], axis=1).reshape(-1, w)
    return {
        "width": width.astype(np.float32),
        "height": height.astype(np.float32),
        "inverse_height": inverse_height.astype(np.float32),
        "inverse_width": inverse_width.astype(np.float32),
    }


def realified_frequency_matrices(q, fft_h, fft_w):
    """Complex `(F, cout, cin)` in rfft2d order `(u, v)` -> real `(F, [re/im, cin], [cout, re/im])` in order `(v, u)`.

    With row vectors `[xr, xi]`, `y = Q x` is `[yr, yi] = [xr, xi] @ [[Qr^T, Qi^T], [-Qi^T, Qr^T]]`.
    The block matrix holds every number twice; storing `[Qr^T, Qi^T]` once and combining four
    real products instead halved the files but made a 64x64, 3 -> 16 layer 1.6-2.8x slower in TensorFlow
    (the inner dimension is `cin`, as small as 3, and the combination is an extra pass).
    """
    q = np.asarray(q)
    _, cout, cin = q.shape
    q = q.reshape(fft_h, fft_w // 2 + 1, cout, cin).transpose(1, 0, 3, 2).reshape(-1, cin, cout)
    qr, qi = q.real, q.imag
    # [re/im in][cin][cout][re/im out]
    m = np.stack([np.stack([qr, qi], -1), np.stack([-qi, qr], -1)], axis=1)
    return m.reshape(-1, 2 * cin, 2 * cout).astype(np.float32)


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class CircularPadding2D(LayerContract, keras.layers.Layer):
    """Wraps the borders around, as `BlockOrthoConv2D(padding="circular")` reads them.

    A VALID convolution after it is the circular convolution (slices and a
    concatenation: builtin ops in every format).

    Args:
        kernel_size: `(kh, kw)` of the convolution that follows.
        strides: its stride.
    """

    def __init__(self, kernel_size, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = tuple(int(k) for k in kernel_size)
        self.strides = int(strides)
        self.trainable = False

    def call(self, inputs):
        return circular_pad(inputs, self.kernel_size, self.strides)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        grow = [k - self.strides for k in self.kernel_size]
        return (b, None if h is None else h + grow[0], None if w is None else w + grow[1], c)

    def get_config(self):
        config = super().get_config()
        config.update(kernel_size=self.kernel_size, strides=self.strides)
        return config


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class GroupedConv2D(LayerContract, keras.layers.Layer):
    """A frozen grouped 2-D convolution, as one TensorFlow `Conv2D` op.

    Keras runs a grouped convolution on TensorFlow inside an XLA-compiled
    function, which tf2onnx cannot read (a `StatefulPartitionedCall` node). TensorFlow's
    own `Conv2D` op takes groups directly (a kernel of `channels / groups` input
    channels), and so do TFLite's `CONV_2D` and ONNX's `Conv`.

    Args:
        filters, kernel_size, strides: as in `keras.layers.Conv2D`.
        padding: `"same"` or `"valid"`.
        groups: must divide the input channels and `filters`.
        use_bias: add the bias.
    """

    def __init__(self, filters, kernel_size, strides=1, padding="same", groups=1, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = tuple(kernel_size) if isinstance(kernel_size, (tuple, list)) else (kernel_size,) * 2
        self.strides = tuple(strides) if isinstance(strides, (tuple, list)) else (strides,) * 2
        if padding not in ("same", "valid"):
            raise ValueError(f"Argument `padding` must be 'same' or 'valid', got padding={padding!r}.")
        self.padding = padding
        self.groups = int(groups)
        self.use_bias = bool(use_bias)
        self.trainable = False

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels % self.groups or self.filters % self.groups:
            raise ValueError(
                f"Argument `groups`={self.groups} must divide the input channels ({channels}) and "
                f"`filters`={self.filters}."
            )
        self.kernel = self.add_weight(
            name="kernel", shape=(*self.kernel_size, channels // self.groups, self.filters), trainable=False
        )
        self.bias = self.add_weight(name="bias", shape=(self.filters,), trainable=False) if self.use_bias else None

    def call(self, inputs):
        y = tf.nn.conv2d(inputs, tf.cast(self.kernel, inputs.dtype), self.strides, self.padding.upper())
        if self.use_bias:
            y = y + tf.cast(self.bias, inputs.dtype)
        return y

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape

        def size(n, k, s):
            if n is None:
                return None
            return -(-n // s) if self.padding == "same" else (n - k) // s + 1

        return (b, size(h, self.kernel_size[0], self.strides[0]), size(w, self.kernel_size[1], self.strides[1]),
                self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
                      padding=self.padding, groups=self.groups, use_bias=self.use_bias)
        return config


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
