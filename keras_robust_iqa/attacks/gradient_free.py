"""A gradient-free attack, to check that a model's robustness is not gradient masking."""

import tensorflow as tf

from keras_robust_iqa.attacks.loop import check_budget, compiled, image_score_fn, iterate, project_linf, run_batches

# Andriushchenko et al.'s schedule: the square's area halves when the iteration,
# rescaled to 10,000, passes each of these.
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square(model, images, eps=10 / 255, *, steps=100, p_init=0.05, seed=0, batch_size=8, verbose=1):
    """Square attack, L-inf (Andriushchenko et al., ECCV 2020): random search, scores only.

    Starts from vertical stripes of `+-eps` where they raise the score (else
    from the image); each step proposes, per image, one random square window
    set to `x0 +- eps` (one sign per channel) and keeps it where the score rises. The
    window covers a fraction `p` of the image,
    `p_init` halved on the paper's schedule. Every proposal stays in the L-inf
    ball of radius `eps` and in [0, 1].

    Args:
        steps: queries per image after the first (one forward pass each).
        p_init: starting fraction of the image the square covers.
        seed: seeds the stripes, windows and signs.
        Other arguments as in `fgsm`.
    """
    eps = check_budget(eps)
    if not 0 < p_init <= 1:
        raise ValueError(f"Argument `p_init` must be in (0, 1], got {p_init!r}.")
    score = image_score_fn(model)

    def init(x0, seed):
        shape = tf.shape(x0)
        stripes = tf.sign(tf.random.stateless_uniform((shape[0], 1, shape[2], shape[3]), seed, -1.0, 1.0))
        x = project_linf(x0 + eps * stripes, x0, eps)
        # Noise stripes tend to lower a quality score: keep them only where they raise it.
        clean, striped = score(x0), score(x)
        return tf.where((striped > clean)[:, None, None, None], x, x0), tf.maximum(striped, clean)

    def step(x0, state, i, seed):
        x, best = state
        shape = tf.shape(x0)
        height, width = shape[1], shape[2]
        rescaled = i * 10000 // steps
        halvings = tf.reduce_sum(tf.cast(rescaled > tf.constant(_HALVINGS), tf.float32))
        p = p_init / 2.0**halvings
        area = tf.cast(height * width, tf.float32)
        side = tf.cast(tf.round(tf.sqrt(p * area)), tf.int32)
        side = tf.clip_by_value(side, 1, tf.minimum(height, width))
        seeds = tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(seed, i), 3)
        top = tf.random.stateless_uniform((shape[0], 1, 1, 1), seeds[0], 0, height - side + 1, tf.int32)
        left = tf.random.stateless_uniform((shape[0], 1, 1, 1), seeds[1], 0, width - side + 1, tf.int32)
        signs = tf.sign(tf.random.stateless_uniform((shape[0], 1, 1, shape[3]), seeds[2], -1.0, 1.0))
        rows = tf.range(height)[None, :, None, None]
        cols = tf.range(width)[None, None, :, None]
        window = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
        proposal = tf.where(window, project_linf(x0 + eps * signs, x0, eps), x)
        proposed = score(proposal)
        better = proposed > best
        return tf.where(better[:, None, None, None], proposal, x), tf.maximum(proposed, best)

    attack_batch = compiled(model, ("square", eps, steps, p_init), lambda: iterate(init, step, steps))
    return run_batches(images, attack_batch, batch_size=batch_size, seed=seed, verbose=verbose)
