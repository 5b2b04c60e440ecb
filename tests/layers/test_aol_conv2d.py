import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import singular_values

from keras_robust_iqa.deployment import deployment_model
from keras_robust_iqa.layers import AOLConv2D, GlobalL2NormPooling2D, MaxMin, OrthoDense
from keras_robust_iqa.layers.linalg import jacobian_spectral_norm
from keras_robust_iqa.models import lipschitz_bound, robustify
from keras_robust_iqa.models.graph import flat_layers
from keras_robust_iqa.pruning import prune
from keras_robust_iqa.testing import run_layer_test

CASES = [dict(filters=6), dict(filters=4, strides=2), dict(filters=3, kernel_size=5, use_bias=False)]


def _push_gain(layer, input_shape, steps=5, seed=0):
    """A few Adam steps that make the layer's outputs as large as they can get: the certificate's worst case."""
    x = tf.constant(np.random.default_rng(seed).normal(size=(4, *input_shape)).astype("float32"))
    optimizer = keras.optimizers.Adam(0.05)
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(tf.square(layer(x, training=True)))
        optimizer.apply(tape.gradient(loss, layer.trainable_weights), layer.trainable_weights)


@pytest.mark.parametrize("kwargs", CASES)
def test_layer_contract(kwargs, tmp_path):
    s = kwargs.get("strides", 1)
    run_layer_test(AOLConv2D, kwargs, (8, 8, 4), tmp_path, expected_output_shape=(8 // s, 8 // s, kwargs["filters"]),
                   atol=1e-5)


@pytest.mark.parametrize("kwargs", CASES)
def test_impulse_responses_never_exceed_one_fresh_and_trained(kwargs):
    """The singular values of the whole operator (impulse responses) are at most 1, before and after training."""
    layer = AOLConv2D(**{**kwargs, "use_bias": False})
    layer.build((None, 6, 6, 4))
    layer.kernel.assign(np.random.default_rng(0).normal(size=layer.kernel.shape))  # far from orthogonal
    for _ in range(2):
        sv = singular_values(lambda t: layer(t), (6, 6, 4))
        assert sv.max() <= 1 + 1e-4
        assert sv.max() > 0.3  # a bound that means something, not a layer that outputs nothing
        _push_gain(layer, (6, 6, 4))


def test_rescaling_is_one_for_an_orthogonal_1x1_kernel():
    """AOL leaves an orthogonal matrix unchanged: |Q^T Q| = I has unit row sums."""
    layer = AOLConv2D(5, kernel_size=1, use_bias=False)
    layer.build((None, 3, 3, 5))
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(5, 5)))
    layer.kernel.assign(q[None, None])
    np.testing.assert_allclose(layer.applied_kernel()[0, 0], q, atol=1e-5)


def test_prunes_lowers_and_certifies():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = MaxMin()(AOLConv2D(8, name="aol_a")(inputs))
    x = MaxMin()(AOLConv2D(6, strides=2, name="aol_b")(x))
    outputs = OrthoDense(1)(GlobalL2NormPooling2D()(x))
    model = keras.Model(inputs, outputs)
    assert lipschitz_bound(model) == pytest.approx(1 / 4)
    pruned = prune(model, 0.25)
    assert pruned.get_layer("aol_a").filters < 8
    assert lipschitz_bound(pruned) == pytest.approx(1 / 4)
    probe = np.random.default_rng(2).uniform(size=(3, 8, 8, 3)).astype("float32")
    measured = np.asarray(jacobian_spectral_norm(lambda t: pruned(t), probe, iterations=20))
    assert measured.max() <= lipschitz_bound(pruned) * (1 + 1e-4)
    deploy = deployment_model(pruned, patch_size=8)
    assert sum(type(layer) is keras.layers.Conv2D for layer in flat_layers(deploy)) == 2
    assert not any(isinstance(layer, AOLConv2D) for layer in flat_layers(deploy))


def test_robustify_replace_with_aol_certifies_a_user_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((9, 9, 3)),
        keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(1),
    ])
    robust = robustify(model, "replace", conv="aol")
    assert sum(isinstance(layer, AOLConv2D) for layer in flat_layers(robust)) == 2
    bound = lipschitz_bound(robust)
    probe = np.random.default_rng(3).uniform(size=(3, 9, 9, 3)).astype("float32")
    measured = np.asarray(jacobian_spectral_norm(lambda t: robust(t, training=False), probe, iterations=20))
    assert measured.max() <= bound * (1 + 1e-4)


@pytest.mark.parametrize("kwargs,match", [(dict(filters=0), "filters"), (dict(filters=2, padding="valid"), "padding"),
                                          (dict(filters=2, strides=(1, 2)), "strides")])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AOLConv2D(**kwargs)
