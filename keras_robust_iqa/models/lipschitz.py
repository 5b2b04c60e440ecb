"""Certified L2 Lipschitz constant of a model built from 1-Lipschitz parts."""

import math

import keras
import numpy as np

from keras_robust_iqa import layers as robust_layers
from keras_robust_iqa.models.backbones import ChannelReverse

# Layers whose L2 Lipschitz constant is at most 1, whatever their weights.
_ONE_LIPSCHITZ = (
    robust_layers.OrthoConv2D,
    robust_layers.BlockOrthoConv2D,
    robust_layers.OrthoDense,
    robust_layers.RobustBlock,
    robust_layers.GroupSort,
    robust_layers.L2NormPooling2D,
    robust_layers.InvertibleDownsampling,
    keras.layers.InputLayer,
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.Cropping2D,
    keras.layers.ZeroPadding2D,
    keras.layers.Dropout,  # the identity at inference
    keras.layers.SpatialDropout2D,
    keras.layers.Identity,
    ChannelReverse,  # a permutation
)


def layer_lipschitz(layer):
    """L2 Lipschitz constant of one single-input layer (at inference)."""
    if isinstance(layer, _ONE_LIPSCHITZ):
        return 1.0
    if isinstance(layer, (keras.layers.ReLU, keras.layers.LeakyReLU)):
        return _relu_lipschitz(layer)
    if isinstance(layer, robust_layers.GlobalL2NormPooling2D):
        return layer.lipschitz_constant(layer.input.shape)
    if isinstance(layer, (robust_layers.OutputScale, robust_layers.ChannelGain)):
        return layer.lipschitz_constant()
    if isinstance(layer, keras.layers.Normalization):
        return float(np.max(1.0 / np.sqrt(np.maximum(np.asarray(layer.variance), 1e-12))))
    if isinstance(layer, keras.layers.Rescaling):
        return float(np.max(np.abs(layer.scale)))
    if isinstance(layer, keras.Sequential):
        return math.prod(layer_lipschitz(inner) for inner in layer.layers)
    if isinstance(layer, keras.Model):
        return lipschitz_bound(layer)
    raise ValueError(
        f"lipschitz_bound cannot certify layer '{layer.name}' ({type(layer).__name__}): its "
        "Lipschitz constant is not bounded by construction. Certify a model made with "
        "robustify(model, mode='replace')."
    )


def _relu_lipschitz(layer):
    """A (leaky, capped) ReLU's slopes are 1, 0 and `negative_slope`: the largest bounds it.

    A nonzero `threshold` makes a keras `ReLU` jump at the threshold (from 0 to
    `threshold`): no Lipschitz constant at all.
    """
    slope = abs(float(getattr(layer, "negative_slope", 0.0) or 0.0))
    if float(getattr(layer, "threshold", 0.0) or 0.0) != 0.0:
        raise ValueError(
            f"lipschitz_bound cannot certify layer '{layer.name}' (ReLU with threshold="
            f"{layer.threshold}): it jumps at the threshold, so no Lipschitz constant holds."
        )
    return max(1.0, slope)


def lipschitz_bound(model, image_shape=None):
    """Certified L2 Lipschitz constant of `model` on its input patches.

    Walks the layer graph: orthogonal and norm-preserving layers contribute 1,
    `GlobalL2NormPooling2D` `1 / sqrt(H W)`, `OutputScale` `|scale|`, a
    `ConvexCombination` the weighted mean of its branches' bounds, a
    `Concatenate` the root sum of squares. For a model made with
    `robustify(..., mode="replace")`, `|f(x) - f(y)| <= bound * ||x - y||_2`
    for all inputs (in particular images in [0, 1]).

    Args:
        model: a functional or Sequential Keras model.
        image_shape: `(H, W)` of whole images scored by averaging patch
            scores (`score_images`): the bound is divided by
            `sqrt(number of patches)`.

    Raises:
        ValueError: naming the first layer whose constant is not bounded.
    """
    if isinstance(model, keras.Sequential):
        bound = layer_lipschitz(model)
    else:
        bound = _graph_bound(model)
    if image_shape is not None:
        from keras_robust_iqa.models.patches import model_patch_size, patches_per_image

        bound /= math.sqrt(patches_per_image(*image_shape, model_patch_size(model)))
    return float(bound)


def _graph_bound(model):
    """Propagate bounds through a functional model's graph, inputs to output.

    Keras keeps the graph as nodes grouped by depth (0: the outputs); each
    node is one call of a layer on tensors of this graph, which `layer.input`
    cannot give for a nested model called on new tensors.
    """
    bounds = {id(t): 1.0 for t in model.inputs}
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            layer = node.operation
            if isinstance(layer, keras.layers.InputLayer):
                continue
            try:
                upstream = [bounds[id(t)] for t in node.input_tensors]
            except KeyError:
                raise ValueError(f"lipschitz_bound cannot follow the graph at layer '{layer.name}'.") from None
            if isinstance(layer, robust_layers.ConvexCombination):
                value = float(np.dot(np.asarray(layer.weights_simplex()), upstream))
            elif isinstance(layer, keras.layers.Concatenate):
                value = math.sqrt(sum(b * b for b in upstream))
            elif len(upstream) != 1:
                raise ValueError(
                    f"lipschitz_bound cannot certify layer '{layer.name}' ({type(layer).__name__}) "
                    "with several inputs."
                )
            else:
                value = layer_lipschitz(layer) * upstream[0]
            for t in node.output_tensors:
                bounds[id(t)] = value
    (output,) = model.outputs
    return bounds[id(output)]
