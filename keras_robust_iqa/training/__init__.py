"""Training utilities: correlation statistics, epoch-level metrics, IQA losses, distillation."""

from keras_robust_iqa.training.calibration import OUTPUT_SCALES, calibrate_to_mos, fit_output_scale
from keras_robust_iqa.training.correlation import (
    correlations,
    correlations_by_distortion,
    fit_logistic4,
    krcc,
    logistic4,
    plcc,
    srocc,
)
from keras_robust_iqa.training.distillation import distillation_targets, load_teacher
from keras_robust_iqa.training.losses import (
    MeanAbsoluteError,
    MeanSquaredError,
    PairwiseRankLoss,
    PLCCLoss,
)
from keras_robust_iqa.training.metrics import KRCC, PLCC, SROCC

__all__ = [
    # correlation (NumPy/SciPy reference statistics)
    "srocc",
    "plcc",
    "krcc",
    "correlations",
    "correlations_by_distortion",
    "logistic4",
    "fit_logistic4",
    # Keras metrics
    "SROCC",
    "PLCC",
    "KRCC",
    # Keras losses
    "MeanSquaredError",
    "MeanAbsoluteError",
    "PLCCLoss",
    "PairwiseRankLoss",
    # back to the MOS scale after a correlation loss
    "calibrate_to_mos",
    # the OutputScale of a 1-Lipschitz model set from the labels (TrainConfig.output_scale)
    "OUTPUT_SCALES",
    "fit_output_scale",
    # a trained run's patch scores mixed into the training targets
    "distillation_targets",
    "load_teacher",
]
