"""Swapping a model's ReLUs for a smooth activation, as the paper's code does (ReLU -> SiLU,
GELU or ELU) before it inserts its orthogonal blocks."""

import keras

from keras_robust_iqa.models.graph import check_graph_model, rewrite

# The activations `swap_activations` puts in place of ReLU.
SMOOTH_ACTIVATIONS = ("silu", "gelu", "elu")


def _is_plain_relu_layer(layer, config):
    """A `keras.layers.ReLU` (of config `config`) that computes max(x, 0): no cap, no threshold,
    no slope below 0."""
    return (isinstance(layer, keras.layers.ReLU) and config.get("max_value") is None
            and not config.get("negative_slope") and not config.get("threshold"))


def swap_activations(model, activation):
    """A copy of `model` with every ReLU computed by `activation`, weights kept.

    The ReLUs swapped: an `Activation("relu")`, a layer built with `activation="relu"`
    (Conv2D, Dense, ...), and a plain `keras.layers.ReLU` (which becomes an
    `Activation(activation)` of the same name). Capped, thresholded or leaky ReLUs (the
    ReLU6 of MobileNet) are other functions and stay as they are. Nested functional and
    Sequential models are rewritten too.

    Args:
        model: a built functional or Sequential Keras model.
        activation: one of `SMOOTH_ACTIVATIONS` ("silu", "gelu", "elu").

    Returns:
        The new functional model, named as `model`.

    Raises:
        ValueError: for another activation, a subclassed model, or a model without a
            ReLU to swap.
    """
    if activation not in SMOOTH_ACTIVATIONS:
        raise ValueError(f"Argument `activation` must be one of {SMOOTH_ACTIVATIONS}, got activation={activation!r}.")
    check_graph_model(model, "swap_activations")
    swapped = []
    copies = []

    def clone_function(layer):
        if not isinstance(layer, keras.layers.Layer):
            return layer  # a keras.ops operation: no state
        config = layer.get_config()
        if _is_plain_relu_layer(layer, config):
            new = keras.layers.Activation(activation, name=layer.name, dtype=layer.dtype_policy)
            swapped.append(layer.name)
        elif config.get("activation") == "relu":  # Conv2D, Dense, Activation, ... built with activation="relu"
            new = layer.__class__.from_config({**config, "activation": activation})
            swapped.append(layer.name)
        else:
            new = layer.__class__.from_config(config)
        copies.append((layer, new))
        return new

    new = rewrite(model, clone_function, lambda layer, *args, **kwargs: layer(*args, **kwargs))
    if not swapped:
        raise ValueError(f"Model '{model.name}' has no ReLU to swap for {activation} (an Activation('relu'), a "
                         f"layer with activation='relu' or a plain keras.layers.ReLU).")
    for old, copy in copies:
        if old.weights:
            copy.set_weights(old.get_weights())
    return new
