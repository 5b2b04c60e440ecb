"""Rebuild a Keras IQA model into a frozen, builtin-op "deployment" model.

Every orthogonal layer becomes a plain equivalent with its current weights
frozen: `OrthoConv2D` a `LoweredOrthoConv2D` (real DFT matrix products),
`BlockOrthoConv2D` a plain `Conv2D` holding its merged kernel (a
`GroupedConv2D` when grouped; after a `CircularPadding2D` for circular padding), `OrthoDense` a `Dense` holding
its orthogonal matrix, `RobustBlock` the same three steps spelled out, `MaxMin`
(`GroupSort` of pairs) a `LoweredMaxMin` (1x1 convolutions and a ReLU, which
TFLite runs faster than a compare-and-swap), and a fixed `Normalization` the
`Rescaling` it computes (its constants frozen into the graph, which ONNX needs). No Cayley transform, no FFT, no complex tensor and no
inference cache is left, so every export format (SavedModel, TFLite, ONNX)
starts from the same graph of ordinary ops. All other layers are shared with
the original model, weights included.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_robust_iqa import layers as robust_layers
from keras_robust_iqa.deployment.lowered_conv2d import CircularPadding2D, GroupedConv2D, LoweredOrthoConv2D
from keras_robust_iqa.deployment.lowered_max_min import LoweredMaxMin
from keras_robust_iqa.models.patches import model_patch_size
from keras_robust_iqa.models.graph import flat_layers


def deployment_model(model, *, patch_size=None, atol=1e-5, probe_size=4, seed=0):
    """The frozen builtin-op twin of `model`, verified against it.

    Args:
        model: a functional or Sequential Keras model on fixed-size patches
            (a base, robust or pruned IQA model).
        patch_size: the side of the probe patches, for a model that takes any
            input size (default: the model's own).
        atol: largest absolute difference of the outputs allowed on the probe.
        probe_size: patches, uniform in [0, 1], on which both models are run.

    Returns:
        A new Keras model with the same input and output.

    Raises:
        RuntimeError: the lowered model's outputs differ from the original's
            by more than `atol` (a bug, never expected).
    """
    deploy = keras.models.clone_model(model, clone_function=_lowered, recursive=True)
    deploy.name = f"{model.name}_deploy"
    leftovers = [layer.name for layer in flat_layers(deploy) if _is_orthogonal(layer)]
    if leftovers:
        raise RuntimeError(f"Layers left unlowered in the deployment model: {leftovers}.")
    patch = model_patch_size(model, patch_size)
    probe = tf.random.stateless_uniform((probe_size, patch, patch, model.inputs[0].shape[-1]), seed=(seed, 1))
    to_numpy = keras.ops.convert_to_numpy
    gap = float(np.max(np.abs(to_numpy(model(probe, training=False)) - to_numpy(deploy(probe)))))
    if not gap <= atol:
        raise RuntimeError(
            f"Lowering {model.name} changed its outputs by {gap:.3g} (> atol={atol:g})."
        )
    return deploy


def _is_orthogonal(layer):
    return isinstance(layer, (robust_layers.OrthoConv2D, robust_layers.BlockOrthoConv2D, robust_layers.OrthoDense,
                              robust_layers.RobustBlock))


def _lowered(layer):
    if isinstance(layer, (robust_layers.OrthoConv2D, robust_layers.BlockOrthoConv2D)):
        return _lowered_conv(layer)
    if isinstance(layer, robust_layers.OrthoDense):
        return _dense(layer)
    if isinstance(layer, robust_layers.RobustBlock):
        return _robust_block(layer)
    if isinstance(layer, robust_layers.GroupSort):
        return _group_sort(layer)
    if isinstance(layer, keras.layers.Normalization) and not layer.invert:
        return _normalization(layer)
    # Everything else is already made of ordinary ops: share it, weights and all.
    return layer


def _lowered_conv(layer):
    if isinstance(layer, robust_layers.OrthoConv2D):
        return LoweredOrthoConv2D.from_ortho_conv(layer)
    return _plain_conv(layer)


def _plain_conv(layer):
    """A `BlockOrthoConv2D` as the `Conv2D` it computes: its merged kernel, frozen.

    A grouped one becomes a `GroupedConv2D` (one TensorFlow Conv2D op, which ONNX reads;
    Keras's grouped Conv2D runs in an XLA function, which it cannot).
    """
    grouped = layer.groups > 1
    conv = (GroupedConv2D if grouped else keras.layers.Conv2D)(
        layer.filters, layer.kernel_size, strides=layer.strides, groups=layer.groups,
        padding="valid" if layer.padding == "circular" else "same", use_bias=layer.use_bias,
        name=layer.name, trainable=False,
    )
    conv.build((None, None, None, layer.input_channels))
    conv.kernel.assign(keras.ops.convert_to_numpy(layer.orthogonal_kernel()))
    if layer.use_bias:
        conv.bias.assign(keras.ops.convert_to_numpy(layer.bias))
    if layer.padding != "circular":
        return conv
    pad = CircularPadding2D(layer.kernel_size, layer.strides[0], name=f"{layer.name}_circular_pad")
    return keras.Sequential([pad, conv], name=layer.name)


def _group_sort(layer):
    """A `GroupSort` of pairs along the last axis as a `LoweredMaxMin`; any other kept as it is."""
    if layer.group_size == 2 and layer.axis == -1:
        return LoweredMaxMin(name=layer.name)
    return layer


def _normalization(layer):
    """A fixed `Normalization` as the `Rescaling` it computes, `x / std - mean / std`.

    Keras keeps its mean and variance as eager tensors, which tf2onnx cannot freeze
    (they stay as graph inputs); a `Rescaling` makes them constants of the graph.
    """
    axes = layer.axis if isinstance(layer.axis, (tuple, list)) else (layer.axis,)
    if tuple(axes) not in ((-1,), (len(layer.input.shape) - 1,)):
        return layer
    mean = keras.ops.convert_to_numpy(layer.mean).astype("float64").reshape(-1)
    variance = keras.ops.convert_to_numpy(layer.variance).astype("float64").reshape(-1)
    scale = 1.0 / np.maximum(np.sqrt(variance), keras.config.epsilon())
    return keras.layers.Rescaling(scale.astype("float32"), offset=(-mean * scale).astype("float32"),
                                  name=layer.name)


def _dense(layer):
    q = keras.ops.convert_to_numpy(layer.orthogonal_matrix())
    dense = keras.layers.Dense(layer.units, use_bias=layer.use_bias, name=layer.name, trainable=False)
    dense.build((None, q.shape[1]))
    dense.kernel.assign(q.T)
    if layer.use_bias:
        dense.bias.assign(keras.ops.convert_to_numpy(layer.bias))
    return dense


def _robust_block(block):
    """`GroupSort(conv(x) + b)`, with the convex residual as a `ConvexCombination`."""
    conv = _lowered_conv(block.conv)
    inputs = keras.Input(getattr(conv, "input_size", (None, None, block.conv.input_channels)))
    y = _group_sort(block.activation)(conv(inputs))
    if block.residual:
        # softmax([t, 0]) = [sigmoid(t), 1 - sigmoid(t)]: the block's own lambda.
        mix = robust_layers.ConvexCombination(name="residual", trainable=False)
        y = mix([inputs, y])
        mix.logits.assign([float(keras.ops.convert_to_numpy(block.residual_logit)), 0.0])
    return keras.Model(inputs, y, name=block.name)
