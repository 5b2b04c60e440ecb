"""`robustify(model, mode=...)`: apply RobustBlocks to an existing Keras model.

Works on any functional, Sequential or nested Keras 3 model, through public Keras API only
(`keras.models.clone_model` with `clone_function` / `call_function`, in `models.graph`).
"""

import math

import keras
import numpy as np

from keras_robust_iqa import layers as robust_layers
from keras_robust_iqa.layers import robust_block
from keras_robust_iqa.models.backbones import ChannelReverse
from keras_robust_iqa.models.graph import (
    as_functional,
    check_graph_model,
    flat_layers,
    is_graph_model,
    model_inputs_like,
    output_layer,
    rewrite,
    tensors_in,
)

MODES = ("insert", "replace")
# The 1-Lipschitz activations `mode="replace"` can put in place of the original ones.
ACTIVATIONS = ("groupsort", "relu")
# What `mode="replace"` puts in place of local pooling: L2-norm pooling, or a space-to-depth
# rearrangement that keeps every value (the next layer sees s*s times the channels).
POOLINGS = ("l2norm", "invertible")
# The orthogonal convolutions: "fourier" (OrthoConv2D, the paper's) or "block" (BlockOrthoConv2D).
CONVOLUTIONS = tuple(robust_block.CONVOLUTIONS)
# `replace` puts a grouped BlockOrthoConv2D in place of a DepthwiseConv2D: a single-channel
# orthogonal filter with a compact kernel can only be a shift, so each group mixes at least
# this many channels (the smallest divisor of the channel count that is not smaller).
DEPTHWISE_GROUP_WIDTH = 8

# Layers that are already 1-Lipschitz (or the identity at inference) and stay.
_KEEP = (
    keras.layers.InputLayer,
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.Cropping2D,
    keras.layers.ZeroPadding2D,
    keras.layers.Dropout,
    keras.layers.SpatialDropout2D,
    keras.layers.Identity,
    keras.layers.Rescaling,
    keras.layers.Concatenate,
    keras.layers.Normalization,  # x - mean over a fixed std: Lipschitz 1 / std
    ChannelReverse,
)
_NORMALIZATION = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
)
_ACTIVATIONS = (
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.PReLU,
)
_PREPROCESSING = (keras.layers.Rescaling, keras.layers.Normalization)
_POOLING = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
_GLOBAL_POOLING = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)
# Output activations `replace` keeps (their L2 Lipschitz constants are in `lipschitz.py`):
# the score stays in their range, and `OutputScale` moves in front of them.
SQUASHING = ("sigmoid", "tanh")
# Layers that only reshape, pad or pool: never a default insertion point.
_NOT_A_STAGE_END = (
    keras.layers.InputLayer,
    keras.layers.ZeroPadding2D,
    keras.layers.Cropping2D,
    keras.layers.Reshape,
    keras.layers.Flatten,
    keras.layers.UpSampling2D,
    *_POOLING,
    *_GLOBAL_POOLING,
)


def robustify(model, mode="replace", *, conv="block", after=None, keep_weights=True, group_size=2,
              input_offset=-0.5, activation="groupsort", pooling="l2norm", channel_gains=False):
    """Apply RobustBlocks to any functional, Sequential or nested Keras model, with no hand editing.

    The graph is rewritten through public Keras API (`clone_model` with
    `clone_function` / `call_function`): layers with default names, layers called
    several times (shared: they stay shared) and nested functional or Sequential
    models (rewritten in place) all work; a subclassed model is refused with a
    `ValueError`. A Sequential model comes back as a functional one.

    Args:
        model: a functional or Sequential Keras model (nested ones inside it
            too) taking image patches.
        mode:
            - `"insert"`, the paper's recipe: a residual `RobustBlock` (a
              convex combination `l x + (1 - l) f(x)`, so the stage keeps its
              width and its function at `l = 1`) is inserted after chosen
              stages of the unchanged backbone (its layers are copies with
              the same weights).
            - `"replace"`: every Conv2D / DepthwiseConv2D becomes an
              orthogonal convolution (`conv`), Dense an `OrthoDense`, every activation
              (ReLU, swish, hard-swish, ...) `GroupSort` (`MaxMin` at the default
              group size) or ReLU, pooling `L2NormPooling2D` (or space-to-depth: `pooling`),
              global pooling `GlobalL2NormPooling2D`, BatchNorm / LayerNorm /
              GroupNorm are dropped, `Add` becomes a `ConvexCombination`, and one
              learnable `OutputScale` ends the network: the whole model is
              1-Lipschitz up to that scale, and `lipschitz_bound` certifies it.
              Stand-ins, each 1-Lipschitz:
              - a squeeze-excite gate, `Multiply` of `x` and a `(batch, 1, 1, C)`
                gate computed from `x`, becomes a learnable `ChannelGain` on `x`
                (per-channel gains in [-1, 1]); the gate branch is dropped;
              - a map whose size the stride does not divide, before a Fourier
                convolution or a pooling, gets a bottom / right zero row or
                column (a zero pad keeps every value); every replacement is
                cropped to the original's output size;
              - a sigmoid or tanh output stays (Lipschitz 1/4 and 1), with the
                `OutputScale` in front of it, so the score keeps its range;
              - GroupSort on a channel count `group_size` does not divide
                becomes ReLU.
              A layer with no counterpart (a product of two signals, a
              dilated or transposed convolution, an arithmetic `keras.ops`
              operation, ...) is refused with a `ValueError` that names it, says
              why and what to do, unless a stand-in drops it (as the gate
              branches are).
        conv: the orthogonal convolution of the RobustBlocks (insert) or of
            every replaced convolution (replace): `"block"` (the default),
            `BlockOrthoConv2D` (a compact orthogonal kernel applied as a plain
            convolution: Conv2D's cost, any input size), or `"fourier"`,
            `OrthoConv2D` (the paper's Cayley transform per frequency, for one
            static patch size).
            With `"block"`, a `DepthwiseConv2D` becomes a grouped
            `BlockOrthoConv2D` whose groups mix `DEPTHWISE_GROUP_WIDTH` channels
            (a one-channel orthogonal filter could only shift its input); with
            `"fourier"`, a full `OrthoConv2D`.
        after: for `"insert"`, names of the layers to insert a block after.
            Default: `insertion_points(model)`, chosen by the structure: the
            last suitable layer of each resolution level below full resolution
            (never an input, padding or pooling layer); the full-resolution
            stage is skipped because the orthogonal convolution's cost grows
            with `H x W`.
        keep_weights: copy the weights of the layers that stay (insert) or
            initialise orthogonal kernels from the original kernels where the
            shapes match (replace), so a trained model is a head start.
        group_size: GroupSort group size for the new activations.
        input_offset: for `"replace"`, added to the inputs by a
            `Rescaling(1, offset=input_offset)` first layer (`None`: none),
            before each layer of the top-level model that reads them, unless
            that layer preprocesses them itself (a `Rescaling` or
            `Normalization`, as in the backbones).
            The orthogonal convolutions zero-pad: with inputs in [0, 1],
            centring them on mid-grey keeps the borders from reading as
            black edges (its measured effect: docs/experiments.md). A
            shift has Lipschitz constant 1: the bound is unchanged.
        activation: for `"replace"`, the activation that stands in for every
            original one: `"groupsort"` (gradient-norm preserving, Anil et al.
            2019) or `"relu"` (1-Lipschitz too, but not gradient-norm
            preserving, so the score can stay flat along directions that do
            not matter; measured in docs/experiments.md).
        pooling: for `"replace"`, what stands in for each local pooling
            layer of stride `s`: `"l2norm"` (`L2NormPooling2D`, the norm of
            each window: channels unchanged) or `"invertible"`
            (`InvertibleDownsampling`, space-to-depth: a permutation that
            loses nothing, so the next layer reads `s * s` times the
            channels and costs more; measured in docs/experiments.md). Both
            are 1-Lipschitz. The layer after an invertible pooling must accept
            the wider input (a convolution or a dense layer does; an `Add`
            with a branch that skips the pooling does not).
        channel_gains: for `"replace"`, follow every orthogonal layer but the
            last (which `OutputScale` scales) by a `ChannelGain`: learnable
            per-channel gains in [-1, 1]. Orthogonal layers alone cannot
            weigh their channels (every singular value is 1); the gains can,
            and they keep the model 1-Lipschitz (the bound multiplies by
            each layer's largest gain, at most 1; measured in
            docs/experiments.md).

    Returns:
        A new model; `model` is left unchanged.
    """
    if mode not in MODES:
        raise ValueError(f"Argument `mode` must be one of {MODES}, got mode={mode!r}.")
    check_graph_model(model)
    if activation not in ACTIVATIONS:
        raise ValueError(f"Argument `activation` must be one of {ACTIVATIONS}, got activation={activation!r}.")
    if pooling not in POOLINGS:
        raise ValueError(f"Argument `pooling` must be one of {POOLINGS}, got pooling={pooling!r}.")
    if conv not in CONVOLUTIONS:
        raise ValueError(f"Argument `conv` must be one of {CONVOLUTIONS}, got conv={conv!r}.")
    if mode == "insert":
        if activation != "groupsort":
            raise ValueError("Argument `activation` applies to mode='replace'; insert's RobustBlocks use GroupSort.")
        if pooling != "l2norm":
            raise ValueError("Argument `pooling` applies to mode='replace'; insert keeps the model's pooling.")
        if channel_gains:
            raise ValueError("Argument `channel_gains` applies to mode='replace'; insert's blocks are orthogonal.")
        return _insert(model, after, keep_weights, group_size, conv)
    return _replace(model, keep_weights, _activation_factory(activation, group_size), input_offset, pooling,
                    channel_gains, conv)


# Insert --------------------------------------------------------------------


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
        if size is not None and _resolution_level(size, full) is not None and not isinstance(layer, _NOT_A_STAGE_END):
            levels.append((layer, _resolution_level(size, full)))
    chosen = {}
    finest_after = math.inf  # the finest (lowest) level of any later layer
    for layer, level in reversed(levels):
        if (level > 0 and level not in chosen and level <= finest_after and _suitable(layer, group_size)):
            chosen[level] = layer
        finest_after = min(finest_after, level)
    return [chosen[level] for level in sorted(chosen)]


def _suitable(layer, group_size):
    if isinstance(layer, _NOT_A_STAGE_END) or not isinstance(layer, keras.layers.Layer):
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


def _insert(model, after, keep_weights, group_size, conv):
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
                    name=f"{original.name}_robust_block",
                )
            out = blocks[id(original)](out)
        return out

    new = rewrite(model, clone_function, call_function)
    new.name = f"{model.name}_insert"
    if keep_weights:
        for old, copy in copies:
            copy.set_weights(old.get_weights())
    return new


# Replace -------------------------------------------------------------------


class _Refused(ValueError):
    """A layer `replace` has no 1-Lipschitz counterpart for (raised if it stays in the model)."""


def _activation_name(layer):
    act = getattr(layer, "activation", None)
    if act is None:
        return "linear"
    return getattr(act, "__name__", str(act))


def _unsupported(layer, why="", fix=""):
    kind = type(layer).__name__ if isinstance(layer, keras.layers.Layer) else f"keras.ops {type(layer).__name__}"
    return _Refused(
        f"robustify(mode='replace') has no 1-Lipschitz counterpart for layer "
        f"'{layer.name}' ({kind}){': ' + why if why else ''}. "
        + (fix or "Replace or remove it in the model, or use mode='insert', which keeps the model's layers.")
    )


def _shape_fix(layer, produced, expected, name):
    """Crop the replacement's output to the original layer's output size."""
    dh, dw = produced[0] - expected[0], produced[1] - expected[1]
    if dh < 0 or dw < 0:
        raise _unsupported(layer, f"its output {tuple(expected)} is larger than the orthogonal one {produced}")
    if dh == dw == 0:
        return []
    return [keras.layers.Cropping2D(((dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2)), name=f"{name}_crop")]


def _zero_pad(in_size, s, name):
    """A bottom / right zero pad to a multiple of `s`: 1-Lipschitz (it keeps every value)."""
    ph, pw = (-in_size[0]) % s, (-in_size[1]) % s
    if ph == pw == 0:
        return [], tuple(in_size)
    return [keras.layers.ZeroPadding2D(((0, ph), (0, pw)), name=f"{name}_pad")], (in_size[0] + ph, in_size[1] + pw)


def _activation_factory(activation, group_size):
    """`(name, channels) -> layer`: the replacement activation.

    GroupSort needs `group_size` to divide the channels; where it does not (an odd
    channel count), the 1-Lipschitz ReLU stands in.
    """
    def relu(name, channels=None):
        return keras.layers.ReLU(name=name)

    if activation == "relu":
        return relu

    def groupsort(name, channels=None):
        if channels is not None and channels % group_size:
            return relu(name)
        return robust_layers.GroupSort(group_size, name=name)

    return groupsort


def _sequential(parts, name):
    return parts[0] if len(parts) == 1 else keras.Sequential(parts, name=name)


def _output_parts(squash, name):
    """`OutputScale` in front of a kept output activation (`squash`): the scale reaches the range."""
    return [robust_layers.OutputScale(scale=1.0, offset=0.0, name="output_scale"),
            keras.layers.Activation(squash, name=f"{name}_{squash}")]


def _replacement(layer, in_shape, activation, pooling, gains, conv, squash):
    """The 1-Lipschitz layer (or small Sequential) that stands in for `layer`.

    `in_shape`: the shape of the input of this call; `activation`: `(name, channels) ->
    layer`, the activation to put in place of the original ones; `pooling`: one of
    `POOLINGS`; `gains`: follow a convolution or dense layer by a `ChannelGain`; `conv`:
    one of `CONVOLUTIONS`; `squash`: the output activation to keep (`layer` computes
    the model's output), or None.
    """
    name = layer.name
    if not isinstance(layer, keras.layers.Layer):
        raise _unsupported(layer, "an operation on tensors (keras.ops) with no known Lipschitz constant")
    if isinstance(layer, _KEEP):
        return layer.__class__.from_config(layer.get_config())
    if isinstance(layer, _NORMALIZATION):
        return keras.layers.Identity(name=name)
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
        return _conv_replacement(layer, in_shape, activation, gains, conv, squash)
    if isinstance(layer, keras.layers.Dense):
        if len(in_shape) != 2:
            raise _unsupported(layer, f"a Dense layer on {len(in_shape)}-D inputs {tuple(in_shape)}",
                               "Flatten or pool its input to (batch, features) first.")
        parts = [robust_layers.OrthoDense(layer.units, name=f"{name}_ortho")]
        parts += [robust_layers.ChannelGain(name=f"{name}_gain")] if gains else []
        parts += _activation_parts(layer, activation, layer.units, squash, name)
        return _sequential(parts, name)
    if isinstance(layer, _ACTIVATIONS):
        act = _activation_name(layer) if isinstance(layer, keras.layers.Activation) else "relu"
        if squash is not None:
            return _sequential(_output_parts(squash, name), name)
        if act == "linear":
            return keras.layers.Identity(name=name)
        return activation(name, in_shape[-1])
    if isinstance(layer, _POOLING):
        return _pooling_replacement(layer, in_shape, pooling)
    if isinstance(layer, _GLOBAL_POOLING):
        if getattr(layer, "keepdims", False):
            raise _unsupported(layer, "keepdims=True (a global pooling that keeps the map axes)",
                               "Use keepdims=False, and a Reshape where the model needs the axes.")
        return robust_layers.GlobalL2NormPooling2D(name=name)
    if isinstance(layer, keras.layers.Add):
        return robust_layers.ConvexCombination(name=name)
    if isinstance(layer, keras.layers.Multiply):
        raise _unsupported(
            layer, "a product of two signals that both depend on the input has no Lipschitz bound "
            "(only a squeeze-excite gate, x times a (batch, 1, 1, C) gate computed from x, has a "
            "stand-in: a learnable ChannelGain on x)")
    if isinstance(layer, keras.Model):
        raise _unsupported(layer, "a subclassed model, whose layers robustify cannot see",
                           "Rebuild it with the functional API.")
    raise _unsupported(layer)


def _activation_parts(layer, activation, channels, squash, name):
    act = _activation_name(layer)
    if squash is not None:
        return _output_parts(squash, name)
    if act == "linear":
        return []
    return [activation(f"{name}_activation", channels)]


def _conv_replacement(layer, in_shape, activation, gains, conv, squash):
    name = layer.name
    depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
    channels = in_shape[-1]
    filters = channels * layer.depth_multiplier if depthwise else layer.filters
    strides = layer.strides
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise _unsupported(layer, "data_format='channels_first'", "Build the model channels-last.")
    if strides[0] != strides[1] or strides[0] not in (1, 2):
        raise _unsupported(layer, f"strides {strides}; the orthogonal convolutions take 1 or 2")
    if tuple(layer.dilation_rate) != (1, 1):
        raise _unsupported(layer, f"dilation_rate {tuple(layer.dilation_rate)}")
    if None in in_shape[1:3] and conv == "fourier":
        raise _unsupported(layer, f"input shape {tuple(in_shape)} has no static size, which the Fourier "
                           "OrthoConv2D needs", "Use conv='block' (any input size).")
    groups = 1 if depthwise else layer.groups
    if groups != 1 and conv == "fourier":
        raise _unsupported(layer, f"groups={groups}; the Fourier OrthoConv2D is not grouped",
                           "Use conv='block' (BlockOrthoConv2D takes groups).")
    s = strides[0]
    expected = tuple(layer.compute_output_shape(tuple(in_shape))[1:3])
    parts = []
    if conv == "block":
        if depthwise:
            groups = channels // _depthwise_group_width(channels)
        # "same" padding gives ceil(n / s) outputs, cropped below where the original pads less.
        kernel_size = tuple(max(k, s) for k in layer.kernel_size)
        ortho = robust_layers.BlockOrthoConv2D(filters, kernel_size, strides=s, groups=groups, name=f"{name}_ortho")
        produced = tuple(None if n is None else -(-n // s) for n in in_shape[1:3])
    else:
        # The Fourier layer needs sizes divisible by the stride: an odd map gets a zero row / column.
        parts, padded = _zero_pad(in_shape[1:3], s, name)
        ortho = robust_layers.OrthoConv2D(filters, layer.kernel_size, strides=s, padding="same", name=f"{name}_ortho")
        produced = (padded[0] // s, padded[1] // s)
    parts.append(ortho)
    parts += [robust_layers.ChannelGain(name=f"{name}_gain")] if gains else []
    if None not in produced and None not in expected:
        parts += _shape_fix(layer, produced, expected, name)
    parts += _activation_parts(layer, activation, filters, squash, name)
    return _sequential(parts, name)


def _pooling_replacement(layer, in_shape, pooling):
    name = layer.name
    s = layer.strides
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise _unsupported(layer, "data_format='channels_first'", "Build the model channels-last.")
    if s[0] != s[1]:
        raise _unsupported(layer, f"strides {s}; the 1-Lipschitz poolings take equal strides")
    if None in in_shape[1:3]:
        raise _unsupported(layer, f"input shape {tuple(in_shape)} has no static size")
    # Odd maps get a zero row / column: the windows of the 1-Lipschitz poolings must tile the map.
    parts, padded = _zero_pad(in_shape[1:3], s[0], name)
    if pooling == "invertible":
        parts.append(robust_layers.InvertibleDownsampling(s[0], name=f"{name}_space_to_depth"))
    else:
        parts.append(robust_layers.L2NormPooling2D(s, name=f"{name}_l2"))
    expected = tuple(layer.compute_output_shape(tuple(in_shape))[1:3])
    parts += _shape_fix(layer, (padded[0] // s[0], padded[1] // s[1]), expected, name)
    return _sequential(parts, name)


def _depthwise_group_width(channels):
    """The smallest divisor of `channels` that is at least `DEPTHWISE_GROUP_WIDTH` (or all of them)."""
    return next(w for w in range(min(DEPTHWISE_GROUP_WIDTH, channels), channels + 1) if channels % w == 0)


def _squash(layer):
    """The output activation `replace` keeps on `layer` (the model's output layer), or None."""
    if layer is None:
        return None
    if isinstance(layer, keras.layers.Activation) or hasattr(layer, "activation"):
        name = _activation_name(layer)
        return name if name in SQUASHING else None
    return None


def _gate(tensors, ancestors):
    """`(x, gate)` when `tensors` are `x` and a `(batch, 1, 1, C)` gate computed from `x`."""
    if len(tensors) != 2 or any(len(t.shape) != 4 for t in tensors):
        return None
    for x, gate in (tensors, tensors[::-1]):
        if (tuple(gate.shape[1:3]) == (1, 1) and gate.shape[-1] == x.shape[-1]
                and id(x) in ancestors.get(id(gate), ())):
            return x, gate
    return None


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
        if centre is not None and not isinstance(layer, _PREPROCESSING):
            args = keras.tree.map_structure(
                lambda t: _centred(t, centre, centred) if id(t) in top_inputs else t, args)
        gate = _gate(tensors, ancestors) if isinstance(layer, keras.layers.Multiply) else None
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
        _transfer_kernels(model, replaced)
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


def _transfer_kernels(model, replaced):
    """Start each orthogonal kernel from the original one where shapes match."""
    for layer in flat_layers(model):
        new = replaced.get(id(layer))
        if new is None or not hasattr(layer, "kernel"):
            continue
        parts = new.layers if isinstance(new, keras.Sequential) else [new]
        target = next((p for p in parts if isinstance(p, (robust_layers.OrthoConv2D, robust_layers.OrthoDense))),
                      None)
        kernel = getattr(target, "kernel", None)
        if kernel is None:
            continue
        source = np.asarray(layer.kernel)
        if tuple(kernel.shape) == source.shape and np.any(source):
            kernel.assign(source)
            target.alpha.assign(target.kernel_norm())
