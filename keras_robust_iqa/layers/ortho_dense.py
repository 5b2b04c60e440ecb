import keras
import numpy as np
import tensorflow as tf

from keras_robust_iqa.layers import contract, linalg
from keras_robust_iqa.layers.ortho_conv2d import copy_scaled_kernel, start_from_free_kernel
from keras_robust_iqa.layers.validation import check_positive_int, float32_dtype_policy


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class OrthoDense(contract.LayerContract, keras.layers.Layer):
    """Dense layer with an orthogonal weight matrix, via the Cayley transform.

    `y = x @ Q^T + bias` with `Q = cayley(alpha * W^T / ||W||)` of shape
    `(units, input_dim)`: an isometry when `units >= input_dim`, otherwise a
    co-isometry (orthonormal rows). Either way the layer is 1-Lipschitz in L2.

    Args:
        units: number of outputs.
        use_bias: add a bias.

    Contract: Lipschitz 1; applies `Q` (`applied_kernel`: `Q^T`, units last); units
    prunable (the free kernel loses the matching rows and columns); lowers to a frozen
    `Dense` holding `Q^T`.
    """

    def __init__(
        self,
        units,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        kwargs["dtype"] = float32_dtype_policy(kwargs.get("dtype"))
        super().__init__(**kwargs)
        self.units = check_positive_int("units", units)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(
                f"{type(self).__name__} needs a known last input dimension, got "
                f"input_shape={tuple(input_shape)}."
            )
        self.kernel = self.add_weight(
            name="kernel", shape=(input_dim, self.units), initializer=self.kernel_initializer
        )
        self.alpha = self.add_weight(
            name="alpha",
            shape=(),
            initializer=lambda shape, dtype=None: self.kernel_norm(),
        )
        self.bias = (
            self.add_weight(name="bias", shape=(self.units,), initializer=self.bias_initializer)
            if self.use_bias
            else None
        )

    def kernel_norm(self):
        """Frobenius norm of the kernel: where `alpha` starts."""
        return tf.norm(tf.cast(self.kernel, tf.float32))

    def orthogonal_matrix(self):
        """The `(units, input_dim)` matrix `Q` with orthonormal rows or columns."""
        w = tf.transpose(tf.cast(self.kernel, tf.float32))
        scale = tf.cast(self.alpha, tf.float32) / tf.maximum(tf.norm(w), 1e-12)
        return linalg.cayley(w * scale)

    def call(self, inputs):
        y = tf.matmul(tf.cast(inputs, tf.float32), self.orthogonal_matrix(), transpose_b=True)
        if self.use_bias:
            y = y + self.bias
        return tf.cast(y, self.compute_dtype)

    # The layer contract -----------------------------------------------------------

    def lipschitz_constant(self, input_shape=None):
        return 1.0

    def applied_kernel(self):
        return np.asarray(self.orthogonal_matrix(), np.float64).T  # (input_dim, units)

    def channel_role(self):
        return contract.PRODUCER

    def slice_channels(self, new, kept_in, kept_out):
        copy_scaled_kernel(self, new, kept_in, kept_out)

    def lowered(self):
        q = keras.ops.convert_to_numpy(self.orthogonal_matrix())
        dense = keras.layers.Dense(self.units, use_bias=self.use_bias, name=self.name, trainable=False)
        dense.build((None, q.shape[1]))
        dense.kernel.assign(q.T)
        if self.use_bias:
            dense.bias.assign(keras.ops.convert_to_numpy(self.bias))
        return dense

    def start_from_kernel(self, kernel):
        return start_from_free_kernel(self, kernel)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        config = super().get_config()
        config.update(
            units=self.units,
            use_bias=self.use_bias,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
        )
        return config
