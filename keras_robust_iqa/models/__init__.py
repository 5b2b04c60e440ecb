"""Base NR-IQA models, `robustify`, certified Lipschitz bounds and patch scoring."""

from keras_robust_iqa.models.backbones import BACKBONES, backbone_iqa_model
from keras_robust_iqa.models.lipschitz import lipschitz_bound
from keras_robust_iqa.models.patches import patch_grid, score_images
from keras_robust_iqa.models.robustify import ACTIVATIONS as ROBUST_ACTIVATIONS
from keras_robust_iqa.models.robustify import CONVOLUTIONS as ROBUST_CONVOLUTIONS
from keras_robust_iqa.models.robustify import MODES as ROBUST_MODES
from keras_robust_iqa.models.robustify import POOLINGS as ROBUST_POOLINGS
from keras_robust_iqa.models.robustify import insertion_points, robustify, stage_ends
from keras_robust_iqa.models.small_cnn import small_iqa_cnn

MODEL_NAMES = ("small", *BACKBONES)


def build_model(name, patch_size=64, weights=None):
    """A base IQA model by name: `small`, `resnet50`, `mobilenetv3`, `efficientnetv2b0`."""
    if name == "small":
        if weights is not None:
            raise ValueError("Argument `weights`: the small model has no pretrained weights.")
        return small_iqa_cnn(patch_size)
    if name in BACKBONES:
        return backbone_iqa_model(name, patch_size, weights=weights)
    raise ValueError(f"Argument `model` must be one of {MODEL_NAMES}, got {name!r}.")


__all__ = [
    "MODEL_NAMES",
    "ROBUST_ACTIVATIONS",
    "ROBUST_CONVOLUTIONS",
    "ROBUST_MODES",
    "ROBUST_POOLINGS",
    "backbone_iqa_model",
    "build_model",
    "insertion_points",
    "lipschitz_bound",
    "patch_grid",
    "robustify",
    "score_images",
    "small_iqa_cnn",
    "stage_ends",
]
