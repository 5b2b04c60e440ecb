import keras

from keras_robust_iqa.layers.group_sort import GroupSort


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class MaxMin(GroupSort):
    """`GroupSort` with groups of two: `[max(a, b), min(a, b)]` per channel pair.

    The usual norm-preserving replacement for ReLU in 1-Lipschitz networks.
    """

    def __init__(self, axis=-1, **kwargs):
        kwargs.pop("group_size", None)
        super().__init__(group_size=2, axis=axis, **kwargs)

    def get_config(self):
        config = super().get_config()
        del config["group_size"]
        return config
