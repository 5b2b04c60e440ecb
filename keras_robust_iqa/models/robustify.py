"""`robustify(model, mode=...)`: apply RobustBlocks to an existing Keras model."""

import keras
import numpy as np

from keras_robust_iqa import layers as robust_layers
from keras_robust_iqa.layers import robust_block
from keras_robust_iqa.models.backbones import ChannelReverse

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


def robustify(model, mode="replace", *, conv="fourier", after=None, keep_weights=True, group_size=2,
              input_offset=-0.5, activation="groupsort", pooling="l2norm", channel_gains=False):
    """Apply RobustBlocks to a functional Keras model, with no hand editing.

    Args:
        model: a functional (or Sequential) Keras model taking fixed-size
            image patches.
        mode:
            - `"insert"`, the paper's recipe: a residual `RobustBlock` (a
              convex combination `l x + (1 - l) f(x)`, so the stage keeps its
              width and its function at `l = 1`) is inserted after chosen
              stages of the unchanged backbone.
            - `"replace"`: every Conv2D / DepthwiseConv2D becomes an
              orthogonal convolution (`conv`), Dense an `OrthoDense`, every activation
              `GroupSort` (`MaxMin` at the default group size) or ReLU,
              pooling `L2NormPooling2D` (or space-to-depth: `pooling`), global pooling
              `GlobalL2NormPooling2D`, BatchNorm is dropped, `Add` becomes a
              `ConvexCombination`, and one learnable `OutputScale` ends the
              network: the whole model is 1-Lipschitz up to that scale, and
              `lipschitz_bound` certifies it.
        conv: the orthogonal convolution of the RobustBlocks (insert) or of
            every replaced convolution (replace): `"fourier"`, `OrthoConv2D`
            (the paper's Cayley transform per frequency, for one static patch
            size), or `"block"`, `BlockOrthoConv2D` (a compact orthogonal kernel
            applied as a plain convolution: Conv2D's cost, any input size).
            With `"block"`, a `DepthwiseConv2D` becomes a grouped
            `BlockOrthoConv2D` whose groups mix `DEPTHWISE_GROUP_WIDTH` channels
            (a one-channel orthogonal filter could only shift its input); with
            `"fourier"`, a full `OrthoConv2D`.
        after: for `"insert"`, names of the layers to insert a block after.
            Default: the end of every stage (the last layer before a change
            of resolution, and the last 4-D layer) below full resolution; the
            full-resolution stage is skipped because the orthogonal
            convolution's cost grows with `H x W`.
        keep_weights: copy the weights of the layers that stay (insert) or
            initialise orthogonal kernels from the original kernels where the
            shapes match (replace), so a trained model is a head start.
        group_size: GroupSort group size for the new activations.
        input_offset: for `"replace"`, added to the inputs by a
            `Rescaling(1, offset=input_offset)` first layer (`None`: none),
            unless the model preprocesses its inputs itself (a `Rescaling`
            or `Normalization` reads them, as in the backbones).
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
    if not isinstance(model, keras.Model) or not hasattr(model, "inputs") or not model.inputs:
        raise ValueError(
            f"robustify needs a functional or Sequential Keras model, got {type(model).__name__}."
        )
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


def flat_layers(model):
    """The layers of `model`, with nested functional models opened up."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model) and not isinstance(layer, keras.Sequential):
            out.extend(flat_layers(layer))
        else:
            out.append(layer)
    return out


def stage_ends(model):
    """Names of the last layer of each resolution stage, in order."""
    four_d = [
        layer for layer in flat_layers(model)
        if not isinstance(layer, keras.layers.InputLayer) and len(layer.output.shape) == 4
    ]
    ends = []
    for layer, nxt in zip(four_d, four_d[1:] + [None]):
        if nxt is None or nxt.output.shape[1:3] != layer.output.shape[1:3]:
            # A pooling layer ends a stage by changing the size: take the
            # layer that feeds it.
            ends.append(layer.name)
    return ends


def _default_insert_points(model):
    full = model.inputs[0].shape[1:3]
    chosen = []
    by_name = {layer.name: layer for layer in flat_layers(model)}
    for name in stage_ends(model):
        layer = by_name[name]
        if isinstance(layer, _POOLING):
            continue
        if tuple(layer.output.shape[1:3]) != tuple(full):
            chosen.append(name)
    return chosen


def _insert(model, after, keep_weights, group_size, conv):
    by_name = {layer.name: layer for layer in flat_layers(model)}
    names = set(by_name)
    after = list(after) if after is not None else _default_insert_points(model)
    unknown = [n for n in after if n not in names]
    if unknown:
        raise ValueError(f"Argument `after` names layers not in the model: {unknown}.")
    if not after:
        raise ValueError("No layer to insert a RobustBlock after: pass `after=[...]`.")
    for name in after:
        shape = by_name[name].output.shape
        if len(shape) != 4:
            raise ValueError(
                f"Argument `after`: layer '{name}' has output shape {tuple(shape)}; a "
                "RobustBlock needs a 4-D (batch, height, width, channels) output."
            )
        if shape[-1] % group_size:
            raise ValueError(
                f"Layer '{name}' has {shape[-1]} channels, not divisible by group_size={group_size}."
            )
    targets = set(after)

    def call_function(layer, *args, **kwargs):
        out = layer(*args, **kwargs)
        if layer.name in targets:
            block = robust_layers.RobustBlock(
                out.shape[-1], group_size=group_size, residual=True, residual_init=0.9, conv=conv,
                name=f"{layer.name}_robust_block",
            )
            out = block(out)
        return out

    new = keras.models.clone_model(model, call_function=call_function, recursive=True)
    new.name = f"{model.name}_insert"
    if keep_weights:
        new_by_name = {layer.name: layer for layer in flat_layers(new)}
        for name, layer in by_name.items():
            new_by_name[name].set_weights(layer.get_weights())
    return new


# Replace -------------------------------------------------------------------


def _activation_name(layer):
    act = getattr(layer, "activation", None)
    if act is None:
        return "linear"
    return getattr(act, "__name__", str(act))


def _unsupported(layer, why=""):
    return ValueError(
        f"robustify(mode='replace') has no 1-Lipschitz counterpart for layer "
        f"'{layer.name}' ({type(layer).__name__}){': ' + why if why else ''}."
    )


def _shape_fix(layer, produced, name):
    """Crop the replacement's output to the original layer's output size."""
    expected = layer.output.shape[1:3]
    dh, dw = produced[0] - expected[0], produced[1] - expected[1]
    if dh < 0 or dw < 0:
        raise _unsupported(layer, f"its output {tuple(expected)} is larger than the orthogonal one {produced}")
    if dh == dw == 0:
        return []
    return [keras.layers.Cropping2D(((dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2)), name=f"{name}_crop")]


def _activation_factory(activation, group_size):
    """`name -> layer`: the replacement activation."""
    if activation == "relu":
        return lambda name: keras.layers.ReLU(name=name)
    return lambda name: robust_layers.GroupSort(group_size, name=name)


def _replacement(layer, activation, pooling, gains, conv):
    """The 1-Lipschitz layer (or small Sequential) that stands in for `layer`.

    `activation`: `name -> layer`, the activation to put in place of the original ones;
    `pooling`: one of `POOLINGS`; `gains`: follow a convolution or dense layer by a
    `ChannelGain`; `conv`: one of `CONVOLUTIONS`.
    """
    name = layer.name
    if isinstance(layer, _KEEP):
        return layer.__class__.from_config(layer.get_config())
    if isinstance(layer, _NORMALIZATION):
        return keras.layers.Identity(name=name)
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
        in_shape = layer.input.shape
        filters = layer.filters if isinstance(layer, keras.layers.Conv2D) else in_shape[-1] * layer.depth_multiplier
        strides = layer.strides
        if strides[0] != strides[1] or strides[0] not in (1, 2):
            raise _unsupported(layer, f"strides {strides}; OrthoConv2D takes 1 or 2")
        if layer.dilation_rate not in ((1, 1), 1):
            raise _unsupported(layer, "dilated convolution")
        if getattr(layer, "groups", 1) != 1:
            raise _unsupported(layer, "grouped convolution")
        s = strides[0]
        if conv == "block":
            # Any input size: "same" padding gives ceil(n / s) outputs, cropped below where
            # the original pads less.
            groups = 1
            if isinstance(layer, keras.layers.DepthwiseConv2D):
                groups = in_shape[-1] // _depthwise_group_width(in_shape[-1])
            kernel_size = tuple(max(k, s) for k in layer.kernel_size)
            ortho = robust_layers.BlockOrthoConv2D(
                filters, kernel_size, strides=s, groups=groups, name=f"{name}_ortho"
            )
            produced = tuple(-(-n // s) for n in in_shape[1:3])
        else:
            if in_shape[1] % s or in_shape[2] % s:
                raise _unsupported(layer, f"strides {s} do not divide the input size {tuple(in_shape[1:3])}")
            ortho = robust_layers.OrthoConv2D(
                filters, layer.kernel_size, strides=s, padding="same", name=f"{name}_ortho"
            )
            produced = (in_shape[1] // s, in_shape[2] // s)
        parts = [ortho] + ([robust_layers.ChannelGain(name=f"{name}_gain")] if gains else [])
        parts += _shape_fix(layer, produced, name)
        if _activation_name(layer) != "linear":
            parts.append(activation(f"{name}_activation"))
        return parts[0] if len(parts) == 1 else keras.Sequential(parts, name=name)
    if isinstance(layer, keras.layers.Dense):
        parts = [robust_layers.OrthoDense(layer.units, name=f"{name}_ortho")]
        parts += [robust_layers.ChannelGain(name=f"{name}_gain")] if gains else []
        if _activation_name(layer) != "linear":
            parts.append(activation(f"{name}_activation"))
        return parts[0] if len(parts) == 1 else keras.Sequential(parts, name=name)
    if isinstance(layer, _ACTIVATIONS):
        if isinstance(layer, keras.layers.Activation) and _activation_name(layer) == "linear":
            return keras.layers.Identity(name=name)
        return activation(name)
    if isinstance(layer, _POOLING):
        in_shape = layer.input.shape
        s = layer.strides[0]
        if in_shape[1] % s or in_shape[2] % s:
            raise _unsupported(layer, f"strides {s} do not divide the input size {tuple(in_shape[1:3])}")
        if pooling == "invertible":
            if layer.strides[0] != layer.strides[1]:
                raise _unsupported(layer, f"strides {layer.strides}; space-to-depth needs equal strides")
            parts = [robust_layers.InvertibleDownsampling(s, name=f"{name}_space_to_depth")]
        else:
            parts = [robust_layers.L2NormPooling2D(layer.strides, name=f"{name}_l2")]
        parts += _shape_fix(layer, (in_shape[1] // s, in_shape[2] // s), name)
        return parts[0] if len(parts) == 1 else keras.Sequential(parts, name=name)
    if isinstance(layer, _GLOBAL_POOLING):
        if getattr(layer, "keepdims", False):
            raise _unsupported(layer, "keepdims=True")
        return robust_layers.GlobalL2NormPooling2D(name=name)
    if isinstance(layer, keras.layers.Add):
        return robust_layers.ConvexCombination(name=name)
    raise _unsupported(layer)


def _depthwise_group_width(channels):
    """The smallest divisor of `channels` that is at least `DEPTHWISE_GROUP_WIDTH` (or all of them)."""
    return next(w for w in range(min(DEPTHWISE_GROUP_WIDTH, channels), channels + 1) if channels % w == 0)


def _replace(model, keep_weights, activation, input_offset, pooling, channel_gains, conv):
    if len(model.outputs) != 1:
        raise ValueError("robustify(mode='replace') supports single-output models.")
    replaced = {}
    output_layer = model.outputs[0]._keras_history.operation
    reads_input = _input_readers(model)
    new_readers = set()  # ids of the replacements of the layers in `reads_input`
    # A model that preprocesses its inputs itself (the keras.applications
    # backbones) is already centred.
    preprocesses = any(isinstance(l, _PREPROCESSING) for l in reads_input.values())
    centre = None
    if input_offset and not preprocesses:
        centre = keras.layers.Rescaling(1.0, offset=input_offset, name="centre_inputs")
    centred = {}

    def clone_function(layer):
        # The output layer's gain would repeat OutputScale's.
        gains = channel_gains and layer is not output_layer
        new = _replacement(layer, activation, pooling, gains, conv)
        replaced[layer.name] = new
        if id(layer) in reads_input:
            new_readers.add(id(new))
        return new

    def call_function(layer, *args, **kwargs):
        # The originals' call kwargs (a BatchNorm's `mask`) need not fit the
        # replacements; none of the replacements uses a mask.
        kwargs.pop("mask", None)
        if centre is not None and id(layer) in new_readers:
            args = keras.tree.map_structure(lambda t: _centred(t, centre, centred), args)
        return layer(*args, **kwargs)

    body = keras.models.clone_model(
        model, clone_function=clone_function, call_function=call_function, recursive=True
    )
    outputs = robust_layers.OutputScale(scale=1.0, offset=0.5, name="output_scale")(body.outputs[0])
    new = keras.Model(body.inputs, outputs, name=f"{model.name}_replace")
    if keep_weights:
        _transfer_kernels(model, replaced)
    return new


def _input_readers(model):
    """`{id: layer}` of the layers of `model` (not of nested models) that read its inputs."""
    inputs = {id(t) for t in model.inputs}
    return {
        id(node.operation): node.operation
        for nodes in model._nodes_by_depth.values()
        for node in nodes
        if any(id(t) in inputs for t in node.input_tensors)
    }


def _centred(tensor, centre, cache):
    """`centre(tensor)` for a model input (once per input), other values as they are."""
    history = getattr(tensor, "_keras_history", None)
    if history is None or not isinstance(history.operation, keras.layers.InputLayer):
        return tensor
    if id(tensor) not in cache:
        cache[id(tensor)] = centre(tensor)
    return cache[id(tensor)]


def _transfer_kernels(model, replaced):
    """Start each orthogonal kernel from the original one where shapes match."""
    for layer in flat_layers(model):
        new = replaced.get(layer.name)
        if new is None or not hasattr(layer, "kernel"):
            continue
        target = new.layers[0] if isinstance(new, keras.Sequential) else new
        kernel = getattr(target, "kernel", None)
        if kernel is None:
            continue
        source = np.asarray(layer.kernel)
        if tuple(kernel.shape) == source.shape and np.any(source):
            kernel.assign(source)
            target.alpha.assign(target.kernel_norm())
