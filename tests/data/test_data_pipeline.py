"""tf.data pipeline and image decoding."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from iqa_data_helpers import pixels, png_bit_depth, write_csv, write_image, write_png16_rgb
from PIL import Image

from keras_robust_iqa.data import DataError, iter_images, load_images, make_dataset, read_csv, read_image


def collect(ds):
    xs, ys = [], []
    for x, y in ds:
        xs.append(x.numpy())
        ys.append(y.numpy())
    return xs, ys


def find_patch(patch: np.ndarray, image: np.ndarray) -> bool:
    ph, pw = patch.shape[:2]
    h, w = image.shape[:2]
    return any(np.array_equal(image[y:y + ph, x:x + pw], patch)
               for y in range(h - ph + 1) for x in range(w - pw + 1))


# --------------------------------------------------------------------------- decoding


@pytest.fixture
def odd_formats(tmp_path):
    """Grayscale, RGBA, palette, 16-bit and CMYK files, and the formats tf.io does not read
    (WebP, TIFF, palette BMP), with the values they must decode to."""
    rgb = pixels(1)
    gray = pixels(2, channels=1)
    expected, rows = {}, []

    def add(name, split="test"):
        rows.append([name, len(rows) * 10.0, split])

    Image.fromarray(gray).save(tmp_path / "gray.png")
    expected["gray.png"] = np.repeat(gray[..., None], 3, -1) / 255.0
    Image.fromarray(gray).save(tmp_path / "gray.jpg", quality=100)
    with Image.open(tmp_path / "gray.jpg") as im:  # decoded exactly as Pillow does
        expected["gray.jpg"] = np.asarray(im.convert("RGB")) / 255.0
    Image.fromarray(rgb).save(tmp_path / "rgb95.jpg", quality=95)
    with Image.open(tmp_path / "rgb95.jpg") as im:
        expected["rgb95.jpg"] = np.asarray(im.convert("RGB")) / 255.0
    Image.fromarray(gray).save(tmp_path / "gray.bmp")
    expected["gray.bmp"] = np.repeat(gray[..., None], 3, -1) / 255.0
    rgba = np.dstack([rgb, pixels(3, channels=1)])
    rgba[0, 0, 3] = 0  # a fully transparent pixel keeps its colour: alpha is dropped
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    expected["rgba.png"] = rgb / 255.0
    Image.fromarray(np.dstack([gray, gray]), "LA").save(tmp_path / "la.png")
    expected["la.png"] = np.repeat(gray[..., None], 3, -1) / 255.0
    pal = Image.fromarray(rgb).quantize(16)
    pal.save(tmp_path / "palette.png")
    expected["palette.png"] = np.asarray(pal.convert("RGB")) / 255.0
    g16 = (np.arange(32 * 40, dtype=np.uint32).reshape(32, 40) * 51).astype(np.uint16)
    g16[0, 0], g16[0, 1] = 32768, 65535
    Image.fromarray(g16).save(tmp_path / "gray16.png")
    expected["gray16.png"] = np.repeat(g16[..., None], 3, -1) / 65535.0
    rgb16 = (pixels(4).astype(np.uint16) * 257 + 3)
    write_png16_rgb(tmp_path / "rgb16.png", rgb16)
    expected["rgb16.png"] = rgb16 / 65535.0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.webp", lossless=True, exact=True)
    expected["rgba.webp"] = rgb / 255.0  # tf.io fails on WebP ("WebP only supports uint8")
    Image.fromarray(rgb).save(tmp_path / "rgb.tiff")
    expected["rgb.tiff"] = rgb / 255.0
    Image.fromarray(g16).save(tmp_path / "gray16.tif")
    expected["gray16.tif"] = np.repeat(g16[..., None], 3, -1) / 65535.0
    pal.save(tmp_path / "palette.bmp")  # tf.io would ignore the palette
    expected["palette.bmp"] = np.asarray(pal.convert("RGB")) / 255.0
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    expected["cmyk.jpg"] = None
    for name in expected:
        add(name)
    assert png_bit_depth(tmp_path / "gray16.png") == 16
    assert png_bit_depth(tmp_path / "rgb16.png") == 16
    write_csv(tmp_path / "mos.csv", ["path", "mos", "split"], rows)
    return tmp_path, expected


def test_gray_rgba_palette_16bit_decode_to_rgb01(odd_formats):
    root, expected = odd_formats
    table = read_csv(root)  # none of these is an error
    assert len(table) == len(expected) and table.skipped == ()
    images = load_images(table)
    for path, img in zip(table.paths, images):
        assert img.dtype == np.float32 and img.shape == (32, 40, 3), path
        assert 0.0 <= img.min() and img.max() <= 1.0, path
        want = expected[path]
        if want is None:  # CMYK: colour conversions differ slightly between libraries
            with Image.open(root / path) as im:
                want = np.asarray(im.convert("RGB")) / 255.0
            np.testing.assert_allclose(img, want, atol=3 / 255, err_msg=path)
        else:
            np.testing.assert_allclose(img, want, atol=1e-6, err_msg=path)
    for name in ("gray16.png", "gray16.tif"):
        g16 = images[table.paths.index(name)]
        # 32768 / 65535, not clipped to 1.0 as an 8-bit conversion would
        np.testing.assert_allclose(g16[0, 0], 32768 / 65535, atol=1e-6)
        np.testing.assert_allclose(g16[0, 1], 1.0)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_is_applied_everywhere(tmp_path, fmt):
    """Each of the 8 EXIF orientations: read_image, the pipeline and the table's sizes give the
    upright image, as Pillow's exif_transpose does (tf.io alone ignores the tag)."""
    from PIL import ImageOps

    rgb = pixels(5)  # 40 x 32, not square: a turn shows in the shape
    rows, want = [], {}
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[274] = orientation
        name = f"o{orientation}.{fmt.lower()}"
        options = {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
        Image.fromarray(rgb).save(tmp_path / name, fmt, exif=exif.tobytes(), **options)
        with Image.open(tmp_path / name) as im:
            want[name] = np.asarray(ImageOps.exif_transpose(im).convert("RGB")) / 255.0
        rows.append([name, 10.0 * orientation, "test"])
    write_csv(tmp_path / "mos.csv", ["path", "mos", "split"], rows)
    table = read_csv(tmp_path)
    for name, size in zip(table.paths, table.sizes):
        assert tuple(size) == want[name].shape[:2], name
        np.testing.assert_allclose(read_image(tmp_path / name), want[name], atol=1e-6, err_msg=name)
    assert {want[name].shape for name in want} == {(32, 40, 3), (40, 32, 3)}
    xs, _ = collect(make_dataset(table, None, batch_size=1, training=False))  # sizes differ: one per batch
    for name, x in zip(table.paths, xs):
        np.testing.assert_allclose(x[0], want[name], atol=1e-6, err_msg=name)


def test_pipeline_decodes_the_same_pixels_as_load_images(odd_formats):
    root, _ = odd_formats
    table = read_csv(root)
    xs, ys = collect(make_dataset(table, "test", batch_size=4, training=False))
    batched = np.concatenate(xs)
    assert batched.dtype == np.float32 and batched.shape == (len(table), 32, 40, 3)
    np.testing.assert_array_equal(batched, np.stack(load_images(table)))
    np.testing.assert_allclose(np.concatenate(ys), table.normalize(table.mos), rtol=1e-6)


def test_load_images_indices_and_errors(csv_dir):
    table = read_csv(csv_dir)
    imgs = load_images(table, [4, 0])
    assert len(imgs) == 2 and imgs[0].shape == (32, 40, 3)
    np.testing.assert_array_equal(imgs[1], load_images(table, [0])[0])
    np.testing.assert_allclose(imgs[0], pixels(4) / 255.0, atol=1e-6)  # 4.png is pixels(4)
    lazy = iter_images(table, [4, 0])
    assert not isinstance(lazy, list)
    for a, b in zip(lazy, imgs):
        np.testing.assert_array_equal(a, b)
    (csv_dir / "imgs" / "1.png").write_bytes(b"junk")  # after validation: clear error anyway
    with pytest.raises(DataError, match="1.png") as caught:
        load_images(table, [1])
    assert caught.value.reason == ("cannot decode the image (table row 1): not an image format Pillow or tf.io "
                                   "reads (unknown type, or corrupt)")
    png = (csv_dir / "imgs" / "4.png").read_bytes()
    (csv_dir / "imgs" / "1.png").write_bytes(png[:len(png) // 2])  # a truncated PNG: tf.io's branch
    with pytest.raises(DataError, match="1.png") as caught:
        load_images(table, [1])
    # The file, the row and TensorFlow's reason, without the graph trace around it.
    assert caught.value.reason.startswith("cannot decode the image (table row 1): ")
    assert "[[" not in str(caught.value) and "Graph execution" not in str(caught.value)
    (csv_dir / "imgs" / "1.png").unlink()
    with pytest.raises(DataError, match="not found"):
        load_images(table, [1])


def test_read_image_decodes_as_the_pipeline_and_names_bad_files(odd_formats, tmp_path):
    root, _ = odd_formats
    table = read_csv(root)
    for i in range(len(table)):
        np.testing.assert_array_equal(read_image(table.absolute_path(i)), load_images(table, [i])[0])
    jpeg = tmp_path / "cut.jpg"
    Image.fromarray(pixels(3)).save(jpeg, quality=90)
    jpeg.write_bytes(jpeg.read_bytes()[:200])
    with pytest.raises(DataError, match=r"cut\.jpg: cannot decode the image: .*JPEG"):
        read_image(jpeg)
    with pytest.raises(DataError, match=r"missing\.png: image not found"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(DataError, match="a folder, not an image file"):
        read_image(tmp_path)


# --------------------------------------------------------------------------- eval


def test_eval_full_images_in_table_order_and_deterministic(csv_dir):
    table = read_csv(csv_dir, mos_range=(0, 100))
    ds = make_dataset(table, "train", batch_size=4, training=False)
    assert ds.element_spec[0].shape.as_list() == [None, 32, 40, 3]
    xs, ys = collect(ds)
    assert [x.shape[0] for x in xs] == [4, 2]
    np.testing.assert_allclose(np.concatenate(ys), np.arange(6) / 10.0, rtol=1e-6)
    np.testing.assert_array_equal(np.concatenate(xs), np.stack(load_images(table, range(6))))
    xs2, ys2 = collect(ds)  # a second pass (from the cache) is identical
    np.testing.assert_array_equal(np.concatenate(xs), np.concatenate(xs2))
    np.testing.assert_array_equal(np.concatenate(ys), np.concatenate(ys2))
    back = table.denormalize(np.concatenate(ys))
    np.testing.assert_allclose(back, table.subset("train").mos, rtol=1e-5)


def test_eval_center_crop(csv_dir):
    table = read_csv(csv_dir)
    ds = make_dataset(table, "val", batch_size=8, training=False, crop_size=16)
    assert ds.element_spec[0].shape.as_list() == [None, 16, 16, 3]
    (x,), _ = collect(ds)
    full = load_images(table.subset("val"))
    for crop, img in zip(x, full):
        np.testing.assert_array_equal(crop, img[8:24, 12:28])
    (x,), _ = collect(make_dataset(table, "val", training=False, crop_size=(20, 10)))
    np.testing.assert_array_equal(x[0], full[0][6:26, 15:25])


def test_eval_mixed_sizes(csv_dir):
    write_image(csv_dir / "imgs" / "7.png", 7, w=48, h=36, fmt="PNG")
    table = read_csv(csv_dir)
    with pytest.raises(ValueError, match="differ in size.*crop_size=.*batch_size=1"):
        make_dataset(table, "val", batch_size=2, training=False)
    xs, _ = collect(make_dataset(table, "val", batch_size=1, training=False))
    assert [x.shape for x in xs] == [(1, 32, 40, 3), (1, 36, 48, 3)]
    xs, _ = collect(make_dataset(table, "val", batch_size=2, training=False, crop_size=30))
    assert xs[0].shape == (2, 30, 30, 3)


def test_crop_or_patch_larger_than_images(csv_dir):
    table = read_csv(csv_dir)
    with pytest.raises(ValueError, match=r"smaller than the crop_size 33x33.*0\.jpg is 40x32"):
        make_dataset(table, "train", training=False, crop_size=33)
    with pytest.raises(ValueError, match="patch_size 64x64.*min_size=64"):
        make_dataset(table, "train", training=True, patch_size=64)


def test_eval_shuffle_is_seeded(csv_dir):
    table = read_csv(csv_dir, mos_range=(0, 100))

    def order(seed):
        _, ys = collect(make_dataset(table, "train", batch_size=6, training=False,
                                     shuffle=True, seed=seed))
        return np.round(np.concatenate(ys) * 10).astype(int).tolist()

    a = order(0)
    assert sorted(a) == list(range(6))
    assert a == order(0)
    assert any(order(s) != a for s in (1, 2, 3))


def test_bad_arguments(csv_dir):
    table = read_csv(csv_dir)
    with pytest.raises(ValueError, match="unknown split"):
        make_dataset(table, "validation", training=False)
    with pytest.raises(ValueError, match="batch_size"):
        make_dataset(table, "train", training=False, batch_size=0)
    with pytest.raises(ValueError, match="patches_per_image"):
        make_dataset(table, "train", training=True, patch_size=8, patches_per_image=0)
    with pytest.raises(ValueError, match="patch_size"):
        make_dataset(table, "train", training=True, patch_size=(8, 8, 3))
    with pytest.raises(ValueError, match="`augment`='rotate'"):
        make_dataset(table, "train", training=True, patch_size=8, augment="rotate")


# --------------------------------------------------------------------------- training


def test_training_patches_are_real_crops_with_their_labels(csv_dir):
    table = read_csv(csv_dir, mos_range=(0, 100))
    train = table.subset("train")
    full = load_images(train)
    ds = make_dataset(table, "train", patch_size=16, batch_size=5, training=True,
                      patches_per_image=3, seed=7)
    assert ds.element_spec[0].shape.as_list() == [None, 16, 16, 3]
    assert ds.element_spec[1].dtype == tf.float32
    xs, ys = collect(ds)
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert x.shape == (18, 16, 16, 3) and x.dtype == np.float32
    assert [len(b) for b in xs] == [5, 5, 5, 3]
    assert 0.0 <= x.min() and x.max() <= 1.0
    # Each image contributes exactly three patches, and every patch comes from the image
    # whose score it carries.
    idx = np.round(y * 10).astype(int)
    assert sorted(idx.tolist()) == sorted(list(range(6)) * 3)
    for patch, i in zip(x, idx):
        assert find_patch(patch, full[i])
    for i in range(6):  # the three patches of an image are drawn independently
        mine = x[idx == i]
        assert any(not np.array_equal(mine[0], other) for other in mine[1:])


@pytest.mark.parametrize("cache", [True, False])
def test_training_is_deterministic_given_the_seed(csv_dir, cache):
    table = read_csv(csv_dir)

    def epochs(seed, n=2):
        ds = make_dataset(table, "train", patch_size=12, batch_size=4, training=True,
                          patches_per_image=2, seed=seed, cache=cache)
        return [np.concatenate(collect(ds)[0]) for _ in range(n)]

    a1, a2 = epochs(0)
    b1, b2 = epochs(0)
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert not np.array_equal(a1, a2), "every epoch should draw new crops and order"
    c1, _ = epochs(1)
    assert not np.array_equal(a1, c1)


def symmetries(patch):
    """The 8 symmetries of a square patch: 4 rotations, each also flipped left-right."""
    turns = [np.rot90(patch, k) for k in range(4)]
    return turns + [t[:, ::-1] for t in turns]


@pytest.mark.parametrize("augment", ["flip", "dihedral"])
def test_augmented_patches_are_symmetries_of_the_same_crops(csv_dir, augment):
    table = read_csv(csv_dir)

    def patches(augment, seed=3):
        ds = make_dataset(table, "train", patch_size=12, batch_size=64, training=True,
                          patches_per_image=24, seed=seed, augment=augment, shuffle=False)
        return np.concatenate(collect(ds)[0])

    plain, augmented = patches(None), patches(augment)
    # Same seed: the same crops in the same order, only flipped or transposed.
    allowed = [0, 4] if augment == "flip" else range(8)  # identity, left-right flip
    seen = set()
    for p, a in zip(plain, augmented):
        matches = [k for k in allowed if np.array_equal(symmetries(p)[k], a)]
        assert matches, "an augmented patch is not a symmetry of its crop"
        seen.update(matches)
    # 144 coin tosses: every allowed symmetry turns up (the patches have no symmetry of
    # their own, so each match is one symmetry).
    assert seen == set(allowed)
    np.testing.assert_array_equal(augmented, patches(augment))
    assert not np.array_equal(augmented, patches(augment, seed=4))


def test_training_shuffles_images(csv_dir):
    table = read_csv(csv_dir, mos_range=(0, 100))
    _, ys = collect(make_dataset(table, "train", patch_size=8, batch_size=6, training=True,
                                 seed=1))  # (seed 3 happens to give the identity for 6 items)
    order = np.round(np.concatenate(ys) * 10).astype(int).tolist()
    assert sorted(order) == list(range(6)) and order != list(range(6))
    _, ys = collect(make_dataset(table, "train", patch_size=8, batch_size=6, training=True,
                                 seed=1, shuffle=False))
    assert np.round(np.concatenate(ys) * 10).astype(int).tolist() == list(range(6))


def test_cache_options_give_the_same_data(csv_dir, tmp_path):
    table = read_csv(csv_dir)
    runs = [collect(make_dataset(table, "test", batch_size=2, training=False, cache=c))[0][0]
            for c in (True, False, str(tmp_path / "tfcache"))]
    for r in runs[1:]:
        np.testing.assert_array_equal(runs[0], r)


def test_builtin_pipeline_end_to_end(builtin_table):
    ds = make_dataset(builtin_table, "train", patch_size=32, batch_size=16, training=True,
                      seed=0)
    x, y = next(iter(ds))
    assert x.shape == (16, 32, 32, 3) and y.shape == (16,)
    assert 0.0 <= float(tf.reduce_min(y)) and float(tf.reduce_max(y)) <= 1.0
    ds = make_dataset(builtin_table, "test", batch_size=32, training=False)
    x, y = next(iter(ds))
    assert x.shape[1:] == (64, 64, 3)
