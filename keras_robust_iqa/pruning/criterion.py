"""The channel scores pruning ranks by: the paper's mean weight, or the activation energy.

`CRITERIA`:
- `"mean_weight"`: output channel `i` scores `mean(|w_i|)` (the paper's criterion);
- `"activation"`: channel `i` scores the mean of its squared output on a few batches of
  training patches (`activation_energy`): what the channel carries on the data, where the
  weights say what it could carry.

The mean weight, in detail:

Which weights `w_i` are is the layer's to say (`applied_kernel()` of the layer contract,
`layers.contract`); for the layers of this package and Keras's:
- `Conv2D`: the kernel's slice `kernel[..., i]` (all taps, all input channels);
- `Dense`: the column `kernel[:, i]`;
- `SeparableConv2D`: the pointwise kernel's column `pointwise_kernel[..., i]` (as tfmot's
  `PruneRegistry`: the depthwise filters belong to input channels, not to one output);
- `OrthoConv2D` (and the one inside a `RobustBlock`): the kernel of the plain
  circular convolution the layer *computes*, `irfft2d(Q(u, v))[i]` over the
  whole FFT grid and all input channels, not the free kernel it is
  parameterised by;
- `BlockOrthoConv2D` (alone or in a `RobustBlock`): the slice `[..., i]` of the
  compact kernel merged from its orthogonal factors, the kernel it convolves with;
- `OrthoDense`: the row `Q[i]` of the orthogonal matrix it applies.

A `ChannelGain` after the layer is part of that map: `ChannelGraph.scores()`
multiplies the channel's mean weight by the gain's `|d_i|`, so a channel whose
gain went to 0 scores 0 (an orthogonal layer alone cannot silence a channel;
the gain can).

Why the operator and not the free parameters: the Cayley transform of a zero
matrix is the identity, so a free-kernel row near zero does not make a quiet
channel (it passes its input through at full strength); the free kernel's
magnitude says nothing about what the channel carries. The operator's weights
do: for an isometry (more outputs than inputs, the widening layers),
`sum |Q_i|^2` is exactly the share of the input's energy routed into channel
`i` (Parseval), and a channel with small weights carries little. For a square
orthogonal layer every row has unit norm, so the mean of `|w_i|` then ranks
channels by how concentrated their weights are (a few strong weights rather
than many weak ones). Either way it is the same quantity as for `Conv2D` and
`Dense`: the mean magnitude of the weights of the linear map that produces
the channel.
"""

import keras
import numpy as np

from keras_robust_iqa.layers.keras_rules import contract_of
from keras_robust_iqa.models.graph import walk

CRITERIA = ("mean_weight", "activation")


def effective_kernel(layer):
    """The weights of the linear map that produces each output channel, as the layer states them.

    Returns:
        float64 array `(..., out_channels)`: output channels on the last
        axis, every other axis one weight of that channel.
    """
    contract = contract_of(layer)
    kernel = None if contract is None else contract.applied_kernel()
    if kernel is None:
        raise ValueError(f"Layer '{layer.name}' ({type(layer).__name__}) is not a prunable layer.")
    return kernel


def channel_scores(layer):
    """`mean(|w_i|)` for each output channel `i` of a prunable layer, float64 `(C,)`."""
    kernel = effective_kernel(layer)
    return np.mean(np.abs(kernel.reshape(-1, kernel.shape[-1])), axis=0)


def check_criterion(criterion):
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}.")
    return criterion


def energy_probe(model, names):
    """A model with `model`'s inputs whose outputs are `{name: that layer's output}` for `names`.

    `model` may be any model holding those layers (a masked copy sharing them, say): the
    probe computes what they output there.
    """
    found = {}

    def call(layer, args, kwargs):
        kwargs.pop("mask", None)
        outputs = layer(*args, **kwargs)
        if getattr(layer, "name", None) in names:
            found[layer.name] = outputs
        return outputs

    inputs, _ = walk(model, call)
    missing = [name for name in names if name not in found]
    if missing:
        raise ValueError(f"Model '{model.name}' has no layer named {missing}.")
    return keras.Model(inputs, {name: found[name] for name in names}, name=f"{model.name}_energy_probe")


def activation_energy(probe, batches):
    """`{layer name: mean squared output per channel}` of an `energy_probe`, over `batches`.

    The mean is taken over every batch, position and sample alike (float64 `(C,)` each).
    `batches`: input arrays, or `(inputs, targets, ...)` tuples as a training dataset yields.
    """
    sums, counts = {}, {}
    for batch in batches:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        for name, y in probe(x, training=False).items():
            y = np.asarray(keras.ops.convert_to_numpy(y), np.float64)
            y = y.reshape(-1, y.shape[-1])
            sums[name] = sums.get(name, 0.0) + np.sum(y * y, axis=0)
            counts[name] = counts.get(name, 0) + len(y)
    if not sums:
        raise ValueError("The activation criterion needs at least one batch of inputs.")
    return {name: sums[name] / counts[name] for name in sums}
