"""Compatibility matrix, separable convolutions and strides above 2: a Sequential model with a
4x4 stride-4 patchify stem and separable convolutions (strides 2, depth multiplier 2), and
Xception's entry-flow block (separable convolutions, BatchNorm, max pooling, a strided 1x1
shortcut) after a 7x7 stride-3 stem, both with default layer names.

keras.applications Xception itself (71x71 at least) took 8 s to replace and 42 s for one
bound cell on the shared machine (docs/models.md): its block stands in for it here. The
stand-ins' mathematics is checked on their operators, by impulse responses.
"""

import keras
import numpy as np
import pytest
from compat_matrix import PATCH, cells, matrix_tests
from helpers import operator_matrix

from keras_robust_iqa import layers as robust_layers
from keras_robust_iqa.models import lipschitz_bound, robustify

L = keras.layers


def separable_sequential():
    return keras.Sequential([
        keras.Input((PATCH, PATCH, 3)),
        L.Conv2D(16, 4, strides=4),  # patchify: 8x8
        L.SeparableConv2D(16, 3, padding="same", activation="relu"),
        L.SeparableConv2D(24, 3, strides=2, padding="same", depth_multiplier=2, activation="relu"),
        L.GlobalAveragePooling2D(),
        L.Dense(1),
    ])


def xception_block():
    inputs = keras.Input((PATCH, PATCH, 3))
    x = L.Conv2D(16, 7, strides=3, padding="same", use_bias=False)(inputs)  # 11x11
    x = L.ReLU()(L.BatchNormalization()(x))
    shortcut = L.BatchNormalization()(L.Conv2D(32, 1, strides=2, padding="same", use_bias=False)(x))
    y = L.BatchNormalization()(L.SeparableConv2D(32, 3, padding="same", use_bias=False)(x))
    y = L.BatchNormalization()(L.SeparableConv2D(32, 3, padding="same", use_bias=False)(L.ReLU()(y)))
    x = L.Add()([L.MaxPooling2D(3, strides=2, padding="same")(y), shortcut])  # 6x6
    x = L.SeparableConv2D(16, 3, strides=2, activation="relu")(x)  # valid: 2x2
    return keras.Model(inputs, L.Dense(1)(L.GlobalAveragePooling2D()(x)))


MODELS = {f.__name__: f for f in (separable_sequential, xception_block)}
# Every cell but three exports (4 to 9 s each): the block's replace export has every layer type
# of both replace models; Keras's SeparableConv2D, of the insert ones, exports as the built-in op
# it is. The other cells take about 1 s each.
REDUCED = {c for c in cells(MODELS) if c[2] != "export" or c[:2] == ("xception_block", "replace")}


matrix, test_cell = matrix_tests(MODELS, REDUCED)


def _stand_ins(base, robust, cls):
    """`(original, its stand-in)` for every layer of class `cls` of `base`."""
    return [(layer, robust.get_layer(layer.name)) for layer in base.layers if type(layer) is cls]


@pytest.mark.parametrize("name", list(MODELS))
def test_separable_convolutions_become_a_grouped_then_a_pointwise_orthogonal_convolution(matrix, name):
    base = matrix.base(name)
    found = _stand_ins(base, matrix.get(name, "replace"), L.SeparableConv2D)
    assert len(found) == {"separable_sequential": 2, "xception_block": 3}[name]
    for original, stand_in in found:
        ortho = [p for p in stand_in.layers if isinstance(p, robust_layers.BlockOrthoConv2D)]
        depthwise, pointwise = ortho
        channels = original.input.shape[-1]
        assert depthwise.strides == original.strides and not depthwise.use_bias
        assert depthwise.filters == channels * original.depth_multiplier
        assert channels // depthwise.groups >= min(8, channels)  # groups at least 8 channels wide
        assert pointwise.kernel_size == (1, 1) and pointwise.filters == original.filters and pointwise.use_bias
        # The bias the dropped BatchNorm's shift needs; the output the original's size.
        assert tuple(stand_in.output.shape) == tuple(original.output.shape)


def test_strided_convolutions_above_2_become_space_to_depth_and_an_orthogonal_convolution(matrix):
    for name, kernel in (("separable_sequential", (1, 1)), ("xception_block", (3, 3))):
        original = next(layer for layer in matrix.base(name).layers if type(layer) is L.Conv2D)  # the stem
        stand_in = matrix.get(name, "replace").get_layer(original.name)
        s = original.strides[0]
        down = next(p for p in stand_in.layers if isinstance(p, robust_layers.InvertibleDownsampling))
        ortho = next(p for p in stand_in.layers if isinstance(p, robust_layers.BlockOrthoConv2D))
        assert down.pool_size == s and ortho.strides == (1, 1) and ortho.kernel_size == kernel  # ceil(k / s)
        assert ortho.input_channels == 3 * s * s
        assert tuple(stand_in.output.shape) == tuple(original.output.shape)


def _linear_stand_in(layer, shape, conv="block"):
    """The replaced model of `Input(shape) -> layer` (no activation: an affine map) and its operator."""
    model = robustify(keras.Sequential([keras.Input(shape), layer]), "replace", conv=conv, keep_weights=False)
    zero = model(np.zeros((1, *shape), "float32"))
    return model, operator_matrix(lambda x: model(x) - zero, shape)


@pytest.mark.parametrize("conv", ["block", "fourier", "aol"])
def test_a_separable_stand_in_is_certified_by_its_operator_norm(conv):
    """Valid padding, strides 2, depth multiplier 2, an odd map: the bound holds for the whole operator."""
    keras.utils.set_random_seed(0)
    layer = L.SeparableConv2D(12, 3, strides=2, depth_multiplier=2)
    model, operator = _linear_stand_in(layer, (7, 7, 8), conv)
    assert model.output.shape == (None, 3, 3, 12)
    top = np.linalg.svd(operator, compute_uv=False)[0]
    assert 0 < top <= lipschitz_bound(model) * (1 + 1e-5), top
    if conv != "aol":  # orthogonal parts: an isometry on most of the map, so close to 1
        assert top > 0.9, top
    assert lipschitz_bound(model) == pytest.approx(1.0)


def test_a_patchify_stem_stand_in_is_exact_space_to_depth_then_an_orthogonal_matrix():
    """AOC's RKO: every singular value 1, and each output reads exactly its own 4x4 patch."""
    keras.utils.set_random_seed(0)
    for filters in (48, 16):  # as many outputs as patch values (an isometry), fewer (a co-isometry)
        model, operator = _linear_stand_in(L.Conv2D(filters, 4, strides=4), (12, 12, 3))
        assert model.output.shape == (None, 3, 3, filters)
        np.testing.assert_allclose(np.linalg.svd(operator, compute_uv=False), 1.0, atol=1e-5)
        # operator[i]: the response to input value i = (row, column, channel), on the 3x3 output map.
        reached = np.abs(operator.reshape(12, 12, 3, 3, 3, filters)).sum(axis=(2, 5))
        rows, columns = np.arange(12) // 4, np.arange(12) // 4
        outside = np.ones((12, 12, 3, 3), bool)
        outside[np.arange(12)[:, None], np.arange(12)[None, :], rows[:, None], columns[None, :]] = False
        assert reached[outside].max() < 1e-6 and reached[~outside].min() > 0


@pytest.mark.parametrize("padding,size", [("same", 14), ("valid", 15)])
def test_a_stride_4_convolution_of_a_larger_kernel_keeps_its_output_size_and_bound(padding, size):
    keras.utils.set_random_seed(0)
    layer = L.Conv2D(8, 7, strides=4, padding=padding)
    model, operator = _linear_stand_in(layer, (size, size, 2))
    original = layer.compute_output_shape((None, size, size, 2))
    assert model.output.shape == original  # same: ceil(n / 4); valid: (n - 7) // 4 + 1, cropped
    assert np.linalg.svd(operator, compute_uv=False)[0] <= 1 + 1e-5


def test_strides_above_2_need_equal_strides_and_a_static_size():
    def scorer(conv, size=PATCH):
        inputs = keras.Input((size, size, 3))
        return keras.Model(inputs, L.Dense(1)(L.GlobalAveragePooling2D()(conv(inputs))))

    with pytest.raises(ValueError, match=r"layer 'tall' \(Conv2D\): strides \(1, 4\)"):
        robustify(scorer(L.Conv2D(4, 4, strides=(1, 4), name="tall")), "replace")
    with pytest.raises(ValueError, match=r"layer 'stem' \(Conv2D\): strides 4 on input shape .*no static size"):
        robustify(scorer(L.Conv2D(4, 4, strides=4, name="stem"), None), "replace")
    # Strides 2 and below take any size, as before.
    assert robustify(scorer(L.SeparableConv2D(4, 3, strides=2), None), "replace").output.shape == (None, 1)


@pytest.mark.parametrize("make,shape,weight", [
    (lambda: L.SeparableConv2D(16, 3, padding="same", name="sep"), (8, 8, 8), "pointwise_kernel"),  # (8, 16)
    (lambda: L.Conv2D(16, 4, strides=4, name="stem"), (12, 12, 3), "kernel"),  # (48, 16): RKO
], ids=["separable", "patchify"])
def test_keep_weights_starts_the_1x1_part_from_the_nearest_orthogonal_matrix(make, shape, weight):
    """The pointwise kernel; a patchify kernel read in space-to-depth order, which is its own."""
    keras.utils.set_random_seed(1)
    layer = make()
    base = keras.Sequential([keras.Input(shape), layer, L.GlobalAveragePooling2D(), L.Dense(1)])
    trained = np.asarray(getattr(layer, weight), np.float64)
    trained = trained.reshape(-1, trained.shape[-1])
    trained /= np.linalg.norm(trained)
    # <Q, K / ||K||> is largest (the nuclear norm of K / ||K||) at the nearest semi-orthogonal Q.
    best = np.linalg.svd(trained, compute_uv=False).sum()
    fits = []
    for keep in (True, False):
        model = robustify(base, "replace", keep_weights=keep)
        *_, ortho = (p for p in model.get_layer(layer.name).layers if isinstance(p, robust_layers.BlockOrthoConv2D))
        fits.append(float(np.sum(ortho.applied_kernel()[0, 0] * trained)))
    assert fits[0] == pytest.approx(best, rel=1e-3) and fits[1] < 0.8 * best, (fits, best)
