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
"""

import math

import numpy as np

from keras_robust_iqa.models.lipschitz import lipschitz_bound
from keras_robust_iqa.models.patches import model_patch_size, patches_per_image

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
    bounds = []
    for shape in image_shapes:
        height, width = int(shape[0]), int(shape[1])
        lipschitz = lipschitz_bound(model, image_shape=(height, width))
        if norm == "linf":
            radius = eps * math.sqrt(patches_per_image(height, width, patch) * patch * patch * channels)
        else:
            radius = eps
        bounds.append(lipschitz * radius)
    return np.asarray(bounds, "float64")


def certified_bounds_or_none(model, image_shapes, eps, norm="linf"):
    """`certified_bounds`, or None for a model with no certified Lipschitz constant."""
    try:
        return certified_bounds(model, image_shapes, eps, norm)
    except ValueError as error:
        if "lipschitz_bound cannot" in str(error):
            return None
        raise
