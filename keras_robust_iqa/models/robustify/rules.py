"""What `robustify(model, mode="replace")` puts in place of each layer: the 1-Lipschitz stand-ins.

Which kind of stand-in a layer gets is the layer's (or the Keras table's) to say
(`LayerContract.replacement`, `layers.keras_rules`); how each kind is built is here.
"""

import keras

from keras_robust_iqa import layers as robust_layers
from keras_robust_iqa.layers.keras_rules import contract_of
from keras_robust_iqa.models.robustify.options import DEPTHWISE_GROUP_WIDTH, SQUASHING


def _replacement_kind(layer):
    """What `replace` makes of `layer`, as it (or the Keras table) states: a `REPLACEMENTS` entry or None."""
    stated = contract_of(layer)
    return None if stated is None else stated.replacement


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
    kind = _replacement_kind(layer)
    if kind == "keep":
        return layer.__class__.from_config(layer.get_config())
    if kind == "identity":
        return keras.layers.Identity(name=name)
    if kind in ("conv", "depthwise_conv", "separable_conv"):
        return _conv_replacement(layer, in_shape, activation, gains, conv, squash)
    if kind == "dense":
        if len(in_shape) != 2:
            raise _unsupported(layer, f"a Dense layer on {len(in_shape)}-D inputs {tuple(in_shape)}",
                               "Flatten or pool its input to (batch, features) first.")
        parts = [robust_layers.OrthoDense(layer.units, name=f"{name}_ortho")]
        parts += [robust_layers.ChannelGain(name=f"{name}_gain")] if gains else []
        parts += _activation_parts(layer, activation, layer.units, squash, name)
        return _sequential(parts, name)
    if kind in ("activation", "nonlinearity"):
        act = _activation_name(layer) if kind == "activation" else "relu"
        if squash is not None:
            return _sequential(_output_parts(squash, name), name)
        if act == "linear":
            return keras.layers.Identity(name=name)
        return activation(name, in_shape[-1])
    if kind == "pooling":
        return _pooling_replacement(layer, in_shape, pooling)
    if kind == "global_pooling":
        if getattr(layer, "keepdims", False):
            raise _unsupported(layer, "keepdims=True (a global pooling that keeps the map axes)",
                               "Use keepdims=False, and a Reshape where the model needs the axes.")
        return robust_layers.GlobalL2NormPooling2D(name=name)
    if kind == "add":
        return robust_layers.ConvexCombination(name=name)
    if kind == "product":
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
    """A convolution's stand-in: its orthogonal counterpart, gains, a crop to its size, the activation.

    A separable convolution gets its depthwise part's counterpart (cropped to the original's
    output size, with no bias: a 1x1 convolution follows), then an orthogonal 1x1 one.
    """
    name = layer.name
    kind = _replacement_kind(layer)
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise _unsupported(layer, "data_format='channels_first'", "Build the model channels-last.")
    if layer.strides[0] != layer.strides[1]:
        raise _unsupported(layer, f"strides {layer.strides}; the orthogonal convolutions take equal strides")
    if tuple(layer.dilation_rate) != (1, 1):
        raise _unsupported(layer, f"dilation_rate {tuple(layer.dilation_rate)}")
    if None in in_shape[1:3] and conv == "fourier":
        raise _unsupported(layer, f"input shape {tuple(in_shape)} has no static size, which the Fourier "
                           "OrthoConv2D needs", "Use conv='block' (any input size).")
    channels = in_shape[-1]
    expected = tuple(layer.compute_output_shape(tuple(in_shape))[1:3])
    if kind in ("depthwise_conv", "separable_conv"):
        depthwise = channels * layer.depth_multiplier
        # A grouped orthogonal convolution, as wide as the depthwise output.
        groups = channels // _depthwise_group_width(channels) if conv == "block" else 1
        if kind == "depthwise_conv":
            filters = depthwise
            parts = _orthogonal_conv(layer, name, in_shape, filters, layer.kernel_size, groups, conv, expected)
        else:
            filters = layer.filters
            parts = _orthogonal_conv(layer, f"{name}_depthwise", in_shape, depthwise, layer.kernel_size, groups,
                                     conv, expected, use_bias=False)
            pointwise_in = (in_shape[0], *expected, depthwise)
            parts += _orthogonal_conv(layer, f"{name}_pointwise", pointwise_in, filters, (1, 1), 1, conv, expected,
                                      strides=1)
    else:
        filters = layer.filters
        if layer.groups != 1 and conv != "block":
            which = "the Fourier OrthoConv2D" if conv == "fourier" else f"conv={conv!r}"
            raise _unsupported(layer, f"groups={layer.groups}; {which} is not grouped",
                               "Use conv='block' (BlockOrthoConv2D takes groups).")
        parts = _orthogonal_conv(layer, name, in_shape, filters, layer.kernel_size, layer.groups, conv, expected)
    parts += [robust_layers.ChannelGain(name=f"{name}_gain")] if gains else []
    parts += _activation_parts(layer, activation, filters, squash, name)
    return _sequential(parts, name)


def _orthogonal_conv(layer, name, in_shape, filters, kernel_size, groups, conv, expected, strides=None,
                     use_bias=True):
    """The orthogonal (`conv="block"`, `"fourier"`) or 1-Lipschitz (`"aol"`, `"sll"`) convolution
    standing in for one convolution of `layer`, cropped to `expected` (the original's output size).

    `strides`: the convolution's (default: `layer`'s). Strides above 2 become a zero pad to a
    multiple of `s`, space-to-depth by `s` (a permutation: `InvertibleDownsampling`) and a
    stride-1 convolution of kernel `ceil(k / s)` on the `s * s` times wider map; for
    `kernel_size == strides` (a patchify stem) that is exact, AOC's RKO: space-to-depth and
    an orthogonal 1x1 convolution, each output reading exactly the original's `s x s` patch.
    """
    s = layer.strides[0] if strides is None else strides
    parts = []
    if s > 2:
        if None in in_shape[1:3]:
            raise _unsupported(layer, f"strides {s} on input shape {tuple(in_shape)}, which has no static "
                               "size: space-to-depth by the stride needs one", "Give the model a fixed input size.")
        parts, padded = _zero_pad(in_shape[1:3], s, name)
        parts.append(robust_layers.InvertibleDownsampling(s, name=f"{name}_space_to_depth"))
        in_shape = (in_shape[0], padded[0] // s, padded[1] // s, in_shape[-1] * s * s)
        kernel_size, s = tuple(-(-k // s) for k in kernel_size), 1
    channels = in_shape[-1]
    if conv == "block":
        # "same" padding gives ceil(n / s) outputs, cropped below where the original pads less.
        kernel_size = tuple(max(k, s) for k in kernel_size)
        ortho = robust_layers.BlockOrthoConv2D(filters, kernel_size, strides=s, groups=groups, use_bias=use_bias,
                                               name=f"{name}_ortho")
        produced = tuple(None if n is None else -(-n // s) for n in in_shape[1:3])
    elif conv == "sll" and s == 1 and filters == channels and all(k % 2 for k in kernel_size):
        ortho = robust_layers.SLLConv2D(kernel_size, name=f"{name}_sll")  # residual: its bias is inside
        produced = tuple(in_shape[1:3])
    elif conv in ("aol", "sll"):
        ortho = robust_layers.AOLConv2D(filters, kernel_size, strides=s, use_bias=use_bias, name=f"{name}_aol")
        produced = tuple(None if n is None else -(-n // s) for n in in_shape[1:3])
    else:
        # The Fourier layer needs sizes divisible by the stride: an odd map gets a zero row / column.
        pad, padded = _zero_pad(in_shape[1:3], s, name)
        parts += pad
        ortho = robust_layers.OrthoConv2D(filters, kernel_size, strides=s, padding="same", use_bias=use_bias,
                                          name=f"{name}_ortho")
        produced = (padded[0] // s, padded[1] // s)
    parts.append(ortho)
    if None not in produced and None not in expected:
        parts += _shape_fix(layer, produced, expected, name)
    return parts


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
