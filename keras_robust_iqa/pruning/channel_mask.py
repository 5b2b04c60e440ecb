import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class ChannelMask(keras.layers.Layer):
    """Multiplies each channel by a fixed 0/1 mask: a channel pruned before removal.

    Placed in front of a layer that mixes channels, it makes that layer see
    exactly what it will see once the masked channels are physically removed.
    The mask is a non-trainable weight that `ChannelPruning` sets during
    `model.fit`; a diagonal 0/1 map is 1-Lipschitz.
    """

    def build(self, input_shape):
        self.mask = self.add_weight(
            name="mask", shape=(input_shape[-1],), initializer="ones", trainable=False
        )

    def call(self, inputs):
        return inputs * tf.cast(self.mask, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape
