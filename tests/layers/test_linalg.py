import keras
import numpy as np
import tensorflow as tf
from helpers import jacobian_spectral_norms

from keras_robust_iqa.layers import RobustBlock, linalg


def test_cayley_apply_equals_cayley_matmul():
    rng = np.random.default_rng(0)
    for m, n in [(5, 5), (7, 4), (3, 6)]:
        w = tf.constant(rng.normal(size=(4, m, n)) + 1j * rng.normal(size=(4, m, n)), tf.complex64)
        x = tf.constant(rng.normal(size=(4, n, 3)) + 1j * rng.normal(size=(4, n, 3)), tf.complex64)
        np.testing.assert_allclose(
            linalg.cayley_apply(w, x), tf.matmul(linalg.cayley(w), x), atol=1e-5
        )


def test_cayley_gradients_match_between_paths():
    """Training uses cayley_apply, certificates use cayley: same gradients."""
    rng = np.random.default_rng(1)
    w = tf.Variable(rng.normal(size=(3, 6, 4)) + 1j * rng.normal(size=(3, 6, 4)), dtype=tf.complex64)
    x = tf.constant(rng.normal(size=(3, 4, 2)) + 1j * rng.normal(size=(3, 4, 2)), tf.complex64)
    grads = []
    for f in (lambda: linalg.cayley_apply(w, x), lambda: tf.matmul(linalg.cayley(w), x)):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.abs(f()) ** 2 * tf.range(2, dtype=tf.float32))
        grads.append(tape.gradient(loss, w))
    np.testing.assert_allclose(grads[0], grads[1], atol=1e-4)


def test_frequency_spectral_norms():
    q = tf.constant(np.diag([3.0, 1.0, 0.5])[None], tf.complex64)
    np.testing.assert_allclose(linalg.frequency_spectral_norms(q), [3.0], rtol=1e-6)


def test_jacobian_spectral_norm_matches_brute_force():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((6, 6, 3)), RobustBlock(8), keras.layers.Conv2D(4, 3, padding="same")]
    )
    x = tf.random.uniform((2, 6, 6, 3))
    fn = lambda t: model(t, training=False)  # noqa: E731
    np.testing.assert_allclose(
        linalg.jacobian_spectral_norm(fn, x, iterations=100), jacobian_spectral_norms(fn, x), rtol=1e-3
    )


def test_fast_square_path_equals_generic_cayley():
    rng = np.random.default_rng(3)
    for cin, cout in [(4, 4), (3, 5), (5, 3)]:
        kernel = tf.constant(rng.normal(size=(3, 3, cin, cout)), tf.float32)
        x_hat = tf.constant(
            rng.normal(size=(7 * 4, cin, 2)) + 1j * rng.normal(size=(7 * 4, cin, 2)), tf.complex64
        )
        expected = tf.matmul(linalg.orthogonal_frequency_matrices(kernel, 2.5, 7, 6), x_hat)
        np.testing.assert_allclose(
            linalg.orthogonal_conv_apply(kernel, 2.5, x_hat, 7, 6), expected, atol=1e-5
        )


def test_spectrum_norm_without_the_spectrum():
    kernel = tf.random.normal((3, 3, 4, 6))
    basis = linalg.DFTBasis.of(kernel, 9, 8)
    taps = linalg.kernel_taps(kernel)
    spectrum = basis.spectrum(taps)
    np.testing.assert_allclose(
        basis.spectrum_norm(taps), tf.sqrt(tf.reduce_sum(tf.abs(spectrum) ** 2)), rtol=1e-5
    )


def test_solve_and_its_gradient_match_tensorflow():
    rng = np.random.default_rng(4)
    m = tf.constant(rng.normal(size=(5, 4, 4)) + 1j * rng.normal(size=(5, 4, 4)) + 4 * np.eye(4), tf.complex64)
    x = tf.constant(rng.normal(size=(5, 4, 3)) + 1j * rng.normal(size=(5, 4, 3)), tf.complex64)
    weights = tf.constant(rng.normal(size=(5, 4, 3)), tf.float32)
    grads = []
    for fn in (linalg.solve, tf.linalg.solve):
        with tf.GradientTape() as tape:
            tape.watch([m, x])
            loss = tf.reduce_sum(tf.abs(fn(m, x)) ** 2 * weights)
        grads.append(tape.gradient(loss, [m, x]))
    np.testing.assert_allclose(linalg.solve(m, x), tf.linalg.solve(m, x), atol=1e-5)
    for ours, theirs in zip(*grads):
        np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_fast_path_gradients_match_generic_cayley():
    rng = np.random.default_rng(5)
    kernel = tf.Variable(rng.normal(size=(3, 3, 4, 4)), dtype=tf.float32)
    alpha = tf.Variable(3.0)
    x_hat = tf.constant(rng.normal(size=(7 * 4, 4, 2)) + 1j * rng.normal(size=(7 * 4, 4, 2)), tf.complex64)
    grads = []
    for fn in (
        lambda: linalg.orthogonal_conv_apply(kernel, alpha, x_hat, 7, 6),
        lambda: tf.matmul(linalg.orthogonal_frequency_matrices(kernel, alpha, 7, 6), x_hat),
    ):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.math.real(fn()) * tf.range(2, dtype=tf.float32))
        grads.append(tape.gradient(loss, [kernel, alpha]))
    for ours, theirs in zip(*grads):
        np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-4)
