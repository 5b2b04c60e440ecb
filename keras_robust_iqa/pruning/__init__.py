"""Mean-weight channel pruning: criterion, schedules, masking callback, channel surgery."""

from keras_robust_iqa.pruning.channel_mask import ChannelMask
from keras_robust_iqa.pruning.criterion import channel_scores, effective_kernel
from keras_robust_iqa.pruning.graph import ChannelGraph
from keras_robust_iqa.pruning.surgery import masked_model, prune_model, set_masks

__all__ = [
    "ChannelGraph",
    "ChannelMask",
    "channel_scores",
    "effective_kernel",
    "masked_model",
    "prune_model",
    "set_masks",
]
