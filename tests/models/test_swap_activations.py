"""`swap_activations`: every ReLU of a user's model computed by a smooth activation, weights kept."""

import keras
import numpy as np
import pytest

from keras_robust_iqa.models import SMOOTH_ACTIVATIONS, build_model, robustify, swap_activations


def _smooth(name, x):
    return keras.ops.convert_to_numpy(getattr(keras.activations, name)(x))


@pytest.mark.parametrize("activation", SMOOTH_ACTIVATIONS)
def test_a_sequential_model_with_default_names_computes_the_smooth_activation(activation):
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="relu"), keras.layers.ReLU(),
                              keras.layers.Dense(4), keras.layers.Activation("relu"), keras.layers.Dense(1)])
    swapped = swap_activations(model, activation)
    x = np.random.default_rng(0).normal(size=(7, 6)).astype("float32")
    (w1, b1), (w2, b2), (w3, b3) = (model.layers[i].get_weights() for i in (0, 2, 4))
    hidden = _smooth(activation, _smooth(activation, x @ w1 + b1))
    expected = _smooth(activation, hidden @ w2 + b2) @ w3 + b3
    np.testing.assert_allclose(keras.ops.convert_to_numpy(swapped(x)), expected, rtol=1e-5, atol=1e-6)
    # The original model is untouched.
    assert model.layers[0].get_config()["activation"] == "relu"


def test_the_small_model_keeps_its_weights_and_layer_names_and_saves(tmp_path):
    model = build_model("small", 32)
    swapped = swap_activations(model, "silu")
    assert [layer.name for layer in swapped.layers] == [layer.name for layer in model.layers]
    kinds = {layer.name: layer.get_config().get("activation") for layer in swapped.layers}
    assert kinds["relu1"] == kinds["fc1"] == "silu" and kinds["conv1"] == "linear"
    for old, new in zip(model.layers, swapped.layers):
        for a, b in zip(old.get_weights(), new.get_weights()):
            np.testing.assert_array_equal(a, b)
    # insert's RobustBlocks go in after the swap; the result saves and loads in safe mode.
    robust = robustify(swapped, mode="insert", bottleneck=8)
    path = tmp_path / "swapped.keras"
    robust.save(path)
    x = np.random.default_rng(1).uniform(size=(2, 32, 32, 3)).astype("float32")
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded(x), robust(x), rtol=1e-5, atol=1e-6)


def test_capped_and_leaky_relus_stay_and_a_model_without_relu_is_refused():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.ReLU(max_value=6.0)(x)  # MobileNet's ReLU6
    x = keras.layers.LeakyReLU(negative_slope=0.1)(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    with pytest.raises(ValueError, match="no ReLU to swap for gelu"):
        swap_activations(model, "gelu")
    with pytest.raises(ValueError, match=r"`activation` must be one of .* got activation='tanh'"):
        swap_activations(model, "tanh")


@pytest.mark.parametrize("activation", SMOOTH_ACTIVATIONS)
def test_the_smooth_activations_lipschitz_constants_bound_their_steepest_slope(activation):
    from keras_robust_iqa.models import lipschitz_bound
    from keras_robust_iqa.models.lipschitz import layer_lipschitz

    x = np.linspace(-8.0, 8.0, 400_001)
    slopes = np.diff(_smooth(activation, x.astype("float64"))) / np.diff(x)
    stated = layer_lipschitz(keras.layers.Activation(activation))
    assert slopes.max() <= stated <= slopes.max() + 1e-3
    # A model of 1-Lipschitz parts and the activation is certified with its constant.
    model = keras.Sequential([keras.Input((4,)), keras.layers.Activation(activation), keras.layers.Activation("relu")])
    assert lipschitz_bound(model) == pytest.approx(stated)
