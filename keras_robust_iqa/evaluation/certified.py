"""Certified bounds on how far any attack within a budget can raise a 1-Lipschitz model's score.

`lipschitz_bound(model, image_shape=(H, W))` is the model's L2 Lipschitz constant on
whole images scored by patch averaging: the per-patch constant `L` divided by
`sqrt(K)` for the `K` disjoint patches of the centred grid. Only the grid's pixels
reach the model, so a perturbation's L2 size counts there:
- an L-inf budget `eps` gives at most `eps * sqrt(K * p * p * C)` in L2 over the grid
  (`p` the patch side, `C` channels), so the score moves by at most
  `L / sqrt(K) * eps * sqrt(K p^2 C) = L * eps * p * sqrt(C)`, whatever the image size;
- an L2 budget `eps` moves it by at most `L * eps / sqrt(K)`.
The bound is in the model's output units (the normalised MOS scale).
`certified_interval` scores images and puts each score's interval around it.
"""

import math
from typing import NamedTuple

import numpy as np

from keras_robust_iqa.models.lipschitz import lipschitz_bound
from keras_robust_iqa.models.patches import model_patch_size, patches_per_image, score_images

NORMS = ("linf", "l2")


def certified_bounds(model, image_shapes, eps, norm="linf"):
    """Per image, the largest score change any perturbation within the budget can cause.

    Args:
        model: a model `lipschitz_bound` certifies (e.g. made with
            `robustify(..., mode="replace")`).
        image_shapes: `(H, W, ...)` of each image.
        eps: the budget in [0, 1] pixel units.
        norm: `"linf"` or `"l2"`.

    Returns:
        A float64 array, one bound per image, in the model's output units.

    Raises:
        ValueError: when the model cannot be certified (naming the layer), or
            for an unknown norm.
    """
    if norm not in NORMS:
        raise ValueError(f"Argument `norm` must be one of {NORMS}, got {norm!r}.")
    patch = model_patch_size(model)
    channels = model.inputs[0].shape[-1]
    per_patch = lipschitz_bound(model)  # the graph is walked once, not once per image
    bounds = []
    for shape in image_shapes:
        height, width = int(shape[0]), int(shape[1])
        patches = patches_per_image(height, width, patch)
        if patches == 0:
            raise ValueError(f"Image of size {height}x{width} is smaller than the patch size {patch}.")
        # lipschitz_bound(model, (height, width)): the per-patch constant over sqrt(K).
        lipschitz = per_patch / math.sqrt(patches)
        if norm == "linf":
            radius = eps * math.sqrt(patches * patch * patch * channels)
        else:
            radius = eps
        bounds.append(lipschitz * radius)
    return np.asarray(bounds, "float64")


class CertifiedInterval(NamedTuple):
    """Per image: the score, and the interval no perturbation within the budget can leave."""

    score: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    bound: np.ndarray


def certified_interval(model, images, eps, norm="linf", *, mos_range=None, batch_size=64):
    """Each image's score and its certified interval `[score - b, score + b]` for the budget.

    `b` is `certified_bounds`: no perturbation `delta` with `||delta|| <= eps` (in the
    given norm, in [0, 1] pixel units) can move the image's patch-averaged score
    (`score_images`) outside the interval.

    Args:
        model: a model `lipschitz_bound` certifies (e.g. made with
            `robustify(..., mode="replace")`), scoring `(patch, patch, 3)` patches.
        images: an array `(N, H, W, 3)` or a list of `(H_i, W_i, 3)` arrays in
            [0, 1], each at least one patch large.
        eps: the budget: an L-inf radius such as `4/255`, or an L2 radius over the
            whole image.
        norm: `"linf"` or `"l2"`.
        mos_range: `(lo, hi)` of the dataset's MOS scale: the model's normalised
            outputs `s` are reported as `lo + (hi - lo) * s` and the bounds are
            scaled by `hi - lo`. Default: the model's own output units.
        batch_size: patches per forward pass.

    Returns:
        A `CertifiedInterval` of float64 arrays `(N,)`: `score`, `lower`, `upper`, `bound`.

    Raises:
        ValueError: when the model cannot be certified (naming the layer), for an
            unknown norm, a negative budget or an image smaller than a patch.
    """
    if not (isinstance(eps, (int, float, np.floating, np.integer)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"Argument `eps` must be a finite number >= 0, got {eps!r}.")
    images = [np.asarray(image) for image in images]
    bounds = certified_bounds(model, [image.shape for image in images], eps, norm)
    scores = score_images(model, images, batch_size=batch_size)
    if mos_range is not None:
        lo, hi = (float(value) for value in mos_range)
        if not hi > lo:
            raise ValueError(f"Argument `mos_range` must be (lo, hi) with lo < hi, got {mos_range!r}.")
        scores, bounds = lo + (hi - lo) * scores, (hi - lo) * bounds
    return CertifiedInterval(scores, scores - bounds, scores + bounds, bounds)


def certified_bounds_or_none(model, image_shapes, eps, norm="linf"):
    """`certified_bounds`, or None for a model with no certified Lipschitz constant."""
    try:
        return certified_bounds(model, image_shapes, eps, norm)
    except ValueError as error:
        if "lipschitz_bound cannot" in str(error):
            return None
        raise
