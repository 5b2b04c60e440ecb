import keras
import tensorflow as tf

from keras_robust_iqa.layers import contract


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class OutputScale(contract.LayerContract, keras.layers.Layer):
    """`y = scale * x + offset` with learnable scalars.

    The one free gain of a 1-Lipschitz network: orthogonal layers fix the
    slope of every other layer, so the scale lets the score reach the range
    of the labels. The network's Lipschitz constant is `|scale|` times the
    rest's, which certificates read from here.

    Args:
        scale: initial scale.
        offset: initial offset.
    """

    bound_by_weights = True

    def __init__(self, scale=1.0, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        self.initial_scale = float(scale)
        self.initial_offset = float(offset)

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale", shape=(), initializer=keras.initializers.Constant(self.initial_scale)
        )
        self.offset = self.add_weight(
            name="offset", shape=(), initializer=keras.initializers.Constant(self.initial_offset)
        )

    def call(self, inputs):
        return inputs * tf.cast(self.scale, inputs.dtype) + tf.cast(self.offset, inputs.dtype)

    def lipschitz_constant(self, input_shape=None):
        return abs(float(keras.ops.convert_to_numpy(self.scale)))

    def channel_role(self):
        return contract.PASS

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(scale=self.initial_scale, offset=self.initial_offset)
        return config
