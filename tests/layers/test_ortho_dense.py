import numpy as np
import pytest
import tensorflow as tf
from helpers import singular_values

from keras_robust_iqa.layers import OrthoDense
from keras_robust_iqa.layers.linalg import cayley
from keras_robust_iqa.testing import run_layer_test


@pytest.mark.parametrize("din,units", [(8, 8), (5, 12), (12, 5)])
def test_singular_values_are_one(din, units):
    layer = OrthoDense(units, use_bias=False)
    layer(tf.zeros((1, din)))
    layer.kernel.assign(tf.random.stateless_normal(layer.kernel.shape, seed=(3, 4)))
    sv = singular_values(layer, (din,))
    assert sv.shape == (min(din, units),)
    np.testing.assert_allclose(sv, 1.0, atol=1e-5)


def test_isometry_preserves_norms():
    layer = OrthoDense(16, use_bias=False)
    x = tf.random.normal((7, 6))
    np.testing.assert_allclose(tf.norm(layer(x), axis=1), tf.norm(x, axis=1), rtol=1e-5)


@pytest.mark.parametrize("dtype", [tf.float64, tf.complex128])
@pytest.mark.parametrize("m,n", [(6, 6), (9, 4), (3, 7)])
def test_cayley_orthonormal_columns_or_rows(m, n, dtype):
    rng = np.random.default_rng(m * n)
    w = rng.normal(size=(3, m, n)) * 3.0
    if dtype == tf.complex128:
        w = w + 1j * rng.normal(size=(3, m, n)) * 3.0
    q = np.asarray(cayley(tf.constant(w, dtype)))
    gram = q.conj().transpose(0, 2, 1) @ q if m >= n else q @ q.conj().transpose(0, 2, 1)
    np.testing.assert_allclose(gram, np.broadcast_to(np.eye(min(m, n)), gram.shape), atol=1e-10)


def test_round_trips_and_trains(tmp_path):
    run_layer_test(OrthoDense, dict(units=3), (6,), tmp_path, expected_output_shape=(3,), atol=1e-6)


@pytest.mark.parametrize("units", [0, -1, 1.5, True])
def test_bad_units(units):
    with pytest.raises(ValueError, match=f"units={units!r}"):
        OrthoDense(units)
