import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import jacobian_spectral_norms

from keras_robust_iqa.deployment import deployment_model
from keras_robust_iqa.layers import AOLConv2D, SLLConv2D
from keras_robust_iqa.layers.linalg import jacobian_spectral_norm
from keras_robust_iqa.models import lipschitz_bound, robustify
from keras_robust_iqa.models.graph import flat_layers
from keras_robust_iqa.testing import run_layer_test

CASES = [dict(kernel_size=3), dict(kernel_size=5, inner_channels=6, use_bias=False)]


@pytest.mark.parametrize("kwargs", CASES)
def test_layer_contract(kwargs, tmp_path):
    run_layer_test(SLLConv2D, kwargs, (8, 8, 4), tmp_path, expected_output_shape=(8, 8, 4), atol=1e-5)


@pytest.mark.parametrize("kwargs", CASES)
def test_jacobian_never_exceeds_one_fresh_and_trained(kwargs):
    """Largest singular value of the Jacobian, exact (full Jacobian) and by power iteration, before and after
    training steps that push the outputs' norm up."""
    keras.utils.set_random_seed(0)
    layer = SLLConv2D(**kwargs)
    layer.build((None, 4, 4, 4))
    layer.kernel.assign(np.random.default_rng(0).normal(size=layer.kernel.shape))
    layer.log_q.assign(np.random.default_rng(1).normal(size=layer.log_q.shape))
    x = tf.constant(np.random.default_rng(2).normal(size=(3, 4, 4, 4)).astype("float32"))
    optimizer = keras.optimizers.Adam(0.05)
    for _ in range(2):
        exact = jacobian_spectral_norms(lambda t: layer(t), x)
        assert exact.max() <= 1 + 1e-4
        assert exact.max() > 0.5
        assert np.asarray(jacobian_spectral_norm(lambda t: layer(t), x, iterations=30)).max() <= 1 + 1e-4
        for _ in range(5):
            with tf.GradientTape() as tape:
                loss = -tf.reduce_mean(tf.square(layer(x, training=True)))
            optimizer.apply(tape.gradient(loss, layer.trainable_weights), layer.trainable_weights)


def test_lowers_to_plain_ops():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 4))
    model = keras.Model(inputs, SLLConv2D(name="sll")(inputs))
    model.get_layer("sll").log_q.assign(np.linspace(-1, 1, 4))
    deploy = deployment_model(model, patch_size=6)
    kinds = {type(layer).__name__ for layer in deploy.get_layer("sll").layers}
    assert kinds == {"InputLayer", "Conv2D", "ReLU", "Subtract"}


def test_robustify_replace_with_sll_where_channels_are_kept():
    """conv='sll': an SLL layer where a convolution keeps its channels at stride 1, AOL elsewhere."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 4)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.Conv2D(6, 3, strides=2, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(1),
    ])
    robust = robustify(model, "replace", conv="sll")
    kinds = [type(layer).__name__ for layer in flat_layers(robust)]
    assert "SLLConv2D" in kinds and "AOLConv2D" in kinds
    probe = np.random.default_rng(3).uniform(size=(3, 8, 8, 4)).astype("float32")
    measured = np.asarray(jacobian_spectral_norm(lambda t: robust(t, training=False), probe, iterations=20))
    assert measured.max() <= lipschitz_bound(robust) * (1 + 1e-4)
    with pytest.raises(ValueError, match="conv`='sll' applies to mode='replace'"):
        robustify(model, "insert", conv="sll", after=[model.layers[0].name])


def test_even_kernel_is_refused():
    with pytest.raises(ValueError, match="kernel_size"):
        SLLConv2D(kernel_size=2)


def test_pruning_keeps_the_inner_width_and_the_certificate():
    """Pruning slices the input side of W (channels in = out); the inner channels stay, and so does the bound."""
    from keras_robust_iqa.layers import GlobalL2NormPooling2D, MaxMin, OrthoDense
    from keras_robust_iqa.pruning import prune

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = MaxMin()(AOLConv2D(8, name="widen")(inputs))
    x = SLLConv2D(name="sll")(x)
    model = keras.Model(inputs, OrthoDense(1)(GlobalL2NormPooling2D()(x)))
    pruned = prune(model, 0.25)
    sll = pruned.get_layer("sll")
    assert sll.input_channels == 6 and sll.kernel.shape[-1] == 8
    assert lipschitz_bound(pruned) == pytest.approx(1 / 8)
    probe = np.random.default_rng(4).uniform(size=(2, 8, 8, 3)).astype("float32")
    measured = np.asarray(jacobian_spectral_norm(lambda t: pruned(t), probe, iterations=20))
    assert measured.max() <= lipschitz_bound(pruned) * (1 + 1e-4)
