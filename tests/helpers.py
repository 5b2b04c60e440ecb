"""Shared test helpers: a keras-hub style `run_layer_test` and operator checks."""

import keras
import numpy as np
import tensorflow as tf

# Side of the built-in dataset the tests build (`builtin_cache`): seconds, all MS-SSIM scales that fit.
BUILTIN_SIZE = 64


def operator_matrix(fn, input_shape):
    """The matrix of a linear map on `input_shape` (no batch), by impulse responses.

    Row `i` is the flattened response to the `i`-th one-hot input, so the
    result is the transpose of the operator's matrix: same singular values.
    Independent of how `fn` computes.
    """
    n = int(np.prod(input_shape))
    basis = tf.reshape(tf.eye(n), (n, *input_shape))
    return np.asarray(fn(basis)).reshape(n, -1).astype(np.float64)


def singular_values(fn, input_shape):
    return np.linalg.svd(operator_matrix(fn, input_shape), compute_uv=False)


def jacobian_spectral_norms(fn, x):
    """Largest singular value of the Jacobian of `fn` at each sample of `x`."""
    x = tf.convert_to_tensor(x, tf.float32)
    norms = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        with tf.GradientTape() as tape:
            tape.watch(xi)
            y = fn(xi)
        jac = tape.jacobian(y, xi)
        m = np.asarray(jac).reshape(int(np.prod(y.shape)), -1)
        norms.append(np.linalg.norm(m, 2))
    return np.array(norms)


def run_layer_test(layer_cls, init_kwargs, input_shape, tmp_path, *, train=True, atol=1e-6):
    """Config round trip, `.keras` save/load in safe mode, clone_model and `fit`.

    Returns the model built around the layer.
    """
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(4, *input_shape)).astype("float32")

    # Config round trip.
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    restored = layer_cls.from_config(config)
    assert restored.get_config() == config

    inputs = keras.Input(input_shape)
    outputs = layer(inputs)
    model = keras.Model(inputs, outputs)
    expected = np.asarray(model(x, training=False))
    assert np.all(np.isfinite(expected))

    # The layer from its config, given the same weights, computes the same.
    restored(x)
    restored.set_weights(layer.get_weights())
    np.testing.assert_allclose(np.asarray(restored(x, training=False)), expected, atol=atol)

    # `.keras` file, reloaded in safe mode (no lambdas, registered classes only).
    path = tmp_path / f"{layer_cls.__name__}.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(np.asarray(reloaded(x, training=False)), expected, atol=atol)

    # clone_model rebuilds from config; copy the weights and compare.
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(np.asarray(clone(x, training=False)), expected, atol=atol)

    # Trains inside model.fit (if it has weights) and stays finite.
    if train:
        target = rng.normal(size=expected.shape).astype("float32")
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
        history = model.fit(x, target, batch_size=2, epochs=2, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
        if layer.trainable_weights:
            after = np.asarray(model(x, training=False))
            assert not np.allclose(after, expected), "fit did not change the outputs"
    return model
