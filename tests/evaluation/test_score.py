"""`evaluation.certified_interval` and `robust-iqa score`: real photographs of odd sizes, unreadable
files, the three output formats, attacked scores inside the certified interval, exported files."""

import csv
import io
import json

import keras
import numpy as np
import pytest
import skimage.data
from PIL import Image

from keras_robust_iqa import attacks, cli, evaluation, layers, models
from keras_robust_iqa.deployment.export import export_run
from keras_robust_iqa.evaluation.scoring import expand_paths, score_files

PATCH = 16
MOS_RANGE = (0.0, 100.0)
EPS = 4 / 255


def photographs():
    """Crops of scikit-image's photographs at odd sizes: colour, gray (2-D), wider than tall."""
    return {
        "astronaut.png": skimage.data.astronaut()[100:177, 140:271],  # 77 x 131
        "coffee.jpg": skimage.data.coffee()[50:150, 200:251],          # 100 x 51
        "camera.png": skimage.data.camera()[200:241, 250:295],        # 41 x 45, grayscale
        "chelsea.png": skimage.data.chelsea()[60:93, 100:180],        # 33 x 80
    }


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder of real photographs (one in a subfolder), a truncated JPEG, a text file named
    like an image, an image smaller than a patch, and a file that is no image at all."""
    root = tmp_path_factory.mktemp("photos")
    (root / "more").mkdir()
    for name, pixels in photographs().items():
        path = root / ("more" if name == "coffee.jpg" else ".") / name
        Image.fromarray(pixels).save(path, quality=90)
    jpeg = (root / "more" / "coffee.jpg").read_bytes()
    (root / "broken.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (root / "fake.png").write_text("not an image")
    Image.fromarray(skimage.data.camera()[:10, :40]).save(root / "tiny.png")
    (root / "notes.txt").write_text("a folder scan skips this")
    return root


GOOD = ["astronaut.png", "camera.png", "chelsea.png", "more/coffee.jpg"]
BAD = ["broken.jpg", "fake.png", "tiny.png"]


def save_run(model, folder):
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    (folder / "config.json").write_text(json.dumps(
        {"dataset": "builtin", "patch_size": PATCH, "mos_range": list(MOS_RANGE)}))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A base run and its `replace` version (certified), and the replace run exported to a
    SavedModel and TFLite files."""
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("score-runs")
    base = models.build_model("small", patch_size=PATCH)
    replace = models.robustify(base, mode="replace")
    folders = {"base": save_run(base, root / "base"), "replace": save_run(replace, root / "replace")}
    export_run(folders["replace"], root / "exported", ("savedmodel", "tflite"), verbose=False)
    folders["exported"] = root / "exported"
    return folders


def images_of(folder, names):
    from keras_robust_iqa.data import read_image

    return [read_image(folder / name) for name in names]


@pytest.fixture(scope="module")
def replace_model(runs):
    return keras.saving.load_model(runs["replace"] / "model.keras", safe_mode=True)


@pytest.fixture(scope="module")
def expected(replace_model, photos):
    """The certified intervals of the readable photographs, on the MOS scale, from Python."""
    return evaluation.certified_interval(replace_model, images_of(photos, GOOD), EPS, mos_range=MOS_RANGE)


def score(argv, capsys):
    code = cli.main(["score", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# certified_interval -------------------------------------------------------------------


def test_interval_holds_the_attacked_scores(replace_model, photos, expected):
    model, images = replace_model, images_of(photos, GOOD)
    interval = evaluation.certified_interval(model, images, EPS)
    np.testing.assert_allclose(interval.score, models.score_images(model, images), atol=1e-6)
    np.testing.assert_allclose(interval.bound, evaluation.certified_bounds(model, [i.shape for i in images], EPS))
    np.testing.assert_allclose(interval.upper - interval.lower, 2 * interval.bound)
    # On the MOS scale: the same interval, scaled.
    np.testing.assert_allclose(expected.score, 100 * interval.score)
    np.testing.assert_allclose(expected.bound, 100 * interval.bound)
    # I-FGSM tries to raise the scores (of two sizes, a colour and a gray photograph): it moves
    # them, within the interval. Then an L2 budget.
    attacked = models.score_images(model, attacks.ifgsm(model, images[:2], EPS, steps=3, verbose=0))
    assert np.all(attacked > interval.score[:2])
    assert np.all((interval.lower[:2] - 1e-6 <= attacked) & (attacked <= interval.upper[:2] + 1e-6))
    l2 = evaluation.certified_interval(model, images[:1], 0.5, "l2")
    attacked = models.score_images(model, attacks.pgd_l2(model, images[:1], 0.5, steps=3, verbose=0))
    assert l2.score[0] < attacked[0] <= l2.upper[0] + 1e-6


def test_interval_is_tight_for_a_linear_model():
    """f(x) = w . x over one 8x8 patch: FGSM gains eps * ||w||_1 exactly, and the bound
    eps * sqrt(n) ||w||_2 is at most 1/0.8 of that for a dense w: a bound that over- or
    under-counts the patches would show here."""
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), layers.OrthoDense(1)])
    rng = np.random.default_rng(0)
    images = [rng.uniform(0.3, 0.7, size=shape).astype("float32") for shape in ((8, 8, 3), (19, 27, 3), (32, 17, 3))]
    interval = evaluation.certified_interval(model, images, EPS)
    for i, image in enumerate(images):
        gain = models.score_images(model, attacks.fgsm(model, image[None], EPS, verbose=0))[0] - interval.score[i]
        assert 0.6 * interval.bound[i] <= gain <= interval.bound[i] * (1 + 1e-5)


def test_interval_refuses_bad_input(runs):
    base = keras.saving.load_model(runs["base"] / "model.keras", safe_mode=True)
    image = np.full((20, 20, 3), 0.5, "float32")
    with pytest.raises(ValueError, match="lipschitz_bound cannot certify layer 'conv1'"):
        evaluation.certified_interval(base, [image], EPS)
    replace = keras.saving.load_model(runs["replace"] / "model.keras", safe_mode=True)
    with pytest.raises(ValueError, match="must be one of"):
        evaluation.certified_interval(replace, [image], EPS, norm="l1")
    with pytest.raises(ValueError, match="`eps`"):
        evaluation.certified_interval(replace, [image], -1.0)
    with pytest.raises(ValueError, match="smaller than the patch size"):
        evaluation.certified_interval(replace, [image[:8]], EPS)


# Paths ---------------------------------------------------------------------------------


def test_paths_expand_folders_and_globs_in_order(photos):
    files, problems, skipped = expand_paths([photos / "more", photos, str(photos / "*.png"),
                                             photos / "nothing.png", str(photos / "*.webp")])
    names = [str(p).removeprefix(str(photos) + "/") for p in files]
    # The folder's files once each (the subfolder's first, as given), a folder scan skips notes.txt.
    assert names == ["more/coffee.jpg", "astronaut.png", "broken.jpg", "camera.png", "chelsea.png",
                     "fake.png", "tiny.png"]
    assert problems == [{"path": str(photos / "nothing.png"), "error": "no such file or folder"},
                        {"path": str(photos / "*.webp"), "error": "no file matches this pattern"}]
    assert skipped == [{"path": str(photos / "notes.txt"), "error": "skipped by the folder scan: .txt is not an "
                        "image type (name the file to try to decode it)"}]


# The command ---------------------------------------------------------------------------


def test_table_with_certified_intervals_and_unreadable_files(runs, photos, expected, capsys):
    code, out, err = score(["--run", runs["replace"], photos], capsys)
    assert code == 1  # unreadable files, --on-error fail
    for name in BAD:
        assert f"cannot score {photos / name}" in err
    assert "jpeg" in err.lower() and "smaller than the model's 16x16 patches" in err
    assert "3 path(s) not scored, 4 scored" in err
    assert f"cannot score {photos / 'notes.txt'}: skipped by the folder scan" in err
    assert "1 file(s) skipped by the folder scan" in err
    # The table names them too, under the scores.
    assert "# 3 path(s) not scored, 1 file(s) skipped by the folder scan:" in out.splitlines()
    assert [line.split(":")[0].strip("# ") for line in out.splitlines() if line.startswith("#   ")] == \
        [str(photos / name) for name in [*BAD, "notes.txt"]]
    rows = [line.split() for line in out.splitlines() if not line.startswith("#")]
    assert rows[0] == ["path", "score", "lower", "upper", "+-bound"]
    assert [row[0] for row in rows[1:]] == [str(photos / name) for name in GOOD]
    for i, row in enumerate(rows[1:]):
        np.testing.assert_allclose([float(v) for v in row[1:]],
                                   [expected.score[i], expected.lower[i], expected.upper[i], expected.bound[i]],
                                   atol=1e-3)


def test_json_and_csv_outputs_agree(runs, photos, tmp_path, capsys):
    paths = [photos / name for name in GOOD] + [photos / "broken.jpg"]
    code, out, _ = score(["--run", runs["replace"], *paths, "--format", "json", "--eps", "2/255",
                          "--on-error", "skip"], capsys)
    assert code == 0  # skip: the broken file is named, the exit code is 0
    result = json.loads(out)
    assert result["certified"] is True and result["budget"]["label"] == "2/255"
    assert result["budget"]["eps"] == pytest.approx(2 / 255)
    assert result["scorer"]["mos_range"] == list(MOS_RANGE) and result["scorer"]["patch_size"] == PATCH
    assert [e["path"] for e in result["errors"]] == [str(photos / "broken.jpg")]
    assert [row["path"] for row in result["images"]] == [str(p) for p in paths[:4]]
    sizes = {name: pixels.shape[:2] for name, pixels in photographs().items()}
    for row in result["images"]:
        assert (row["height"], row["width"]) == sizes[row["path"].rsplit("/", 1)[-1]]
        assert row["lower"] < row["score"] < row["upper"]
        assert row["upper"] - row["score"] == pytest.approx(row["bound"])

    # --out: the format from the suffix, the file written whole.
    target = tmp_path / "results" / "scores.csv"
    code, out, _ = score(["--run", runs["replace"], *paths[:4], "--eps", "2/255", "--out", target], capsys)
    assert code == 0 and out == ""
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert [row["path"] for row in rows] == [row["path"] for row in result["images"]]
    for row, want in zip(rows, result["images"]):
        for key in ("score", "lower", "upper", "bound"):
            assert float(row[key]) == pytest.approx(want[key])
    assert [p.name for p in target.parent.iterdir()] == ["scores.csv"]  # no temporary left


def test_l2_budget(runs, photos, replace_model, expected, capsys):
    code, out, _ = score(["--run", runs["replace"], photos / "astronaut.png", "--format", "json", "--norm", "l2",
                          "--eps", "0.5"], capsys)
    row = json.loads(out)["images"][0]
    # An L2 budget over the whole image: L / sqrt(K) * eps, with K = 4 x 8 patches of 16.
    assert row["bound"] == pytest.approx(100 * models.lipschitz_bound(replace_model) / np.sqrt(32) * 0.5)
    assert row["score"] == pytest.approx(expected.score[0])
    assert json.loads(out)["budget"] == {"eps": 0.5, "norm": "l2", "label": "0.5"}


def test_uncertified_model_scores_only(runs, photos, capsys):
    code, out, err = score(["--run", runs["base"], *[photos / name for name in GOOD]], capsys)
    assert code == 0
    assert "scores only, no certified interval" in err and "conv1" in err
    header = [line for line in out.splitlines() if not line.startswith("#")][0]
    assert header.split() == ["path", "score"]
    model = keras.saving.load_model(runs["base"] / "model.keras", safe_mode=True)
    want = 100 * models.score_images(model, images_of(photos, GOOD))
    got = [float(line.split()[1]) for line in out.splitlines()[2:]]
    np.testing.assert_allclose(got, want, atol=1e-3)


@pytest.mark.parametrize("kind", ["savedmodel", "tflite"])
def test_exported_file_scores_as_the_run(runs, photos, expected, kind, capsys):
    path = runs["exported"] / ("savedmodel/replace/1" if kind == "savedmodel" else "tflite/replace.float32.tflite")
    names = [photos / name for name in GOOD]
    # The file alone: scores only; the patch size and scale come from the export report.
    code, out, err = score(["--model", path, *names, photos / "tiny.png", "--format", "json"], capsys)
    result = json.loads(out)
    assert code == 1 and "smaller than the model's 16x16 patches" in err
    assert result["certified"] is False and "carries no certificate" in result["not_certified"]
    assert result["scorer"] == {"preset": None, "run": None, "model": str(path), "format": kind,
                                "patch_size": PATCH, "mos_range": list(MOS_RANGE)}
    scores = [row["score"] for row in result["images"]]
    np.testing.assert_allclose(scores, expected.score, atol=1e-2)  # the export's parity: 1e-4 on [0, 1]
    # With its run: the run's certificate around the file's scores.
    both = json.loads(score(["--run", runs["replace"], "--model", path, *names, "--format", "json"], capsys)[1])
    assert both["certified"] is True
    np.testing.assert_allclose([row["score"] for row in both["images"]], scores)
    np.testing.assert_allclose([row["bound"] for row in both["images"]], expected.bound)
    np.testing.assert_allclose([row["lower"] for row in both["images"]], np.asarray(scores) - expected.bound)


def test_int8_file_gets_no_interval(runs, photos, capsys):
    path = runs["exported"] / "tflite" / "replace.int8.tflite"
    code, out, err = score(["--run", runs["replace"], "--model", path, photos / "astronaut.png"], capsys)
    assert code == 0 and "int8 weights" in err
    assert [line for line in out.splitlines() if not line.startswith("#")][0].split() == ["path", "score"]


def test_bad_arguments_are_one_line_errors(runs, photos, tmp_path, capsys):
    code, _, err = score(["--preset", "small_replace_x2_builtin", "--run", runs["replace"], photos / "astronaut.png"],
                         capsys)
    assert code == 2 and "Give a preset (--preset), or a run and/or an exported model" in err
    code, _, err = score(["--preset", "no_such_preset", photos / "astronaut.png"], capsys)
    assert code == 2 and "'no_such_preset' is neither a preset (registered: small_replace_x2_builtin" in err
    code, _, err = score(["--model", photos / "astronaut.png", photos / "astronaut.png"], capsys)
    assert code == 2 and "is not an exported model" in err
    code, _, err = score(["--run", tmp_path / "missing", photos / "astronaut.png"], capsys)
    assert code == 2 and "does not exist" in err
    with pytest.raises(SystemExit):
        cli.main(["score", "--run", str(runs["replace"]), "--eps", "-1", str(photos)])
    assert "a budget must be a number >= 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="L-inf budget is in"):
        score_files([photos], run=runs["replace"], eps=2.0)
    # Nothing readable at all: every path named, exit code 1, an empty table.
    code, out, err = score(["--run", runs["replace"], photos / "fake.png", tmp_path], capsys)
    assert code == 1 and "fake.png" in err and "no image files" in err
    assert out.startswith("# 0 image(s) scored")


# Every image a user has -----------------------------------------------------------------

LOSSLESS = ["gray8.png", "gray16.png", "rgb.png", "palette.png", "alpha.png", "picture.gif", "picture.bmp",
            "lossless.webp", "picture.tiff"]


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    """One gray picture of at most 256 levels in every lossless format (8- and 16-bit PNG, RGB,
    palette and alpha PNG, GIF, BMP, lossless WebP, TIFF), as JPEG, and an empty file, a
    truncated WebP and a text file."""
    root = tmp_path_factory.mktemp("formats")
    gray = skimage.data.camera()[150:190:, 200:260]  # 40 x 60, uint8
    rgb = np.repeat(gray[..., None], 3, -1)
    Image.fromarray(gray).save(root / "gray8.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(root / "gray16.png")  # v * 257 / 65535 = v / 255
    Image.fromarray(rgb).save(root / "rgb.png")
    Image.fromarray(rgb).quantize(256, method=Image.Quantize.MAXCOVERAGE).save(root / "palette.png")
    alpha = np.linspace(0, 255, gray.size).reshape(gray.shape).astype(np.uint8)  # dropped, whatever it is
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(root / "alpha.png")
    Image.fromarray(gray).save(root / "picture.gif")
    Image.fromarray(rgb).save(root / "picture.bmp")
    Image.fromarray(rgb).save(root / "lossless.webp", lossless=True)
    Image.fromarray(rgb).save(root / "picture.tiff")
    Image.fromarray(rgb).save(root / "photo.jpg", quality=90)
    (root / "empty.png").write_bytes(b"")
    webp = (root / "lossless.webp").read_bytes()
    (root / "truncated.webp").write_bytes(webp[: len(webp) // 2])
    (root / "readme.txt").write_text("not an image")
    with Image.open(root / "palette.png") as im:
        assert im.mode == "P" and np.array_equal(np.asarray(im.convert("L")), gray)  # lossless palette
    return root


def test_every_format_is_scored_or_named_and_lossless_ones_agree(runs, formats, tmp_path, capsys):
    code, out, err = score(["--run", runs["replace"], formats, "--format", "json"], capsys)
    result = json.loads(out)
    scored = {row["path"].rsplit("/", 1)[-1]: row for row in result["images"]}
    named = {entry["path"].rsplit("/", 1)[-1]: entry["error"] for entry in result["errors"] + result["skipped"]}
    assert sorted(scored) == sorted([*LOSSLESS, "photo.jpg"])
    assert named == {"empty.png": "empty file (0 bytes)",
                     "truncated.webp": named["truncated.webp"],
                     "readme.txt": "skipped by the folder scan: .txt is not an image type (name the file to try "
                                   "to decode it)"}
    assert named["truncated.webp"].startswith("cannot decode the image: Pillow: ")
    assert code == 1 and all(f"cannot score {formats / name}" in err for name in named)
    scores = np.array([scored[name]["score"] for name in LOSSLESS])
    np.testing.assert_allclose(scores, scores[0], atol=1e-4)  # on the MOS scale 0..100
    assert abs(scored["photo.jpg"]["score"] - scores[0]) < 5  # lossy: close, not equal
    assert all(row["lower"] < row["score"] < row["upper"] for row in scored.values())
    # CSV: the same paths, scored or with their reason in the `error` column.
    code, out, _ = score(["--run", runs["replace"], formats, "--format", "csv"], capsys)
    rows = {row["path"].rsplit("/", 1)[-1]: row for row in csv.DictReader(io.StringIO(out))}
    assert {name for name, row in rows.items() if row["error"]} == set(named)
    assert {name: row["error"] for name, row in rows.items() if row["error"]} == named
    assert all(rows[name]["score"] and not rows[name]["error"] for name in scored)


def test_score_without_a_model_uses_the_bundled_preset(photos, capsys):
    """`robust-iqa score photo.jpg`: no --run, no --model; the bundled certified preset scores."""
    from keras_robust_iqa.models.presets import DEFAULT_PRESET, from_preset

    code, out, err = score([photos / "astronaut.png", "--format", "json"], capsys)
    assert code == 0 and f"scored with the preset {DEFAULT_PRESET} (bundled, the default" in err
    result = json.loads(out)
    assert result["scorer"]["preset"] == DEFAULT_PRESET and result["certified"] is True
    (row,) = result["images"]
    model = from_preset(DEFAULT_PRESET)
    want = evaluation.certified_interval(model, images_of(photos, ["astronaut.png"]), EPS, mos_range=(0.0, 100.0))
    assert row["score"] == pytest.approx(want.score[0], abs=1e-3)
    assert row["lower"] == pytest.approx(want.lower[0], abs=1e-3)
    assert row["upper"] == pytest.approx(want.upper[0], abs=1e-3)
    assert result["lipschitz_bound"] == pytest.approx(models.lipschitz_bound(model))
