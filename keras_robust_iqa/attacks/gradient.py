"""White-box gradient attacks that raise the predicted quality.

Budgets are in [0, 1] pixel units; defaults follow the MSU metrics robustness
benchmark (Antsiferova et al., AAAI 2024; the settings are in docs/attacks.md). The benchmark
minimises `1 - f(x') / range`; every update here is invariant to the positive
factor `1 / range` (signed steps, normalised steps, Adam), so the attacks ascend
`f` directly.
"""

import tensorflow as tf

from keras_robust_iqa.attacks.loop import (
    check_budget,
    compiled,
    image_score_fn,
    iterate,
    per_image_norm,
    project_linf,
    run_batches,
    score_and_gradient,
)


def _signed_steps(model, images, *, eps, steps, step_size, momentum=0.0, random_start=False, mask=None,
                  seed=0, batch_size=8, verbose=1):
    """Signed gradient ascent projected on the L-inf ball: FGSM, I-FGSM, MI-FGSM, AMI-FGSM."""
    eps = check_budget(eps)
    step_size = check_budget(step_size, "step_size")
    if not 0 <= momentum < float("inf"):
        raise ValueError(f"Argument `momentum` must be a finite number >= 0, got {momentum!r}.")
    score = image_score_fn(model)

    def init(x0, seed):
        x = x0
        if random_start:
            x = project_linf(x0 + tf.random.stateless_uniform(tf.shape(x0), seed, -eps, eps), x0, eps)
        return x, tf.zeros_like(x0)

    def step(x0, state, i, seed):
        x, velocity = state
        _, gradient = score_and_gradient(score, x)
        if momentum:
            # Dong et al. (2018): accumulate L1-normalised gradients.
            velocity = momentum * velocity + gradient / (per_image_norm(gradient, 1) + 1e-12)
            gradient = velocity
        return project_linf(x + step_size * tf.sign(gradient), x0, eps), velocity

    settings = ("signed", eps, steps, step_size, momentum, random_start)
    attack_batch = compiled(model, settings, lambda: iterate(init, step, steps))
    return run_batches(images, attack_batch, batch_size=batch_size, seed=seed, verbose=verbose)


def fgsm(model, images, eps=10 / 255, *, batch_size=8, verbose=1):
    """FGSM (Goodfellow et al., 2015): one signed gradient step of size `eps`.

    Args:
        model: a Keras model scoring fixed-size patches; images of any size (at
            least one patch) are scored by averaging the centred patch grid.
        images: an array `(N, H, W, 3)` or a list of `(H, W, 3)` arrays in [0, 1].
        eps: L-inf budget in [0, 1] pixel units.
        batch_size: images per compiled call.
        verbose: 0 silent, 1 a progress bar.

    Returns:
        The adversarial images, in the form of `images`, in [0, 1].
    """
    return _signed_steps(model, images, eps=eps, steps=1, step_size=eps, batch_size=batch_size, verbose=verbose)


def ifgsm(model, images, eps=10 / 255, *, steps=10, step_size=1 / 255, random_start=False, seed=0,
          batch_size=8, verbose=1):
    """I-FGSM / PGD-Linf (Kurakin et al., 2017; Madry et al., 2018).

    `steps` signed steps of `step_size`, each projected on the L-inf ball of
    radius `eps` and on [0, 1]; with `random_start`, from a uniform point of the
    ball (seeded by `seed`). Other arguments as in `fgsm`.
    """
    return _signed_steps(model, images, eps=eps, steps=steps, step_size=step_size, random_start=random_start,
                         seed=seed, batch_size=batch_size, verbose=verbose)


def mifgsm(model, images, eps=10 / 255, *, steps=10, step_size=1 / 255, momentum=1.0, batch_size=8, verbose=1):
    """MI-FGSM (Dong et al., 2018): I-FGSM on the momentum of L1-normalised gradients."""
    return _signed_steps(model, images, eps=eps, steps=steps, step_size=step_size, momentum=momentum,
                         batch_size=batch_size, verbose=verbose)


def amifgsm(model, images, eps=10 / 255, *, steps=10, step_size=None, momentum=1.0, batch_size=8, verbose=1):
    """AMI-FGSM: MI-FGSM with the step `eps / steps` (the benchmark's setting) unless given."""
    step_size = check_budget(eps) / steps if step_size is None else step_size
    return _signed_steps(model, images, eps=eps, steps=steps, step_size=step_size, momentum=momentum,
                         batch_size=batch_size, verbose=verbose)


def pgd_l2(model, images, eps=1.0, *, steps=10, step_size=None, batch_size=8, verbose=1):
    """PGD in L2 (Madry et al., 2018): normalised gradient steps projected on the L2 ball.

    Args:
        eps: L2 radius of the perturbation of each whole image, in [0, 1] pixel
            units (an L-inf budget `e` on an `H x W x 3` image spans at most
            `e * sqrt(3 H W)` in L2).
        step_size: L2 length of each step; default `2.5 * eps / steps`, so the
            boundary is reached with room to move along it.
    """
    eps = check_budget(eps)
    step_size = check_budget(2.5 * eps / steps if step_size is None else step_size, "step_size")
    score = image_score_fn(model)

    def init(x0, seed):
        return (x0,)

    def step(x0, state, i, seed):
        (x,) = state
        _, gradient = score_and_gradient(score, x)
        x = x + step_size * gradient / (per_image_norm(gradient, 2) + 1e-12)
        delta = x - x0
        delta *= tf.minimum(1.0, eps / (per_image_norm(delta, 2) + 1e-12))
        return (tf.clip_by_value(x0 + delta, 0.0, 1.0),)

    attack_batch = compiled(model, ("pgd_l2", eps, steps, step_size), lambda: iterate(init, step, steps))
    return run_batches(images, attack_batch, batch_size=batch_size, verbose=verbose)


def sobel_mask(images, threshold=0.1):
    """Korhonen et al.'s mask: luma Sobel edges above `threshold` of the image's strongest, dilated 3x3.

    Binary, since Adam scales each pixel's step to the same size whatever the
    mask's value there (a soft mask would let round-off in flat areas through).
    """
    luma = tf.image.rgb_to_grayscale(images) if images.shape[-1] == 3 else tf.reduce_mean(images, -1, keepdims=True)
    edges = tf.image.sobel_edges(luma)  # (B, H, W, 1, 2): d/dy, d/dx
    magnitude = tf.sqrt(tf.reduce_sum(tf.square(edges), axis=-1))
    strongest = tf.reduce_max(magnitude, axis=(1, 2, 3), keepdims=True)
    edge_map = tf.cast((magnitude >= threshold * strongest) & (magnitude > 0), images.dtype)
    return tf.nn.max_pool2d(edge_map, 3, 1, "SAME")


def korhonen(model, images, eps=10 / 255, *, steps=10, learning_rate=0.005, batch_size=8, verbose=1):
    """Korhonen & You (2022): Adam on the image, its gradient masked by a dilated Sobel edge map.

    Perturbations go where edges and texture hide them. The benchmark's
    setting: Adam, learning rate 0.005, 10 iterations. Each step is projected
    on the L-inf ball of radius `eps` and on [0, 1], so the budget is the same
    as the other L-inf attacks'.
    """
    eps = check_budget(eps)
    learning_rate = check_budget(learning_rate, "learning_rate")
    score = image_score_fn(model)
    beta1, beta2 = 0.9, 0.999

    def init(x0, seed):
        zeros = tf.zeros_like(x0)
        return x0, zeros, zeros, sobel_mask(x0)

    def step(x0, state, i, seed):
        x, m, v, mask = state
        _, gradient = score_and_gradient(score, x)
        gradient *= mask
        m = beta1 * m + (1 - beta1) * gradient
        v = beta2 * v + (1 - beta2) * tf.square(gradient)
        t = tf.cast(i + 1, tf.float32)
        update = (m / (1 - beta1**t)) / (tf.sqrt(v / (1 - beta2**t)) + 1e-8)
        return project_linf(x + learning_rate * update, x0, eps), m, v, mask

    attack_batch = compiled(model, ("korhonen", eps, steps, learning_rate), lambda: iterate(init, step, steps))
    return run_batches(images, attack_batch, batch_size=batch_size, verbose=verbose)
