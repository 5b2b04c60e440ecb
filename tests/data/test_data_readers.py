"""Each reader on a small dataset in its official format."""

from __future__ import annotations

import csv
import warnings

import numpy as np
import pytest
from iqa_data_helpers import KONIQ_SETS, LIVEC_NAMES, H, W, write_csv, write_image

from keras_robust_iqa.data import (
    DataError,
    IQATable,
    load_table,
    read_csv,
    read_kadid10k,
    read_koniq10k,
    read_livec,
    read_spaq,
    read_tid2013,
)


def _no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


def test_koniq10k_official_split_and_scale(koniq_dir):
    t = _no_warnings(read_koniq10k, koniq_dir)
    assert isinstance(t, IQATable) and t.name == "koniq10k"
    assert len(t) == 10 and t.skipped == ()
    assert t.paths[0] == "1024x768/1000.jpg"
    assert t.absolute_path(0) == koniq_dir / "1024x768" / "1000.jpg"
    assert t.absolute_path(0).is_file()
    expected = {"training": "train", "validation": "val", "test": "test"}
    assert t.splits.tolist() == [expected[s] for s in KONIQ_SETS]
    np.testing.assert_allclose(t.mos, [1.2 + 0.4 * i for i in range(10)])
    assert t.mos.dtype == np.float64
    assert t.mos_range == (1.0, 5.0)
    np.testing.assert_allclose(t.normalize([1.0, 3.0, 5.0]), [0.0, 0.5, 1.0])
    assert t.refs.tolist() == list(t.paths)  # no references: the path itself
    assert t.sizes.tolist() == [[H, W]] * 10


def test_koniq10k_resolution(koniq_dir):
    t = read_koniq10k(koniq_dir, resolution="512x384")
    assert t.paths[0] == "512x384/1000.jpg"
    assert t.sizes.tolist()[0] == [16, 20]
    with pytest.raises(ValueError, match="resolution"):
        read_koniq10k(koniq_dir, resolution="2048x1536")


def test_koniq10k_unknown_set_names_row(koniq_dir):
    meta = koniq_dir / "koniq10k_distributions_sets.csv"
    text = meta.read_text().replace('"validation"', '"holdout"', 1)
    meta.write_text(text)
    with pytest.raises(DataError) as e:
        read_koniq10k(koniq_dir)
    assert e.value.row == 8 and "holdout" in str(e.value)  # 7th data row -> file row 8


def test_kadid10k_split_by_reference(kadid_dir):
    t = _no_warnings(read_kadid10k, kadid_dir, seed=3)
    assert t.name == "kadid10k" and len(t) == 20 and t.mos_range == (1.0, 5.0)
    assert t.paths[0] == "images/I01_01_01.png"
    assert set(t.refs.tolist()) == {f"I{r:02d}.png" for r in range(1, 11)}
    by_ref = {}
    for ref, split in zip(t.refs, t.splits):
        by_ref.setdefault(ref, set()).add(split)
    assert all(len(s) == 1 for s in by_ref.values()), "a reference is in two splits"
    counts = {s: sum(1 for v in by_ref.values() if s in v) for s in ("train", "val", "test")}
    assert counts == {"train": 7, "val": 1, "test": 2}  # 70/10/20 of 10 references


def test_kadid10k_split_is_deterministic_and_seeded(kadid_dir):
    a, b = read_kadid10k(kadid_dir, seed=0), read_kadid10k(kadid_dir, seed=0)
    assert a.splits.tolist() == b.splits.tolist()
    others = [read_kadid10k(kadid_dir, seed=s).splits.tolist() for s in (1, 2, 3)]
    assert any(o != a.splits.tolist() for o in others)


def test_kadid10k_split_does_not_depend_on_row_order(kadid_dir):
    meta = kadid_dir / "dmos.csv"
    before = read_kadid10k(kadid_dir, seed=5)
    lines = meta.read_text().splitlines()
    meta.write_text("\n".join([lines[0]] + lines[1:][::-1]) + "\n")
    after = read_kadid10k(kadid_dir, seed=5)
    assert dict(zip(before.paths, before.splits)) == dict(zip(after.paths, after.splits))


def test_kadid10k_distortion_type_from_image_name(kadid_dir):
    t = read_kadid10k(kadid_dir)
    # The fixture has distortions 01 and 02 of each reference: gaussian and lens blur.
    expected = ["gaussian blur" if p.split("_")[1] == "01" else "lens blur" for p in t.paths]
    assert t.distortions.tolist() == expected
    test = t.subset("test")
    assert test.distortions.tolist() == [e for e, s in zip(expected, t.splits) if s == "test"]
    from keras_robust_iqa.data.kadid10k import DISTORTIONS, distortion_of

    assert len(DISTORTIONS) == 25 and distortion_of("I81_25_05.png") == "contrast change"
    assert distortion_of("I01_10_05.png") == "jpeg" and distortion_of("I01_09_05.png") == "jpeg2000"
    assert distortion_of("I01_26_01.png") == "" and distortion_of("other.png") == ""


def test_livec_drops_training_images_and_reads_mat(livec_dir):
    t = _no_warnings(read_livec, livec_dir)
    assert t.name == "livec" and len(t) == 13 and t.mos_range == (0.0, 100.0)
    assert t.paths[0] == "Images/10.bmp" and t.paths[1] == "Images/11.JPG"
    np.testing.assert_allclose(t.mos, [5.0 + 4.0 * i for i in range(7, 20)])
    assert not any("trainingImages" in p for p in t.paths)
    counts = {s: int(np.sum(t.splits == s)) for s in ("train", "val", "test")}
    assert counts == {"train": 9, "val": 1, "test": 3}  # 13 images: round(1.3)=1, round(2.6)=3


def test_livec_keeps_training_images_on_request(livec_dir):
    t = read_livec(livec_dir, drop_training_images=False)
    assert len(t) == 20
    assert t.paths[:7] == tuple(f"Images/trainingImages/t{i}.bmp" for i in range(1, 8))
    assert t.mos[0] == 5.0


def test_livec_row_vector_cell(livec_dir):
    # A 1 x N cell array (some re-exports transpose it) reads the same.
    import scipy.io

    cells = np.empty((1, len(LIVEC_NAMES)), dtype=object)
    for i, n in enumerate(LIVEC_NAMES):
        cells[0, i] = n
    scipy.io.savemat(livec_dir / "Data" / "AllImages_release.mat", {"AllImages_release": cells})
    assert read_livec(livec_dir).paths[0] == "Images/10.bmp"


def test_tid2013_reference_prefix_case_insensitive(tid_dir):
    t = _no_warnings(read_tid2013, tid_dir, seed=1)
    assert t.name == "tid2013" and len(t) == 20 and t.mos_range == (0.0, 9.0)
    assert t.paths[0] == "distorted_images/i01_01_1.bmp"
    assert set(t.refs.tolist()) == {f"i{r:02d}" for r in range(1, 11)}  # I05 -> i05
    for ref in set(t.refs.tolist()):
        assert len(set(t.splits[t.refs == ref].tolist())) == 1
    np.testing.assert_allclose(t.mos[:3], [0.3, 0.6, 0.9])


def test_tid2013_distortion_type_from_image_name(tid_dir):
    t = read_tid2013(tid_dir)
    expected = ["additive gaussian noise" if p.split("_")[2] == "01"
                else "additive noise in color components" for p in t.paths]
    assert t.distortions.tolist() == expected
    from keras_robust_iqa.data.tid2013 import DISTORTIONS

    assert len(DISTORTIONS) == 24 and DISTORTIONS[9] == "jpeg" and DISTORTIONS[16] == "contrast change"


def test_tid2013_name_case_differs_from_file(tid_dir):
    # The list says I05_01_1.bmp but the file on disk is i05_01_1.bmp (or the reverse).
    src = tid_dir / "distorted_images" / "I05_01_1.bmp"
    src.rename(tid_dir / "distorted_images" / "i05_01_1.bmp")
    t = read_tid2013(tid_dir)
    assert "distorted_images/i05_01_1.bmp" in t.paths


def test_tid2013_ignores_blank_lines_and_counts_rows(tid_dir):
    meta = tid_dir / "mos_with_names.txt"
    lines = meta.read_text().splitlines()
    meta.write_text("\n".join(lines[:3] + ["", "   "] + lines[3:]) + "\n\n")
    assert len(read_tid2013(tid_dir)) == 20
    # After the two blank lines the 4th pair sits on line 6.
    meta.write_text("\n".join(lines[:3] + ["", "   ", "abc " + lines[3].split()[1]]
                              + lines[4:]) + "\n")
    with pytest.raises(DataError) as e:
        read_tid2013(tid_dir)
    assert e.value.row == 6


def test_spaq_csv_export(spaq_dir):
    t = _no_warnings(read_spaq, spaq_dir)
    assert t.name == "spaq" and len(t) == 10 and t.mos_range == (0.0, 100.0)
    assert t.paths[0] == "TestImage/00001.jpg"
    np.testing.assert_allclose(t.mos, [8.0 * i for i in range(1, 11)])
    assert sorted(np.unique(t.splits).tolist()) == ["test", "train", "val"]


def test_spaq_header_variants_and_other_name(spaq_dir):
    # Excel exports: BOM, semicolons, stray spaces and case in the header.
    meta = spaq_dir / "mos.csv"
    text = meta.read_text().replace(",", ";").replace("Image name", " image NAME ")
    meta.unlink()
    (spaq_dir / "MOS and Image attribute scores.csv").write_bytes(
        b"\xef\xbb\xbf" + text.encode())
    t = read_spaq(spaq_dir)
    assert len(t) == 10 and t.mos[-1] == 80.0


def test_generic_csv_with_split_column(csv_dir):
    t = _no_warnings(read_csv, csv_dir / "mos.csv")
    assert t.name == "mos" and len(t) == 10
    assert t.root == csv_dir and t.paths[1] == "imgs/1.png"
    assert t.splits.tolist() == ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    assert t.mos_range == (0.0, 90.0)  # observed min / max
    t2 = read_csv(csv_dir, mos_range=(0, 100))  # a folder holding mos.csv
    assert t2.mos_range == (0.0, 100.0)
    np.testing.assert_allclose(t2.normalize(t2.mos), t2.mos / 100)
    np.testing.assert_allclose(t2.denormalize(t2.normalize(t2.mos)), t2.mos)


def test_generic_csv_split_by_ref_when_no_split_column(tmp_path):
    rows = []
    for i in range(30):
        rel = f"{i}.png"
        write_image(tmp_path / rel, i, fmt="PNG")
        rows.append([rel, i, f"src{i // 3}"])
    write_csv(tmp_path / "scores.csv", ["path", "mos", "ref"], rows)
    t = read_csv(tmp_path / "scores.csv", seed=4)
    for ref in set(t.refs.tolist()):
        assert len(set(t.splits[t.refs == ref].tolist())) == 1
    assert set(t.splits.tolist()) == {"train", "val", "test"}


def test_generic_csv_distortion_column_is_optional(csv_dir, koniq_dir, livec_dir, spaq_dir):
    assert read_csv(csv_dir).distortions is None
    for table in (read_koniq10k(koniq_dir), read_livec(livec_dir), read_spaq(spaq_dir)):
        assert table.distortions is None  # authentic distortions: no type
    meta = csv_dir / "mos.csv"
    lines = meta.read_text().splitlines()
    kinds = ["blur", "noise", ""] * 3 + ["jpeg"]
    meta.write_text("\n".join([lines[0] + ",Distortion"]
                              + [f"{line},{k}" for line, k in zip(lines[1:], kinds)]) + "\n")
    t = read_csv(meta)
    assert t.distortions.tolist() == kinds  # an empty cell is no type, not an error
    assert t.subset("test").distortions.tolist() == kinds[-2:]


def test_generic_csv_split_aliases_and_bad_value(csv_dir):
    meta = csv_dir / "mos.csv"
    text = meta.read_text().replace(",train", ",Training").replace(",val", ",validation")
    meta.write_text(text)
    t = read_csv(meta)
    assert t.splits.tolist()[:8] == ["train"] * 6 + ["val"] * 2
    meta.write_text(text.replace(",test", ",holdout", 1))
    with pytest.raises(DataError) as e:
        read_csv(meta)
    assert e.value.row == 10 and "holdout" in str(e.value)


def test_generic_csv_mos_range_needed_for_constant_scores(tmp_path):
    write_image(tmp_path / "a.png", 0, fmt="PNG")
    write_image(tmp_path / "b.png", 1, fmt="PNG")
    write_csv(tmp_path / "mos.csv", ["path", "mos", "split"], [["a.png", 3, "train"],
                                                              ["b.png", 3, "test"]])
    with pytest.raises(DataError, match="mos_range"):
        read_csv(tmp_path)
    assert read_csv(tmp_path, mos_range=(1, 5)).mos_range == (1.0, 5.0)


def test_quoted_fields_and_multiline_rows_keep_file_row_numbers(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"{i}.png", i, fmt="PNG")
    with open(tmp_path / "mos.csv", "w", newline="") as f:
        f.write('path,mos,split,note\n0.png,1,train,"two\nlines"\n1.png,2,train,x\n'
                '2.png,oops,test,y\n')
    with pytest.raises(DataError) as e:
        read_csv(tmp_path)
    assert e.value.row == 5  # the quoted note spans lines 2-3


def test_load_table_registry(koniq_dir, kadid_dir, livec_dir, tid_dir, spaq_dir, csv_dir):
    assert load_table("koniq10k", koniq_dir).name == "koniq10k"
    assert load_table("KADID10K", kadid_dir).name == "kadid10k"
    assert load_table("livec", livec_dir, drop_training_images=False).name == "livec"
    assert load_table("tid2013", tid_dir, seed=2).name == "tid2013"
    assert load_table("spaq", spaq_dir).name == "spaq"
    assert len(load_table("csv", csv_dir)) == 10  # folder holding mos.csv
    assert len(load_table("csv", csv_dir / "mos.csv", mos_range=(0, 100))) == 10
    with pytest.raises(ValueError, match="valid names: builtin, koniq10k, kadid10k, livec, "
                                         "tid2013, spaq, csv"):
        load_table("koniq", koniq_dir)
    for name in ("koniq10k", "kadid10k", "livec", "tid2013", "spaq", "csv"):
        with pytest.raises(ValueError, match="data_dir"):
            load_table(name)


def test_missing_data_folder_is_a_clear_error(tmp_path):
    for name in ("koniq10k", "kadid10k", "livec", "tid2013", "spaq", "csv"):
        with pytest.raises(DataError) as e:
            load_table(name, tmp_path / "nope")
        assert "nope" in str(e.value) and "not found" in str(e.value)


def test_table_is_immutable_and_subsets(csv_dir):
    t = read_csv(csv_dir)
    with pytest.raises(Exception):
        t.name = "x"
    with pytest.raises(ValueError):
        t.mos[0] = 1.0  # arrays are read-only
    test = t.subset("test")
    assert len(test) == 2 and set(test.splits.tolist()) == {"test"}
    assert test.paths == t.paths[-2:] and test.sizes.shape == (2, 2)
    with pytest.raises(ValueError, match="unknown split"):
        t.subset("validation")


def test_csv_module_roundtrip_of_fixture_is_official_quoting(koniq_dir):
    # Sanity check of the fixture itself: the header is quoted like the official file.
    first = (koniq_dir / "koniq10k_distributions_sets.csv").read_text().splitlines()[0]
    assert first.startswith('"image_name","c1"')
    assert next(csv.reader([first]))[7] == "MOS"
