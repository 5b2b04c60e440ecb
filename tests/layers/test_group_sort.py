import numpy as np
import pytest
import tensorflow as tf
from helpers import jacobian_spectral_norms

from keras_robust_iqa.layers import GroupSort, MaxMin
from keras_robust_iqa.testing import run_layer_test


def test_sorts_within_groups_descending():
    x = tf.constant([[3.0, 1.0, 2.0, 5.0, 4.0, 0.0]])
    np.testing.assert_array_equal(GroupSort(3)(x), [[3.0, 2.0, 1.0, 5.0, 4.0, 0.0]])
    np.testing.assert_array_equal(MaxMin()(x), [[3.0, 1.0, 5.0, 2.0, 4.0, 0.0]])


@pytest.mark.parametrize("layer", [MaxMin(), GroupSort(4), GroupSort(8)])
def test_jacobian_is_a_permutation(layer):
    x = tf.random.normal((3, 2, 2, 8))
    # Norm preserved exactly, and the Jacobian is a permutation matrix.
    np.testing.assert_allclose(tf.norm(layer(x)), tf.norm(x), rtol=1e-6)
    xi = x[:1]
    with tf.GradientTape() as tape:
        tape.watch(xi)
        y = layer(xi)
    jac = np.asarray(tape.jacobian(y, xi)).reshape(32, 32)
    assert set(np.unique(jac)) == {0.0, 1.0}
    np.testing.assert_array_equal(jac.sum(0), 1.0)
    np.testing.assert_array_equal(jac.sum(1), 1.0)
    np.testing.assert_allclose(jacobian_spectral_norms(layer, x), 1.0, atol=1e-6)


def test_other_axis():
    x = tf.random.normal((2, 4, 3))
    expected = np.moveaxis(np.asarray(MaxMin()(np.moveaxis(np.asarray(x), 1, -1))), -1, 1)
    np.testing.assert_allclose(MaxMin(axis=1)(x), expected)


def test_maxmin_equals_groupsort_2():
    x = tf.random.normal((4, 10))
    np.testing.assert_array_equal(MaxMin()(x), GroupSort(2)(x))


@pytest.mark.parametrize("cls,kwargs", [(GroupSort, dict(group_size=4)), (MaxMin, {})])
def test_round_trips(cls, kwargs, tmp_path):
    run_layer_test(cls, kwargs, (4, 4, 8), tmp_path, expected_output_shape=(4, 4, 8), train=False)


def test_group_size_must_divide_channels():
    with pytest.raises(ValueError, match="group_size`=3 must divide"):
        GroupSort(3)(tf.zeros((1, 8)))
    with pytest.raises(ValueError, match="group_size=0"):
        GroupSort(0)


@pytest.mark.parametrize("layer", [MaxMin(), GroupSort(4)])
def test_jacobian_is_a_permutation_at_ties(layer):
    """Flat image regions give exactly equal channels; a max and a min that both
    pass the gradient to the same input would make the Jacobian norm sqrt(2)."""
    x = tf.constant([[0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
    jac = np.asarray(tape.jacobian(y, x)).reshape(8, 8)
    np.testing.assert_array_equal(jac.sum(0), 1.0)
    np.testing.assert_array_equal(jac.sum(1), 1.0)
