"""Adversarial attacks that raise a no-reference IQA model's predicted quality.

One API: `attack(model, images, eps, **settings) -> adversarial images`, with
images in [0, 1] (an array `(N, H, W, 3)` or a list of arrays of any size, at
least one patch), budgets in [0, 1] pixel units and the MSU benchmark's defaults.
All run in one shared loop (`loop.py`): batched, compiled with `tf.function`,
with a progress bar, leaving the model's weights and the caller's arrays alone.
"""

from keras_robust_iqa.attacks.facpa import FACPA_MSU_SETTINGS, facpa, train_facpa
from keras_robust_iqa.attacks.generators import unet_generator
from keras_robust_iqa.attacks.gradient import amifgsm, fgsm, ifgsm, korhonen, mifgsm, pgd_l2, sobel_mask
from keras_robust_iqa.attacks.gradient_free import square
from keras_robust_iqa.attacks.loop import image_score_fn
from keras_robust_iqa.attacks.transfer import CRAFTING_ATTACKS, transfer
from keras_robust_iqa.attacks.universal import (
    UAP_MSU_SETTINGS,
    UAP_VARIANTS,
    cumulative_uap,
    generative_uap,
    train_uap,
    uap,
)

# Every attack by name; all but pgd_l2 take an L-inf budget.
ATTACKS = {**CRAFTING_ATTACKS, "transfer": transfer}
L2_ATTACKS = ("pgd_l2",)

__all__ = [
    "ATTACKS", "FACPA_MSU_SETTINGS", "L2_ATTACKS", "UAP_MSU_SETTINGS", "UAP_VARIANTS", "amifgsm", "cumulative_uap",
    "facpa", "fgsm", "generative_uap", "ifgsm", "image_score_fn", "korhonen", "mifgsm", "pgd_l2", "sobel_mask",
    "square", "train_facpa", "train_uap", "transfer", "uap", "unet_generator",
]
