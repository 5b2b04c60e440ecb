import numpy as np
import tensorflow as tf

from keras_robust_iqa.layers import OutputScale
from keras_robust_iqa.testing import check_lipschitz, run_layer_test


def test_output_scale_layer_contract(tmp_path):
    # A negative scale above 1 in size: the stated |scale| is what the Jacobian measures.
    run_layer_test(OutputScale, dict(scale=-2.5, offset=0.3), (5,), tmp_path, expected_output_shape=(5,),
                   mixed_precision_dtype="float16")


def test_scale_and_offset_are_applied_and_the_constant_is_the_scale():
    layer = OutputScale(scale=-3.0, offset=1.5)
    x = tf.random.normal((4, 2))
    np.testing.assert_allclose(layer(x), -3.0 * x + 1.5, rtol=1e-6)
    assert layer.lipschitz_constant() == 3.0
    measured = check_lipschitz(layer, (1, 2), samples=2)
    np.testing.assert_allclose(measured, 3.0, rtol=1e-4)  # a gain: the bound is tight
    assert layer.bound_by_weights  # pruning holds it fixed
