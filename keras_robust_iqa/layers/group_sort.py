import keras
import tensorflow as tf

from keras_robust_iqa.layers import contract
from keras_robust_iqa.layers.lowered_max_min import LoweredMaxMin
from keras_robust_iqa.layers.validation import check_positive_int, float32_dtype_policy


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class GroupSort(contract.LayerContract, keras.layers.Layer):
    """Sorts the channels within consecutive groups of `group_size`.

    A sort is a permutation of its inputs, so the Jacobian is a permutation
    matrix almost everywhere: the activation preserves norms and gradient
    norms, unlike ReLU (Anil, Lucas & Grosse, ICML 2019). `group_size=2` is
    `MaxMin`; `group_size=channels` is FullSort.

    Args:
        group_size: number of channels sorted together; must divide the
            number of channels.
        axis: the channel axis.

    Contract: Lipschitz 1 (a permutation); channels pass through, each group tied;
    groups of two along the last axis lower to `LoweredMaxMin` (1x1 convolutions and a
    ReLU, which TFLite runs faster than a compare-and-swap).
    """

    def __init__(self, group_size=2, axis=-1, **kwargs):
        kwargs["dtype"] = float32_dtype_policy(kwargs.get("dtype"))
        super().__init__(**kwargs)
        self.group_size = check_positive_int("group_size", group_size)
        self.axis = axis

    def build(self, input_shape):
        channels = input_shape[self.axis]
        if channels is not None and channels % self.group_size:
            raise ValueError(
                f"Argument `group_size`={self.group_size} must divide the number "
                f"of channels, got input_shape={tuple(input_shape)}."
            )

    def call(self, inputs):
        x = tf.cast(inputs, tf.float32)
        axis = self.axis % len(x.shape)
        if axis != len(x.shape) - 1:
            x = tf.experimental.numpy.moveaxis(x, axis, -1)
        shape = tf.shape(x)
        channels = x.shape[-1]
        groups = tf.reshape(x, tf.concat([shape[:-1], [channels // self.group_size, self.group_size]], 0))
        if self.group_size == 2:
            # A compare-and-swap is cheaper than a sort. One mask for both
            # outputs keeps the Jacobian a permutation at ties too, where
            # tf.maximum and tf.minimum would both send the gradient to `a`.
            a, b = groups[..., 0], groups[..., 1]
            keep = a >= b
            groups = tf.stack([tf.where(keep, a, b), tf.where(keep, b, a)], axis=-1)
        else:
            groups = -tf.sort(-groups, axis=-1)  # descending, like MaxMin
        y = tf.reshape(groups, shape)
        if axis != len(x.shape) - 1:
            y = tf.experimental.numpy.moveaxis(y, -1, axis)
        return tf.cast(y, self.compute_dtype)

    def lipschitz_constant(self, input_shape=None):
        return 1.0

    def channel_role(self):
        return contract.PASS if self.axis == -1 else None

    def tied_channels(self):
        return self.group_size

    def lowered(self):
        if self.group_size == 2 and self.axis == -1:
            return LoweredMaxMin(name=self.name)
        return self

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(group_size=self.group_size, axis=self.axis)
        return config
