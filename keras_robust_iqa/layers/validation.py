"""Argument checks shared by the layers: errors name the argument and the value."""

import keras


def check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"Argument `{name}` must be a positive integer, got {name}={value!r}.")
    return value


def normalize_pair(name, value, allowed=None):
    """An int or a pair of ints -> a tuple of two positive ints."""
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        pair = tuple(pair)
    except TypeError:
        pair = ()
    if len(pair) != 2 or any(
        isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in pair
    ):
        raise ValueError(
            f"Argument `{name}` must be a positive integer or a pair of them, got {name}={value!r}."
        )
    if allowed is not None and any(v not in allowed for v in pair):
        raise ValueError(f"Argument `{name}` must be one of {allowed}, got {name}={value!r}.")
    return pair


def orthogonal_conv_arguments(filters, kernel_size, strides, padding):
    """The checked `(filters, kernel_size, strides, padding)` of an orthogonal convolution.

    Strides 1 or 2, equal on both axes; padding "same" or "circular".
    """
    filters = check_positive_int("filters", filters)
    pair = normalize_pair("kernel_size", kernel_size)
    stride_pair = normalize_pair("strides", strides, allowed=(1, 2))
    if stride_pair[0] != stride_pair[1]:
        raise ValueError(f"Argument `strides` must be equal along both axes, got strides={strides!r}.")
    if padding not in ("same", "circular"):
        raise ValueError(f"Argument `padding` must be 'same' or 'circular', got padding={padding!r}.")
    return filters, pair, stride_pair, padding


def strided_output_shape(input_shape, filters, stride, padding="same"):
    """`(batch, height, width, filters)` of a stride-`stride` convolution of a rank-4 input.

    `"same"` rounds the sizes up, as `keras.layers.Conv2D`; `"circular"` rounds them down
    (space-to-depth). Unknown sizes stay None.
    """
    b, h, w, _ = input_shape

    def size(n):
        if n is None:
            return None
        return n // stride if padding == "circular" else -(-n // stride)

    return (b, size(h), size(w), filters)


def check_rank4(layer, input_shape):
    if len(input_shape) != 4:
        raise ValueError(
            f"{type(layer).__name__} expects rank-4 inputs (batch, height, width, "
            f"channels), got input_shape={tuple(input_shape)}."
        )


def input_channels(layer, input_shape):
    """The channel count of a rank-4 input, which the layer needs known to build its weights."""
    check_rank4(layer, input_shape)
    if input_shape[-1] is None:
        raise ValueError(
            f"{type(layer).__name__} needs a known number of input channels, got input_shape={tuple(input_shape)}."
        )
    return input_shape[-1]


def float32_dtype_policy(dtype):
    """Keep a layer in float32 under a mixed-precision policy.

    FFTs, matrix inverses and sorts that must stay exactly norm-preserving are
    not accurate in float16/bfloat16; like Keras' advice for a softmax output,
    these layers run in float32 and the next layer casts back.
    """
    policy = keras.dtype_policies.get(dtype) if dtype is not None else keras.config.dtype_policy()
    if policy.compute_dtype in ("float16", "bfloat16"):
        return "float32"
    return dtype
