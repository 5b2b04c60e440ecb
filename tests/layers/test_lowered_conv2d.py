"""The plain-op layers of an export (`layers/lowered_conv2d.py`); that each computes the layer it
stands for is tested in tests/deployment/test_export.py."""

import numpy as np

from keras_robust_iqa.layers import OrthoConv2D
from keras_robust_iqa.layers.lowered_conv2d import CircularPadding2D, GroupedConv2D, LoweredOrthoConv2D
from keras_robust_iqa.testing import run_layer_test


def test_lowered_ortho_conv_layer_contract(tmp_path):
    rng = np.random.default_rng(0)
    for strides, padding in ((1, "same"), (2, "circular")):
        layer = OrthoConv2D(4, 3, strides=strides, padding=padding)
        layer.build((None, 6, 6, 2))
        layer.kernel.assign(rng.normal(size=layer.kernel.shape).astype("float32"))
        lowered = LoweredOrthoConv2D.from_ortho_conv(layer)
        config = {k: lowered.get_config()[k] for k in ("filters", "fft_size", "strides", "use_bias")}
        # Frozen: no training step; the Lipschitz check measures the OrthoConv2D's operator.
        run_layer_test(LoweredOrthoConv2D, config, (6, 6, 2), tmp_path, weights=lowered.get_weights(),
                       expected_output_shape=(6 // strides, 6 // strides, 4), train=False, atol=1e-5)


def test_circular_padding_and_grouped_conv_layer_contract(tmp_path):
    # Neither states a Lipschitz constant (a padding repeats pixels; a frozen free kernel).
    run_layer_test(CircularPadding2D, dict(kernel_size=(3, 5), strides=1), (4, 6, 2), tmp_path,
                   expected_output_shape=(6, 10, 2), train=False, lipschitz_samples=0,
                   mixed_precision_dtype="float16")
    run_layer_test(GroupedConv2D, dict(filters=4, kernel_size=3, strides=2, groups=2), (5, 5, 6), tmp_path,
                   expected_output_shape=(3, 3, 4), train=False, lipschitz_samples=0,
                   mixed_precision_dtype="float16")
