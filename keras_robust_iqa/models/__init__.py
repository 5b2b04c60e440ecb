"""Base NR-IQA models, `robustify`, certified Lipschitz bounds, patch scoring and presets."""

from keras_robust_iqa.models.activations import SMOOTH_ACTIVATIONS, swap_activations
from keras_robust_iqa.models.backbones import BACKBONES, backbone_iqa_model
from keras_robust_iqa.models.lipschitz import lipschitz_bound
from keras_robust_iqa.models.patches import patch_grid, score_images
from keras_robust_iqa.models.presets import from_preset, list_presets, load_preset, save_to_preset
from keras_robust_iqa.models.robustify import ACTIVATIONS as ROBUST_ACTIVATIONS
from keras_robust_iqa.models.robustify import CONVOLUTIONS as ROBUST_CONVOLUTIONS
from keras_robust_iqa.models.robustify import MODES as ROBUST_MODES
from keras_robust_iqa.models.robustify import POOLINGS as ROBUST_POOLINGS
from keras_robust_iqa.models.robustify import insertion_points, robustify, stage_ends
from keras_robust_iqa.models.sll_net import sll_iqa_net
from keras_robust_iqa.models.small_cnn import small_iqa_cnn

# "sll": a network 1-Lipschitz by construction (`sll_iqa_net`); the others are base models.
MODEL_NAMES = ("small", "sll", *BACKBONES)


SMALL_WIDTHS = (16, 32, 64, 64)
SMALL_HEAD_UNITS = 64
SLL_WIDTHS = (16, 32, 64)
SLL_HEAD_UNITS = 32


def build_model(name, patch_size=64, weights=None, width=1.0):
    """An IQA model by name: `small`, `sll`, `resnet50`, `mobilenetv3`, `efficientnetv2b0`.

    `sll` is `sll_iqa_net`, 1-Lipschitz by construction (certified as it is, no `robustify`).
    `width` multiplies the channels and head units of `small` and `sll` (a capacity lever: a
    1-Lipschitz network cannot rescale its activations, so it may need more channels);
    the backbones keep their published widths and accept only 1.
    """
    if not (isinstance(width, (int, float)) and width > 0):
        raise ValueError(f"Argument `width` must be a positive multiplier, got {width!r}.")
    if name in ("small", "sll"):
        if weights is not None:
            raise ValueError(f"Argument `weights`: the {name} model has no pretrained weights.")
        widths, head_units = (SMALL_WIDTHS, SMALL_HEAD_UNITS) if name == "small" else (SLL_WIDTHS, SLL_HEAD_UNITS)
        # Even channel counts: GroupSort pairs channels.
        widths = tuple(max(2, 2 * round(w * width / 2)) for w in widths)
        head_units = max(2, 2 * round(head_units * width / 2))
        builder = small_iqa_cnn if name == "small" else sll_iqa_net
        return builder(patch_size, widths=widths, head_units=head_units)
    if width != 1:
        raise ValueError(f"Argument `width`={width!r}: only the small and sll models have a width multiplier; "
                         f"{name} keeps its published widths (use 1).")
    if name in BACKBONES:
        return backbone_iqa_model(name, patch_size, weights=weights)
    raise ValueError(f"Argument `model` must be one of {MODEL_NAMES}, got {name!r}.")


__all__ = [
    "MODEL_NAMES",
    "ROBUST_ACTIVATIONS",
    "ROBUST_CONVOLUTIONS",
    "ROBUST_MODES",
    "ROBUST_POOLINGS",
    "SMOOTH_ACTIVATIONS",
    "backbone_iqa_model",
    "build_model",
    "from_preset",
    "insertion_points",
    "lipschitz_bound",
    "list_presets",
    "load_preset",
    "patch_grid",
    "robustify",
    "save_to_preset",
    "score_images",
    "sll_iqa_net",
    "small_iqa_cnn",
    "stage_ends",
    "swap_activations",
]
