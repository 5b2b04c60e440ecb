"""The loop every attack runs in: batches, a compiled step loop, progress, no side effects.

Attacks see a model through `image_score_fn`: whole images in [0, 1] of any size
(at least one patch) are scored like `models.score_images` does, by averaging the
model's scores over the centred grid of disjoint patches, so gradients flow
through the averaging. The model is only called (`training=False`); its weights
are never assigned, and the caller's arrays are copied, never written.
"""

import numbers
import time

import keras
import numpy as np
import tensorflow as tf

from keras_robust_iqa.models.patches import model_patch_size, patch_grid


def image_score_fn(model):
    """A differentiable `images (B, H, W, C) -> scores (B,)`: mean patch score per image."""
    patch = model_patch_size(model)

    def score(images):
        grid = patch_grid(images, patch)
        flat = tf.reshape(grid, (-1, patch, patch, grid.shape[-1]))
        scores = tf.cast(tf.reshape(model(flat, training=False), tf.shape(grid)[:2]), tf.float32)
        return tf.reduce_mean(scores, axis=1)

    return score


def score_and_gradient(score, images):
    """Scores `(B,)` and the gradient of each image's score with respect to that image."""
    with tf.GradientTape() as tape:
        tape.watch(images)
        scores = score(images)
        # Images are scored independently, so the gradient of the sum is per image.
        total = tf.reduce_sum(scores)
    return scores, tape.gradient(total, images)


def check_images(images, name="images"):
    """A list of float32 `(H, W, C)` copies of `images` (an array `(N, H, W, C)` or a list).

    Raises:
        ValueError: naming `name`, for an empty input, a wrong rank, or values
            outside [0, 1].
    """
    if isinstance(images, np.ndarray) or tf.is_tensor(images):
        array = np.asarray(images)
        if array.ndim != 4:
            raise ValueError(f"Argument `{name}` must be an array (N, H, W, C), got shape {array.shape}.")
        images = list(array)
    images = [np.array(image, dtype="float32") for image in images]
    if not images:
        raise ValueError(f"Argument `{name}` holds no image.")
    for i, image in enumerate(images):
        if image.ndim != 3:
            raise ValueError(f"Argument `{name}`: image {i} must be (H, W, C), got shape {image.shape}.")
        if not np.all(np.isfinite(image)) or image.min() < 0 or image.max() > 1:
            raise ValueError(f"Argument `{name}`: image {i} must hold finite values in [0, 1].")
    return images


def batches_by_shape(images, batch_size):
    """`(indices, stacked batch)` for equally sized images, at most `batch_size` each."""
    by_shape = {}
    for i, image in enumerate(images):
        by_shape.setdefault(image.shape, []).append(i)
    for indices in by_shape.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            yield chunk, np.stack([images[i] for i in chunk])


def run_batches(images, attack_batch, *, batch_size=8, seed=0, verbose=1, name="images"):
    """Apply `attack_batch(x, seed) -> x_adv` batch by batch, with a progress bar.

    Args:
        images: an array `(N, H, W, C)` or a list of `(H, W, C)` arrays in [0, 1];
            the result has the same form.
        attack_batch: a (compiled) function of a float32 batch and a `(2,)` int32
            seed, returning the adversarial batch.
        batch_size: images per call.
        seed: base seed; batch `b` gets the seed `(seed, b)`.
        verbose: 0 silent, 1 a progress bar.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"Argument `batch_size` must be a positive integer, got {batch_size!r}.")
    as_array = isinstance(images, np.ndarray) or tf.is_tensor(images)
    images = check_images(images, name)
    results = [None] * len(images)
    progress = keras.utils.Progbar(len(images), verbose=verbose, unit_name="image")
    for b, (indices, batch) in enumerate(batches_by_shape(images, batch_size)):
        adversarial = attack_batch(tf.constant(batch), tf.constant([seed, b], tf.int32)).numpy()
        for i, image in zip(indices, adversarial):
            results[i] = image
        progress.add(len(indices))
    return np.stack(results) if as_array else results


def iterate(init, step, steps):
    """A compiled `attack_batch(x0, seed)`: `state = init(x0, seed)`, then `steps` updates.

    `state` is a tuple of tensors whose first item is the current adversarial
    batch; `step(x0, state, i, seed) -> state` is one update. The loop runs as a
    `tf.while_loop` in one graph, so a batch costs one Python call.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"Argument `steps` must be a positive integer, got {steps!r}.")

    @tf.function
    def attack_batch(x0, seed):
        state = init(x0, seed)
        for i in tf.range(steps):
            state = step(x0, state, i, seed)
        return state[0]

    return attack_batch


def compiled(model, settings, build):
    """`build()` (a compiled attack function) made once per `model` and hashable `settings`.

    A second call with the same settings (another split, a benchmark's timed
    call) does not trace again. The cache lives in the model's `__dict__`,
    out of Keras' attribute tracking (so never saved), and dies with the model.
    """
    cache = model.__dict__.setdefault("_keras_robust_iqa_attacks", {})
    if settings not in cache:
        cache[settings] = build()
    return cache[settings]


def project_linf(x, x0, eps):
    """Back into the L-inf ball of radius `eps` around `x0` and into [0, 1]."""
    return tf.clip_by_value(tf.clip_by_value(x, x0 - eps, x0 + eps), 0.0, 1.0)


def per_image_norm(x, ord):
    """L1 or L2 norm of each image of a batch, shaped `(B, 1, 1, 1)` to broadcast."""
    axes = list(range(1, len(x.shape)))
    if ord == 1:
        return tf.reduce_sum(tf.abs(x), axis=axes, keepdims=True)
    return tf.sqrt(tf.reduce_sum(tf.square(x), axis=axes, keepdims=True))


def check_budget(eps, name="eps"):
    if not isinstance(eps, numbers.Real) or not 0 < eps < float("inf"):
        raise ValueError(f"Argument `{name}` must be a positive finite budget in [0, 1] pixel units, got {eps!r}.")
    return float(eps)


def train_perturbation(model, images, perturb, update, *, epochs=40, patience=3, min_delta=1e-4, seconds=None,
                       batch_size=8, seed=0, verbose=1):
    """Learn an attack's parameters (a universal perturbation, a generator) on training images.

    Each step ascends the mean score of `perturb(x)` over a batch: `update`
    receives the gradients of `-mean score` (the loss) and applies them to the
    attack's own variables. The model's weights are read, never trained.
    Learning stops when the objective stops rising: after `patience` epochs
    whose mean attacked score is not `min_delta` above the best epoch's, after
    `epochs` epochs, or after the first epoch that ends past `seconds`.

    Args:
        perturb: a function `x -> x_adv` built on the attack's variables.
        update: a function `(loss, tape) -> None` applying one step.
        epochs: the most passes over `images`, shuffled each time (seeded by `seed`).
        patience: epochs without improvement before stopping; None runs every epoch.
        min_delta: the rise in the epoch's mean attacked score that counts as one.
        seconds: a wall-clock budget (None: no limit).

    Returns:
        The mean attacked score of each epoch run, a list.
    """
    for value, name in ((epochs, "epochs"), (batch_size, "batch_size")) + (((patience, "patience"),)
                                                                           if patience is not None else ()):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"Argument `{name}` must be a positive integer, got {value!r}.")
    if seconds is not None and not (isinstance(seconds, numbers.Real) and seconds > 0):
        raise ValueError(f"Argument `seconds` must be a positive number of seconds or None, got {seconds!r}.")
    score = image_score_fn(model)
    images = check_images(images, "train_images")

    @tf.function
    def train_step(x):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(score(perturb(x)))
        update(loss, tape)
        return -loss

    order = np.random.default_rng(seed)
    progress = keras.utils.Progbar(epochs * len(images), verbose=verbose, unit_name="image")
    start = time.perf_counter()
    history, best, stale = [], -float("inf"), 0
    for _ in range(epochs):
        shuffled = [images[i] for i in order.permutation(len(images))]
        total = 0.0
        for indices, batch in batches_by_shape(shuffled, batch_size):
            mean_score = float(train_step(tf.constant(batch)))
            total += mean_score * len(indices)
            progress.add(len(indices), [("attacked score", mean_score)])
        history.append(total / len(images))
        stale = 0 if history[-1] > best + min_delta else stale + 1
        best = max(best, history[-1])
        if (patience is not None and stale >= patience) or (
                seconds is not None and time.perf_counter() - start > seconds):
            break
    if verbose and len(history) < epochs:
        print(f"stopped after {len(history)} of {epochs} epochs (mean attacked score {history[-1]:.4g})")
    return history
