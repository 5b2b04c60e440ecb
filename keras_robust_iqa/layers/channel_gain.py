import keras
import numpy as np
import tensorflow as tf

from keras_robust_iqa.layers import contract


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class UnitBox(keras.constraints.Constraint):
    """Clips every weight to [-1, 1] after each optimizer update."""

    def __call__(self, w):
        return keras.ops.clip(w, -1.0, 1.0)


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class ChannelGain(contract.LayerContract, keras.layers.Layer):
    """Per-channel gains `|d_c| <= 1`: `y[..., c] = d_c * x[..., c]`.

    A diagonal contraction, so 1-Lipschitz (its constant is `max |d_c|`).
    Every singular value of an orthogonal layer is 1: an orthogonal network
    cannot weigh one channel against another, only rotate them. After each
    orthogonal layer (`robustify(..., channel_gains=True)`) the gains give it
    that freedom and keep the certificate. They start at 1 (the orthogonal
    layer unchanged) and are clipped to [-1, 1] after each update.

    Contract: Lipschitz `max |d_c|`; one weight per channel, sliced with it; the pruning
    criterion multiplies a channel's score by `|d_c|`.
    """

    def build(self, input_shape):
        self.gain = self.add_weight(
            name="gain", shape=(input_shape[-1],), initializer="ones", constraint=UnitBox()
        )

    def call(self, inputs):
        return inputs * tf.cast(self.gain, inputs.dtype)

    def lipschitz_constant(self, input_shape=None):
        # The weights as they are, not as the constraint would clip them:
        # set_weights can put any value here.
        return float(keras.ops.max(keras.ops.abs(self.gain)))

    def channel_role(self):
        return contract.CHANNELWISE

    def channel_scale(self):
        return np.abs(keras.ops.convert_to_numpy(self.gain).astype(np.float64))

    def slice_channels(self, new, kept_in, kept_out):
        new.set_weights([w[kept_in] for w in self.get_weights()])

    def compute_output_shape(self, input_shape):
        return input_shape
