import keras
import tensorflow as tf

from keras_robust_iqa.layers import contract
from keras_robust_iqa.layers.validation import check_rank4, float32_dtype_policy


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class GlobalL2NormPooling2D(contract.LayerContract, keras.layers.Layer):
    """Per-channel Euclidean norm over space, divided by `sqrt(H * W)`.

    `y_c = sqrt(mean_hw x_c^2)`: the root-mean-square of each channel. The
    map `x_c -> ||x_c||` is 1-Lipschitz and the channels are disjoint, so the
    layer is 1-Lipschitz even before the `1 / sqrt(H * W)` factor; the factor
    keeps outputs on the scale of the activations (like average pooling) and
    makes the layer `1 / sqrt(H * W)`-Lipschitz, which certificates use.

    Args:
        epsilon: added under the square root so the gradient exists at 0.
    """

    def __init__(self, epsilon=1e-12, **kwargs):
        kwargs["dtype"] = float32_dtype_policy(kwargs.get("dtype"))
        super().__init__(**kwargs)
        if not epsilon >= 0:
            raise ValueError(f"Argument `epsilon` must be >= 0, got epsilon={epsilon!r}.")
        self.epsilon = float(epsilon)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        check_rank4(self, input_shape)

    def call(self, inputs):
        x = tf.cast(inputs, tf.float32)
        y = tf.sqrt(tf.reduce_mean(tf.square(x), axis=(1, 2)) + self.epsilon)
        return tf.cast(y, self.compute_dtype)

    def lipschitz_constant(self, input_shape=None):
        """L2 Lipschitz constant for inputs of this shape: `1 / sqrt(H * W)`.

        `input_shape`: default, the layer's first call; with no static map size, 1
        (the map `x -> ||x||` alone: a bound at every input size).
        """
        shape = input_shape if input_shape is not None else self.input.shape
        if None in tuple(shape[1:3]):
            return 1.0
        return float(shape[1] * shape[2]) ** -0.5

    def channel_role(self):
        return contract.PASS

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon)
        return config
