"""The criteria: the mean weight checked against the layers' impulse responses, the activation
energy against the outputs it measures."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import operator_matrix

from keras_robust_iqa.layers import ChannelGain, OrthoConv2D, OrthoDense, RobustBlock
from keras_robust_iqa.pruning import ChannelGraph, activation_energy, channel_scores, prune
from keras_robust_iqa.pruning.criterion import energy_probe


def random_kernel(layer, seed):
    layer.kernel.assign(tf.random.stateless_normal(layer.kernel.shape, seed=(seed, 1)))


@pytest.mark.parametrize("cin,cout", [(4, 4), (3, 6), (6, 2)])
def test_ortho_conv_scores_are_the_mean_impulse_response(cin, cout):
    """With circular padding the layer is a circular convolution: the response to a unit
    impulse in input channel j holds, in output channel i, every weight of that channel's
    kernel (shifted), so the mean |response| over j and positions is mean |w_i|."""
    hw = (6, 6)
    layer = OrthoConv2D(cout, 3, padding="circular", use_bias=False)
    layer(tf.zeros((1, *hw, cin)))
    random_kernel(layer, cin + cout)
    rows = operator_matrix(lambda x: layer(x, training=False), (*hw, cin))
    responses = rows.reshape(hw[0] * hw[1], cin, hw[0], hw[1], cout)[0]  # impulse at the origin
    expected = np.abs(responses).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(channel_scores(layer), expected, rtol=1e-4, atol=1e-7)
    if cout <= cin:  # a co-isometry: every output channel has unit energy
        np.testing.assert_allclose(np.square(responses).sum(axis=(0, 1, 2)), 1.0, atol=1e-4)


def test_isometry_channel_energy_is_its_share_of_the_input():
    """More outputs than inputs: the energies differ, and they sum to the input channels."""
    layer = OrthoConv2D(8, 3, padding="circular", use_bias=False)
    layer(tf.zeros((1, 6, 6, 2)))
    random_kernel(layer, 7)
    rows = operator_matrix(lambda x: layer(x, training=False), (6, 6, 2))
    energy = np.square(rows.reshape(36, 2, 6, 6, 8)[0]).sum(axis=(0, 1, 2))
    np.testing.assert_allclose(energy.sum(), 2.0, atol=1e-4)
    assert energy.max() - energy.min() > 0.05
    # The channels that carry the least input energy also have the smallest mean weights.
    assert np.argmin(channel_scores(layer)) in np.argsort(energy)[:3]


def test_robust_block_scores_are_its_convolution_scores():
    block = RobustBlock(6)
    block(tf.zeros((1, 8, 8, 4)))
    np.testing.assert_array_equal(channel_scores(block), channel_scores(block.conv))


def test_ortho_dense_scores_are_mean_rows_of_the_applied_matrix():
    layer = OrthoDense(5, use_bias=False)
    layer(tf.zeros((1, 8)))
    random_kernel(layer, 3)
    matrix = operator_matrix(layer, (8,))  # (inputs, outputs)
    np.testing.assert_allclose(channel_scores(layer), np.abs(matrix).mean(axis=0), rtol=1e-5)


def test_plain_layers_use_their_kernels():
    conv = keras.layers.Conv2D(5, 3)
    conv(tf.zeros((1, 8, 8, 4)))
    dense = keras.layers.Dense(3)
    dense(tf.zeros((1, 7)))
    conv_kernel, dense_kernel = (keras.ops.convert_to_numpy(k).astype("float64") for k in (conv.kernel, dense.kernel))
    np.testing.assert_allclose(channel_scores(conv), np.abs(conv_kernel).mean(axis=(0, 1, 2)))
    np.testing.assert_allclose(channel_scores(dense), np.abs(dense_kernel).mean(axis=0))
    with pytest.raises(ValueError, match="not a prunable layer"):
        channel_scores(keras.layers.ReLU())


def _silent_channel_model():
    """A Sequential model, as users write it (default names, odd image size), whose first
    convolution's channel 2 is silent: zero kernel slice, zero bias."""
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((9, 7, 3)),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(5, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(1),
    ])
    first = model.layers[0]
    kernel, bias = first.get_weights()
    kernel[..., 2], bias[2] = 0.0, 0.0
    first.set_weights([kernel, bias])
    return model


def test_activation_scores_are_mean_squared_outputs_and_a_silent_channel_goes_without_a_trace():
    model = _silent_channel_model()
    batches = [np.random.default_rng(seed).uniform(size=(3, 9, 7, 3)).astype("float32") for seed in (0, 1)]
    graph = ChannelGraph(model)
    scores = graph.scores("activation", [(x, np.zeros(3)) for x in batches])  # (inputs, targets) as fit's
    first, second = model.layers[0].name, model.layers[1].name
    hidden = np.concatenate([keras.ops.convert_to_numpy(model.layers[0](x)) for x in batches]).astype("float64")
    np.testing.assert_allclose(scores[first], np.mean(hidden**2, axis=(0, 1, 2)), rtol=1e-5)
    assert scores[first][2] == 0 and np.argmin(scores[first]) == 2 and scores[first].min() < scores[second].min()
    # Removing the silent channel (every other channel carries energy) leaves the outputs as they were.
    pruned = prune(model, tau=1e-12, criterion="activation", batches=batches)
    assert pruned.count_params() < model.count_params()
    assert [layer.filters for layer in pruned.layers if isinstance(layer, keras.layers.Conv2D)] == [3, 5]
    x = np.random.default_rng(5).uniform(size=(4, 9, 7, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(pruned(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="needs `batches`"):
        graph.scores("activation")
    with pytest.raises(ValueError, match="criterion must be one of mean_weight, activation, got 'energy'"):
        graph.scores("energy")


def test_activation_scores_are_measured_after_a_channel_gain():
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3))
    h = OrthoConv2D(6, 3, name="conv")(x)
    h = ChannelGain(name="gain")(h)
    h = keras.layers.ReLU()(keras.layers.Conv2D(4, 3, name="mix")(h))
    model = keras.Model(x, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(h)))
    model.get_layer("gain").gain.assign([1, 1, 0, 1, -0.5, 1])
    batches = [np.random.default_rng(3).uniform(size=(4, 8, 8, 3)).astype("float32")]
    scores = ChannelGraph(model).scores("activation", batches)
    # The gain follows the orthogonal convolution directly: the channel's energy is the gain's output's.
    after_gain = activation_energy(energy_probe(model, ["gain"]), batches)["gain"]
    np.testing.assert_allclose(scores["conv"], after_gain, rtol=1e-5)
    assert scores["conv"][2] == 0 and np.all(np.delete(scores["conv"], 2) > 0)


def test_the_command_line_offers_every_criterion():
    from keras_robust_iqa.pruning import command, criterion

    assert command.CRITERIA == criterion.CRITERIA
