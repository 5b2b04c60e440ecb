"""Universal adversarial perturbations: one perturbation for every image.

Learned on a training split, tiled over each image, applied with a budget. In
the MSU benchmark the perturbation is clipped to `+-clip` (0.1) and applied
with an amplitude `a` (0.2, 0.4, 0.8); here `train_uap` returns it divided by
`clip` (values in [-1, 1]) and `uap` applies `eps * perturbation`, so `eps` is
the L-inf budget like everywhere else and amplitude `a` is `eps = a * clip`.
By default the perturbation is learned at the budget it is applied at, with
steps that are fractions of that budget, until its objective stops rising.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_robust_iqa.attacks.generators import GENERATOR_LEARNING_RATE, generate, unet_generator
from keras_robust_iqa.attacks.loop import check_budget, run_batches, train_perturbation

UAP_VARIANTS = ("plain", "cumulative", "generative")


def tile(perturbation, height, width):
    """`perturbation (h, w, C)` repeated over an `height x width` image, from the top left."""
    h, w = perturbation.shape[0], perturbation.shape[1]
    return tf.tile(perturbation, [-(-height // h), -(-width // w), 1])[:height, :width]


# The MSU benchmark's settings (Antsiferova et al., 2024): 5 epochs, clip 0.1, Adam at 1e-3 on the
# perturbation in pixel units (1e-3 / 0.1 in units of the clip), signed steps of 1/255 for the
# cumulative variant. Short: its plain UAP does not reach the clip (docs/experiments.md).
UAP_MSU_SETTINGS = {
    "plain": dict(clip=0.1, epochs=5, patience=None, learning_rate=1e-3 / 0.1),
    "cumulative": dict(clip=0.1, epochs=5, patience=None, step_size=(1 / 255) / 0.1),
    "generative": dict(clip=0.1, epochs=5, patience=None, learning_rate=1e-3),
}


def train_uap(model, train_images, *, variant="plain", size=256, clip=0.1, epochs=40, patience=3, seconds=None,
              batch_size=8, learning_rate=None, step_size=0.1, filters=16, seed=0, verbose=1):
    """Learn a universal perturbation that raises the model's scores on `train_images`.

    The perturbation is learned in units of `clip` (values in [-1, 1]), so every
    step size below is a fraction of the budget and scales with it.

    Args:
        model: the attacked model (patch-scoring, see `fgsm`).
        train_images: images of a training split, an array or a list, in [0, 1].
        variant: `"plain"`: the perturbation itself is trained with Adam
            (`learning_rate`, default 0.1 of the clip per step) and clipped to
            `+-clip` after each step; `"cumulative"`: signed gradient steps of
            `step_size` (of the clip) accumulated over the batches, clipped
            likewise; `"generative"`: a small U-Net turns fixed noise into
            `clip * tanh(...)`, its weights trained with Adam (`learning_rate`,
            default 1e-2, FACPA's).
        size: side of the square perturbation, tiled over larger images.
        clip: L-inf bound of the perturbation while training: train at the
            budget it is applied at (`uap` does).
        epochs, patience, seconds: learning stops after `patience` epochs with no
            rise of the mean attacked score, after `epochs` epochs, or past
            `seconds` (see `loop.train_perturbation`).
        batch_size: images per step.
        filters: width of the generative variant's U-Net.
        seed: seeds the shuffling, the noise and the generator's initial weights.

    `UAP_MSU_SETTINGS[variant]` holds the MSU benchmark's settings:
    `train_uap(model, images, variant=v, **UAP_MSU_SETTINGS[v])`.

    Returns:
        A float32 array `(size, size, C)` in [-1, 1]: the perturbation / `clip`.
    """
    if variant not in UAP_VARIANTS:
        raise ValueError(f"Argument `variant` must be one of {UAP_VARIANTS}, got {variant!r}.")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"Argument `size` must be a positive integer, got {size!r}.")
    clip = check_budget(clip, "clip")
    step_size = check_budget(step_size, "step_size")
    if learning_rate is None:
        learning_rate = GENERATOR_LEARNING_RATE if variant == "generative" else 0.1
    learning_rate = check_budget(learning_rate, "learning_rate")
    channels = np.shape(train_images[0])[-1]

    if variant == "generative":
        generator = unet_generator(filters, channels=channels, seed=seed, name="uap_generator")
        noise = tf.random.stateless_uniform((1, size, size, channels), (seed, 1), -1.0, 1.0)
        variables = generator.trainable_variables

        def unit():
            return generate(generator, noise, training=True)[0]
    else:
        perturbation = tf.Variable(tf.zeros((size, size, channels)), name="uap")
        variables = [perturbation]

        def unit():
            return perturbation

    def perturb(x):
        return tf.clip_by_value(x + clip * tile(unit(), x.shape[1], x.shape[2]), 0.0, 1.0)

    if variant == "cumulative":
        def update(loss, tape):
            (gradient,) = tape.gradient(loss, variables)
            perturbation.assign(tf.clip_by_value(perturbation - step_size * tf.sign(gradient), -1.0, 1.0))
    else:
        optimizer = keras.optimizers.Adam(learning_rate)
        optimizer.build(variables)

        def update(loss, tape):
            optimizer.apply(tape.gradient(loss, variables), variables)
            if variant == "plain":
                perturbation.assign(tf.clip_by_value(perturbation, -1.0, 1.0))

    train_perturbation(model, train_images, perturb, update, epochs=epochs, patience=patience, seconds=seconds,
                       batch_size=batch_size, seed=seed, verbose=verbose)
    return np.clip(unit().numpy(), -1.0, 1.0).astype("float32")


def uap(model, images, eps=0.02, *, perturbation=None, train_images=None, variant="plain", batch_size=8,
        verbose=1, **train_options):
    """Add a universal perturbation, tiled, scaled to the L-inf budget `eps`.

    Args:
        model: the attacked model; used to learn the perturbation when none is given.
        images: the images to attack, an array or a list, in [0, 1].
        eps: L-inf budget; the default 0.02 is the benchmark's amplitude 0.2 at clip 0.1.
        perturbation: a perturbation from `train_uap` (values in [-1, 1]); when
            None, one is learned on `train_images` with `variant` and
            `train_options` (see `train_uap`), at `clip=eps` unless given.
    """
    eps = check_budget(eps)
    if perturbation is None:
        if train_images is None:
            raise ValueError("uap needs a `perturbation` from train_uap or `train_images` to learn one on.")
        train_options.setdefault("clip", eps)
        perturbation = train_uap(model, train_images, variant=variant, verbose=verbose, **train_options)
    perturbation = tf.constant(np.clip(np.asarray(perturbation, "float32"), -1.0, 1.0))
    if perturbation.shape.rank != 3:
        raise ValueError(f"Argument `perturbation` must be (h, w, C), got shape {tuple(perturbation.shape)}.")

    @tf.function
    def attack_batch(x, seed):
        return tf.clip_by_value(x + eps * tile(perturbation, x.shape[1], x.shape[2]), 0.0, 1.0)

    return run_batches(images, attack_batch, batch_size=batch_size, verbose=verbose)


def cumulative_uap(model, images, eps=0.02, **options):
    """`uap` with the cumulative variant (see `train_uap`)."""
    return uap(model, images, eps, variant="cumulative", **options)


def generative_uap(model, images, eps=0.02, **options):
    """`uap` with the generative variant (see `train_uap`)."""
    return uap(model, images, eps, variant="generative", **options)
