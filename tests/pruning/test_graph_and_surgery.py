"""Which channels go together, and the model rebuilt without them.

The orthogonal layers of a pruned model are checked independently of their own
code, as in tests/layers: singular values of the operator from its impulse responses.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import singular_values

from keras_robust_iqa import layers as rl
from keras_robust_iqa.models import lipschitz_bound, robustify, small_iqa_cnn
from keras_robust_iqa.pruning import ChannelGraph, criterion, masked_model, prune, prune_model, set_masks
from keras_robust_iqa.pruning.cost import count_flops, leaf_layers


def branchy_model(padding="same", conv="fourier"):
    """Residual block, convex merge, concatenation, strided conv, space-to-depth, dense head."""
    ortho = {"fourier": rl.OrthoConv2D, "block": rl.BlockOrthoConv2D}[conv]
    x = keras.Input((8, 8, 3), name="image")
    stem = rl.MaxMin(name="stem_act")(ortho(8, padding=padding, name="stem")(x))
    res = rl.RobustBlock(8, residual=True, padding=padding, conv=conv, name="res")(stem)
    branch = rl.RobustBlock(8, padding=padding, conv=conv, name="branch")(stem)
    merged = rl.ConvexCombination(name="merge")([res, branch])
    side = rl.GroupSort(2, name="side_act")(ortho(4, padding=padding, name="side")(stem))
    cat = keras.layers.Concatenate(name="cat")([merged, side])
    down = rl.MaxMin(name="down_act")(ortho(8, strides=2, padding=padding, name="down")(cat))
    s2d = rl.InvertibleDownsampling(2, name="s2d")(down)
    mix = rl.MaxMin(name="mix_act")(ortho(8, kernel_size=1, padding=padding, name="mix")(s2d))
    pooled = rl.GlobalL2NormPooling2D(name="pool")(mix)
    fc = rl.MaxMin(name="fc_act")(rl.OrthoDense(4, name="fc")(pooled))
    out = rl.OutputScale(2.0, name="scale")(rl.OrthoDense(1, name="out")(fc))
    model = keras.Model(x, out, name="branchy")
    for i, w in enumerate(model.weights):  # away from the initialisers' symmetries
        if len(w.shape) >= 2:
            w.assign(tf.random.stateless_normal(w.shape, seed=(i, 0)))
    return model


@pytest.fixture(scope="module")
def branchy():
    model = branchy_model()
    return model, ChannelGraph(model)


def layers_of_groups(graph):
    return sorted(tuple(sorted({graph.owner[a][0] for a in atoms})) for atoms in graph.groups)


def test_ties_follow_the_graph(branchy):
    model, graph = branchy
    assert set(graph.producers) == {"stem", "branch", "side", "down", "mix", "fc", "out"}
    assert "res" not in graph.producers and graph.inputs_of["res"] == graph.outputs_of["res"]
    by_layers = layers_of_groups(graph)
    # MaxMin pairs of the stem are tied, through the residual block and the convex merge,
    # to the same pairs of the branch block: 4 groups of 4 channels.
    assert by_layers.count(("branch", "stem")) == 4
    for atoms in graph.groups:
        channels = sorted(graph.owner[a] for a in atoms)
        if {c[0] for c in channels} == {"branch", "stem"}:
            first = channels[0][1]
            assert first % 2 == 0 and channels == [("branch", first), ("branch", first + 1),
                                                   ("stem", first), ("stem", first + 1)]
    assert by_layers.count(("side",)) == 2 and by_layers.count(("down",)) == 4
    assert by_layers.count(("mix",)) == 4 and by_layers.count(("fc",)) == 2
    (out_group,) = [g for g, atoms in enumerate(graph.groups) if graph.owner[atoms[0]][0] == "out"]
    assert graph.frozen_groups == {out_group}  # the model's output stays
    assert graph.prunable_channels == 8 + 8 + 4 + 8 + 8 + 4
    # Concatenation then space-to-depth: the strided conv reads stem/branch then side
    # channels; the 1x1 conv reads the `down` channels four times over.
    assert [graph.owner[a][0] for a in graph.inputs_of["down"]] == ["stem"] * 8 + ["side"] * 4
    assert graph.inputs_of["mix"] == graph.outputs_of["down"] * 4
    components = sorted(sorted({graph.owner[a][0] for g in c for a in graph.groups[g]}) for c in graph.components())
    assert components == [["branch", "stem"], ["down"], ["fc"], ["mix"], ["side"]]


def test_fraction_is_taken_per_component_smallest_mean_weight_first(branchy):
    model, graph = branchy
    scores = graph.scores()
    pruned = graph.select(scores, fraction=0.5)
    group_scores = graph.group_scores(scores)
    for component in graph.components():
        chosen = [g for g in component if g in pruned]
        assert len(chosen) == round(0.5 * len(component))
        assert max(group_scores[g] for g in chosen) <= min(group_scores[g] for g in component if g not in pruned)
    # A threshold prunes exactly the groups below it (this one leaves every layer its best group).
    tau = min(max(group_scores[g] for g in c) for c in graph.components())
    assert graph.select(scores, tau=tau) == {g for g, s in enumerate(group_scores)
                                             if s < tau and g not in graph.frozen_groups}


def test_every_layer_keeps_a_channel(branchy):
    model, graph = branchy
    pruned = graph.select(graph.scores(), fraction=0.99)
    pruned_model = prune_model(model, graph, pruned)
    widths = {layer.name: layer.filters if hasattr(layer, "filters") else getattr(layer, "units", None)
              for layer in pruned_model.layers}
    assert all(widths[name] == 2 for name in ("stem", "branch", "down", "mix", "fc", "side"))


def test_a_tau_that_empties_a_layer_is_an_error(branchy):
    model, graph = branchy
    scores = graph.scores()
    top = max(float(s.max()) for s in scores.values())
    with pytest.raises(ValueError, match=r"tau=.* would remove all \d+ output channels of layer '\w+' "
                                         r"\(their scores are .* to .*\)"):
        graph.select(scores, tau=top * 1.01)
    with pytest.raises(ValueError, match="exactly one"):
        graph.select(scores)


@pytest.mark.parametrize("conv", ["fourier", "block"])
@pytest.mark.parametrize("padding", ["same", "circular"])
def test_surgery_keeps_orthogonal_layers_orthogonal(padding, conv):
    model = branchy_model(padding, conv)
    graph = ChannelGraph(model)
    pruned_groups = graph.select(graph.scores(), fraction=0.5)
    pruned = prune_model(model, graph, pruned_groups)
    x = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype("float32")
    assert np.all(np.isfinite(np.asarray(pruned(x))))
    assert pruned.count_params() < model.count_params() and count_flops(pruned) < count_flops(model)
    assert lipschitz_bound(pruned) <= lipschitz_bound(model)
    checked = 0
    for layer in leaf_layers(pruned):
        conv = layer.conv if isinstance(layer, rl.RobustBlock) else layer
        if not isinstance(conv, (rl.OrthoConv2D, rl.BlockOrthoConv2D, rl.OrthoDense)):
            continue
        in_shape = tuple(layer.input.shape[1:])
        bias = conv.bias.numpy()
        conv.bias.assign(np.zeros_like(bias))  # the linear part
        sv = singular_values(lambda x: conv(x, training=False), in_shape)
        conv.bias.assign(bias)
        rank = min(np.prod(in_shape), np.prod(conv.compute_output_shape((1, *in_shape))[1:]))
        assert sv.max() <= 1.0 + 1e-4, layer.name
        if padding == "circular" or isinstance(conv, rl.OrthoDense):  # exactly (semi-)orthogonal
            np.testing.assert_allclose(sv[:rank], 1.0, atol=1e-4, err_msg=layer.name)
        checked += 1
    assert checked == 8


def _kept_block_error(layer, kept_in, kept_out, slice_free):
    """Relative distance of the pruned layer's kernel to the old kernel's kept block."""
    new = rl.BlockOrthoConv2D(len(kept_out), layer.kernel_size, strides=layer.strides, padding=layer.padding)
    new.build((None, None, None, len(kept_in)))
    if slice_free:  # what slicing the free matrices would give, for comparison
        if layer.projector_kernel is not None:
            rows = kept_out if len(kept_out) >= len(kept_in) else kept_in
            new.projector_kernel.assign(layer.projector_kernel.numpy()[:, :, rows, : new.projector_kernel.shape[-1]])
        new.mixing_kernel.assign(layer.mixing_kernel.numpy()[:, kept_out][:, :, kept_in])
    else:
        layer.slice_channels(new, kept_in, kept_out)
    target = layer.orthogonal_kernel().numpy()[:, :, kept_in][..., kept_out]
    return np.linalg.norm(new.orthogonal_kernel().numpy() - target) / np.linalg.norm(target)


def test_a_pruned_block_orthogonal_layer_is_the_factor_nearest_its_kept_channels():
    """The rows of an orthogonal matrix are orthonormal: a 1x1 layer that loses output channels
    keeps exactly the kept rows. With two-tap factors the kept block is not orthogonal (and a
    projector of width n' has rank n' // 2, so each loses a direction): the nearest factors
    come closer to it than sliced free matrices, though not close (relative errors 0.9 and 1.0
    against 1.5 and 1.3 here)."""
    def random_layer(filters, kernel_size, channels):
        keras.utils.set_random_seed(filters + kernel_size + channels)
        layer = rl.BlockOrthoConv2D(filters, kernel_size)  # its own initialiser: factors away from identity
        layer.build((None, None, None, channels))
        return layer

    kept = [0, 2, 3, 5, 6, 7]
    assert _kept_block_error(random_layer(8, 1, 8), list(range(8)), kept, slice_free=False) < 1e-5
    # An isometry (projectors on the output side) losing outputs; a square layer losing both sides.
    for layer, kept_in in ((random_layer(8, 3, 4), [0, 1, 2, 3]), (random_layer(8, 3, 8), kept)):
        nearest = _kept_block_error(layer, kept_in, kept, slice_free=False)
        sliced = _kept_block_error(layer, kept_in, kept, slice_free=True)
        assert nearest < 0.8 * sliced, (nearest, sliced)


def test_kernel_inputs_follow_space_to_depth():
    """Input channel c of a stride-2 OrthoConv2D is kernel channel k * C + c."""
    channels = 5
    conv = rl.OrthoConv2D(4, strides=2)
    conv(tf.zeros((1, 4, 4, channels)))
    x = tf.broadcast_to(tf.range(channels, dtype=tf.float32), (1, 4, 4, channels))
    holds = np.asarray(tf.nn.space_to_depth(x, 2))[0, 0, 0]  # which input channel each kernel input is
    kept = [1, 3, 4]
    expected = [i for i, c in enumerate(holds) if c in kept]
    assert sorted(conv.kernel_inputs(kept)) == expected
    assert [holds[i] for i in conv.kernel_inputs(kept)] == kept * 4  # the new layer's layout


def test_nothing_pruned_reproduces_the_model(branchy):
    model, graph = branchy
    x = np.random.default_rng(1).uniform(size=(3, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(prune_model(model, graph, set())(x)), np.asarray(model(x)), rtol=1e-5)
    block = branchy_model(conv="block")
    np.testing.assert_allclose(np.asarray(prune_model(block, ChannelGraph(block), set())(x)), np.asarray(block(x)),
                               rtol=1e-5)


def test_masks_equal_removal_for_plain_layers():
    """Conv-BN-ReLU (and Dense): a masked channel is exactly a removed one."""
    keras.utils.set_random_seed(0)
    model = small_iqa_cnn(16, widths=(8, 8, 16), head_units=8)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([np.random.default_rng(3).uniform(0.5, 2, size=w.shape).astype("float32")
                               for w in layer.get_weights()])
    graph = ChannelGraph(model)
    pruned_groups = graph.select(graph.scores(), fraction=0.4)
    masked, masks = masked_model(model, graph)
    set_masks(graph, masks, pruned_groups)
    pruned = prune_model(model, graph, pruned_groups)
    x = np.random.default_rng(2).uniform(size=(4, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(pruned(x)), np.asarray(masked(x)), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(pruned(x)), np.asarray(model(x)))
    widths = [layer.filters for layer in pruned.layers if isinstance(layer, keras.layers.Conv2D)]
    assert widths == [5, 5, 10]  # round(0.4 * 8) = 3 and round(0.4 * 16) = 6 removed


@pytest.mark.parametrize("conv", ["fourier", "block"])
def test_replace_model_bound_never_rises(conv):
    keras.utils.set_random_seed(0)
    model = robustify(small_iqa_cnn(16, widths=(8, 8, 16), head_units=8), mode="replace", conv=conv)
    graph = ChannelGraph(model)
    for fraction in (0.25, 0.5, 0.9):
        pruned = prune_model(model, graph, graph.select(graph.scores(), fraction=fraction))
        assert lipschitz_bound(pruned) <= lipschitz_bound(model)


def test_channel_gains_are_pruned_with_their_channels():
    keras.utils.set_random_seed(0)
    model = robustify(small_iqa_cnn(16, widths=(8, 8, 16), head_units=8), "replace", channel_gains=True)
    for gain in (layer for layer in model._flatten_layers() if isinstance(layer, rl.ChannelGain)):
        gain.gain.assign(np.linspace(-1, 1, gain.gain.shape[0]))
    graph = ChannelGraph(model)
    # Nothing pruned: the same function.
    x = np.random.default_rng(2).uniform(size=(3, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(prune_model(model, graph, set())(x)), np.asarray(model(x)), rtol=1e-5)
    pruned = prune_model(model, graph, graph.select(graph.scores(), fraction=0.5))
    kept = {layer.name: layer for layer in pruned._flatten_layers() if isinstance(layer, rl.ChannelGain)}
    convs = {layer.name: layer for layer in pruned._flatten_layers() if isinstance(layer, rl.BlockOrthoConv2D)}
    for i in (1, 2, 3):
        assert kept[f"conv{i}_gain"].gain.shape[0] == convs[f"conv{i}_ortho"].filters < (8, 8, 16)[i - 1]
        # The kept gains are a subset of the old ones, in order.
        old = np.linspace(-1, 1, (8, 8, 16)[i - 1]).astype("float32")
        assert set(kept[f"conv{i}_gain"].gain.numpy().tolist()) <= set(old.tolist())
    assert 0 < lipschitz_bound(pruned) <= lipschitz_bound(model)
    assert np.all(np.isfinite(np.asarray(pruned(x))))


def test_a_zero_channel_gain_makes_a_channel_the_first_to_prune():
    # The gain is part of the map that produces the channel: score = |d| * mean|w|,
    # and a channel whose gain is 0 is silent, so removing it changes nothing.
    # (ReLU: GroupSort would tie each channel to its pair.)
    keras.utils.set_random_seed(0)
    model = robustify(small_iqa_cnn(16, widths=(8, 8, 16), head_units=8), "replace", activation="relu",
                      channel_gains=True)
    layers = {layer.name: layer for layer in model._flatten_layers()}
    layers["conv1_gain"].gain.assign([1, 1, 1, 0, 1, 1, 1, 1])
    layers["conv2_gain"].gain.assign([1, -0.5, 1, 1, 1, 1, 0, 1])
    graph = ChannelGraph(model)
    scores = graph.scores()
    np.testing.assert_allclose(scores["conv1_ortho"],
                               criterion.channel_scores(layers["conv1_ortho"]) * [1, 1, 1, 0, 1, 1, 1, 1])
    np.testing.assert_allclose(scores["conv2_ortho"],
                               criterion.channel_scores(layers["conv2_ortho"]) * [1, 0.5, 1, 1, 1, 1, 0, 1])
    np.testing.assert_allclose(scores["conv3_ortho"], criterion.channel_scores(layers["conv3_ortho"]))
    pruned = prune_model(model, graph, graph.select(scores, tau=1e-12))
    kept = {layer.name: layer for layer in pruned._flatten_layers()}
    assert [kept[f"conv{i}_ortho"].filters for i in (1, 2, 3)] == [7, 7, 16]
    # Exactly the silent channels went (orthogonal layers are re-parameterised by the
    # surgery, so the function itself is compared on plain layers below).
    np.testing.assert_array_equal(kept["conv1_gain"].gain.numpy(), np.ones(7))
    np.testing.assert_array_equal(kept["conv2_gain"].gain.numpy(), [1, -0.5, 1, 1, 1, 1, 1])


def test_a_channel_gain_after_a_merge_scales_every_merged_channel():
    x = keras.Input((4, 4, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(x)
    b = keras.layers.Conv2D(4, 3, padding="same", name="b")(x)
    y = rl.ChannelGain(name="gain")(keras.layers.Add()([a, b]))
    model = keras.Model(x, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(y)))
    model.get_layer("gain").gain.assign([0.25, 1, 0, 1])
    graph = ChannelGraph(model)
    scores = graph.scores()
    for name in ("a", "b"):
        np.testing.assert_allclose(scores[name], criterion.channel_scores(model.get_layer(name)) * [0.25, 1, 0, 1])
    # The silent channel goes from both convolutions, and the function is unchanged.
    pruned = prune_model(model, graph, graph.select(scores, tau=1e-12))
    assert [pruned.get_layer(name).filters for name in ("a", "b")] == [3, 3]
    x = np.random.default_rng(3).uniform(size=(2, 4, 4, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(pruned(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-6)


def plain(*layers, shape=(4, 4, 3)):
    x = keras.Input(shape)
    y = x
    for layer in layers:
        y = layer(y)
    return keras.Model(x, y)


@pytest.mark.parametrize("model_fn,message", [
    (lambda: plain(keras.layers.GlobalAveragePooling2D()), "no prunable layer"),
    (lambda: plain(keras.layers.Flatten(), keras.layers.Dense(1)), "no prunable channel"),
    # Flatten mixes space into channels: the conv's channels are left whole.
    (lambda: plain(keras.layers.Conv2D(4, 3), keras.layers.Flatten(), keras.layers.Dense(1)),
     "no prunable channel"),
])
def test_models_with_nothing_to_prune_are_errors(model_fn, message):
    with pytest.raises(ValueError, match=message):
        ChannelGraph(model_fn())


def test_a_shared_layer_keeps_its_channels_and_stays_shared():
    x = keras.Input((4,))
    dense = keras.layers.Dense(4, name="shared")
    free = keras.layers.Dense(6, name="free")(x)
    model = keras.Model(x, keras.layers.Dense(1, name="out")(keras.layers.Concatenate()([free, dense(dense(x))])))
    graph = ChannelGraph(model)
    assert graph.shared == {id(dense)}
    assert "shared" not in graph.producers and graph.prunable_channels == 6  # only 'free' can lose channels
    pruned = prune_model(model, graph, graph.select(graph.scores(), fraction=0.5))
    assert pruned.get_layer("free").units == 3 and pruned.get_layer("shared").units == 4
    assert sum(layer.name == "shared" for layer in pruned.layers) == 1  # one layer, called twice
    inputs = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    unpruned = prune_model(model, graph, set())
    np.testing.assert_allclose(np.asarray(unpruned(inputs)), np.asarray(model(inputs)), rtol=1e-5, atol=1e-6)
    only_shared = keras.Model(x, keras.layers.Dense(1)(dense(dense(x))))
    with pytest.raises(ValueError, match="no prunable channel"):
        ChannelGraph(only_shared)


def test_prune_returns_the_smaller_model_of_a_model_in_memory(branchy):
    model, graph = branchy
    smaller = prune(model, fraction=0.5)
    assert smaller.count_params() < model.count_params()
    assert smaller.get_layer("stem").filters < 8
    x = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype("float32")
    assert smaller(x).shape == (2, 1)
    # The same groups as graph.select picks, and model is left unchanged.
    chosen = graph.select(graph.scores(), fraction=0.5)
    same = prune(model, graph=graph, groups=chosen)
    np.testing.assert_allclose(np.asarray(same(x)), np.asarray(smaller(x)), rtol=1e-5, atol=1e-6)
    assert model.get_layer("stem").filters == 8
    with pytest.raises(ValueError, match="Give exactly one of `fraction` and `tau`"):
        prune(model)
    with pytest.raises(ValueError, match="`tau` must be a positive number, got -1"):
        prune(model, tau=-1)
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\)"):
        prune(model, fraction=1.5)
    with pytest.raises(ValueError, match="not both"):
        prune(model, fraction=0.5, groups=chosen)


def separable_model():
    """Conv2D-BN-ReLU, then separable convolutions (depth multiplier 2; strides 2): producers and consumers."""
    inputs = keras.Input((10, 10, 3))
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(keras.layers.Conv2D(8, 3)(inputs)))
    x = keras.layers.SeparableConv2D(12, 3, padding="same", depth_multiplier=2, activation="relu")(x)
    x = keras.layers.SeparableConv2D(8, 3, strides=2)(x)
    return keras.Model(inputs, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(x)))


def _pruned_equals_masked(model, fraction, at=None):
    """Prune `fraction`; the pruned model computes what the masked one does, at `at`'s kept channels.

    `at`: a layer whose output is compared (default: the model's output).
    """
    graph = ChannelGraph(model)
    pruned_groups = graph.select(graph.scores(), fraction=fraction)
    part, kept = model, slice(None)
    if at is not None:  # the model up to `at`, sliced and masked by the whole model's graph
        part = keras.Model(model.inputs, model.get_layer(at).output)
        kept = graph.kept_positions(graph.outputs_of[at], pruned_groups)
    masked, masks = masked_model(part, graph)
    set_masks(graph, masks, pruned_groups)
    x = np.random.default_rng(2).uniform(size=(3, *model.inputs[0].shape[1:])).astype("float32")
    expected = np.asarray(masked(x))[..., kept]
    np.testing.assert_allclose(np.asarray(prune_model(part, graph, pruned_groups)(x)), expected, rtol=1e-5, atol=1e-6)
    pruned = prune_model(model, graph, pruned_groups)
    assert not np.allclose(np.asarray(pruned(x)), np.asarray(model(x)))
    return graph, pruned


def test_separable_convolutions_lose_output_and_input_channels():
    """The pointwise kernel's columns and bias; the depthwise filters and pointwise rows of a lost input."""
    keras.utils.set_random_seed(0)
    model = separable_model()
    conv, first, second = (layer for layer in model.layers
                           if isinstance(layer, (keras.layers.Conv2D, keras.layers.SeparableConv2D)))
    graph, pruned = _pruned_equals_masked(model, 0.5)
    assert {conv.name, first.name, second.name} <= set(graph.producers)
    pointwise = np.asarray(first.pointwise_kernel)
    np.testing.assert_allclose(graph.scores()[first.name], np.abs(pointwise).mean(axis=(0, 1, 2)), rtol=1e-6)
    # Half of each layer's channels go: 8 -> 4, 12 -> 6, 8 -> 4.
    first, second = pruned.get_layer(first.name), pruned.get_layer(second.name)
    assert [w.shape for w in first.get_weights()] == [(3, 3, 4, 2), (1, 1, 8, 6), (6,)]
    assert [w.shape for w in second.get_weights()] == [(3, 3, 6, 1), (1, 1, 6, 4), (4,)]


def test_an_insert_model_on_a_separable_backbone_prunes():
    keras.utils.set_random_seed(0)
    inserted = robustify(separable_model(), "insert", conv="block")
    separable = [layer.name for layer in inserted.layers if isinstance(layer, keras.layers.SeparableConv2D)]
    # The RobustBlock after the last one changes a little when pruned (the Cayley transform of a
    # block is not the block of the Cayley transform): the separable layers' outputs are compared.
    graph, pruned = _pruned_equals_masked(inserted, 0.3, at=separable[-1])
    assert graph.prunable_channels > 0 and len(separable) == 2 and set(separable) <= set(graph.producers)
    assert pruned.count_params() < inserted.count_params()
