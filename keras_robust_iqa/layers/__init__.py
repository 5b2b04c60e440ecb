"""The RobustBlock family: orthogonal, 1-Lipschitz and norm-preserving Keras 3 layers.

Each states the layer contract (`layers.contract`); Keras's own layers get theirs from
`layers.keras_rules`. A new layer: docs/layers.md.
"""

from keras_robust_iqa.layers.aol_conv2d import AOLConv2D
from keras_robust_iqa.layers.block_ortho_conv2d import BlockOrthoConv2D
from keras_robust_iqa.layers.channel_gain import ChannelGain
from keras_robust_iqa.layers.convex_combination import ConvexCombination
from keras_robust_iqa.layers.global_l2_norm_pooling2d import GlobalL2NormPooling2D
from keras_robust_iqa.layers.group_sort import GroupSort
from keras_robust_iqa.layers.invertible_downsampling import InvertibleDownsampling
from keras_robust_iqa.layers.l2_norm_pooling2d import L2NormPooling2D
from keras_robust_iqa.layers.max_min import MaxMin
from keras_robust_iqa.layers.ortho_conv2d import OrthoConv2D
from keras_robust_iqa.layers.ortho_dense import OrthoDense
from keras_robust_iqa.layers.output_scale import OutputScale
from keras_robust_iqa.layers.robust_block import RobustBlock
from keras_robust_iqa.layers.sll_conv2d import SLLConv2D

__all__ = [
    "AOLConv2D",
    "BlockOrthoConv2D",
    "ChannelGain",
    "ConvexCombination",
    "GlobalL2NormPooling2D",
    "GroupSort",
    "InvertibleDownsampling",
    "L2NormPooling2D",
    "MaxMin",
    "OrthoConv2D",
    "OrthoDense",
    "OutputScale",
    "RobustBlock",
    "SLLConv2D",
]
