"""`robustify(model, mode="insert")`: residual RobustBlocks after chosen stages of the unchanged model."""

import math

import keras

from keras_robust_iqa import layers as robust_layers
from keras_robust_iqa.layers.keras_rules import contract_of
from keras_robust_iqa.models.graph import (
    check_graph_model,
    flat_layers,
    rewrite,
)


def stage_ends(model):
    """Names of the last layer of each resolution stage, in order."""
    four_d = [layer for layer in flat_layers(model) if _map_size(layer) is not None]
    ends = []
    for layer, nxt in zip(four_d, four_d[1:] + [None]):
        if nxt is None or _map_size(nxt) != _map_size(layer):
            # A pooling layer ends a stage by changing the size: take the
            # layer that feeds it.
            ends.append(layer.name)
    return ends


def _map_size(layer):
    """`(H, W)` of a layer's (first) 4-D output, or None."""
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):
        return None
    if len(shape) != 4:
        return None
    return tuple(shape[1:3])


def _ends_stage(layer):
    """Whether `layer` can end a resolution stage, as it (or the Keras table) states."""
    stated = contract_of(layer)
    return stated is None or stated.ends_stage


def _resolution_level(size, full):
    """How many halvings of the input size a map of `size` is: `round(log2(full / size))`."""
    if None in size or None in full or 0 in size:
        return None
    return round(0.5 * math.log2((full[0] * full[1]) / (size[0] * size[1])))


def insertion_points(model, group_size=2):
    """Names of the layers `robustify(model, "insert")` puts a RobustBlock after by default.

    The structure decides: each layer's resolution level is
    `round(log2(input size / map size))`; for every level below full resolution the
    last suitable layer of that level is taken, provided no later layer goes back to
    a finer resolution (which keeps out the 1x1 maps of squeeze-excite branches). A
    suitable layer has a 4-D output whose channels `group_size` divides, and is not an
    input, padding, cropping, reshaping or pooling layer. The full-resolution stage is
    skipped: the orthogonal convolution's cost grows with `H x W`.
    """
    return [layer.name for layer in _insertion_layers(check_graph_model(model), group_size)]


def _insertion_layers(model, group_size):
    full = tuple(model.inputs[0].shape[1:3])
    if len(model.inputs[0].shape) != 4 or None in full:
        raise ValueError(
            f"robustify(mode='insert') chooses its insertion points from map sizes, and model "
            f"'{model.name}' takes inputs of shape {tuple(model.inputs[0].shape)} (no static height "
            "and width): pass `after=[layer names]`."
        )
    levels = []
    for layer in flat_layers(model):
        size = _map_size(layer)
        # Paddings and poolings only adapt a map to the next layer: they set no level.
        if size is not None and _resolution_level(size, full) is not None and _ends_stage(layer):
            levels.append((layer, _resolution_level(size, full)))
    chosen = {}
    finest_after = math.inf  # the finest (lowest) level of any later layer
    for layer, level in reversed(levels):
        if (level > 0 and level not in chosen and level <= finest_after and _suitable(layer, group_size)):
            chosen[level] = layer
        finest_after = min(finest_after, level)
    return [chosen[level] for level in sorted(chosen)]


def _suitable(layer, group_size):
    if not _ends_stage(layer) or not isinstance(layer, keras.layers.Layer):
        return False
    channels = layer.output.shape[-1]
    return channels is not None and channels % group_size == 0


def _resolve_after(model, after):
    """The layers named in `after`, validated."""
    by_name = {}
    for layer in flat_layers(model):
        by_name.setdefault(layer.name, []).append(layer)
    after = [after] if isinstance(after, str) else list(after)
    unknown = [n for n in after if n not in by_name]
    if unknown:
        raise ValueError(f"Argument `after` names layers not in the model: {unknown}.")
    twice = [n for n in after if len(by_name[n]) > 1]
    if twice:
        raise ValueError(
            f"Argument `after`: the names {twice} are each used by several layers of the model "
            "(in different nested models); give those layers distinct names."
        )
    return [by_name[n][0] for n in after]


def _insert(model, after, keep_weights, group_size, conv, bottleneck=None):
    targets = _insertion_layers(model, group_size) if after is None else _resolve_after(model, after)
    if not targets:
        raise ValueError(
            f"No layer of model '{model.name}' to insert a RobustBlock after (no 4-D layer below "
            "full resolution): pass `after=[layer names]`."
        )
    for layer in targets:
        shape = layer.output.shape
        if len(shape) != 4:
            raise ValueError(
                f"Argument `after`: layer '{layer.name}' has output shape {tuple(shape)}; a "
                "RobustBlock needs a 4-D (batch, height, width, channels) output."
            )
        if shape[-1] % group_size:
            raise ValueError(
                f"Layer '{layer.name}' has {shape[-1]} channels, not divisible by group_size={group_size}."
            )
    target_ids = {id(layer) for layer in targets}
    original_of = {}  # id(clone) -> the layer it copies
    copies = []
    blocks = {}

    def clone_function(layer):
        if not isinstance(layer, keras.layers.Layer):
            return layer  # a keras.ops operation: no state
        new = layer.__class__.from_config(layer.get_config())
        original_of[id(new)] = layer
        copies.append((layer, new))
        return new

    def call_function(layer, *args, **kwargs):
        out = layer(*args, **kwargs)
        original = original_of.get(id(layer))
        if original is not None and id(original) in target_ids:
            if id(original) not in blocks:  # a shared layer shares its block
                blocks[id(original)] = robust_layers.RobustBlock(
                    out.shape[-1], group_size=group_size, residual=True, residual_init=0.9, conv=conv,
                    bottleneck=bottleneck, name=f"{original.name}_robust_block",
                )
            out = blocks[id(original)](out)
        return out

    new = rewrite(model, clone_function, call_function)
    new.name = f"{model.name}_insert"
    if keep_weights:
        for old, copy in copies:
            copy.set_weights(old.get_weights())
    return new
