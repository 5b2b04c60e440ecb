import keras
import numpy as np
import tensorflow as tf

from keras_robust_iqa.layers import contract
from keras_robust_iqa.layers.ortho_conv2d import start_from_free_kernel
from keras_robust_iqa.layers.validation import (
    check_positive_int,
    float32_dtype_policy,
    input_channels,
    normalize_pair,
    strided_output_shape,
)


def input_gram(kernel):
    """`|W^T W|` of a convolution as a kernel: `(cin, 2 kh - 1, 2 kw - 1, cin)`, absolute values.

    For a `(kh, kw, cin, cout)` kernel, entry `[i, t, j]` is the absolute correlation
    `|sum_{p, o} K[p + t, i, o] K[p, j, o]|` of input channels `i` and `j` at shift `t`:
    the operator `W^T W` of the convolution on the infinite grid is the convolution with it.
    """
    kh, kw = kernel.shape[0], kernel.shape[1]
    images = tf.transpose(kernel, (2, 0, 1, 3))  # (cin, kh, kw, cout): one image per input channel
    filters = tf.transpose(kernel, (0, 1, 3, 2))  # (kh, kw, cout, cin)
    padded = tf.pad(images, [[0, 0], [kh - 1, kh - 1], [kw - 1, kw - 1], [0, 0]])
    return tf.abs(tf.nn.conv2d(padded, filters, 1, "VALID"))


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class AOLConv2D(contract.LayerContract, keras.layers.Layer):
    """Almost-orthogonal 2-D convolution (AOL, Prach & Lampert, ECCV 2022): 1-Lipschitz by construction.

    The layer convolves with `K D`, its free kernel `K` with each input channel `i`
    rescaled by `d_i = (sum_{j, t} |W^T W|_{ij}(t))^(-1/2)`, the row sums of the
    absolute Gram operator of the convolution (`input_gram`). By the Schur test
    `||W D||_2 <= 1` on the infinite grid; zero padding and strides only restrict that
    operator, so the layer is 1-Lipschitz at every input size, at the cost of one plain
    convolution (the rescaling is a few small products per step). Unlike the orthogonal
    layers it may shrink some directions: it is near orthogonal where `K` is.

    Args:
        filters: output channels.
        kernel_size: `k`, or `(kh, kw)`.
        strides: a positive int (equal on both axes).
        padding: `"same"` (zero padding, as `Conv2D`).
        use_bias: add a bias after the convolution.
        kernel_initializer: of the free kernel (default orthogonal: `K^T K` near the
            identity, so the rescaling starts near 1).
        epsilon: added to the row sums (a zero kernel gives `d = epsilon^(-1/2)` times 0).

    Contract: Lipschitz 1; applies `K D` (`rescaled_kernel()`); output channels prunable
    (the free kernel loses the matching rows and columns; `D` is recomputed, so the layer
    stays 1-Lipschitz); lowers to a frozen `Conv2D` holding `K D`. Computation runs in
    float32 whatever the dtype policy.
    """

    def __init__(self, filters, kernel_size=3, strides=1, padding="same", use_bias=True,
                 kernel_initializer="orthogonal", bias_initializer="zeros", epsilon=1e-6, **kwargs):
        kwargs["dtype"] = float32_dtype_policy(kwargs.get("dtype"))
        super().__init__(**kwargs)
        self.filters = check_positive_int("filters", filters)
        self.kernel_size = normalize_pair("kernel_size", kernel_size)
        self.strides = normalize_pair("strides", strides)
        if self.strides[0] != self.strides[1]:
            raise ValueError(f"Argument `strides` must be equal along both axes, got strides={strides!r}.")
        if padding != "same":
            raise ValueError(f"Argument `padding` must be 'same', got padding={padding!r}.")
        if not epsilon > 0:
            raise ValueError(f"Argument `epsilon` must be > 0, got epsilon={epsilon!r}.")
        self.padding = padding
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.epsilon = float(epsilon)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        self.input_channels = input_channels(self, input_shape)
        self.kernel = self.add_weight(name="kernel", shape=(*self.kernel_size, self.input_channels, self.filters),
                                      initializer=self.kernel_initializer)
        self.bias = (self.add_weight(name="bias", shape=(self.filters,), initializer=self.bias_initializer)
                     if self.use_bias else None)

    def rescaled_kernel(self):
        """`K D`, the `(kh, kw, cin, filters)` kernel the layer convolves with."""
        kernel = tf.cast(tf.convert_to_tensor(self.kernel), tf.float32)
        rows = tf.reduce_sum(input_gram(kernel), axis=(1, 2, 3))
        return kernel * tf.math.rsqrt(rows + self.epsilon)[None, None, :, None]

    def call(self, inputs):
        y = keras.ops.conv(tf.cast(inputs, tf.float32), self.rescaled_kernel(), strides=self.strides[0],
                           padding="same")
        if self.use_bias:
            y = y + self.bias
        return tf.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return strided_output_shape(input_shape, self.filters, self.strides[0], self.padding)

    # The layer contract -----------------------------------------------------------

    def lipschitz_constant(self, input_shape=None):
        return 1.0

    def applied_kernel(self):
        return np.asarray(self.rescaled_kernel(), np.float64)

    def channel_role(self):
        return contract.PRODUCER

    def slice_channels(self, new, kept_in, kept_out):
        new.kernel.assign(contract.slice_kernel(self.kernel, kept_in, kept_out))
        if self.use_bias:
            new.bias.assign(keras.ops.convert_to_numpy(self.bias)[kept_out])

    def lowered(self):
        conv = keras.layers.Conv2D(self.filters, self.kernel_size, strides=self.strides, padding="same",
                                   use_bias=self.use_bias, name=self.name, trainable=False)
        conv.build((None, None, None, self.input_channels))
        conv.kernel.assign(keras.ops.convert_to_numpy(self.rescaled_kernel()))
        if self.use_bias:
            conv.bias.assign(keras.ops.convert_to_numpy(self.bias))
        return conv

    def start_from_kernel(self, kernel):
        return start_from_free_kernel(self, kernel)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters, kernel_size=self.kernel_size, strides=self.strides, padding=self.padding,
            use_bias=self.use_bias, kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer), epsilon=self.epsilon,
        )
        return config
