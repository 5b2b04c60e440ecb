"""A model that takes any input size (BlockOrthoConv2D layers rebuilt on (None, None, 3)):
scored and exported on a grid of patches of the size given, or on whole images."""

import json

import keras
import numpy as np
import pytest

from keras_robust_iqa.deployment import export_model
from keras_robust_iqa.deployment.runtimes import load_runtime
from keras_robust_iqa.models import lipschitz_bound, robustify, score_images, small_iqa_cnn
from keras_robust_iqa.models.patches import model_patch_size

PATCH = 32


@pytest.fixture(scope="module")
def models():
    keras.utils.set_random_seed(0)
    static = robustify(small_iqa_cnn(PATCH, widths=(8, 8, 16, 16), head_units=8), "replace", conv="block")
    any_size = keras.models.clone_model(static, input_tensors=keras.Input((None, None, 3)))
    any_size.set_weights(static.get_weights())
    return static, any_size


def images(n=2, height=70, width=100, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, height, width, 3)).astype("float32")


def test_a_model_of_any_size_needs_a_patch_size_or_whole_images(models):
    static, any_size = models
    with pytest.raises(ValueError, match="no static patch size: give `patch_size=`"):
        model_patch_size(any_size)
    with pytest.raises(ValueError, match="no static patch size"):
        score_images(any_size, images())
    assert model_patch_size(any_size, 48) == 48
    with pytest.raises(ValueError, match="`patch_size`=48 does not fit"):
        model_patch_size(static, 48)
    with pytest.raises(ValueError, match="whole_images=True: model .* takes 32x32 inputs"):
        score_images(static, images(), whole_images=True)


def test_patch_grid_and_whole_images_scores(models):
    static, any_size = models
    x = images()
    np.testing.assert_allclose(score_images(any_size, x, patch_size=PATCH), score_images(static, x), atol=1e-5)
    whole = score_images(any_size, x, whole_images=True)
    np.testing.assert_allclose(whole, np.asarray(any_size(x)).reshape(-1), atol=1e-5)
    assert not np.allclose(whole, score_images(static, x))  # one pass over the image is another score
    # The per-image bound of a patch grid divides by sqrt(patches): a 2 x 3 grid here.
    assert lipschitz_bound(any_size, image_shape=(70, 100), patch_size=PATCH) == pytest.approx(
        lipschitz_bound(any_size) / np.sqrt(6))


def test_export_a_model_of_any_size_on_patches_and_on_whole_images(models, tmp_path):
    static, any_size = models
    x = images(seed=1)
    report = export_model(any_size, tmp_path / "grid", ["savedmodel", "onnx"], patch_size=PATCH, verbose=False)
    assert report["patch_size"] == PATCH and not report["whole_images"]
    onnx = load_runtime("onnx", tmp_path / "grid" / "onnx" / "model.onnx")
    np.testing.assert_allclose(onnx(x), score_images(static, x), atol=1e-4)

    report = export_model(any_size, tmp_path / "whole", ["tflite"], whole_images=True, verbose=False)
    assert report["whole_images"] and report["patch_size"] is None
    report = json.loads((tmp_path / "whole" / "model.export.json").read_text())
    assert "each image scored whole" in report["inputs"]["sizes"]
    tflite = load_runtime("tflite", tmp_path / "whole" / "tflite" / "model.float32.tflite")
    np.testing.assert_allclose(tflite(x), score_images(any_size, x, whole_images=True), atol=1e-4)
    with pytest.raises(ValueError, match="whole_images=True needs a model that takes any input size"):
        export_model(static, tmp_path / "no", ["onnx"], whole_images=True, verbose=False)
    with pytest.raises(ValueError, match="no static patch size"):
        export_model(any_size, tmp_path / "no", ["onnx"], verbose=False)
