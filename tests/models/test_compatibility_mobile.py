"""Compatibility matrix, keras.applications MobileNetV3Small and EfficientNetV2B0: depthwise
convolutions, squeeze-excite gates, hard-swish and swish, stochastic-depth Dropout."""

import keras
import pytest
from compat_applications import APPLICATIONS
from compat_matrix import cells, check_forward, matrix_tests, patches

from keras_robust_iqa import layers as robust_layers
from keras_robust_iqa.models.graph import flat_layers

NAMES = ("mobilenetv3small", "efficientnetv2b0")
MODELS = {name: APPLICATIONS[name] for name in NAMES}
# The cells the suite runs (all with FULL_MATRIX=1): forward passes, bounds and pruning of both;
# MobileNetV3Small's insert fit step and export (its squeeze-excite gates in keras.ops, its
# depthwise convolutions, hard-swish, and RobustBlocks; the grouped convolutions of the replace
# models are exported by the user models' depthwise one). The other fit steps and exports took
# 20 to 90 s each (docs/models.md has the full matrix as measured).
REDUCED = {c for c in cells(MODELS) if c[2] in ("forward", "bound", "prune")}
REDUCED |= {("mobilenetv3small", "insert", "fit"), ("mobilenetv3small", "insert", "export")}


matrix, test_cell = matrix_tests(MODELS, REDUCED)


@pytest.mark.parametrize("name", NAMES)
def test_replace_stands_in_for_squeeze_excite_gates_and_drops_their_branch(matrix, name):
    base = flat_layers(matrix.base(name))
    model = flat_layers(matrix.get(name, "replace"))
    gates = [layer for layer in base if isinstance(layer, keras.layers.Multiply)]
    gains = [layer for layer in model if isinstance(layer, robust_layers.ChannelGain)]
    assert gates and sorted(g.name for g in gains) == sorted(f"{g.name}_gain" for g in gates)
    # Nothing of the gate branches is left: no 1x1 pooling, no sigmoid, no keras.ops arithmetic.
    assert not [layer for layer in model if ("squeeze_excite" in layer.name or "_se_" in layer.name)
                and not isinstance(layer, robust_layers.ChannelGain)]
    assert not [layer for layer in model if isinstance(layer, keras.layers.Activation)]
    assert not [layer for layer in model if isinstance(layer, keras.layers.DepthwiseConv2D)]


def test_replace_turns_strided_depthwise_convolutions_on_odd_maps_into_cropped_block_convolutions(matrix):
    model = matrix.get("mobilenetv3small", "replace")
    depthwise = [layer for layer in flat_layers(model) if isinstance(layer, robust_layers.BlockOrthoConv2D)
                 and layer.groups > 1]
    assert depthwise and all(layer.input_channels // layer.groups >= 8 for layer in depthwise)
    strided = [layer for layer in depthwise if layer.strides == (2, 2)]
    assert strided  # the 17x17 map of the first block, padded by the model itself, then cropped to 8x8
    check_forward(model, patches())
