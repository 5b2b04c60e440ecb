"""The mean-weight criterion, checked against the layers' impulse responses."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import operator_matrix

from keras_robust_iqa.layers import OrthoConv2D, OrthoDense, RobustBlock
from keras_robust_iqa.pruning import channel_scores


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
