import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import singular_values

from keras_robust_iqa.layers import GlobalL2NormPooling2D, OrthoDense, RobustBlock
from keras_robust_iqa.testing import run_layer_test


@pytest.mark.parametrize("conv", ["fourier", "block"])
def test_input_gradient_norm_preserved_through_a_stack(conv):
    """Orthogonal convs and GroupSort have orthogonal Jacobians, so for any
    output cotangent g the input gradient J^T g has the norm of g."""
    stack = keras.Sequential(
        [RobustBlock(8, padding="circular", group_size=g, conv=conv) for g in (2, 4, 2)]
    )
    x = tf.random.normal((4, 8, 8, 8))
    stack(x)
    for w in stack.trainable_weights:  # move off the initialiser
        w.assign(w + tf.random.stateless_normal(w.shape, seed=(5, 6)) * 0.3)
    g = tf.random.normal(stack(x).shape)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = stack(x, training=False)
    grad = tape.gradient(y, x, output_gradients=g)
    np.testing.assert_allclose(
        tf.norm(tf.reshape(grad, (4, -1)), axis=1), tf.norm(tf.reshape(g, (4, -1)), axis=1), rtol=1e-4
    )


@pytest.mark.parametrize("conv", ["fourier", "block"])
@pytest.mark.parametrize("residual", [False, True])
def test_block_is_1_lipschitz(residual, conv):
    block = RobustBlock(4, padding="same", residual=residual, conv=conv)
    x = tf.random.normal((1, 6, 6, 4))
    block(x)
    xi = x
    with tf.GradientTape() as tape:
        tape.watch(xi)
        y = block(xi, training=False)
    jac = np.asarray(tape.jacobian(y, xi)).reshape(144, 144)
    assert np.linalg.norm(jac, 2) <= 1.0 + 1e-4
    # Linear part (activation aside) checked by impulse responses too.
    sv = singular_values(lambda t: block.conv(t, training=False) - block.conv.bias, (6, 6, 4))
    assert sv.max() <= 1.0 + 1e-4


def test_100_steps_at_lr_1e_2_stay_finite():
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            RobustBlock(8),
            RobustBlock(16, strides=2),
            RobustBlock(16, residual=True, group_size=4),
            GlobalL2NormPooling2D(),
            OrthoDense(1),
        ]
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(32, 16, 16, 3)).astype("float32")
    y = rng.uniform(size=(32, 1)).astype("float32")
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    history = model.fit(x, y, batch_size=8, epochs=25, verbose=0)  # 4 steps x 25 = 100
    assert len(history.history["loss"]) == 25
    assert np.all(np.isfinite(history.history["loss"]))
    for w in model.weights:
        assert np.all(np.isfinite(np.asarray(w))), w.path
    assert np.all(np.isfinite(model.predict(x, verbose=0)))
    assert history.history["loss"][-1] < history.history["loss"][0]


@pytest.mark.parametrize(
    "kwargs",
    [dict(filters=8), dict(filters=4, residual=True, group_size=4), dict(filters=8, strides=2),
     dict(filters=8, conv="block"), dict(filters=4, residual=True, conv="block"),
     dict(filters=8, strides=2, conv="block"),
     dict(filters=8, bottleneck=4, conv="aol")],
)
def test_round_trips_and_trains(kwargs, tmp_path):
    run_layer_test(RobustBlock, kwargs, (8, 8, 4), tmp_path, atol=1e-5)


def test_whole_model_save_clone(tmp_path):
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), RobustBlock(8), GlobalL2NormPooling2D(), OrthoDense(1)]
    )
    x = tf.random.uniform((5, 8, 8, 3))
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), expected, atol=1e-6)
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone.predict(x, verbose=0), expected, atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="group_size`=3 must divide `filters`=8"):
        RobustBlock(8, group_size=3)
    with pytest.raises(ValueError, match="residual_init=1.5"):
        RobustBlock(8, residual=True, residual_init=1.5)
    with pytest.raises(ValueError, match="residual=True"):
        RobustBlock(8, residual=True).build((1, 8, 8, 4))
    with pytest.raises(ValueError, match="filters=0"):
        RobustBlock(0)
    with pytest.raises(ValueError, match="conv='cayley'"):
        RobustBlock(8, conv="cayley")
    with pytest.raises(ValueError, match="group_size`=2 must divide `bottleneck`=3"):
        RobustBlock(8, bottleneck=3)


def test_configs_saved_before_the_conv_option_load_as_fourier_blocks():
    config = RobustBlock(8).get_config()
    del config["conv"]
    assert RobustBlock.from_config(config).conv_type == "fourier"
    assert RobustBlock.from_config({**config, "conv": "block"}).conv_type == "block"


@pytest.mark.parametrize("conv", ["block", "aol", "fourier"])
def test_bottleneck_block_is_1_lipschitz_and_narrow(conv):
    block = RobustBlock(8, residual=True, bottleneck=4, conv=conv)
    x = tf.random.normal((1, 6, 6, 8))
    block(x)
    assert [(c.input_channels, c.filters, c.kernel_size) for c, _ in block.parts()] == [
        (8, 4, (1, 1)), (4, 4, (3, 3)), (4, 8, (1, 1))]
    for w in block.trainable_weights:  # move off the initialiser
        w.assign(w + tf.random.stateless_normal(w.shape, seed=(1, 2)) * 0.3)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = block(x, training=False)
    jac = np.asarray(tape.jacobian(y, x)).reshape(288, 288)
    assert 0.1 < np.linalg.norm(jac, 2) <= 1.0 + 1e-4
    # Exported as plain ops, it computes the same.
    np.testing.assert_allclose(np.asarray(block.lowered()(x)), np.asarray(y), atol=1e-5)
