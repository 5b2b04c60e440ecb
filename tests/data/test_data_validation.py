"""Bad input: every case raises a DataError naming file and row, or is skipped and counted."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import scipy.io
from iqa_data_helpers import LIVEC_NAMES, edit_csv, write_image, write_livec_mats
from PIL import Image

from keras_robust_iqa.data import (
    DataError,
    DataWarning,
    load_images,
    read_csv,
    read_kadid10k,
    read_koniq10k,
    read_livec,
    read_spaq,
    read_tid2013,
)

KONIQ_META = "koniq10k_distributions_sets.csv"


def raises_at(fn, file_name: str, row, *fragments):
    """Call `fn`; assert a DataError naming `file_name` and `row` (in the message too)."""
    with pytest.raises(DataError) as e:
        fn()
    err = e.value
    assert isinstance(err, ValueError)
    assert os.path.basename(err.file) == file_name, str(err)
    assert err.row == row, str(err)
    msg = str(err)
    assert file_name in msg and (row is None or f"row {row}" in msg), msg
    for frag in fragments:
        assert frag in msg, msg
    return err


def skips(fn, n_skipped: int):
    """Call `fn` under skip; assert one DataWarning reporting `n_skipped`."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = fn()
    msgs = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert len(msgs) == 1, msgs
    assert f"skipped {n_skipped} of" in msgs[0]
    assert len(table.skipped) == n_skipped
    return table


# --------------------------------------------------------------------------- images


def test_missing_image(koniq_dir):
    (koniq_dir / "1024x768" / "1003.jpg").unlink()
    raises_at(lambda: read_koniq10k(koniq_dir), KONIQ_META, 5, "not found", "1003.jpg")
    t = skips(lambda: read_koniq10k(koniq_dir, on_error="skip"), 1)
    assert len(t) == 9 and "1024x768/1003.jpg" not in t.paths
    file, row, reason = t.skipped[0]
    assert file.endswith(KONIQ_META) and row == 5 and "not found" in reason


def test_missing_image_found_even_without_decoding(koniq_dir):
    (koniq_dir / "1024x768" / "1003.jpg").unlink()
    raises_at(lambda: read_koniq10k(koniq_dir, check_images=False), KONIQ_META, 5, "not found")


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_truncated_jpeg(csv_dir, fraction):
    path = csv_dir / "imgs" / "3.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    raises_at(lambda: read_csv(csv_dir), "mos.csv", 5, "3.jpg", "truncated or corrupt")
    t = skips(lambda: read_csv(csv_dir, on_error="skip"), 1)
    assert "imgs/3.jpg" not in t.paths


def test_truncated_png(csv_dir):
    path = csv_dir / "imgs" / "4.png"
    path.write_bytes(path.read_bytes()[:-60])
    raises_at(lambda: read_csv(csv_dir), "mos.csv", 6, "4.png", "truncated or corrupt")


@pytest.mark.parametrize("where", ["entropy data", "entropy data, pillow accepts", "huffman"])
def test_corrupt_jpeg_data(csv_dir, where):
    path = csv_dir / "imgs" / "0.jpg"
    data = bytearray(path.read_bytes())
    if where == "huffman":
        i = data.find(b"\xff\xc4")  # DHT segment: overwrite its code counts
        data[i + 5:i + 25] = b"\xff" * 20
    else:
        # Seed 1 makes the decoder run past the end of the stream: Pillow's libjpeg source
        # pads it and decodes, tf.io raises. Seed 10 is refused by both.
        seed = 1 if "pillow accepts" in where else 10
        mid = len(data) // 2
        data[mid:mid + 40] = np.random.default_rng(seed).integers(0, 256, 40, np.uint8).tobytes()
    path.write_bytes(bytes(data))
    if "pillow accepts" in where:
        with Image.open(path) as im:
            im.load()  # the premise: Pillow alone would let it through
    raises_at(lambda: read_csv(csv_dir), "mos.csv", 2, "0.jpg", "corrupt")


@pytest.mark.parametrize("content", [b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"0" * 30])
def test_garbage_file(csv_dir, content):
    (csv_dir / "imgs" / "1.png").write_bytes(content)
    raises_at(lambda: read_csv(csv_dir), "mos.csv", 3, "1.png")


def test_corrupt_image_in_other_readers(kadid_dir, tid_dir, spaq_dir, livec_dir):
    (kadid_dir / "images" / "I02_01_01.png").write_bytes(b"junk")
    raises_at(lambda: read_kadid10k(kadid_dir), "dmos.csv", 4, "I02_01_01.png")
    (tid_dir / "distorted_images" / "i01_02_1.bmp").write_bytes(b"BM" + b"\0" * 10)
    raises_at(lambda: read_tid2013(tid_dir), "mos_with_names.txt", 2, "i01_02_1.bmp")
    (spaq_dir / "TestImage" / "00010.jpg").write_bytes(b"\xff\xd8\xff")
    raises_at(lambda: read_spaq(spaq_dir), "mos.csv", 11, "00010.jpg")
    (livec_dir / "Images" / "12.bmp").unlink()
    raises_at(lambda: read_livec(livec_dir), "AllImages_release.mat", 10, "not found")


def test_skip_without_decoding_misses_corruption_by_design(csv_dir):
    # check_images=False only checks that files exist (fast path for trusted data).
    (csv_dir / "imgs" / "1.png").write_bytes(b"junk")
    assert len(read_csv(csv_dir, check_images=False)) == 10


def test_image_smaller_than_min_size(csv_dir):
    write_image(csv_dir / "imgs" / "2.bmp", 2, w=24, h=40, fmt="BMP")
    raises_at(lambda: read_csv(csv_dir, min_size=32), "mos.csv", 4, "24x40", "min_size 32x32")
    raises_at(lambda: read_csv(csv_dir, min_size=32, check_images=False), "mos.csv", 4, "24x40")
    assert len(read_csv(csv_dir, min_size=(32, 24))) == 10  # (height, width)
    # Only the 24x40 image is 33 high: nine rows skipped, one kept.
    t = skips(lambda: read_csv(csv_dir, min_size=(33, 20), on_error="skip", mos_range=(0, 100)),
              9)
    assert t.paths == ("imgs/2.bmp",)


def test_min_size_all_skipped_is_an_error(csv_dir):
    with pytest.raises(DataError, match="no usable rows"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_csv(csv_dir, min_size=100, on_error="skip")


def test_formats_tf_does_not_read_are_decoded_and_junk_is_refused(csv_dir):
    """TIFF and a palette BMP (tf.io reads neither correctly) pass validation and decode to
    their pixels; bytes no decoder reads are refused with the row."""
    rgb = np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(csv_dir / "imgs" / "0.jpg", "TIFF")  # the name does not matter
    palette = Image.fromarray(rgb).convert("P")
    palette.save(csv_dir / "imgs" / "1.png", "BMP")
    t = read_csv(csv_dir)
    np.testing.assert_allclose(load_images(t, [t.paths.index("imgs/0.jpg")])[0], rgb / 255.0, atol=1e-6)
    np.testing.assert_allclose(load_images(t, [t.paths.index("imgs/1.png")])[0],
                               np.asarray(palette.convert("RGB")) / 255.0, atol=1e-6)
    (csv_dir / "imgs" / "0.jpg").write_bytes(b"II*\x00 not really a TIFF")
    raises_at(lambda: read_csv(csv_dir), "mos.csv", 2, "0.jpg", "not a readable image")


# --------------------------------------------------------------------------- MOS values


@pytest.mark.parametrize("value, fragment", [("nan", "NaN"), ("NaN", "NaN"), ("", "missing MOS"),
                                             ("abc", "'abc' is not a number"),
                                             ("3.2.1", "not a number"), ("inf", "inf")])
def test_bad_mos_generic_csv(csv_dir, value, fragment):
    edit_csv(csv_dir / "mos.csv", 7, "mos", value)
    raises_at(lambda: read_csv(csv_dir), "mos.csv", 7, fragment)
    t = skips(lambda: read_csv(csv_dir, on_error="skip"), 1)
    assert "imgs/5.png" not in t.paths and len(t) == 9


def test_bad_mos_koniq(koniq_dir):
    edit_csv(koniq_dir / KONIQ_META, 3, "MOS", "NaN")
    edit_csv(koniq_dir / KONIQ_META, 9, "MOS", "good")
    raises_at(lambda: read_koniq10k(koniq_dir), KONIQ_META, 3, "NaN")
    t = skips(lambda: read_koniq10k(koniq_dir, on_error="skip"), 2)
    assert [s[1] for s in t.skipped] == [3, 9]


def test_mos_outside_the_dataset_scale(koniq_dir, kadid_dir):
    edit_csv(koniq_dir / KONIQ_META, 4, "MOS", "7.5")
    raises_at(lambda: read_koniq10k(koniq_dir), KONIQ_META, 4, "outside", "[1, 5]")
    edit_csv(kadid_dir / "dmos.csv", 2, "dmos", "0.5")
    raises_at(lambda: read_kadid10k(kadid_dir), "dmos.csv", 2, "outside")


def test_missing_mos_cell_short_row(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"{i}.png", i, fmt="PNG")
    (tmp_path / "mos.csv").write_text("path,mos\n0.png,1\n1.png\n2.png,3\n")
    raises_at(lambda: read_csv(tmp_path), "mos.csv", 3, "missing MOS")


def test_bad_mos_tid2013(tid_dir):
    meta = tid_dir / "mos_with_names.txt"
    lines = meta.read_text().splitlines()
    lines[2] = "x.y " + lines[2].split()[1]
    lines[4] = "nan " + lines[4].split()[1]
    lines[6] = lines[6].split()[1]  # the score is missing
    lines[8] = lines[8] + " extra"
    meta.write_text("\n".join(lines) + "\n")
    raises_at(lambda: read_tid2013(tid_dir), "mos_with_names.txt", 3, "not a number")
    t = skips(lambda: read_tid2013(tid_dir, on_error="skip"), 4)
    reasons = {row: reason for _, row, reason in t.skipped}
    assert "NaN" in reasons[5] and "missing MOS" in reasons[7] and "3 field" in reasons[9]


def test_bad_mos_livec_names_the_mos_file(livec_dir):
    mos = [5.0 + 4.0 * i for i in range(len(LIVEC_NAMES))]
    mos[9] = float("nan")
    write_livec_mats(livec_dir, LIVEC_NAMES, mos)
    raises_at(lambda: read_livec(livec_dir), "AllMOS_release.mat", 10, "NaN")
    t = skips(lambda: read_livec(livec_dir, on_error="skip"), 1)
    assert "Images/12.bmp" not in t.paths


def test_livec_length_mismatch_and_bad_variables(livec_dir):
    write_livec_mats(livec_dir, LIVEC_NAMES, [50.0] * (len(LIVEC_NAMES) - 1))
    raises_at(lambda: read_livec(livec_dir), "AllMOS_release.mat", None, "19 values", "20 names")
    scipy.io.savemat(livec_dir / "Data" / "AllMOS_release.mat", {"MOS": np.ones((1, 20))})
    raises_at(lambda: read_livec(livec_dir), "AllMOS_release.mat", None,
              "missing variable 'AllMOS_release'", "['MOS']")
    (livec_dir / "Data" / "AllImages_release.mat").write_bytes(b"not a mat file")
    raises_at(lambda: read_livec(livec_dir), "AllImages_release.mat", None, "MATLAB")


def test_livec_non_string_cell_entry(livec_dir):
    cells = np.empty((len(LIVEC_NAMES), 1), dtype=object)
    for i, n in enumerate(LIVEC_NAMES):
        cells[i, 0] = n
    cells[8, 0] = np.array([[3.0]])
    scipy.io.savemat(livec_dir / "Data" / "AllImages_release.mat", {"AllImages_release": cells})
    raises_at(lambda: read_livec(livec_dir), "AllImages_release.mat", 9, "not a file name")


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize("bad", ["../outside.png", "imgs/../../outside.png", "/etc/passwd",
                                 "C:\\data\\x.png"])
def test_path_escaping_the_data_folder(csv_dir, bad):
    write_image(csv_dir.parent / "outside.png", 0, fmt="PNG")  # exists, but outside
    edit_csv(csv_dir / "mos.csv", 5, "path", bad)
    err = raises_at(lambda: read_csv(csv_dir), "mos.csv", 5)
    assert "absolute" in err.reason or "escapes" in err.reason
    t = skips(lambda: read_csv(csv_dir, on_error="skip"), 1)
    assert len(t) == 9 and not any("outside" in p for p in t.paths)


def test_koniq_name_escaping_its_image_folder(koniq_dir):
    # Still inside the data folder, but outside 1024x768/: refused as well.
    write_image(koniq_dir / "elsewhere.jpg", 0)
    edit_csv(koniq_dir / KONIQ_META, 2, "image_name", "../elsewhere.jpg")
    raises_at(lambda: read_koniq10k(koniq_dir), KONIQ_META, 2, "escapes")


def test_symlink_pointing_outside(csv_dir, tmp_path):
    secret = write_image(tmp_path / "secret" / "s.png", 0, fmt="PNG")
    link = csv_dir / "imgs" / "1.png"
    link.unlink()
    link.symlink_to(secret)
    raises_at(lambda: read_csv(csv_dir), "mos.csv", 3, "symlink", "outside")
    skips(lambda: read_csv(csv_dir, on_error="skip"), 1)


def test_symlinks_inside_the_folder_are_fine(csv_dir, tmp_path):
    # A link to another file inside the folder, and a symlinked data folder.
    link = csv_dir / "imgs" / "1.png"
    link.unlink()
    link.symlink_to(csv_dir / "imgs" / "4.png")
    linked_root = tmp_path / "linked"
    linked_root.symlink_to(csv_dir, target_is_directory=True)
    t = read_csv(linked_root)
    assert len(t) == 10 and t.root == linked_root


def test_missing_path(csv_dir):
    edit_csv(csv_dir / "mos.csv", 3, "path", "  ")
    raises_at(lambda: read_csv(csv_dir), "mos.csv", 3, "missing image path")


# --------------------------------------------------------------------------- duplicates


def test_duplicate_rows_name_both(csv_dir):
    edit_csv(csv_dir / "mos.csv", 9, "path", "imgs/./1.png")  # same file as row 3
    err = raises_at(lambda: read_csv(csv_dir), "mos.csv", 9, "duplicate", "row 3", "imgs/1.png")
    assert err.row == 9
    t = skips(lambda: read_csv(csv_dir, on_error="skip"), 1)
    # The first occurrence is kept with its own score and split.
    i = t.paths.index("imgs/1.png")
    assert t.mos[i] == 10.0 and t.splits[i] == "train" and len(t) == 9


def test_duplicate_rows_kadid(kadid_dir):
    meta = kadid_dir / "dmos.csv"
    lines = meta.read_text().splitlines()
    meta.write_text("\n".join(lines + [lines[3]]) + "\n")
    raises_at(lambda: read_kadid10k(kadid_dir), "dmos.csv", 22, "duplicate", "row 4")


# --------------------------------------------------------------------------- metadata files


@pytest.mark.parametrize("reader, fixture, meta", [
    (read_koniq10k, "koniq_dir", KONIQ_META),
    (read_kadid10k, "kadid_dir", "dmos.csv"),
    (read_tid2013, "tid_dir", "mos_with_names.txt"),
    (read_spaq, "spaq_dir", "mos.csv"),
    (read_livec, "livec_dir", "Data/AllImages_release.mat"),
    (read_livec, "livec_dir", "Data/AllMOS_release.mat"),
    (read_csv, "csv_dir", "mos.csv"),
])
def test_missing_metadata_file(request, reader, fixture, meta):
    root = request.getfixturevalue(fixture)
    (root / meta).unlink()
    raises_at(lambda: reader(root), os.path.basename(meta), None, "not found")


@pytest.mark.parametrize("reader, fixture, meta, column", [
    (read_koniq10k, "koniq_dir", KONIQ_META, "MOS"),
    (read_koniq10k, "koniq_dir", KONIQ_META, "set"),
    (read_koniq10k, "koniq_dir", KONIQ_META, "image_name"),
    (read_kadid10k, "kadid_dir", "dmos.csv", "dmos"),
    (read_kadid10k, "kadid_dir", "dmos.csv", "ref_img"),
    (read_spaq, "spaq_dir", "mos.csv", "Image name"),
    (read_csv, "csv_dir", "mos.csv", "mos"),
    (read_csv, "csv_dir", "mos.csv", "path"),
])
def test_missing_required_column(request, reader, fixture, meta, column):
    root = request.getfixturevalue(fixture)
    lines = (root / meta).read_text().splitlines()
    lines[0] = lines[0].replace(column, "renamed", 1)
    (root / meta).write_text("\n".join(lines) + "\n")
    err = raises_at(lambda: reader(root), meta, None, f"column '{column}'", "missing")
    assert err.column == column


def test_empty_metadata_file(csv_dir):
    (csv_dir / "mos.csv").write_text("\n\n")
    raises_at(lambda: read_csv(csv_dir), "mos.csv", None, "empty")


def test_missing_image_folder(koniq_dir):
    (koniq_dir / "1024x768").rename(koniq_dir / "images")
    with pytest.raises(DataError, match="image folder not found") as e:
        read_koniq10k(koniq_dir, on_error="skip")
    assert e.value.file.endswith("1024x768")


def test_bad_on_error_value(csv_dir):
    with pytest.raises(ValueError, match="on_error"):
        read_csv(csv_dir, on_error="ignore")


# --------------------------------------------------------------------------- skip path


def test_skip_collects_every_problem_in_row_order(csv_dir):
    meta = csv_dir / "mos.csv"
    (csv_dir / "imgs" / "8.bmp").unlink()
    edit_csv(meta, 2, "mos", "nan")
    edit_csv(meta, 4, "path", "../x.bmp")
    edit_csv(meta, 6, "path", "imgs/0.jpg")  # duplicate of row 2? row 2 is skipped: kept
    t = skips(lambda: read_csv(csv_dir, on_error="skip"), 3)
    assert [s[1] for s in t.skipped] == [2, 4, 10]
    assert "NaN" in t.skipped[0][2] and "escapes" in t.skipped[1][2]
    assert "not found" in t.skipped[2][2]
    assert len(t) == 7 and "imgs/0.jpg" in t.paths
    # Nothing else was dropped: every kept row is one of the file's rows.
    assert len(t) + len(t.skipped) == 10


def test_errors_are_picklable():
    import pickle

    err = DataError("/x/mos.csv", 4, "MOS is NaN", column="mos")
    back = pickle.loads(pickle.dumps(err))
    assert (back.file, back.row, back.reason, back.column, str(back)) == \
        (err.file, err.row, err.reason, err.column, str(err))
