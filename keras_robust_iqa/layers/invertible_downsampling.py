import keras
import tensorflow as tf

from keras_robust_iqa.layers import contract
from keras_robust_iqa.layers.validation import check_positive_int, check_rank4


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class InvertibleDownsampling(contract.LayerContract, keras.layers.Layer):
    """Space-to-depth: `(H, W, C) -> (H / s, W / s, C * s * s)`.

    A permutation of the inputs, hence orthogonal and exactly invertible:
    the norm-preserving way to halve a resolution (Jacobsen et al., i-RevNet).

    Args:
        pool_size: the block size `s`; it must divide the input size.
    """

    def __init__(self, pool_size=2, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = check_positive_int("pool_size", pool_size)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        check_rank4(self, input_shape)
        for size in input_shape[1:3]:
            if size is not None and size % self.pool_size:
                raise ValueError(
                    f"Argument `pool_size`={self.pool_size} must divide the input "
                    f"size, got input_shape={tuple(input_shape)}."
                )

    def call(self, inputs):
        return tf.nn.space_to_depth(inputs, self.pool_size)

    def lipschitz_constant(self, input_shape=None):
        return 1.0

    def channel_role(self):
        return contract.SPACE_TO_DEPTH

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        s = self.pool_size
        return (
            b,
            None if h is None else h // s,
            None if w is None else w // s,
            None if c is None else c * s * s,
        )

    def get_config(self):
        config = super().get_config()
        config.update(pool_size=self.pool_size)
        return config
