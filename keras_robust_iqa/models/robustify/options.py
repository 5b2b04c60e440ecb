"""The choices `robustify` takes, and the constants its rules use."""

from keras_robust_iqa.layers import robust_block

MODES = ("insert", "replace")
# The 1-Lipschitz activations `mode="replace"` can put in place of the original ones.
ACTIVATIONS = ("groupsort", "relu")
# What `mode="replace"` puts in place of local pooling: L2-norm pooling, or a space-to-depth
# rearrangement that keeps every value (the next layer sees s*s times the channels).
POOLINGS = ("l2norm", "invertible")
# The 1-Lipschitz convolutions: "fourier" (OrthoConv2D, the paper's), "block" (BlockOrthoConv2D),
# "aol" (AOLConv2D) or, for replace only, "sll" (SLLConv2D where a convolution keeps its channels).
CONVOLUTIONS = (*robust_block.CONVOLUTIONS, "sll")
# `replace` puts a grouped BlockOrthoConv2D in place of a DepthwiseConv2D: a single-channel
# orthogonal filter with a compact kernel can only be a shift, so each group mixes at least
# this many channels (the smallest divisor of the channel count that is not smaller).
DEPTHWISE_GROUP_WIDTH = 8

# Output activations `replace` keeps (their L2 Lipschitz constants are in `lipschitz.py`):
# the score stays in their range, and `OutputScale` moves in front of them.
SQUASHING = ("sigmoid", "tanh")
