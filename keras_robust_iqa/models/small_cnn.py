import keras


def small_iqa_cnn(patch_size=64, widths=(16, 32, 64, 64), head_units=64, name="small_iqa_cnn"):
    """A small NR-IQA CNN that trains on a CPU in minutes.

    Conv-BN-ReLU stages separated by 2x2 max-pooling, global average pooling,
    a Dense-ReLU head and one linear output: the predicted quality on the
    [0, 1] MOS scale. Takes `patch_size x patch_size` RGB patches in [0, 1];
    larger images are scored by averaging patch scores
    (`keras_robust_iqa.models.score_images`).

    Args:
        patch_size: input height and width; must be divisible by
            `2 ** (len(widths) - 1)`.
        widths: channels of each stage.
        head_units: width of the hidden Dense layer.
    """
    if patch_size % 2 ** (len(widths) - 1):
        raise ValueError(
            f"Argument `patch_size`={patch_size} must be divisible by "
            f"{2 ** (len(widths) - 1)} (one 2x2 pooling between each of the {len(widths)} stages)."
        )
    inputs = keras.Input((patch_size, patch_size, 3), name="image")
    x = inputs
    for i, width in enumerate(widths):
        if i:
            x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i + 1}")(x)
        # momentum 0.9: the moving statistics must settle within the few
        # hundred steps a CPU run takes.
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i + 1}")(x)
        x = keras.layers.ReLU(name=f"relu{i + 1}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(head_units, activation="relu", name="fc1")(x)
    outputs = keras.layers.Dense(1, name="quality")(x)
    return keras.Model(inputs, outputs, name=name)
