"""The built-in dataset: composition, labels, split, cache."""

from __future__ import annotations

import csv
import json
import os
import time

import numpy as np
import pytest
from iqa_data_helpers import BUILTIN_SIZE

from keras_robust_iqa.data import builtin as B
from keras_robust_iqa.data import load_table, read_builtin

N_COLOUR_CROPS = sum(c for n, f, c in B.SOURCES if n not in
                     {"brick", "camera", "coins", "grass", "gravel", "moon"})
N_GRAY_CROPS = sum(c for n, f, c in B.SOURCES) - N_COLOUR_CROPS


def rows_of(cache):
    folder = B.builtin_folder(cache, seed=0, size=BUILTIN_SIZE)
    with open(folder / "mos.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_composition(builtin_cache, builtin_table):
    rows = rows_of(builtin_cache)
    assert list(rows[0]) == ["path", "mos", "split", "ref", "distortion", "level"]
    # 9 distortions x 5 levels + the pristine crop; no saturation change on gray photographs.
    assert len(rows) == N_COLOUR_CROPS * 46 + N_GRAY_CROPS * 41 == len(builtin_table)
    assert 500 <= len(rows) <= 1100
    assert {r["ref"] for r in rows} == {n for n, _, _ in B.SOURCES}
    assert {r["distortion"] for r in rows} == {"pristine", *B.DISTORTIONS}
    for d in B.DISTORTIONS:
        assert {int(r["level"]) for r in rows if r["distortion"] == d} == {1, 2, 3, 4, 5}
    assert builtin_table.name == "builtin" and builtin_table.mos_range == (0.0, 100.0)
    assert builtin_table.sizes.tolist() == [[BUILTIN_SIZE, BUILTIN_SIZE]] * len(rows)
    assert builtin_table.refs.tolist() == [r["ref"] for r in rows]
    assert builtin_table.distortions.tolist() == [r["distortion"] for r in rows]
    mos = builtin_table.mos
    assert mos.min() >= 0.0 and mos.max() <= 100.0
    pristine = np.array([r["distortion"] == "pristine" for r in rows])
    assert np.all(mos[pristine] == 100.0) and np.all(mos[~pristine] < 100.0)
    # The labels use the scale: every quintile of 0..100 below the top is populated.
    counts = np.histogram(mos[~pristine], bins=5, range=(0, 100))[0]
    assert np.all(counts[1:] > 20), counts


def test_sources_are_offline_photographs():
    synthetic = {"checkerboard", "colorwheel", "logo", "horse", "binary_blobs",
                 "shepp_logan_phantom", "clock", "cat"}
    assert not synthetic & {f for _, f, _ in B.SOURCES}
    img = B._load_source("camera")  # grayscale photographs become 3 equal channels
    assert img.shape == (512, 512, 3) and img.dtype == np.uint8
    assert np.array_equal(img[..., 0], img[..., 2])


def test_labels_fall_with_distortion_level(builtin_cache):
    rows = rows_of(builtin_cache)
    for d in B.DISTORTIONS:
        means = [np.mean([float(r["mos"]) for r in rows
                          if r["distortion"] == d and int(r["level"]) == lv])
                 for lv in range(1, 6)]
        if d in ("blur", "noise", "jpeg"):
            assert all(a > b + 1.0 for a, b in zip(means, means[1:])), (d, means)
        else:  # at 64 px the strongest JPEG 2000 rates hit the codec's floor: ties allowed
            assert all(a >= b - 1e-6 for a, b in zip(means, means[1:])), (d, means)
    # Per crop, blur and noise are strictly monotone too.
    for d in ("blur", "noise"):
        by_crop = {}
        for r in rows:
            if r["distortion"] == d:
                by_crop.setdefault(r["path"].rsplit("_", 2)[0], []).append(
                    (int(r["level"]), float(r["mos"])))
        for crop, vals in by_crop.items():
            scores = [m for _, m in sorted(vals)]
            assert all(a > b for a, b in zip(scores, scores[1:])), (d, crop, scores)


def test_labels_are_tf_ms_ssim(builtin_cache, builtin_table):
    import tensorflow as tf

    from keras_robust_iqa.data import load_images

    # The stored label of each distorted crop is the documented map of
    # tf.image.ssim_multiscale between the stored image and its pristine crop.
    rows = rows_of(builtin_cache)
    picks = [i for i, r in enumerate(rows) if r["ref"] == "astronaut" and "_c0_" in r["path"]]
    imgs = np.stack(load_images(builtin_table, picks))
    ref = imgs[0]
    assert rows[picks[0]]["distortion"] == "pristine"
    weights = B.msssim_weights(BUILTIN_SIZE, BUILTIN_SIZE)
    ms = tf.image.ssim_multiscale(imgs, np.broadcast_to(ref, imgs.shape), max_val=1.0,
                                  power_factors=weights).numpy()
    np.testing.assert_allclose(builtin_table.mos[picks], B.msssim_to_mos(ms), atol=0.01)


def test_numpy_ms_ssim_matches_tensorflow_at_full_scale():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    ref = B._load_source("astronaut")[100:356, 150:406].astype(np.float32) / 255
    x = np.stack([np.clip(ref + rng.normal(0, s, ref.shape), 0, 1)
                  for s in (0.02, 0.1)] + [ref ** 2]).astype(np.float32)
    assert B.msssim_weights(256, 256) == B.MSSSIM_WEIGHTS  # all five scales at 256
    ours = B.ms_ssim(x, ref)
    theirs = tf.image.ssim_multiscale(x, np.broadcast_to(ref, x.shape), 1.0).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    # odd sizes are padded the same way as TensorFlow
    odd = x[:, :101, :99]
    w = B.msssim_weights(101, 99)
    np.testing.assert_allclose(
        B.ms_ssim(odd, ref[:101, :99], w),
        tf.image.ssim_multiscale(odd, np.broadcast_to(ref[:101, :99], odd.shape), 1.0,
                                 power_factors=w).numpy(), atol=1e-4)


def test_mos_mapping():
    assert B.msssim_to_mos(1.0) == 100.0 and abs(B.msssim_to_mos(0.0)) < 1e-12
    grid = np.linspace(0, 1, 101)
    assert np.all(np.diff(B.msssim_to_mos(grid)) > 0)
    np.testing.assert_allclose(B.msssim_to_mos([0.99, 0.95, 0.9, 0.8, 0.6]),
                               [94.0, 77.2, 63.9, 47.1, 27.8], atol=0.1)


def test_split_by_source_photograph(builtin_cache, builtin_table):
    t = builtin_table
    for ref in set(t.refs.tolist()):
        assert len(set(t.splits[t.refs == ref].tolist())) == 1, ref
    sources = {s: {r for r, sp in zip(t.refs, t.splits) if sp == s}
               for s in ("train", "val", "test")}
    assert [len(sources[s]) for s in ("train", "val", "test")] == [8, 2, 3]
    manifest = json.loads((B.builtin_folder(builtin_cache, seed=0, size=BUILTIN_SIZE)
                           / "manifest.json").read_text())
    assert {n: v["split"] for n, v in manifest["sources"].items()} == \
        dict(zip(t.refs.tolist(), t.splits.tolist()))
    # The split is a deterministic function of the seed, stratified by colour/gray.
    names = [n for n, _, _ in B.SOURCES]
    assert B.builtin_split(0) == {n: manifest["sources"][n]["split"] for n in names}
    assert B.builtin_split(1) != B.builtin_split(0)
    for seed in range(5):
        split = B.builtin_split(seed)
        for part in ("val", "test"):
            kinds = {n in B.GRAYSCALE for n, s in split.items() if s == part}
            assert kinds == {True, False}, (seed, part, split)


def test_cache_is_reused(builtin_cache, monkeypatch):
    folder = B.builtin_folder(builtin_cache, seed=0, size=BUILTIN_SIZE)
    before = (folder / "mos.csv").stat().st_mtime_ns

    def no_rebuild(*a, **k):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(B, "_build_into", no_rebuild)
    t = load_table("builtin", builtin_cache, size=BUILTIN_SIZE)
    assert t.root == folder and (folder / "mos.csv").stat().st_mtime_ns == before


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBUST_IQA_CACHE", str(tmp_path / "c"))
    assert B.builtin_folder(seed=3, size=128) == tmp_path / "c" / f"builtin-{B.VERSION}-s128-seed3"
    monkeypatch.delenv("ROBUST_IQA_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert B.default_cache_dir() == tmp_path / "home" / ".cache" / "keras_robust_iqa"


def test_interrupted_build_leaves_nothing_then_builds(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    stale = cache / f".builtin-{B.VERSION}-s32-seed0.tmp-old"  # left by a killed build long ago
    stale.mkdir()
    old = time.time() - 2 * B.STALE_TMP_SECONDS
    os.utime(stale, (old, old))
    fresh = cache / f".builtin-{B.VERSION}-s32-seed0.tmp-running"  # maybe another process: kept
    fresh.mkdir()
    real_write = B._write_png
    calls = {"n": 0}

    def failing_write(path, img):
        calls["n"] += 1
        if calls["n"] == 50:
            raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the build
        real_write(path, img)

    monkeypatch.setattr(B, "_write_png", failing_write)
    with pytest.raises(KeyboardInterrupt):
        read_builtin(cache, size=32)
    assert sorted(p.name for p in cache.iterdir()) == [fresh.name]
    monkeypatch.setattr(B, "_write_png", real_write)
    t = read_builtin(cache, size=32)
    assert len(t) > 500 and t.sizes[0].tolist() == [32, 32]
    assert sorted(p.name for p in cache.iterdir()) == [fresh.name, f"builtin-{B.VERSION}-s32-seed0"]


def test_concurrent_builder_that_finishes_first_wins(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    final = B.builtin_folder(cache, seed=0, size=32)

    def racing_build(folder, *, seed, size):
        (folder / "mos.csv").write_text("ours")
        final.mkdir(parents=True)  # another process renames its finished build first
        (final / "mos.csv").write_text("theirs")
        (final / "x").write_text("")

    monkeypatch.setattr(B, "_build_into", racing_build)
    assert B.ensure_builtin(cache, seed=0, size=32) == final
    assert (final / "mos.csv").read_text() == "theirs"
    assert [p.name for p in cache.iterdir()] == [final.name]  # our temp folder is gone


def test_bad_size(tmp_path):
    with pytest.raises(ValueError, match="size"):
        B.ensure_builtin(tmp_path, size=16)
    with pytest.raises(ValueError, match="size"):
        B.ensure_builtin(tmp_path, size=64.0)


# --------------------------------------------------------------------------- fresh distortions


def test_distort_at_a_stored_level_reproduces_the_stored_image_and_label(builtin_table):
    train = builtin_table.subset("train")
    crops, colour = B.pristine_crops(train)
    pristine_rows = np.flatnonzero(train.distortions == "pristine")
    assert len(crops) == len(pristine_rows) and colour.any() and not colour.all()
    prefix = train.paths[pristine_rows[0]].removesuffix("pristine_0.png")
    # The deterministic distortions (noise draws depend on the build's own generator).
    for name in ("blur", "jpeg", "jpeg2000", "contrast", "pixelate", "gamma"):
        for level_index in (1, 4):
            row = train.paths.index(f"{prefix}{name}_{level_index + 1}.png")
            image, mos = B.distort(crops[0], name, B.DISTORTIONS[name][1][level_index], np.random.default_rng(0))
            stored = np.asarray(B.Image.open(train.absolute_path(row)).convert("RGB"), np.float32) / 255
            np.testing.assert_array_equal(image, stored)
            assert mos == pytest.approx(train.mos[row], abs=1e-3), (name, level_index)


def test_draw_distortion_covers_every_type_between_the_stored_levels(builtin_table):
    crops, colour = B.pristine_crops(builtin_table.subset("train"))
    k_colour, k_gray = int(np.argmax(colour)), int(np.argmin(colour))
    rng = np.random.default_rng(0)
    draws = [B.draw_distortion(crops[k], bool(colour[k]), rng) for k in [k_colour, k_gray] * 150]
    names = [name for _, _, name in draws]
    assert set(names[0::2]) == {"pristine", *B.DISTORTIONS}
    assert "saturation" not in names[1::2]  # a gray crop has no colour to saturate
    mos = np.array([m for _, m, _ in draws])
    assert all(m == 100.0 for m, name in zip(mos, names) if name == "pristine")
    distorted = mos[[name != "pristine" for name in names]]
    assert 0 <= distorted.min() and distorted.max() < 100
    # Continuous levels: no two draws of a smooth distortion share a label (the stored set
    # has 5 per crop and type). JPEG quality and the pixelation factor are integers, and at
    # this test's 64 px JPEG 2000's strongest rates give one codestream and contrast steps
    # can round to the same 8-bit image.
    smooth = [m for m, name in zip(mos, names) if name in ("blur", "noise", "gamma", "saltpepper", "saturation")]
    assert len(smooth) > 100 and len(np.unique(smooth)) == len(smooth)
    with pytest.raises(ValueError, match="builtin: fresh distortions need .* pristine"):
        B.pristine_crops(builtin_table.subset("train")._select(builtin_table.subset("train").distortions != "pristine"))


def test_make_dataset_draws_new_training_images_each_epoch(builtin_table):
    from keras_robust_iqa.data import make_dataset

    train = builtin_table.subset("train")

    def epochs(seed, count):
        ds = make_dataset(train, None, patch_size=32, batch_size=64, training=True, patches_per_image=2,
                          fresh_distortions=True, seed=seed)
        return [np.concatenate([y.numpy() for _, y in ds]) for _ in range(count)], ds

    (first, second), ds = epochs(0, 2)
    images, y = next(iter(ds))
    assert images.shape == (64, 32, 32, 3) and y.shape == (64,)
    assert len(first) == len(second) == 2 * len(train)  # the stored split's size, per epoch
    assert 0 <= first.min() and first.max() <= 1
    assert not np.array_equal(np.sort(first), np.sort(second))  # new images, not a new order
    # Continuous levels: two epochs hold more distinct labels than the stored split.
    assert len(np.unique(np.concatenate([first, second]))) > len(np.unique(train.mos))
    np.testing.assert_array_equal(epochs(0, 1)[0][0], first)  # fixed by the seed
    with pytest.raises(ValueError, match="needs training=True"):
        make_dataset(train, None, patch_size=32, training=False, fresh_distortions=True)
