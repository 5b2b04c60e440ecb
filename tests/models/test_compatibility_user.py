"""Compatibility matrix, the models users write: Sequential, functional with default layer
names, branches, nested models, valid padding and strides, Flatten / Dense heads, a
sigmoid output, Dropout / BatchNormalization / LayerNormalization, and a shared layer.

Every model is robustified with `insert` and with `replace` (the compact-kernel
`BlockOrthoConv2D`; the Fourier `OrthoConv2D` in `test_fourier_*`), and each cell of
`compat_matrix.CHECKS` is one test.
"""

import keras
import numpy as np
import pytest
from compat_matrix import PATCH, Matrix, cells, check_bound, check_forward, matrix_tests, patches

from keras_robust_iqa import layers as robust_layers
from keras_robust_iqa.models import lipschitz_bound, robustify
from keras_robust_iqa.models.robustify import insertion_points

L = keras.layers


def sequential():
    return keras.Sequential([
        keras.Input((PATCH, PATCH, 3)),
        L.Conv2D(8, 3, padding="same", activation="relu"),
        L.MaxPooling2D(),
        L.Conv2D(16, 3, padding="same", activation="relu"),
        L.MaxPooling2D(),
        L.GlobalAveragePooling2D(),
        L.Dense(1),
    ])


def default_names():
    inputs = keras.Input((PATCH, PATCH, 3))
    x = L.ReLU()(L.Conv2D(8, 3, padding="same")(inputs))
    x = L.Activation("relu")(L.Conv2D(16, 3, strides=2, padding="same")(x))
    x = L.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
    x = L.Dense(8, activation="relu")(L.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, L.Dense(1)(x))


def branches():
    inputs = keras.Input((PATCH, PATCH, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
    x = L.Add()([L.Conv2D(8, 3, padding="same", activation="relu")(x), L.Conv2D(8, 1)(x)])
    x = L.Concatenate()([L.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x),
                         L.Conv2D(4, 1, strides=2)(x)])
    return keras.Model(inputs, L.Dense(1)(L.GlobalAveragePooling2D()(x)))


def nested():
    """A functional sub-model (a residual stage) and a Sequential head inside a functional model."""
    stage_in = keras.Input((16, 16, 8))
    y = L.Conv2D(16, 3, strides=2, padding="same", activation="relu")(stage_in)
    y = L.Add()([y, L.Conv2D(16, 3, padding="same")(y)])
    stage = keras.Model(stage_in, L.ReLU()(y), name="stage")
    head = keras.Sequential([keras.Input((8, 8, 16)), L.GlobalAveragePooling2D(), L.Dense(8, activation="relu"),
                             L.Dense(1)], name="head")
    inputs = keras.Input((PATCH, PATCH, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
    return keras.Model(inputs, head(stage(x)))


def valid_strides():
    """Valid padding and strides 2: odd maps (15, 7, 5); a depthwise convolution."""
    inputs = keras.Input((PATCH, PATCH, 3))
    x = L.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = L.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = L.DepthwiseConv2D(3, activation="relu")(x)
    return keras.Model(inputs, L.Dense(1)(L.GlobalAveragePooling2D()(x)))


def flatten_head():
    inputs = keras.Input((PATCH, PATCH, 3))
    x = L.MaxPooling2D()(L.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs))
    x = L.Dense(16, activation="relu")(L.Flatten()(x))
    return keras.Model(inputs, L.Dense(1)(x))


def sigmoid_output():
    inputs = keras.Input((PATCH, PATCH, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
    x = L.Dense(8, activation="relu")(L.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, L.Dense(1, activation="sigmoid")(x))


def regularised():
    """Dropout, BatchNormalization and LayerNormalization (and a fixed input Normalization)."""
    inputs = keras.Input((PATCH, PATCH, 3))
    x = L.Normalization(mean=(0.5, 0.4, 0.3), variance=(0.1, 0.2, 0.3))(inputs)
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(x)))
    x = L.Dropout(0.1)(x)
    x = L.ReLU()(L.LayerNormalization()(L.Conv2D(16, 3, strides=2, padding="same")(x)))
    x = L.Dropout(0.2)(L.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, L.Dense(1)(x))


def shared_layer():
    """One convolution called twice."""
    inputs = keras.Input((PATCH, PATCH, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
    twice = L.Conv2D(8, 3, padding="same", activation="relu", name="twice")
    x = L.Conv2D(16, 3, strides=2, padding="same", activation="relu")(twice(twice(x)))
    return keras.Model(inputs, L.Dense(1)(L.GlobalAveragePooling2D()(x)))


MODELS = {f.__name__: f for f in (sequential, default_names, branches, nested, valid_strides, flatten_head,
                                  sigmoid_output, regularised, shared_layer)}
# The suite runs every cell of these models (about 4 s an export, under 1 s the rest).
REDUCED = set(cells(MODELS))


matrix, test_cell = matrix_tests(MODELS, REDUCED)


# What each cell's model is made of --------------------------------------------------------


def test_insert_copies_the_weights_of_models_with_default_names(matrix):
    base = matrix.base("default_names")
    model = robustify(base, "insert", conv="block")  # not the matrix's: its fit cell trained it
    blocks = [layer for layer in model.layers if isinstance(layer, robust_layers.RobustBlock)]
    assert [b.name for b in blocks] == [f"{n}_robust_block" for n in insertion_points(base)]
    assert len(blocks) == 2  # one per level below full resolution
    originals = [layer for layer in base.layers if layer.weights]
    copies = [layer for layer in model.layers if layer.weights and not isinstance(layer, robust_layers.RobustBlock)]
    assert len(originals) == len(copies)
    for a, b in zip(originals, copies):
        assert a is not b
        for u, v in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(u, v)


def test_insert_points_are_stage_ends_never_padding_pooling_or_input(matrix):
    assert insertion_points(matrix.base("sequential")) == [matrix.base("sequential").layers[2].name]
    assert insertion_points(matrix.base("flatten_head")) == [matrix.base("flatten_head").layers[1].name]
    valid = matrix.base("valid_strides")
    assert insertion_points(valid) == [layer.name for layer in valid.layers[1:4]]  # the 15, 7 and 5 maps
    nested_points = insertion_points(matrix.base("nested"))
    assert "re_lu" in nested_points[-1] or nested_points[-1].startswith("re_lu")  # inside the sub-model
    model = matrix.get("nested", "insert")
    stage = model.get_layer("stage")
    assert any(isinstance(layer, robust_layers.RobustBlock) for layer in stage.layers)


def test_insert_of_a_sequential_model_keeps_the_model_unchanged(matrix):
    base = matrix.base("sequential")
    model = matrix.get("sequential", "insert")
    assert isinstance(base, keras.Sequential) and len(base.layers) == 6
    x = patches()
    assert base(x).shape == model(x).shape == (2, 1)


def test_a_shared_layer_stays_shared(matrix):
    for mode in ("insert", "replace"):
        model = matrix.get("shared_layer", mode)
        assert [layer.name for layer in model.layers].count("twice") == 1, mode


def test_replace_keeps_a_sigmoid_output_behind_the_output_scale(matrix):
    model = matrix.get("sigmoid_output", "replace")
    last = model.layers[-1]
    assert isinstance(last, keras.Sequential)
    kinds = [type(layer).__name__ for layer in last.layers]
    assert kinds == ["OrthoDense", "OutputScale", "Activation"]
    assert last.layers[-1].activation.__name__ == "sigmoid"
    last.layers[1].scale.assign(3.0)
    # sigmoid is 1/4-Lipschitz: 3 / 4 times the rest (GlobalL2NormPooling over a 16x16 map).
    assert lipschitz_bound(model) == pytest.approx(3.0 / 4.0 / 16.0)
    y = check_forward(model, patches())
    assert np.all((y > 0) & (y < 1))
    check_bound(model, patches())


def test_replace_drops_normalization_and_keeps_dropout(matrix):
    model = matrix.get("regularised", "replace")
    kinds = {type(layer).__name__ for layer in model.layers}
    assert "Dropout" in kinds
    assert not kinds & {"BatchNormalization", "LayerNormalization"}


# Fourier convolutions on the small models ---------------------------------------------------


@pytest.fixture(scope="module")
def fourier():
    return Matrix(MODELS, conv="fourier")


def test_fourier_replace_pads_odd_maps_and_is_certified(fourier):
    model = fourier.get("valid_strides", "replace")
    pads = [layer for layer in model.layers if isinstance(layer, keras.Sequential)
            and any(isinstance(inner, L.ZeroPadding2D) for inner in layer.layers)]
    assert [p.name for p in pads] == [fourier.base("valid_strides").layers[2].name]  # the 15x15 map
    assert any(isinstance(inner, robust_layers.OrthoConv2D) for inner in pads[0].layers)
    check_forward(model, patches())
    check_bound(model, patches())


@pytest.mark.parametrize("name", ["nested", "branches"])
def test_fourier_insert_and_replace_run(fourier, name):
    for mode in ("insert", "replace"):
        check_forward(fourier.get(name, mode), patches())
    check_bound(fourier.get(name, "replace"), patches())


# Refusals name the layer, say why and what to do --------------------------------------------


def _model(build):
    inputs = keras.Input((PATCH, PATCH, 3))
    return keras.Model(inputs, build(inputs))


def test_a_product_of_two_signals_is_refused_by_name():
    def build(x):
        a = L.Conv2D(4, 3, padding="same", name="left")(x)
        b = L.Conv2D(4, 3, padding="same", name="right")(x)
        return L.Dense(1)(L.GlobalAveragePooling2D()(L.Multiply(name="product")([a, b])))

    with pytest.raises(ValueError, match=r"layer 'product' \(Multiply\): a product of two signals"):
        robustify(_model(build), "replace", conv="block")


def test_an_operation_with_no_known_bound_is_refused_by_name():
    def build(x):
        x = L.Conv2D(4, 3, padding="same")(x)
        x = keras.ops.square(x)
        return L.Dense(1)(L.GlobalAveragePooling2D()(x))

    with pytest.raises(ValueError, match=r"layer 'square[_0-9]*' \(keras.ops Square\)"):
        robustify(_model(build), "replace", conv="block")


def test_unsupported_layers_are_refused_by_name_with_what_to_do():
    def transpose(x):
        return L.Dense(1)(L.GlobalAveragePooling2D()(L.Conv2DTranspose(4, 3, name="up")(x)))

    with pytest.raises(ValueError, match=r"layer 'up' \(Conv2DTranspose\).*use mode='insert'"):
        robustify(_model(transpose), "replace", conv="block")

    def keepdims(x):
        x = L.GlobalAveragePooling2D(keepdims=True, name="keep")(L.Conv2D(4, 3)(x))
        return L.Dense(1)(L.Flatten()(x))

    with pytest.raises(ValueError, match=r"layer 'keep' \(GlobalAveragePooling2D\): keepdims=True"):
        robustify(_model(keepdims), "replace", conv="block")

    def dilated(x):
        return L.Dense(1)(L.GlobalAveragePooling2D()(L.Conv2D(4, 3, dilation_rate=2, name="dil")(x)))

    with pytest.raises(ValueError, match=r"layer 'dil' \(Conv2D\): dilation_rate \(2, 2\)"):
        robustify(_model(dilated), "replace", conv="block")


def test_subclassed_and_unbuilt_models_are_refused():
    class Scorer(keras.Model):
        def __init__(self):
            super().__init__(name="scorer")
            self.dense = L.Dense(1)

        def call(self, x):
            return self.dense(keras.ops.mean(x, axis=(1, 2)))

    model = Scorer()
    model(patches())
    with pytest.raises(ValueError, match="'scorer' is a subclassed model"):
        robustify(model, "replace")
    with pytest.raises(ValueError, match="has no input yet"):
        robustify(keras.Sequential([L.Dense(1)], name="unbuilt"), "insert")


def test_insert_without_static_sizes_asks_for_after():
    inputs = keras.Input((None, None, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same", name="down")(inputs)
    model = keras.Model(inputs, L.Dense(1)(L.GlobalAveragePooling2D()(x)))
    with pytest.raises(ValueError, match="pass `after="):
        robustify(model, "insert", conv="block")
    inserted = robustify(model, "insert", conv="block", after=["down"])
    assert inserted(patches(1, 40)).shape == (1, 1)


def test_a_tanh_output_stays_and_odd_channel_counts_get_relu():
    def build(x):
        x = L.Conv2D(3, 3, strides=2, padding="same", activation="relu", name="odd")(x)
        return L.Dense(1, activation="tanh", name="score")(L.GlobalAveragePooling2D()(x))

    model = robustify(_model(build), "replace", conv="block")
    odd = model.get_layer("odd")
    assert isinstance(odd.layers[-1], L.ReLU)  # GroupSort cannot pair 3 channels
    score = model.get_layer("score")
    assert [type(layer).__name__ for layer in score.layers] == ["OrthoDense", "OutputScale", "Activation"]
    score.layers[1].scale.assign(5.0)
    assert lipschitz_bound(model) == pytest.approx(5.0 / 16.0)  # tanh is 1-Lipschitz; 16x16 map pooled
    check_bound(model, patches())


@pytest.mark.parametrize("name", ["nested", "shared_layer"])
def test_robustified_models_save_and_load_in_safe_mode(name, tmp_path):
    base = MODELS[name]()
    for mode in ("insert", "replace"):
        model = robustify(base, mode, conv="block")
        model.save(tmp_path / f"{mode}.keras")
        again = keras.saving.load_model(tmp_path / f"{mode}.keras", safe_mode=True, compile=False)
        np.testing.assert_allclose(np.asarray(again(patches())), np.asarray(model(patches())), atol=1e-6)
