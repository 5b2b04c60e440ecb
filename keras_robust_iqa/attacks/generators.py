"""The small U-Net generator of the generative UAP and of FACPA."""

import keras
import tensorflow as tf

# Adam's rate on a generator's weights (FACPA, the generative UAP): reaches in a few steps
# the gain the benchmark's 1e-3 needs several times more steps for.
GENERATOR_LEARNING_RATE = 1e-2


def unet_generator(filters=16, channels=3, seed=0, name="unet_generator"):
    """A two-level U-Net mapping `(H, W, channels)` to `tanh` outputs in [-1, 1], any size.

    Call it through `generate`, which pads the input to a multiple of 4 (two
    2x2 poolings) and crops the output back.
    """
    if not isinstance(filters, int) or filters < 1:
        raise ValueError(f"Argument `filters` must be a positive integer, got {filters!r}.")
    initializers = iter(range(seed * 100, seed * 100 + 100))

    def conv(x, width, **kwargs):
        init = keras.initializers.GlorotUniform(seed=next(initializers))
        return keras.layers.Conv2D(width, 3, padding="same", kernel_initializer=init, **kwargs)(x)

    inputs = keras.Input((None, None, channels), name="image")
    level1 = conv(conv(inputs, filters, activation="relu"), filters, activation="relu")
    level2 = conv(keras.layers.MaxPooling2D(2)(level1), 2 * filters, activation="relu")
    bottom = conv(keras.layers.MaxPooling2D(2)(level2), 4 * filters, activation="relu")
    up2 = keras.layers.Concatenate()([keras.layers.UpSampling2D(2)(bottom), level2])
    up1 = keras.layers.Concatenate()([keras.layers.UpSampling2D(2)(conv(up2, 2 * filters, activation="relu")), level1])
    outputs = conv(conv(up1, filters, activation="relu"), channels, activation="tanh")
    return keras.Model(inputs, outputs, name=name)


def generate(generator, images, training=False):
    """The generator's output for `images (B, H, W, C)`, reflect-padded to a multiple of 4."""
    height, width = images.shape[1], images.shape[2]
    pad_h, pad_w = -height % 4, -width % 4
    padded = tf.pad(images, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]], mode="REFLECT")
    return generator(padded, training=training)[:, :height, :width, :]
