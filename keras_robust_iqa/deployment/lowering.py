"""Rebuild a Keras IQA model into a frozen, builtin-op "deployment" model.

Each layer says what it lowers to (`lowered()` of the layer contract, `layers.contract`;
Keras's layers through `layers.keras_rules`). Every constrained layer becomes a plain
equivalent with its current weights frozen: `OrthoConv2D` a `LoweredOrthoConv2D` (real DFT
matrix products), `BlockOrthoConv2D` a plain `Conv2D` holding its merged kernel (a
`GroupedConv2D` when grouped; after a `CircularPadding2D` for circular padding), `AOLConv2D` a
`Conv2D` holding its rescaled kernel, `SLLConv2D` two `Conv2D`s, a ReLU and a `Subtract`,
`OrthoDense` a `Dense` holding its orthogonal matrix, `RobustBlock` the same three steps spelled
out, `MaxMin` (`GroupSort` of pairs) a `LoweredMaxMin` (1x1 convolutions and a ReLU, which
TFLite runs faster than a compare-and-swap), and a fixed `Normalization` the `Rescaling` it
computes (its constants frozen into the graph, which ONNX needs). No Cayley transform, no FFT,
no complex tensor and no inference cache is left, so every export format (SavedModel, TFLite, ONNX)
starts from the same graph of ordinary ops. All other layers are shared with
the original model, weights included.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_robust_iqa.layers.keras_rules import contract_of
from keras_robust_iqa.models.graph import flat_layers
from keras_robust_iqa.models.patches import model_patch_size


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
    leftovers = [layer.name for layer in flat_layers(deploy) if _unlowered(layer)]
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


def _lowered(layer):
    """What `layer` states it exports as (itself when it is made of ordinary ops: shared, weights and all)."""
    stated = contract_of(layer)
    return layer if stated is None else stated.lowered()


def _unlowered(layer):
    """A layer that would still lower to something else."""
    stated = contract_of(layer)
    return stated is not None and stated.lowered() is not layer
