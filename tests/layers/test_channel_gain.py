import keras
import numpy as np
import tensorflow as tf
from helpers import singular_values

from keras_robust_iqa.layers import ChannelGain
from keras_robust_iqa.testing import run_layer_test


def test_channel_gain_layer_contract(tmp_path):
    run_layer_test(ChannelGain, {}, (4, 4, 3), tmp_path, expected_output_shape=(4, 4, 3),
                   mixed_precision_dtype="float16")


def test_gains_start_at_one_and_scale_each_channel():
    layer = ChannelGain()
    x = tf.random.normal((2, 3, 3, 4))
    np.testing.assert_array_equal(layer(x), x)  # the orthogonal layer before it, unchanged
    layer.gain.assign([0.5, -1.0, 0.0, 0.25])
    np.testing.assert_allclose(layer(x), x * np.array([0.5, -1.0, 0.0, 0.25]), rtol=1e-6)


def test_lipschitz_constant_is_the_largest_singular_value():
    layer = ChannelGain()
    layer.build((None, 2, 2, 3))
    layer.gain.assign([0.3, -0.7, 0.1])
    sv = singular_values(layer, (2, 2, 3))
    np.testing.assert_allclose(sv.max(), 0.7, rtol=1e-6)
    assert layer.lipschitz_constant() == np.float32(0.7)
    layer.gain.assign([0.3, 2.5, 0.1])  # set by hand past the constraint: still reported
    assert layer.lipschitz_constant() == 2.5


def test_training_never_takes_a_gain_past_one():
    # The target asks for twice the input: the gains run into the constraint and stay at 1.
    inputs = keras.Input((3,))
    model = keras.Model(inputs, ChannelGain(name="gain")(inputs))
    x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
    model.compile(keras.optimizers.SGD(0.5), "mse")
    model.fit(x, 2 * x * np.array([1.0, -1.0, 0.1], "float32"), epochs=20, batch_size=16, verbose=0)
    gains = model.get_layer("gain").gain.numpy()
    np.testing.assert_allclose(gains, [1.0, -1.0, 0.2], atol=1e-3)
