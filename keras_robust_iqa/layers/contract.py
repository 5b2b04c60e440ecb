"""The layer contract: what every layer states about itself, for the stages that rewrite models.

A layer of `keras_robust_iqa.layers` subclasses `LayerContract` (next to `keras.layers.Layer`)
and answers, for itself:
- `lipschitz_constant(input_shape)`: its certified L2 Lipschitz constant at inference
  (`lipschitz_bound` multiplies them); `merged_lipschitz(bounds)` for a layer that merges
  branches;
- `applied_kernel()`: the weights of the linear map it applies, output channels last (the
  pruning criterion reads them);
- `channel_role()`, `tied_channels()`, `channel_scale()` and `slice_channels(...)`: how its
  channels flow and are sliced when pruned (`pruning.graph`, `pruning.surgery`);
- `lowered()`: the layer (or small model) of plain ops it exports as (`deployment.lowering`);
- `bound_by_weights`: whether its weights set its constant uncapped, so that pruning holds
  them fixed (`pruning.pipeline`).

Keras's own layers get the same answers from one table of rules, `keras_rules`, which is also
where `robustify` reads what each of them becomes. A custom layer opts in by subclassing
`LayerContract` (as `models.backbones.ChannelReverse` does). `keras_rules.contract_of(layer)`
is the one question every stage asks; it answers `None` for a layer nothing is known about.

The defaults below describe a layer that promises nothing: no Lipschitz bound, no kernel,
channels that cannot be sliced (they stay whole), and no lowering needed.
"""

import keras

# How a layer's channels flow (`channel_role()`), read by the pruning graph.
# Its output channels are new (prunable) channels; its kernel reads input channels.
PRODUCER = "producer"
# Output channels are its input channels, mixed (a residual block `l x + (1 - l) f(x)`).
RESIDUAL = "residual"
# One weight vector per channel, sliced with the channel (BatchNorm, a depthwise kernel).
CHANNELWISE = "channelwise"
# Channels pass through, no weights (activations, pooling, padding).
PASS = "pass"
# Element-wise merge of several inputs: channel `c` of each is one channel.
MERGE = "merge"
# Concatenation along the channels: the inputs' channels, one after the other.
CONCAT = "concat"
# Space-to-depth by `pool_size`: output channel `(dy * s + dx) * C + c` holds input channel `c`.
SPACE_TO_DEPTH = "space_to_depth"
CHANNEL_ROLES = (PRODUCER, RESIDUAL, CHANNELWISE, PASS, MERGE, CONCAT, SPACE_TO_DEPTH)


def slice_kernel(kernel, kept_in, kept_out):
    """`kernel[..., kept_in, kept_out]` of a `(..., in, out)` kernel, as numpy."""
    return keras.ops.convert_to_numpy(kernel)[..., kept_in, :][..., kept_out]


class LayerContract:
    """What a layer states about itself; defaults: a layer that promises nothing.

    Subclass it next to `keras.layers.Layer` (`class MyLayer(LayerContract,
    keras.layers.Layer)`) and override what holds for the layer. `docs/layers.md` says
    which methods each kind of layer needs.
    """

    # What `robustify(mode="replace")` puts in its place: one of `keras_rules.REPLACEMENTS`
    # ("keep": a copy, the layer being 1-Lipschitz already), or None: refused.
    replacement = None
    # The layer preprocesses the model's inputs itself (`replace` centres none before it).
    preprocesses_inputs = False
    # The layer may end a resolution stage (where `robustify(mode="insert")` puts a block);
    # False for inputs, paddings, reshapes and poolings, which only adapt a map.
    ends_stage = True
    # Its weights set its Lipschitz constant with no cap from its construction (an output
    # gain, a merge's mixing weights): pruning holds them fixed while it masks channels, so
    # the pruned model's certified bound is never above the source's.
    bound_by_weights = False

    def lipschitz_constant(self, input_shape=None):
        """Certified L2 Lipschitz constant at inference (float), or None: no bound by construction.

        `input_shape`: the shape of the input of the call being certified, for the
        layers whose constant depends on it (None: the layer's own, or a bound at
        every size).
        """
        return None

    def merged_lipschitz(self, bounds):
        """For a layer with several inputs: its output's bound given each input's, or None."""
        return None

    def applied_kernel(self):
        """The weights of the linear map the layer applies, float64 `(..., out_channels)`.

        Output channels last, every other axis one weight of that channel; None for a
        layer that is not a linear map with a kernel.
        """
        return None

    def channel_role(self):
        """How channels flow through the layer: one of `CHANNEL_ROLES`, or None (they stay whole)."""
        return None

    def tied_channels(self):
        """Size of the consecutive channel groups that can only be pruned together (1: none)."""
        return 1

    def channel_scale(self):
        """Per-channel factors `|d_c|` the layer multiplies its channels by, or None."""
        return None

    def slice_channels(self, new, kept_in, kept_out):
        """Copy this layer's weights, at the kept channels, into `new`.

        `new`: a fresh layer of the same class built for the kept channels (called on
        its inputs already); `kept_in` / `kept_out`: indices of the input / output
        channels that stay.
        """
        raise NotImplementedError(f"{type(self).__name__} does not say how its channels are sliced.")

    def start_from_kernel(self, kernel):
        """Start from the kernel of a trained layer this one replaces (`robustify(keep_weights=True)`).

        Returns whether the layer took it (False: another shape, or nothing to start from).
        """
        return False

    def lowered(self):
        """The layer (or small model) of plain ops that computes the same function, weights frozen.

        `self` when the layer is made of ordinary ops already.
        """
        return self
