"""label_gain: attacks on the built-in labels themselves (MS-SSIM against the pristine crop)."""

import dataclasses

import numpy as np
import pytest
from helpers import BUILTIN_SIZE

from keras_robust_iqa.data import builtin, read_builtin
from keras_robust_iqa.data.pipeline import load_images
from keras_robust_iqa.evaluation.label_gain import LABEL_TOLERANCE, label_gain, label_model


@pytest.fixture(scope="module")
def table(builtin_cache):
    return read_builtin(builtin_cache, seed=0, size=BUILTIN_SIZE)


def test_label_model_is_the_builtin_metric_off_the_data(table):
    # Attacks leave the data: the differentiable label must be the dataset's metric
    # (the NumPy MS-SSIM the build labels with) on any image, not only on stored ones.
    reference = load_images(table, [0])[0]
    assert table.paths[0].endswith("_pristine_0.png")
    rng = np.random.default_rng(0)
    images = np.clip(reference + rng.normal(0, [[[[0.01]]], [[[0.05]]], [[[0.2]]]], (3, *reference.shape)), 0, 1)
    images = images.astype("float32")
    expected = builtin.msssim_to_mos(builtin.ms_ssim(images, reference)) / 100
    got = np.asarray(label_model(reference)(images))[:, 0]
    np.testing.assert_allclose(got, expected, atol=2e-5)
    assert got[0] > got[1] > got[2]


def test_pristine_path_names_the_crop_and_refuses_other_names():
    assert builtin.pristine_path("images/coffee_c1_jpeg2000_4.png") == "images/coffee_c1_pristine_0.png"
    assert builtin.pristine_path("images/coffee_c0_pristine_0.png") == "images/coffee_c0_pristine_0.png"
    with pytest.raises(ValueError, match=r"photos/a\.jpg: not a built-in image name"):
        builtin.pristine_path("photos/a.jpg")


def test_ifgsm_raises_the_labels_and_never_a_pristine_one(table):
    result = label_gain(table, "test", attack="ifgsm", eps=4 / 255, images=24)
    assert result["images"] == len(result["gains"]) == 24
    assert result["label_error"] < LABEL_TOLERANCE
    gains = np.array(result["gains"])
    by_type = result["by_distortion"]
    assert sum(entry["images"] for entry in by_type.values()) == 24
    # MS-SSIM is at most 1, reached at the reference: a pristine label cannot rise.
    assert by_type["pristine"]["max"] <= 1e-6
    distorted = [kind for kind in by_type if kind != "pristine"]
    assert all(by_type[kind]["abs_gain"] > 0 for kind in distorted)
    assert result["abs_gain"] == pytest.approx(gains.mean())
    assert result["max"] == pytest.approx(gains.max())
    # A larger budget buys more on the same images.
    small = label_gain(table, "test", attack="ifgsm", eps=1 / 255, images=24)
    assert 0 < small["abs_gain"] < result["abs_gain"]


def test_pgd_l2_and_square_run_through_the_same_attacks(table):
    l2 = label_gain(table, "val", attack="pgd_l2", eps=0.5, images=6)
    square = label_gain(table, "val", attack="square", eps=4 / 255, images=6, steps=50)
    assert l2["abs_gain"] > 0
    # Square's random search only keeps improvements.
    assert min(square["gains"]) >= -1e-6


def test_errors_name_the_attack_the_row_and_the_file(table):
    with pytest.raises(ValueError, match="Argument `attack`='uap'"):
        label_gain(table, attack="uap")
    relabelled = dataclasses.replace(table, mos=np.where(np.arange(len(table)) == 1, table.mos - 5.0, table.mos))
    name = relabelled.paths[1]
    assert relabelled.splits[0] == relabelled.splits[1] == "train"  # row 1 of the split too
    with pytest.raises(ValueError, match=rf"row 1 of split 'train' \({name}\) is labelled"):
        label_gain(relabelled, "train")  # fails before attacking
    only_distorted = table.subset("test")
    only_distorted = only_distorted._select(only_distorted.distortions != "pristine")
    with pytest.raises(ValueError, match="pristine crop .* is not in the table"):
        label_gain(only_distorted, "test", images=2)
