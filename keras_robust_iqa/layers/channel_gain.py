import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class UnitBox(keras.constraints.Constraint):
    """Clips every weight to [-1, 1] after each optimizer update."""

    def __call__(self, w):
        return keras.ops.clip(w, -1.0, 1.0)


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class ChannelGain(keras.layers.Layer):
    """Per-channel gains `|d_c| <= 1`: `y[..., c] = d_c * x[..., c]`.

    A diagonal contraction, so 1-Lipschitz (its constant is `max |d_c|`).
    Every singular value of an orthogonal layer is 1: an orthogonal network
    cannot weigh one channel against another, only rotate them. After each
    orthogonal layer (`robustify(..., channel_gains=True)`) the gains give it
    that freedom and keep the certificate. They start at 1 (the orthogonal
    layer unchanged) and are clipped to [-1, 1] after each update.
    """

    def build(self, input_shape):
        self.gain = self.add_weight(
            name="gain", shape=(input_shape[-1],), initializer="ones", constraint=UnitBox()
        )

    def call(self, inputs):
        return inputs * tf.cast(self.gain, inputs.dtype)

    def lipschitz_constant(self):
        # The weights as they are, not as the constraint would clip them:
        # set_weights can put any value here.
        return float(keras.ops.max(keras.ops.abs(self.gain)))

    def compute_output_shape(self, input_shape):
        return input_shape
