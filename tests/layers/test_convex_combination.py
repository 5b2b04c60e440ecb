import numpy as np
import pytest
import tensorflow as tf

from keras_robust_iqa.layers import ConvexCombination
from keras_robust_iqa.testing import check_merged_lipschitz, run_layer_test


def test_convex_combination_layer_contract(tmp_path):
    # Three branches: the merged bound's check weighs them 1, 2 and 3.
    run_layer_test(ConvexCombination, {}, [(3, 3, 4)] * 3, tmp_path, expected_output_shape=(3, 3, 4),
                   mixed_precision_dtype="float16")


def test_weights_stay_on_the_simplex_and_set_the_merged_bound():
    layer = ConvexCombination()
    a, b = tf.random.normal((2, 5)), tf.random.normal((2, 5))
    np.testing.assert_allclose(layer([a, b]), (a + b) / 2, rtol=1e-6)  # starts as the plain average
    layer.logits.assign([2.0, -1.0])
    w = np.exp([2.0, -1.0]) / np.exp([2.0, -1.0]).sum()
    np.testing.assert_allclose(layer([a, b]), w[0] * a + w[1] * b, rtol=1e-5)
    np.testing.assert_allclose(layer.merged_lipschitz([1.0, 4.0]), w[0] + 4 * w[1], rtol=1e-6)
    # x -> w0 x + 2 w1 x: a multiple of the identity, so the stated bound is reached.
    measured = check_merged_lipschitz(layer, (1, 5), 2, samples=2)
    np.testing.assert_allclose(measured, w[0] + 2 * w[1], rtol=1e-4)
    assert layer.bound_by_weights  # pruning holds it fixed


def test_one_input_or_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="at least two inputs"):
        ConvexCombination()([tf.zeros((1, 3))])
    with pytest.raises(ValueError, match="inputs of one shape"):
        ConvexCombination(name="merge")([tf.zeros((1, 3)), tf.zeros((1, 4))])
