"""FACPA (Shumitskaya et al., 2023): a generator that maps each image to its perturbation.

Training costs what a UAP does; the attack itself is one forward pass of a small
U-Net, `x' = clip(x + eps * tanh(G(x)), 0, 1)`, which makes it fast.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_robust_iqa.attacks.generators import GENERATOR_LEARNING_RATE, generate, unet_generator
from keras_robust_iqa.attacks.loop import check_budget, run_batches, train_perturbation

# The MSU benchmark's settings: Adam at 1e-3 for 5 epochs.
FACPA_MSU_SETTINGS = dict(epochs=5, patience=None, learning_rate=1e-3)


def train_facpa(model, train_images, eps=10 / 255, *, filters=16, epochs=40, patience=3, seconds=None, batch_size=8,
                learning_rate=GENERATOR_LEARNING_RATE, seed=0, verbose=1):
    """Train a U-Net generator so that `x + eps * tanh(G(x))` raises the model's scores.

    Args:
        model: the attacked model (patch-scoring, see `fgsm`).
        train_images: images of a training split, an array or a list, in [0, 1].
        eps: L-inf budget the generator is trained for (the benchmark's 10/255).
        filters: width of the U-Net's first level.
        epochs, patience, seconds: learning stops after `patience` epochs with no
            rise of the mean attacked score, after `epochs` epochs, or past
            `seconds` (see `loop.train_perturbation`); `FACPA_MSU_SETTINGS` holds
            the benchmark's (5 epochs).
        batch_size, learning_rate: Adam on the generator's weights (the
            benchmark's 1e-3 takes several times the steps to reach the same
            gain); the output's `tanh` scales with `eps`, so the rate does not
            depend on it.
        seed: seeds the shuffling and the generator's initial weights.

    Returns:
        The generator, a Keras model with `tanh` outputs in [-1, 1].
    """
    eps = check_budget(eps)
    generator = unet_generator(filters, channels=np.shape(train_images[0])[-1], seed=seed, name="facpa_generator")
    optimizer = keras.optimizers.Adam(learning_rate)
    optimizer.build(generator.trainable_variables)

    def perturb(x):
        return tf.clip_by_value(x + eps * generate(generator, x, training=True), 0.0, 1.0)

    def update(loss, tape):
        optimizer.apply(tape.gradient(loss, generator.trainable_variables), generator.trainable_variables)

    train_perturbation(model, train_images, perturb, update, epochs=epochs, patience=patience, seconds=seconds,
                       batch_size=batch_size, seed=seed, verbose=verbose)
    return generator


def facpa(model, images, eps=10 / 255, *, generator=None, train_images=None, batch_size=8, verbose=1,
          **train_options):
    """One generator forward pass per image: `clip(x + eps * G(x), 0, 1)`.

    Args:
        eps: L-inf budget.
        generator: a generator from `train_facpa`; when None, one is trained on
            `train_images` at this `eps` with `train_options`.
        Other arguments as in `fgsm`.
    """
    eps = check_budget(eps)
    if generator is None:
        if train_images is None:
            raise ValueError("facpa needs a `generator` from train_facpa or `train_images` to train one on.")
        generator = train_facpa(model, train_images, eps, verbose=verbose, **train_options)

    @tf.function
    def attack_batch(x, seed):
        return tf.clip_by_value(x + eps * generate(generator, x), 0.0, 1.0)

    return run_batches(images, attack_batch, batch_size=batch_size, verbose=verbose)
