"""Channel masks during training, then the physical removal of the masked channels."""

import keras
import numpy as np

from keras_robust_iqa.layers.keras_rules import contract_of
from keras_robust_iqa.models.graph import walk
from keras_robust_iqa.pruning.channel_mask import ChannelMask


def masked_model(model, graph):
    """`model` with a `ChannelMask` in front of every layer that mixes prunable channels.

    The masked model shares `model`'s layers (training one trains the other),
    so the surgery afterwards reads the trained weights from `model`.

    Returns:
        `(masked model, {layer name: its ChannelMask})`.
    """
    masks = {}
    prunable = set(range(len(graph.groups))) - graph.frozen_groups

    def call(layer, args, kwargs):
        kwargs.pop("mask", None)
        atoms = graph.inputs_of.get(layer.name, ())
        if layer.name in graph.mixing and any(graph.group_of.get(a) in prunable for a in atoms):
            masks[layer.name] = ChannelMask(name=f"{layer.name}_channel_mask")
            args = (masks[layer.name](args[0]), *args[1:])
        return layer(*args, **kwargs)

    inputs, outputs = walk(model, call)
    return keras.Model(inputs, outputs, name=f"{model.name}_masked"), masks


def set_masks(graph, masks, pruned_groups):
    """Zero the masked channels of `pruned_groups`, open all others."""
    for name, mask in masks.items():
        values = np.zeros(len(graph.inputs_of[name]), np.float32)
        values[graph.kept_positions(graph.inputs_of[name], pruned_groups)] = 1.0
        mask.mask.assign(values)


def prune_model(model, graph, pruned_groups):
    """A new model without the channels of `pruned_groups`: fewer filters, units, weights.

    Each sliced layer is a fresh layer of the same class with fewer output
    channels (`filters`, `units`), initialised from the kept rows and columns
    of the old kernel; the layers that read a removed channel lose the
    matching input channel. Orthogonal layers keep the kept entries of their
    scaled kernel, `alpha * K / ||K||`: the new `alpha` is
    `alpha * ||K_kept|| / ||K||`. Their operator is the Cayley transform of
    that smaller matrix, orthogonal (or semi-orthogonal) by construction, so
    the layer stays 1-Lipschitz; the function of the kept channels changes
    a little (the Cayley transform of a block is not the block of the Cayley
    transform), which fine-tuning recovers. `model` is left unchanged.
    """
    pruned_groups = set(pruned_groups)
    copies = {}  # id(layer) -> its new layer: a shared layer stays shared

    def call(layer, args, kwargs):
        kwargs.pop("mask", None)
        if not isinstance(layer, keras.layers.Layer):
            return layer(*args, **kwargs)  # a keras.ops operation: no weights, no channels to slice
        if id(layer) in copies:
            return copies[id(layer)](*args, **kwargs)
        kept_in = kept_out = None
        if layer.name in graph.inputs_of:
            kept_in = graph.kept_positions(graph.inputs_of[layer.name], pruned_groups)
            kept_out = graph.kept_positions(graph.outputs_of[layer.name], pruned_groups)
        config = layer.get_config()
        # A layer that mixes channels sets its output count by `units` or `filters` (a
        # residual layer's output channels are its input channels: it has neither).
        width = next((key for key in ("units", "filters") if key in config), None)
        if layer.name in graph.mixing and width is not None:
            config[width] = len(kept_out)
        new = copies[id(layer)] = type(layer).from_config(config)
        outputs = new(*args, **kwargs)
        if kept_in is None:
            new.set_weights(layer.get_weights())
        else:
            _copy_sliced(layer, new, kept_in, kept_out)
        return outputs

    inputs, outputs = walk(model, call)
    return keras.Model(inputs, outputs, name=model.name)


def _copy_sliced(old, new, kept_in, kept_out):
    """The kept channels of `old`'s weights into `new`, as the layer (or the Keras table) slices them."""
    contract_of(old).slice_channels(new, kept_in, kept_out)


def prune(model, fraction=None, *, tau=None, graph=None, groups=None, strict=True, criterion="mean_weight",
          batches=None):
    """The smaller model: `model` without its lowest-scoring channels.

    `criterion` (`ChannelGraph.scores`: `"mean_weight"`, or `"activation"` measured on
    `batches` of inputs) ranks the channels that can go (tied channels go together, as
    groups); `model` is left unchanged.

    Args:
        model: any functional or Sequential Keras model (nested models are opened up:
            the result is one flat functional model).
        fraction: prune this fraction of the prunable groups of each set of tied
            layers, the smallest score first.
        tau: prune every group whose score is below `tau`.
        graph: the model's `ChannelGraph`, if already built.
        groups: prune exactly these groups of `graph` (e.g. chosen by a
            `ChannelPruning` callback) instead of `fraction` / `tau`.
        strict: with `tau`, raise when a layer would lose every channel;
            otherwise keep its best group.

    Raises:
        ValueError: naming the argument, or the layer that would lose every channel.
    """
    from keras_robust_iqa.pruning.graph import ChannelGraph
    from keras_robust_iqa.pruning.schedule import check_target

    if groups is None:
        fraction, tau = check_target(fraction, tau)
    elif fraction is not None or tau is not None:
        raise ValueError("Give `groups` or one of `fraction` and `tau`, not both.")
    if graph is None:
        graph = ChannelGraph(model)
    if groups is None:
        groups = graph.select(graph.scores(criterion, batches), fraction=fraction, tau=tau, strict=strict)
    return prune_model(model, graph, groups)
