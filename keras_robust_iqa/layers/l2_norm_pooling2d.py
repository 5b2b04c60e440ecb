import keras
import tensorflow as tf

from keras_robust_iqa.layers import contract
from keras_robust_iqa.layers.validation import (
    check_rank4,
    float32_dtype_policy,
    normalize_pair,
)


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class L2NormPooling2D(contract.LayerContract, keras.layers.Layer):
    """L2-norm pooling over non-overlapping windows: `sqrt(sum_window x^2)`.

    Each output is the Euclidean norm of its own window, and the windows do not
    overlap, so the layer is 1-Lipschitz (max-pooling is too, but its gradient
    reaches a single input; average pooling shrinks norms by the window size).
    Equal to `sqrt(avgpool(x^2)) * sqrt(pool area)`.

    Args:
        pool_size: window size; the stride equals it (overlap would break the
            bound) and it must divide the input size.
        epsilon: added under the square root so the gradient exists at 0;
            `x / sqrt(|x|^2 + eps)` still has norm below 1.
    """

    def __init__(self, pool_size=2, epsilon=1e-12, **kwargs):
        kwargs["dtype"] = float32_dtype_policy(kwargs.get("dtype"))
        super().__init__(**kwargs)
        self.pool_size = normalize_pair("pool_size", pool_size)
        if not epsilon >= 0:
            raise ValueError(f"Argument `epsilon` must be >= 0, got epsilon={epsilon!r}.")
        self.epsilon = float(epsilon)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        check_rank4(self, input_shape)
        for size, p in zip(input_shape[1:3], self.pool_size):
            if size is not None and size % p:
                raise ValueError(
                    f"Argument `pool_size`={self.pool_size} must divide the input "
                    f"size, got input_shape={tuple(input_shape)}."
                )

    def call(self, inputs):
        x = tf.cast(inputs, tf.float32)
        ph, pw = self.pool_size
        sums = tf.nn.avg_pool2d(tf.square(x), (ph, pw), (ph, pw), "VALID") * float(ph * pw)
        return tf.cast(tf.sqrt(sums + self.epsilon), self.compute_dtype)

    def lipschitz_constant(self, input_shape=None):
        return 1.0

    def channel_role(self):
        return contract.PASS

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        ph, pw = self.pool_size
        return (b, None if h is None else h // ph, None if w is None else w // pw, c)

    def get_config(self):
        config = super().get_config()
        config.update(pool_size=self.pool_size, epsilon=self.epsilon)
        return config
