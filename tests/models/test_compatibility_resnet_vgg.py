"""Compatibility matrix, keras.applications ResNet50 and VGG16: the input's ZeroPadding2D and
7x7 stride-2 stem, max pooling, bottleneck residual stages (ResNet50); plain conv stages and
max pooling (VGG16, the paper's DBCNN backbone)."""

from compat_applications import APPLICATIONS
from compat_matrix import cells, matrix_tests

from keras_robust_iqa import layers as robust_layers
from keras_robust_iqa.models.graph import flat_layers
from keras_robust_iqa.models.robustify import insertion_points

NAMES = ("resnet50", "vgg16")
MODELS = {name: APPLICATIONS[name] for name in NAMES}
# The cells the suite runs (all with FULL_MATRIX=1): forward passes, bounds and pruning of both,
# VGG16's fit steps. ResNet50's fit steps and exports (23M parameters, and 17M more in the
# inserted blocks) took 20 s to 2.5 min each, VGG16's exports 20 s each; the layer types they
# export are exported in the suite by the other models (docs/models.md has the full matrix as
# measured).
REDUCED = {c for c in cells(MODELS) if c[2] in ("forward", "bound", "prune") or (c[0], c[2]) == ("vgg16", "fit")}


matrix, test_cell = matrix_tests(MODELS, REDUCED)


def test_insert_points_are_the_stage_ends_after_each_downsampling(matrix):
    assert insertion_points(matrix.base("resnet50")) == [
        "conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"]
    assert insertion_points(matrix.base("vgg16")) == ["block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3"]
    model = matrix.get("resnet50", "insert")
    blocks = [layer.name for layer in flat_layers(model) if isinstance(layer, robust_layers.RobustBlock)]
    assert blocks == [f"{name}_robust_block" for name in insertion_points(matrix.base("resnet50"))]
