"""label_lipschitz: the smallest Lipschitz constant that fits the labels, on images built to know it."""

import numpy as np
import pytest
from PIL import Image

from keras_robust_iqa.data import IQATable
from keras_robust_iqa.evaluation.label_lipschitz import label_lipschitz

STEP = 51  # 51 / 255 = 0.2 exactly: distances come out round


def write(root, name, pixels):
    Image.fromarray(pixels.astype(np.uint8)).save(root / name)
    return name


def table_of(root, rows, mos_range=(0, 100), distortions=None):
    paths, mos, refs = zip(*rows)
    return IQATable(name="fixture", root=root, paths=paths, mos=mos, splits=["test"] * len(rows),
                    refs=refs, mos_range=mos_range, distortions=distortions)


@pytest.fixture
def fixture(tmp_path):
    u = np.random.default_rng(0).integers(0, 150, (8, 8, 3))
    v, w = u.copy(), u.copy()
    v[0, 0, 0] += STEP                        # ||v - u|| = 0.2
    w[0, 0, 0] += STEP
    w[1:4, 0, 0] += STEP                      # ||w - u|| = 0.4, ||w - v|| = 0.2 sqrt(3)
    other = np.random.default_rng(1).integers(0, 255, (8, 8, 3))
    rows = [
        (write(tmp_path, "u.png", u), 100.0, "a"),
        (write(tmp_path, "v.png", v), 90.0, "a"),
        (write(tmp_path, "w.png", w), 60.0, "a"),
        # The pixels of u, but another reference: never compared with it.
        (write(tmp_path, "u_lookalike.png", u), 0.0, "b"),
        (write(tmp_path, "other.png", other), 5.0, "b"),
        (write(tmp_path, "alone.png", other), 50.0, "c"),
    ]
    return tmp_path, rows


def test_constant_and_hardest_pairs_by_hand(fixture):
    root, rows = fixture
    result = label_lipschitz(table_of(root, rows), top=2)
    # Normalised gaps over distances: (u, v) 0.1 / 0.2, (u, w) 0.4 / 0.4, (v, w) 0.3 / 0.2 sqrt(3);
    # the pair of reference b is far apart for a small gap.
    b_ratio = 0.05 / np.linalg.norm(
        (np.asarray(Image.open(root / "u_lookalike.png"), float) - np.asarray(Image.open(root / "other.png"), float))
        / 255)
    assert result["lipschitz"] == pytest.approx(1.0, rel=1e-6)
    assert result["pairs"] == 4 and result["image_shape"] == (8, 8, 3)
    assert result["hardest"][0]["paths"] == ["u.png", "w.png"]
    assert result["hardest"][0]["distance"] == pytest.approx(0.4, rel=1e-6)
    assert result["hardest"][0]["mos_gap"] == pytest.approx(0.4, rel=1e-6)
    assert result["hardest"][1]["paths"] == ["v.png", "w.png"]
    assert result["hardest"][1]["ratio"] == pytest.approx(0.3 / (0.2 * np.sqrt(3)), rel=1e-6)
    ratios = [0.5, 1.0, 0.3 / (0.2 * np.sqrt(3)), b_ratio]
    assert result["quantiles"]["p50"] == pytest.approx(np.percentile(ratios, 50), rel=1e-6)
    # The MOS scale is the dataset's: on 0..200 every gap halves.
    assert label_lipschitz(table_of(root, rows, (0, 200)))["lipschitz"] == pytest.approx(0.5, rel=1e-6)


def test_bad_tables_are_named(fixture, tmp_path):
    root, rows = fixture
    with pytest.raises(ValueError, match="no two images share a reference"):
        label_lipschitz(table_of(root, [rows[0], rows[4]]))
    big = write(root, "big.png", np.zeros((8, 9, 3)))
    with pytest.raises(ValueError, match=r"reference 'a' differ in size: .*u\.png.*big\.png"):
        label_lipschitz(table_of(root, [rows[0], (big, 50.0, "a")]))
    same = write(root, "u_copy.png", np.asarray(Image.open(root / "u.png")))
    with pytest.raises(ValueError, match=r"u\.png and .*u_copy\.png have the same pixels and different MOS"):
        label_lipschitz(table_of(root, [rows[0], (same, 50.0, "a")]))
    with pytest.raises(ValueError, match="every pair of one reference has identical pixels"):
        label_lipschitz(table_of(root, [rows[0], (same, 100.0, "a")]))


def test_by_distortion_type(fixture):
    root, rows = fixture
    assert "by_distortion" not in label_lipschitz(table_of(root, rows))
    # u and v are "noise", w and the lookalike "blur", the rest "pristine" (all pairs of
    # one type: (u, v) for noise only; (u_lookalike, other) is blur against pristine).
    kinds = ["noise", "noise", "blur", "blur", "pristine", ""]
    result = label_lipschitz(table_of(root, rows, distortions=kinds))
    assert result["by_distortion"] == {
        "noise": {"lipschitz": pytest.approx(0.5, rel=1e-6), "p50": pytest.approx(0.5, rel=1e-6), "pairs": 1}}
    # Make (u_lookalike, other) a pristine pair with different labels: it counts now.
    result = label_lipschitz(table_of(root, rows, distortions=["noise", "noise", "blur", "pristine", "pristine", ""]))
    assert set(result["by_distortion"]) == {"noise", "pristine"}
    assert result["by_distortion"]["pristine"]["pairs"] == 1
