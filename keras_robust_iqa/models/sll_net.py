import keras

from keras_robust_iqa import layers as robust_layers


def sll_iqa_net(patch_size=64, widths=(16, 32, 64), depth=2, head_units=32, name="sll_iqa_net"):
    """A 1-Lipschitz NR-IQA network built from residual SLL layers, certified by `lipschitz_bound`.

    Built as a 1-Lipschitz network rather than swapped in layer by layer (`robustify`):
    inputs centred on mid-grey (a shift), a 2x2 space-to-depth (`InvertibleDownsampling`, a
    permutation: no convolution runs at full resolution, which sets the cost) and a 1x1
    `AOLConv2D` stem to `widths[0]` channels (1x1: an orthogonal start is an isometry, where a
    3x3 AOL kernel's rescaling divides the signal by about 4), then one stage per width of `depth` residual
    `SLLConv2D` layers (3x3), the stages joined by a space-to-depth and a 1x1 `AOLConv2D` to
    the next width; `GlobalL2NormPooling2D`; a head `OrthoDense(head_units)`, `MaxMin`,
    `OrthoDense(1)`; and one learnable `OutputScale`, the network's only gain. Every layer
    but that scale is 1-Lipschitz, so the model's bound is `|scale| / sqrt(H W)` of the last
    stage's map.

    The SLL layers are residual (`x - 2 W T^-1 relu(W^T x + b)`), so depth does not
    attenuate the signal the way a stack of contractions does, whatever the kernels' scale
    (`T` scales with `W^2`): docs/experiments.md has the activations' size at
    initialisation through deep stacks.

    Args:
        patch_size: input height and width; divisible by `2 ** len(widths)`.
        widths: channels of each stage.
        depth: SLL layers per stage.
        head_units: width of the hidden layer of the head (even: MaxMin pairs units).
    """
    if not widths or any(int(w) < 1 for w in widths):
        raise ValueError(f"Argument `widths` must be positive channel counts, got widths={widths!r}.")
    if not (isinstance(depth, int) and depth >= 1):
        raise ValueError(f"Argument `depth` must be a positive integer, got depth={depth!r}.")
    if head_units % 2:
        raise ValueError(f"Argument `head_units` must be even (MaxMin pairs units), got head_units={head_units!r}.")
    if patch_size % 2 ** len(widths):
        raise ValueError(
            f"Argument `patch_size`={patch_size} must be divisible by {2 ** len(widths)} "
            f"(a 2x2 space-to-depth before each of the {len(widths)} stages)."
        )
    inputs = keras.Input((patch_size, patch_size, 3), name="image")
    # Zero padding reads as black: centring the inputs keeps the borders from looking like edges.
    x = keras.layers.Rescaling(1.0, offset=-0.5, name="centre")(inputs)
    x = robust_layers.InvertibleDownsampling(2, name="down0")(x)
    x = robust_layers.AOLConv2D(int(widths[0]), 1, name="stem")(x)
    for i, width in enumerate(widths):
        if i:
            x = robust_layers.InvertibleDownsampling(2, name=f"down{i}")(x)
            x = robust_layers.AOLConv2D(int(width), 1, name=f"mix{i}")(x)
        for j in range(depth):
            x = robust_layers.SLLConv2D(3, name=f"sll{i + 1}_{j + 1}")(x)
    x = robust_layers.GlobalL2NormPooling2D(name="pool")(x)
    x = robust_layers.OrthoDense(head_units, name="fc1")(x)
    x = robust_layers.MaxMin(name="maxmin")(x)
    x = robust_layers.OrthoDense(1, name="fc2")(x)
    outputs = robust_layers.OutputScale(name="output_scale")(x)
    return keras.Model(inputs, outputs, name=name)
