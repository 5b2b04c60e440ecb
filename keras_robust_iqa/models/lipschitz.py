"""Certified L2 Lipschitz constant of a model built from 1-Lipschitz parts."""

import math

import keras
import numpy as np

from keras_robust_iqa import layers as robust_layers
from keras_robust_iqa.models.backbones import ChannelReverse
from keras_robust_iqa.models.graph import check_graph_model, tensors_in, walk

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
# L2 Lipschitz constants of element-wise activations (the largest slope).
ACTIVATION_LIPSCHITZ = {
    "linear": 1.0,
    "relu": 1.0,
    "sigmoid": 0.25,  # sigmoid' = s (1 - s) <= 1/4, at 0
    "tanh": 1.0,  # tanh' = 1 - tanh^2 <= 1, at 0
}


def layer_lipschitz(layer, input_shape=None):
    """L2 Lipschitz constant of one single-input layer (at inference).

    `input_shape`: the shape of the input of this call (default: the layer's first
    call), for the layers whose constant depends on it (`GlobalL2NormPooling2D`).
    """
    if isinstance(layer, _ONE_LIPSCHITZ):
        return 1.0
    if isinstance(layer, (keras.layers.ReLU, keras.layers.LeakyReLU)):
        return _relu_lipschitz(layer)
    if isinstance(layer, keras.layers.Activation):
        name = getattr(layer.activation, "__name__", str(layer.activation))
        if name in ACTIVATION_LIPSCHITZ:
            return ACTIVATION_LIPSCHITZ[name]
    if isinstance(layer, robust_layers.GlobalL2NormPooling2D):
        shape = input_shape if input_shape is not None else layer.input.shape
        if None in tuple(shape[1:3]):
            return 1.0  # the map x -> ||x|| alone: a bound at every input size
        return layer.lipschitz_constant(shape)
    if isinstance(layer, (robust_layers.OutputScale, robust_layers.ChannelGain)):
        return layer.lipschitz_constant()
    if isinstance(layer, keras.layers.Normalization):
        return float(np.max(1.0 / np.sqrt(np.maximum(np.asarray(layer.variance), 1e-12))))
    if isinstance(layer, keras.layers.Rescaling):
        return float(np.max(np.abs(layer.scale)))
    if isinstance(layer, keras.Sequential):
        return math.prod(layer_lipschitz(inner) for inner in layer.layers)
    if isinstance(layer, keras.Model) and hasattr(layer, "operations"):
        return lipschitz_bound(layer)
    kind = type(layer).__name__ if isinstance(layer, keras.layers.Layer) else f"keras.ops {type(layer).__name__}"
    raise ValueError(
        f"lipschitz_bound cannot certify layer '{layer.name}' ({kind}): its "
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


def lipschitz_bound(model, image_shape=None, *, patch_size=None):
    """Certified L2 Lipschitz constant of `model` on its input patches.

    Walks the layer graph: orthogonal and norm-preserving layers contribute 1,
    `GlobalL2NormPooling2D` `1 / sqrt(H W)` (1 where the map size is not
    static), `OutputScale` `|scale|`, a `ChannelGain` its largest `|d|`, a
    sigmoid 1/4 and a tanh 1 (the output activations `replace` keeps), a
    `ConvexCombination` the weighted mean of its branches' bounds, a
    `Concatenate` the root sum of squares. Nested functional and Sequential
    models are followed into. For a model made with
    `robustify(..., mode="replace")`, `|f(x) - f(y)| <= bound * ||x - y||_2`
    for all inputs (in particular images in [0, 1]).

    Args:
        model: a functional or Sequential Keras model.
        image_shape: `(H, W)` of whole images scored by averaging patch
            scores (`score_images`): the bound is divided by
            `sqrt(number of patches)`.
        patch_size: the patch side of that grid, for a model that takes any
            input size (default: the model's own).

    Raises:
        ValueError: naming the first layer whose constant is not bounded.
    """
    check_graph_model(model, "lipschitz_bound")
    bound = _graph_bound(model)
    if image_shape is not None:
        from keras_robust_iqa.models.patches import model_patch_size, patches_per_image

        bound /= math.sqrt(patches_per_image(*image_shape, model_patch_size(model, patch_size)))
    return float(bound)


def _graph_bound(model):
    """Propagate bounds through the model's graph (nested models opened up), inputs to output.

    Each tensor gets a bound on its Lipschitz constant as a function of the model's
    inputs; a layer multiplies its input's bound by its own constant.
    """
    bounds = {}

    def propagate(layer, args, kwargs):
        upstream = [bounds.get(id(t), 1.0) for t in tensors_in(args)]  # unknown: a model input
        outputs = layer(*args, **kwargs)
        if isinstance(layer, robust_layers.ConvexCombination):
            value = float(np.dot(np.asarray(layer.weights_simplex()), upstream))
        elif isinstance(layer, keras.layers.Concatenate):
            value = math.sqrt(sum(b * b for b in upstream))
        elif len(upstream) != 1:
            kind = type(layer).__name__ if isinstance(layer, keras.layers.Layer) else f"keras.ops {type(layer).__name__}"
            raise ValueError(
                f"lipschitz_bound cannot certify layer '{layer.name}' ({kind}) with "
                f"{len(upstream)} inputs: only ConvexCombination and Concatenate merge branches."
            )
        else:
            value = layer_lipschitz(layer, tensors_in(args)[0].shape) * upstream[0]
        for t in keras.tree.flatten(outputs):
            bounds[id(t)] = value
        return outputs

    _, outputs = walk(model, propagate)
    return bounds.get(id(keras.tree.flatten(outputs)[0]), 1.0)
