import keras
import numpy as np
import tensorflow as tf

from keras_robust_iqa.layers import contract


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class ConvexCombination(contract.LayerContract, keras.layers.Layer):
    """Learnable convex combination of its inputs: `sum_i w_i x_i`, `w = softmax(logits)`.

    The 1-Lipschitz replacement for `Add`: a sum of two 1-Lipschitz branches
    (a residual connection) can double a perturbation, a convex combination
    of them cannot. Starts as the plain average.

    Contract: the output's Lipschitz bound is the weighted mean of the inputs'; an
    element-wise merge for pruning (channel `c` of every input is one channel).
    """

    bound_by_weights = True

    def build(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) < 2 or not isinstance(
            input_shape[0], (list, tuple)
        ):
            raise ValueError(
                f"{type(self).__name__} needs a list of at least two inputs, got "
                f"input_shape={input_shape}."
            )
        # Checked here, where the layer's name can be given: add_n would fail
        # at the first call, deep inside TensorFlow.
        first = tuple(input_shape[0])
        for shape in input_shape[1:]:
            if len(shape) != len(first) or any(
                a is not None and b is not None and a != b for a, b in zip(first[1:], tuple(shape)[1:])
            ):
                raise ValueError(
                    f"{type(self).__name__} '{self.name}' needs inputs of one shape, got "
                    f"{[tuple(s) for s in input_shape]}."
                )
        self.logits = self.add_weight(
            name="logits", shape=(len(input_shape),), initializer="zeros"
        )

    def merged_lipschitz(self, bounds):
        return float(np.dot(np.asarray(self.weights_simplex()), bounds))

    def channel_role(self):
        return contract.MERGE

    def weights_simplex(self):
        return tf.nn.softmax(tf.cast(self.logits, tf.float32))

    def call(self, inputs):
        w = tf.cast(self.weights_simplex(), self.compute_dtype)
        return tf.add_n([w[i] * x for i, x in enumerate(inputs)])

    def compute_output_shape(self, input_shape):
        return input_shape[0]
