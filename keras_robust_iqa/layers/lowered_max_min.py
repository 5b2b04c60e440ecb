import keras
import numpy as np
import tensorflow as tf

from keras_robust_iqa.layers import contract


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class LoweredMaxMin(contract.LayerContract, keras.layers.Layer):
    """`MaxMin` (a `GroupSort` of channel pairs) as two 1x1 convolutions and a ReLU.

    For a pair `(a, b)`, `max(a, b) = a + relu(b - a)` and `min(a, b) = b - relu(b - a)`,
    so `y = x + E relu(D x)` with fixed matrices `D` (`c -> c/2`: `b - a` per pair) and
    `E` (`c/2 -> c`: `+1` on the pair's first channel, `-1` on its second). The same
    function as `GroupSort`'s compare-and-swap, made of `CONV_2D`, `RELU` and `ADD`, which
    the TFLite and ONNX runtimes run on their fast paths; a compare-and-swap
    (`GREATER_EQUAL`, `SELECT_V2`, `PACK`) is slow on TFLite's CPU runtime.

    Sorts along the last axis; rank-4 inputs use 1x1 convolutions, other ranks matrix
    products. No weights: `D` and `E` are constants of the graph.
    """

    def lipschitz_constant(self, input_shape=None):
        return 1.0  # the same function as MaxMin: a permutation of each pair

    def channel_role(self):
        return contract.PASS

    def tied_channels(self):
        return 2

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None or channels % 2:
            raise ValueError(f"LoweredMaxMin needs a known, even channel count, got input_shape={tuple(input_shape)}.")
        pairs = np.arange(channels // 2)
        self._difference = np.zeros((channels, channels // 2), "float32")  # (b - a) per pair
        self._difference[2 * pairs, pairs], self._difference[2 * pairs + 1, pairs] = -1.0, 1.0
        self._spread = np.ascontiguousarray(-self._difference.T)  # +1 to a, -1 to b

    def call(self, inputs):
        x = tf.convert_to_tensor(inputs)
        difference = tf.constant(self._difference, dtype=x.dtype)
        spread = tf.constant(self._spread, dtype=x.dtype)
        if x.shape.rank == 4:
            step = tf.nn.relu(tf.nn.conv2d(x, difference[None, None], 1, "VALID"))
            return x + tf.nn.conv2d(step, spread[None, None], 1, "VALID")
        step = tf.nn.relu(tf.tensordot(x, difference, axes=1))
        return x + tf.tensordot(step, spread, axes=1)

    def compute_output_shape(self, input_shape):
        return input_shape
