"""Channel pruning: criteria (mean weight, activation energy), schedules, masking callback, channel surgery."""

from keras_robust_iqa.pruning.callback import ChannelPruning
from keras_robust_iqa.pruning.channel_mask import ChannelMask
from keras_robust_iqa.pruning.cost import count_flops, inference_latency
from keras_robust_iqa.pruning.criterion import CRITERIA, activation_energy, channel_scores, effective_kernel
from keras_robust_iqa.pruning.graph import ChannelGraph
from keras_robust_iqa.pruning.pipeline import prune_run
from keras_robust_iqa.pruning.schedule import ThresholdDecay, gradual_schedule
from keras_robust_iqa.pruning.surgery import masked_model, prune, prune_model, set_masks

__all__ = [
    "CRITERIA",
    "ChannelGraph",
    "ChannelMask",
    "ChannelPruning",
    "ThresholdDecay",
    "activation_energy",
    "channel_scores",
    "count_flops",
    "effective_kernel",
    "gradual_schedule",
    "inference_latency",
    "masked_model",
    "prune",
    "prune_model",
    "prune_run",
    "set_masks",
]
