"""`robustify(model, mode="replace")`: every layer by its 1-Lipschitz counterpart, through the graph."""

import keras

from keras_robust_iqa import layers as robust_layers
from keras_robust_iqa.layers import contract
from keras_robust_iqa.layers.keras_rules import contract_of
from keras_robust_iqa.models.graph import (
    as_functional,
    flat_layers,
    is_graph_model,
    model_inputs_like,
    output_layer,
    rewrite,
    tensors_in,
)
from keras_robust_iqa.models.robustify.rules import _Refused, _replacement, _replacement_kind, _squash


def _gate(tensors, ancestors):
    """`(x, gate)` when `tensors` are `x` and a `(batch, 1, 1, C)` gate computed from `x`."""
    if len(tensors) != 2 or any(len(t.shape) != 4 for t in tensors):
        return None
    for x, gate in (tensors, tensors[::-1]):
        if (tuple(gate.shape[1:3]) == (1, 1) and gate.shape[-1] == x.shape[-1]
                and id(x) in ancestors.get(id(gate), ())):
            return x, gate
    return None


def _preprocesses_inputs(layer):
    stated = contract_of(layer)
    return stated is not None and stated.preprocesses_inputs


def _replace(model, keep_weights, activation, input_offset, pooling, channel_gains, conv):
    if len(model.outputs) != 1:
        raise ValueError(
            f"robustify(mode='replace') supports single-output models; '{model.name}' has {len(model.outputs)}."
        )
    final = output_layer(model)
    squash = _squash(final)
    inputs = model_inputs_like(as_functional(model))
    top_inputs = {id(t) for t in keras.tree.flatten(inputs)}
    centre = None
    if input_offset:
        centre = keras.layers.Rescaling(1.0, offset=input_offset, name="centre_inputs")
    centred = {}
    replaced = {}  # id(original) -> its replacement
    refused = {}  # id(original) -> the error, raised if the original stays in the new model
    ancestors = {}  # id(tensor) -> ids of the tensors it is computed from (itself included)

    def call_function(layer, *args, **kwargs):
        # The originals' call kwargs (a BatchNorm's `mask`) need not fit the
        # replacements; none of the replacements uses a mask.
        kwargs.pop("mask", None)
        tensors = tensors_in(args)
        # A model that preprocesses its inputs itself (the keras.applications backbones)
        # is already centred.
        if centre is not None and not _preprocesses_inputs(layer):
            args = keras.tree.map_structure(
                lambda t: _centred(t, centre, centred) if id(t) in top_inputs else t, args)
        gate = _gate(tensors, ancestors) if _replacement_kind(layer) == "product" else None
        if gate is not None:
            # A squeeze-excite gate: the gate branch is dropped (nothing reads it any more),
            # and a learnable per-channel gain in [-1, 1] on x stands in for it.
            outputs = robust_layers.ChannelGain(name=f"{layer.name}_gain")(gate[0])
        else:
            new = _new_layer(layer, tensors)
            outputs = new(*args, **kwargs)
        anc = set().union(*(ancestors.get(id(t), {id(t)}) for t in tensors))
        for t in keras.tree.flatten(outputs):
            ancestors[id(t)] = anc | {id(t)}
        return outputs

    def _new_layer(layer, tensors):
        if id(layer) in replaced:
            return replaced[id(layer)]
        if id(layer) in refused:
            return layer
        # The output layer's gain would repeat OutputScale's.
        gains = channel_gains and layer is not final
        try:
            new = _replacement(layer, tensors[0].shape if tensors else None, activation, pooling, gains, conv,
                               squash if layer is final else None)
        except _Refused as error:
            # The original stands in for now: the layer may sit in a branch that a later
            # stand-in drops (a squeeze-excite gate); if it stays, the error is raised below.
            refused[id(layer)] = error
            return layer
        replaced[id(layer)] = new
        return new

    body = rewrite(model, lambda layer: layer, call_function, inputs=inputs)
    for layer in _flat_operations(body):
        if id(layer) in refused:
            raise ValueError(str(refused[id(layer)])) from None
    outputs = body.outputs[0]
    if squash is None:
        outputs = robust_layers.OutputScale(scale=1.0, offset=0.5, name="output_scale")(outputs)
    new = keras.Model(body.input, outputs, name=f"{model.name}_replace")
    if keep_weights:
        _transfer_kernels(model, replaced, {id(op) for op in _flat_operations(new)})
    return new


def _flat_operations(model):
    """Every leaf operation (layers and keras.ops) of a functional model, nested ones opened up."""
    out = []
    for op in (model.layers if isinstance(model, keras.Sequential) else model.operations):
        out.extend(_flat_operations(op) if is_graph_model(op) else [op])
    return out


def _centred(tensor, centre, cache):
    """`centre(tensor)` for a model input, once per input."""
    if id(tensor) not in cache:
        cache[id(tensor)] = centre(tensor)
    return cache[id(tensor)]


def _transfer_kernels(model, replaced, used):
    """Start each orthogonal layer from the original kernel, where it can take it.

    Each orthogonal layer says how (`start_from_kernel`): the Cayley layers take the
    trained kernel as their free kernel; `BlockOrthoConv2D` fits its orthogonal factors
    to it (the orthogonal kernel nearest the trained one that the fit finds). The trained
    kernel is the one the original states it applies (`applied_kernel()`: a separable
    convolution's pointwise kernel, which its 1x1 part takes). `used`: ids of the new
    model's layers (a dropped squeeze-excite branch needs no start).
    """
    for layer in flat_layers(model):
        new = replaced.get(id(layer))
        original = contract_of(layer)
        kernel = None if new is None or original is None else original.applied_kernel()
        if kernel is None:
            continue
        parts = new.layers if isinstance(new, keras.Sequential) else [new]
        for part in parts:
            stated = contract_of(part)
            if stated is None or id(part) not in used:
                continue
            if stated.channel_role() == contract.SPACE_TO_DEPTH and kernel.shape[:2] == (part.pool_size,) * 2:
                # An `s x s` stride-`s` kernel after space-to-depth by `s` is one 1x1 kernel whose
                # input `(dy * s + dx) * C + c` is the trained kernel's `[dy, dx, c]`: its own order.
                kernel = kernel.reshape(1, 1, -1, kernel.shape[-1])
            elif stated.start_from_kernel(kernel):
                break
