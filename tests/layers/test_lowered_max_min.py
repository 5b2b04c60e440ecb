import pytest

from keras_robust_iqa.layers.lowered_max_min import LoweredMaxMin
from keras_robust_iqa.testing import run_layer_test


@pytest.mark.parametrize("shape", [(3, 3, 6), (4,)])
def test_lowered_max_min_layer_contract(shape, tmp_path):
    # No weights; it computes in the input's dtype (the export runs in float32).
    run_layer_test(LoweredMaxMin, {}, shape, tmp_path, expected_output_shape=shape, train=False,
                   mixed_precision_dtype="float16")
