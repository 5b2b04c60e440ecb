"""Certified L2 Lipschitz constant of a model built from 1-Lipschitz parts."""

import math

import keras

from keras_robust_iqa.layers.keras_rules import ACTIVATION_LIPSCHITZ, contract_of
from keras_robust_iqa.models.graph import check_graph_model, tensors_in, walk

__all__ = ["ACTIVATION_LIPSCHITZ", "layer_lipschitz", "lipschitz_bound"]


def layer_lipschitz(layer, input_shape=None):
    """L2 Lipschitz constant of one single-input layer (at inference), as the layer states it.

    `input_shape`: the shape of the input of this call (default: the layer's first
    call), for the layers whose constant depends on it (`GlobalL2NormPooling2D`).
    Nested Sequential and functional models are followed into.
    """
    if isinstance(layer, keras.Sequential):
        return math.prod(layer_lipschitz(inner) for inner in layer.layers)
    if isinstance(layer, keras.Model) and hasattr(layer, "operations"):
        return lipschitz_bound(layer)
    contract = contract_of(layer)
    value = None if contract is None else contract.lipschitz_constant(input_shape)
    if value is None:
        raise ValueError(
            f"lipschitz_bound cannot certify layer '{layer.name}' ({_kind(layer)}): its "
            "Lipschitz constant is not bounded by construction. Certify a model made with "
            "robustify(model, mode='replace')."
        )
    return value


def _kind(layer):
    return type(layer).__name__ if isinstance(layer, keras.layers.Layer) else f"keras.ops {type(layer).__name__}"


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
        contract = contract_of(layer)
        merged = None if contract is None else contract.merged_lipschitz(upstream)
        if merged is not None:
            value = merged
        elif len(upstream) != 1:
            raise ValueError(
                f"lipschitz_bound cannot certify layer '{layer.name}' ({_kind(layer)}) with "
                f"{len(upstream)} inputs: only ConvexCombination and Concatenate merge branches."
            )
        else:
            value = layer_lipschitz(layer, tensors_in(args)[0].shape) * upstream[0]
        for t in keras.tree.flatten(outputs):
            bounds[id(t)] = value
        return outputs

    _, outputs = walk(model, propagate)
    return bounds.get(id(keras.tree.flatten(outputs)[0]), 1.0)
