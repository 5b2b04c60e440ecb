import keras
import tensorflow as tf

from keras_robust_iqa.layers import contract
from keras_robust_iqa.layers.aol_conv2d import input_gram
from keras_robust_iqa.layers.validation import check_positive_int, float32_dtype_policy, input_channels, normalize_pair


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class SLLConv2D(contract.LayerContract, keras.layers.Layer):
    """SDP-based Lipschitz residual convolution (SLL, Araujo et al., ICLR 2023): 1-Lipschitz by construction.

    `y = x - 2 W T^-1 relu(W^T x + b)`: `W^T` a `kernel_size` convolution from the
    `channels` inputs to `inner_channels`, `W` its adjoint (the transposed convolution),
    and `T = diag(t)` with `t_a = sum_{b, s} |W^T W|_ab(s) q_b / q_a` (`q = exp(log_q)`,
    learnable). Then `T >= W^T W`, and a residual layer of that form with an activation of
    slope in [0, 1] is 1-Lipschitz (Araujo et al., Theorem 3). Zero padding only restricts
    the Gram operator, so the bound holds at every input size. Channels in = out, stride 1:
    a residual layer, so depth does not attenuate the signal the way a stack of
    contractions can.

    Args:
        kernel_size: `k`, or `(kh, kw)`; odd (the adjoint is then a "same" convolution with
            the flipped kernel).
        inner_channels: width of `W^T x` (default: the input channels).
        use_bias: the bias `b` inside the activation.
        kernel_initializer: of `W` (default orthogonal).

    Contract: Lipschitz 1; not a linear map (no `applied_kernel`); its output channels
    are its input channels (a residual layer: pruning ties them and slices the kernel's
    input side, the inner channels stay); lowers to two plain convolutions, a ReLU and a
    subtraction, with `2 T^-1` folded into the second kernel. Computation runs in float32
    whatever the dtype policy.
    """

    def __init__(self, kernel_size=3, inner_channels=None, use_bias=True, kernel_initializer="orthogonal",
                 bias_initializer="zeros", **kwargs):
        kwargs["dtype"] = float32_dtype_policy(kwargs.get("dtype"))
        super().__init__(**kwargs)
        self.kernel_size = normalize_pair("kernel_size", kernel_size)
        if any(k % 2 == 0 for k in self.kernel_size):
            raise ValueError(f"Argument `kernel_size` must be odd, got kernel_size={kernel_size!r}.")
        self.inner_channels = None if inner_channels is None else check_positive_int("inner_channels",
                                                                                       inner_channels)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        self.input_channels = channels = input_channels(self, input_shape)
        inner = self.inner_channels or channels
        self.kernel = self.add_weight(name="kernel", shape=(*self.kernel_size, channels, inner),
                                      initializer=self.kernel_initializer)
        self.log_q = self.add_weight(name="log_q", shape=(inner,), initializer="zeros")
        self.bias = (self.add_weight(name="bias", shape=(inner,), initializer=self.bias_initializer)
                     if self.use_bias else None)

    def inverse_t(self):
        """`T^-1`, one value per inner channel (0 where a channel's `t` is 0: it carries nothing)."""
        kernel = tf.cast(tf.convert_to_tensor(self.kernel), tf.float32)
        gram = input_gram(tf.transpose(kernel, (0, 1, 3, 2)))  # (inner, 2kh-1, 2kw-1, inner): |W^T W|
        q = tf.exp(tf.cast(tf.convert_to_tensor(self.log_q), tf.float32))
        t = tf.reduce_sum(gram * q[None, None, None, :], axis=(1, 2, 3)) / q
        return tf.math.divide_no_nan(tf.ones_like(t), t)

    def _kernels(self):
        """`(W^T, 2 W T^-1)` as the kernels of two "same" convolutions."""
        kernel = tf.cast(tf.convert_to_tensor(self.kernel), tf.float32)
        # The adjoint of a stride-1 "same" convolution with an odd kernel: the flipped
        # kernel, inputs and outputs swapped.
        back = tf.transpose(tf.reverse(kernel, axis=(0, 1)), (0, 1, 3, 2))
        return kernel, back * (2.0 * self.inverse_t())[None, None, :, None]

    def call(self, inputs):
        x = tf.cast(inputs, tf.float32)
        forward, back = self._kernels()
        z = keras.ops.conv(x, forward, padding="same")
        if self.use_bias:
            z = z + self.bias
        y = x - keras.ops.conv(tf.nn.relu(z), back, padding="same")
        return tf.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    # The layer contract -----------------------------------------------------------

    def lipschitz_constant(self, input_shape=None):
        return 1.0

    def channel_role(self):
        return contract.RESIDUAL

    def slice_channels(self, new, kept_in, kept_out):
        new.kernel.assign(keras.ops.convert_to_numpy(self.kernel)[:, :, kept_in])
        new.log_q.assign(self.log_q)
        if self.use_bias:
            new.bias.assign(self.bias)

    def lowered(self):
        """`x - conv(relu(conv(x) + b))`: two frozen `Conv2D`s, a ReLU and a `Subtract`."""
        forward, back = (keras.ops.convert_to_numpy(k) for k in self._kernels())
        inputs = keras.Input((None, None, self.input_channels))
        inner = keras.layers.Conv2D(forward.shape[-1], self.kernel_size, padding="same", use_bias=self.use_bias,
                                    name="forward", trainable=False)
        outer = keras.layers.Conv2D(self.input_channels, self.kernel_size, padding="same", use_bias=False,
                                    name="back", trainable=False)
        z = keras.layers.ReLU(name="relu")(inner(inputs))
        y = keras.layers.Subtract(name="residual")([inputs, outer(z)])
        inner.kernel.assign(forward)
        if self.use_bias:
            inner.bias.assign(keras.ops.convert_to_numpy(self.bias))
        outer.kernel.assign(back)
        return keras.Model(inputs, y, name=self.name)

    def get_config(self):
        config = super().get_config()
        # Once built, the inner width is fixed: a copy with fewer input channels (pruned) keeps it.
        inner = int(self.kernel.shape[-1]) if self.built else self.inner_channels
        config.update(
            kernel_size=self.kernel_size, inner_channels=inner, use_bias=self.use_bias,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
        )
        return config

