"""`robustify(model, mode=...)`: apply RobustBlocks to an existing Keras model.

Works on any functional, Sequential or nested Keras 3 model, through public Keras API only
(`keras.models.clone_model` with `clone_function` / `call_function`, in `models.graph`).
"""

from keras_robust_iqa.layers import robust_block
from keras_robust_iqa.models.graph import check_graph_model
from keras_robust_iqa.models.robustify.insert import _insert, insertion_points, stage_ends
from keras_robust_iqa.models.robustify.options import (
    ACTIVATIONS,
    CONVOLUTIONS,
    DEPTHWISE_GROUP_WIDTH,
    MODES,
    POOLINGS,
    SQUASHING,
)
from keras_robust_iqa.models.robustify.replace import _replace
from keras_robust_iqa.models.robustify.rules import _activation_factory

__all__ = [
    "ACTIVATIONS", "CONVOLUTIONS", "DEPTHWISE_GROUP_WIDTH", "MODES", "POOLINGS", "SQUASHING", "insertion_points",
    "robustify", "stage_ends",
]


def robustify(model, mode="replace", *, conv="block", after=None, keep_weights=True, group_size=2,
              input_offset=-0.5, activation="groupsort", pooling="l2norm", channel_gains=False, bottleneck=None):
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
                becomes ReLU;
              - a `SeparableConv2D` becomes its depthwise part's stand-in (as a
                `DepthwiseConv2D`'s, no bias) then an orthogonal 1x1 convolution;
              - a convolution of stride `s` above 2 becomes space-to-depth by `s`
                (after a zero pad to a multiple of `s`) and a stride-1 convolution
                of kernel `ceil(k / s)`: for `k == s` (a patchify stem), exactly
                an orthogonal matrix on each `s x s` patch.
              A layer with no counterpart (a product of two signals, a
              dilated or transposed convolution, unequal strides, an arithmetic `keras.ops`
              operation, ...) is refused with a `ValueError` that names it, says
              why and what to do, unless a stand-in drops it (as the gate
              branches are).
        conv: the orthogonal convolution of the RobustBlocks (insert) or of
            every replaced convolution (replace): `"block"` (the default),
            `BlockOrthoConv2D` (a compact orthogonal kernel applied as a plain
            convolution: Conv2D's cost, any input size), or `"fourier"`,
            `OrthoConv2D` (the paper's Cayley transform per frequency, for one
            static patch size), `"aol"`, `AOLConv2D` (a plain convolution rescaled
            to be 1-Lipschitz, not orthogonal: any input size), or, for `"replace"`
            only, `"sll"`: `SLLConv2D`, the residual SLL layer, where a convolution
            keeps its channels at stride 1 with an odd kernel, and `AOLConv2D`
            elsewhere (the SLL layer cannot change the channels).
            With `"block"`, a `DepthwiseConv2D` becomes a grouped
            `BlockOrthoConv2D` whose groups mix `DEPTHWISE_GROUP_WIDTH` channels
            (a one-channel orthogonal filter could only shift its input); with
            `"fourier"`, `"aol"` or `"sll"`, a full convolution.
        after: for `"insert"`, names of the layers to insert a block after.
            Default: `insertion_points(model)`, chosen by the structure: the
            last suitable layer of each resolution level below full resolution
            (never an input, padding or pooling layer); the full-resolution
            stage is skipped because the orthogonal convolution's cost grows
            with `H x W`.
        keep_weights: copy the weights of the layers that stay (insert) or
            start each 1-Lipschitz layer from the original kernel where the
            shapes match (replace), so a trained model is a head start: each
            layer says how (`start_from_kernel`): a Cayley layer takes it as its
            free kernel, a `BlockOrthoConv2D` the orthogonal kernel nearest it
            (exactly for a 1x1 kernel: a separable convolution's pointwise kernel,
            a patchify kernel read in space-to-depth order; by a fit of its
            factors otherwise), an
            `AOLConv2D` rescales it; an `SLLConv2D` starts fresh.
        group_size: GroupSort group size for the new activations.
        bottleneck: for `"insert"`, None (each RobustBlock keeps its stage's full width) or
            the channels `N` each block narrows to and widens back from (the paper's block
            narrows to 200): a 1x1 1-Lipschitz convolution to `N`, the `conv`
            convolution at `N` channels and a 1x1 one back to the stage's width `C`, each
            followed by GroupSort. A block then holds about `2 C N + N^2 k^2` weights
            instead of `C^2 k^2`, and stays 1-Lipschitz.
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
        if conv == "sll":
            raise ValueError("Argument `conv`='sll' applies to mode='replace'; insert's RobustBlocks take "
                             f"{tuple(robust_block.CONVOLUTIONS)}.")
        if activation != "groupsort":
            raise ValueError("Argument `activation` applies to mode='replace'; insert's RobustBlocks use GroupSort.")
        if pooling != "l2norm":
            raise ValueError("Argument `pooling` applies to mode='replace'; insert keeps the model's pooling.")
        if channel_gains:
            raise ValueError("Argument `channel_gains` applies to mode='replace'; insert's blocks are orthogonal.")
        return _insert(model, after, keep_weights, group_size, conv, bottleneck)
    if bottleneck is not None:
        raise ValueError(f"Argument `bottleneck` applies to mode='insert' (its RobustBlocks); replace keeps "
                         f"the model's widths, got bottleneck={bottleneck!r}.")
    return _replace(model, keep_weights, _activation_factory(activation, group_size), input_offset, pooling,
                    channel_gains, conv)
