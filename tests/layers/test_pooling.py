import numpy as np
import pytest
import tensorflow as tf
from helpers import jacobian_spectral_norms, singular_values

from keras_robust_iqa.layers import (
    GlobalL2NormPooling2D,
    InvertibleDownsampling,
    L2NormPooling2D,
)
from keras_robust_iqa.testing import run_layer_test


def test_l2_norm_pooling_values():
    x = tf.random.normal((2, 4, 6, 3))
    expected = tf.sqrt(tf.nn.avg_pool2d(tf.square(x), 2, 2, "VALID") * 4.0)
    np.testing.assert_allclose(L2NormPooling2D(2)(x), expected, rtol=1e-5)


def test_l2_norm_pooling_is_1_lipschitz_and_tight():
    x = tf.random.normal((4, 4, 4, 2))
    norms = jacobian_spectral_norms(L2NormPooling2D(2), x)
    assert norms.max() <= 1.0 + 1e-6
    assert norms.min() > 0.999  # each window's gradient is a unit vector


def test_invertible_downsampling_is_a_permutation():
    layer = InvertibleDownsampling(2)
    sv = singular_values(layer, (4, 6, 2))
    np.testing.assert_allclose(sv, 1.0, atol=1e-6)
    x = tf.random.normal((3, 4, 6, 2))
    np.testing.assert_array_equal(tf.nn.depth_to_space(layer(x), 2), x)


def test_global_l2_norm_pooling_lipschitz_constant():
    layer = GlobalL2NormPooling2D()
    x = tf.random.normal((3, 4, 5, 6))
    np.testing.assert_allclose(layer(x), tf.sqrt(tf.reduce_mean(x * x, axis=(1, 2))), rtol=1e-5)
    bound = layer.lipschitz_constant(x.shape)
    assert bound == pytest.approx(1 / np.sqrt(20))
    norms = jacobian_spectral_norms(layer, x)
    assert norms.max() <= bound * (1 + 1e-6)
    assert norms.min() >= bound * 0.999


@pytest.mark.parametrize(
    "cls,kwargs,output_shape,mixed_dtype",
    [(L2NormPooling2D, dict(pool_size=2), (2, 2, 3), "float32"), (InvertibleDownsampling, {}, (2, 2, 12), "float16"),
     (GlobalL2NormPooling2D, {}, (3,), "float32")],
)
def test_round_trips(cls, kwargs, output_shape, mixed_dtype, tmp_path):
    run_layer_test(cls, kwargs, (4, 4, 3), tmp_path, expected_output_shape=output_shape, train=False,
                   mixed_precision_dtype=mixed_dtype)


def test_bad_arguments_and_shapes():
    with pytest.raises(ValueError, match="pool_size=0"):
        L2NormPooling2D(0)
    with pytest.raises(ValueError, match="must divide"):
        L2NormPooling2D(3).build((1, 4, 4, 2))
    with pytest.raises(ValueError, match="must divide"):
        InvertibleDownsampling(2).build((1, 5, 4, 2))
    with pytest.raises(ValueError, match="rank-4"):
        GlobalL2NormPooling2D().build((1, 4, 2))
    with pytest.raises(ValueError, match="epsilon"):
        L2NormPooling2D(2, epsilon=-1.0)
