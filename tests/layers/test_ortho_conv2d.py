import keras
import numpy as np
import pytest
import skimage.data
import tensorflow as tf
from helpers import operator_matrix, singular_values

from keras_robust_iqa.layers import OrthoConv2D
from keras_robust_iqa.testing import run_layer_test


def built_layer(cin, hw, **kwargs):
    kwargs.setdefault("use_bias", False)
    layer = OrthoConv2D(**kwargs)
    layer(tf.zeros((1, *hw, cin)))
    # Move away from the initial weights so the test does not pass by luck
    # of the initialiser.
    layer.kernel.assign(tf.random.stateless_normal(layer.kernel.shape, seed=(1, 2)))
    return layer


def real_image_patch(size=(32, 32), offset=(100, 180)):
    img = skimage.data.astronaut().astype("float32") / 255.0
    return img[offset[0] : offset[0] + size[0], offset[1] : offset[1] + size[1]]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("hw", [(8, 8), (6, 10)])
def test_circular_square_is_orthogonal_by_impulse_responses(hw, training):
    layer = built_layer(4, hw, filters=4, padding="circular")
    sv = singular_values(lambda x: layer(x, training=training), (*hw, 4))
    assert sv.shape == (hw[0] * hw[1] * 4,)
    np.testing.assert_allclose(sv, 1.0, atol=1e-4)


def test_circular_singular_values_per_frequency_sedghi():
    """Sedghi et al.: the operator is circulant; its singular values are those
    of the per-frequency matrices of its impulse response's 2-D DFT."""
    hw, cin, cout = (8, 8), 3, 5
    layer = built_layer(cin, hw, filters=cout, padding="circular")
    rows = operator_matrix(lambda x: layer(x, training=False), (*hw, cin))
    responses = rows.reshape(hw[0], hw[1], cin, hw[0], hw[1], cout)
    kernel = responses[0, 0]  # response to an impulse at the origin: (cin, H, W, cout)
    # Circulant: an impulse elsewhere gives the same response, shifted.
    np.testing.assert_allclose(
        responses[3, 5], np.roll(kernel, (3, 5), axis=(1, 2)), atol=1e-5
    )
    spectra = np.fft.fft2(kernel, axes=(1, 2)).transpose(1, 2, 0, 3)  # (H, W, cin, cout)
    sv = np.linalg.svd(spectra, compute_uv=False)
    np.testing.assert_allclose(sv, 1.0, atol=1e-4)


@pytest.mark.parametrize("cin,cout", [(3, 7), (2, 8)])
def test_more_outputs_is_an_isometry(cin, cout):
    hw = (6, 8)
    layer = built_layer(cin, hw, filters=cout, padding="circular")
    sv = singular_values(lambda x: layer(x, training=False), (*hw, cin))
    assert sv.shape == (hw[0] * hw[1] * cin,)  # full column rank
    np.testing.assert_allclose(sv, 1.0, atol=1e-4)


def test_fewer_outputs_is_a_coisometry():
    hw, cin, cout = (6, 8), 6, 2
    layer = built_layer(cin, hw, filters=cout, padding="circular")
    m = operator_matrix(lambda x: layer(x, training=False), (*hw, cin))  # (n_in, n_out)
    sv = np.linalg.svd(m, compute_uv=False)
    assert sv.shape == (hw[0] * hw[1] * cout,)
    np.testing.assert_allclose(sv, 1.0, atol=1e-4)
    # Orthonormal rows of the operator: M M^T = I on the output space.
    np.testing.assert_allclose(m.T @ m, np.eye(m.shape[1]), atol=1e-4)


@pytest.mark.parametrize("cin,cout", [(4, 4), (3, 6), (6, 3)])
def test_same_padding_is_1_lipschitz(cin, cout):
    hw = (8, 6)
    layer = built_layer(cin, hw, filters=cout, padding="same")
    sv = singular_values(lambda x: layer(x, training=False), (*hw, cin))
    assert sv.max() <= 1.0 + 1e-4
    assert sv.max() > 0.9  # and it is not trivially contracting


def test_strided_is_orthogonal():
    hw, cin = (8, 8), 2
    layer = built_layer(cin, hw, filters=cin * 4, strides=2, padding="circular")
    out = layer(tf.zeros((1, *hw, cin)))
    assert out.shape == (1, 4, 4, cin * 4)
    sv = singular_values(lambda x: layer(x, training=False), (*hw, cin))
    np.testing.assert_allclose(sv, 1.0, atol=1e-4)


@pytest.mark.parametrize("cout", [3, 8])
def test_norm_preserved_on_real_and_random_images(cout):
    image = real_image_patch((32, 40))[None]
    noise = np.random.default_rng(0).normal(size=(5, 32, 40, 3)).astype("float32")
    layer = built_layer(3, (32, 40), filters=cout, padding="circular")
    for x in (image, noise):
        for training in (True, False):
            y = np.asarray(layer(x, training=training))
            np.testing.assert_allclose(
                np.linalg.norm(y.reshape(len(x), -1), axis=1),
                np.linalg.norm(x.reshape(len(x), -1), axis=1),
                rtol=1e-4,
            )


def test_matches_a_circular_convolution_before_orthogonalisation():
    """The per-frequency matrices are those of the (centred, cross-correlation)
    kernel: checked against a direct circular cross-correlation in numpy."""
    from keras_robust_iqa.layers.linalg import kernel_frequency_matrices
    from keras_robust_iqa.layers.ortho_conv2d import apply_frequency_matrices

    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(3, 3, 2, 4)).astype("float32")
    x = rng.normal(size=(2, 7, 6, 2)).astype("float32")
    q = kernel_frequency_matrices(kernel, 7, 6)
    y = np.asarray(apply_frequency_matrices(tf.constant(x), q))
    expected = np.zeros((2, 7, 6, 4))
    for a in range(3):
        for b in range(3):
            shifted = np.roll(x, (-(a - 1), -(b - 1)), axis=(1, 2))
            expected += np.einsum("bhwi,io->bhwo", shifted, kernel[a, b])
    np.testing.assert_allclose(y, expected, atol=1e-4)


def test_training_and_inference_paths_agree_and_cache_follows_weights():
    layer = built_layer(4, (8, 8), filters=6, use_bias=True)
    x = np.random.default_rng(2).normal(size=(3, 8, 8, 4)).astype("float32")
    np.testing.assert_allclose(layer(x, training=False), layer(x, training=True), atol=1e-5)
    before = np.asarray(layer(x, training=False))
    # Change the weights outside of any training step: the cache must notice.
    layer.kernel.assign(layer.kernel * 1.5 + 0.1)
    after = np.asarray(layer(x, training=False))
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, layer(x, training=True), atol=1e-5)
    # And inside a compiled function.
    infer = tf.function(lambda x: layer(x, training=False))
    np.testing.assert_allclose(infer(x), after, atol=1e-5)
    layer.alpha.assign(layer.alpha * 0.5)
    np.testing.assert_allclose(infer(x), layer(x, training=True), atol=1e-5)


def test_inference_cache_is_not_saved_as_weights():
    layer = built_layer(4, (8, 8), filters=4, use_bias=True)
    assert {w.path.split("/")[-1] for w in layer.weights} == {"kernel", "alpha", "bias"}
    assert layer.count_params() == 3 * 3 * 4 * 4 + 1 + 4


@pytest.mark.parametrize("batch", [1, 17])
@pytest.mark.parametrize("hw", [(32, 32), (48, 40)])
def test_sizes(batch, hw):
    layer = OrthoConv2D(8, padding="same")
    x = tf.random.uniform((batch, *hw, 3))
    for training in (True, False):
        assert layer(x, training=training).shape == (batch, *hw, 8)
    strided = OrthoConv2D(8, strides=2)
    assert strided(x).shape == (batch, hw[0] // 2, hw[1] // 2, 8)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(filters=8, padding="same"),
        dict(filters=4, padding="circular", use_bias=False),
        dict(filters=12, strides=2, kernel_size=(3, 1)),
    ],
)
def test_layer_round_trips_and_trains(kwargs, tmp_path):
    run_layer_test(OrthoConv2D, kwargs, (8, 8, 4), tmp_path, atol=1e-5)


def test_mixed_precision_keeps_float32_and_orthogonality():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer = OrthoConv2D(4, padding="circular", use_bias=False)
        x = tf.random.normal((2, 8, 8, 4))
        y = layer(x)
        assert layer.compute_dtype == "float32"
        assert y.dtype == tf.float32
        np.testing.assert_allclose(tf.norm(y), tf.norm(x), rtol=1e-4)
    finally:
        keras.config.set_dtype_policy("float32")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(filters=0), "filters=0"),
        (dict(filters=-3), "filters=-3"),
        (dict(filters=2.5), "filters=2.5"),
        (dict(filters=4, padding="valid"), "padding='valid'"),
        (dict(filters=4, strides=3), "strides=3"),
        (dict(filters=4, kernel_size=0), "kernel_size=0"),
    ],
)
def test_bad_arguments_name_argument_and_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OrthoConv2D(**kwargs)


@pytest.mark.parametrize(
    "shape,match",
    [
        ((2, 8, 3), "rank-4"),
        ((2, 9, 8, 3), "strides.*must divide"),
        ((2, None, 8, 3), "static input size"),
    ],
)
def test_bad_inputs_are_explained(shape, match):
    layer = OrthoConv2D(4, strides=2)
    with pytest.raises(ValueError, match=match):
        layer.build(shape)


def test_kernel_larger_than_input():
    with pytest.raises(ValueError, match="kernel_size"):
        OrthoConv2D(4, kernel_size=5, padding="circular").build((1, 3, 3, 2))
