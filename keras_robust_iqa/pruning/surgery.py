"""Channel masks during training, then the physical removal of the masked channels."""

import keras
import numpy as np

from keras_robust_iqa import layers as robust_layers
from keras_robust_iqa.pruning.channel_mask import ChannelMask
from keras_robust_iqa.models.graph import walk


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
        if layer.name in graph.mixing:
            config["units" if "units" in config else "filters"] = len(kept_out)
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
    if isinstance(old, robust_layers.RobustBlock):
        _copy_sliced(old.conv, new.conv, kept_in, kept_out)
        if old.residual:
            new.residual_logit.assign(old.residual_logit)
    elif isinstance(old, robust_layers.BlockOrthoConv2D):
        _copy_block_ortho(old, new, kept_in, kept_out)
    elif isinstance(old, robust_layers.OrthoConv2D):
        _copy_ortho(old, new, _kernel_inputs(old, kept_in), kept_out)
    elif isinstance(old, robust_layers.OrthoDense):
        _copy_ortho(old, new, kept_in, kept_out)
    elif isinstance(old, keras.layers.DepthwiseConv2D):
        new.set_weights([w[:, :, kept_in] if w.ndim == 4 else w[kept_in] for w in old.get_weights()])
    elif isinstance(old, (keras.layers.Conv2D, keras.layers.Dense)):
        new.kernel.assign(_slice_kernel(old.kernel, kept_in, kept_out))
        if old.use_bias:
            new.bias.assign(keras.ops.convert_to_numpy(old.bias)[kept_out])
    else:  # BatchNormalization, ChannelGain: vectors of one value per channel
        new.set_weights([w[kept_in] for w in old.get_weights()])


def _slice_kernel(kernel, kept_in, kept_out):
    """`kernel[..., kept_in, kept_out]` of a `(..., in, out)` kernel."""
    return keras.ops.convert_to_numpy(kernel)[..., kept_in, :][..., kept_out]


def _kernel_inputs(conv, kept_in):
    """Kernel input channels of the kept input channels of a (strided) OrthoConv2D.

    With `strides=s` the kernel reads the space-to-depth rearrangement, whose
    channel `k * C + c` (k < s * s) holds input channel `c`.
    """
    s = conv.strides[0]
    channels = conv.input_channels // (s * s)
    return [k * channels + c for k in range(s * s) for c in kept_in]


def _copy_block_ortho(old, new, kept_in, kept_out):
    """The kept rows and columns of each free matrix of a `BlockOrthoConv2D`.

    Each factor of the new layer is the Cayley transform of the kept part of
    the old factor's free matrix: orthogonal by construction, close to the old
    factor's kept part (fine-tuning recovers the difference). The projectors
    act on the wider side (the input, when strided), whose kept channels index
    their rows; a projector of width `n` has rank `n // 2`, so its first
    `n // 2` columns stay.
    """
    s = old.strides[0]
    if old.projector_kernel is not None and new.projector_kernel is not None:
        if s == 1 and new.filters >= new.input_channels:
            rows = kept_out
        else:
            rows = kept_in
        free = keras.ops.convert_to_numpy(old.projector_kernel)
        new.projector_kernel.assign(free[:, :, rows, : new.projector_kernel.shape[-1]])
    if old.mixing_kernel is not None:
        free = keras.ops.convert_to_numpy(old.mixing_kernel)
        rows = kept_out if s == 1 else kept_in
        new.mixing_kernel.assign(free[:, rows][:, :, kept_in])
    if old.downsampling_kernel is not None:
        # Columns are laid out (tap row, tap column, input channel).
        channels = old.input_channels
        columns = [tap * channels + c for tap in range(s * s) for c in kept_in]
        free = keras.ops.convert_to_numpy(old.downsampling_kernel)
        new.downsampling_kernel.assign(free[:, kept_out][:, :, columns])
    if old.use_bias:
        new.bias.assign(keras.ops.convert_to_numpy(old.bias)[kept_out])


def _copy_ortho(old, new, kept_in, kept_out):
    new.kernel.assign(_slice_kernel(old.kernel, kept_in, kept_out))
    # Same scale alpha / ||K|| as before: the kept entries of the matrix the
    # Cayley transform sees are unchanged.
    new.alpha.assign(old.alpha * new.kernel_norm() / old.kernel_norm())
    if old.use_bias:
        new.bias.assign(keras.ops.convert_to_numpy(old.bias)[kept_out])


def prune(model, fraction=None, *, tau=None, graph=None, groups=None, strict=True):
    """The smaller model: `model` without its lowest-scoring channels.

    The mean-weight criterion (`ChannelGraph.scores`) ranks the channels that can go
    (tied channels go together, as groups); `model` is left unchanged.

    Args:
        model: any functional or Sequential Keras model (nested models are opened up:
            the result is one flat functional model).
        fraction: prune this fraction of the prunable groups of each set of tied
            layers, the smallest mean weight first.
        tau: prune every group whose mean weight is below `tau`.
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
        groups = graph.select(graph.scores(), fraction=fraction, tau=tau, strict=strict)
    return prune_model(model, graph, groups)
