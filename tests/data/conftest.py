"""Fixtures: tiny datasets in the official file formats, written at test time.

Helpers live in `iqa_data_helpers` (a unique module name: several test folders have a
`conftest.py`, so `from conftest import ...` would be ambiguous).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from iqa_data_helpers import (
    BUILTIN_SIZE,
    KADID_REFS,
    KONIQ_HEADER,
    KONIQ_SETS,
    LIVEC_NAMES,
    SPAQ_HEADER,
    tid_names,
    write_csv,
    write_image,
    write_livec_mats,
)


@pytest.fixture
def koniq_dir(tmp_path) -> Path:
    root = tmp_path / "koniq10k"
    rows = []
    for i, set_ in enumerate(KONIQ_SETS):
        name = f"{1000 + i}.jpg"
        write_image(root / "1024x768" / name, i)
        write_image(root / "512x384" / name, i, w=20, h=16)
        mos = 1.2 + 0.4 * i
        rows.append([name, 1, 2, 3, 4, 5, 15, round(mos, 3), 0.5, set_])
    # The official file quotes every field.
    write_csv(root / "koniq10k_distributions_sets.csv", KONIQ_HEADER, rows,
              quoting=csv.QUOTE_ALL)
    return root


@pytest.fixture
def kadid_dir(tmp_path) -> Path:
    root = tmp_path / "kadid10k"
    rows = []
    for r, ref in enumerate(KADID_REFS, start=1):
        write_image(root / "images" / ref, 100 + r, fmt="PNG")
        for d in (1, 2):
            name = f"I{r:02d}_{d:02d}_01.png"
            write_image(root / "images" / name, 10 * r + d, fmt="PNG")
            rows.append([name, ref, round(1.0 + 0.15 * (2 * r + d), 3), 0.3])
    write_csv(root / "dmos.csv", ["dist_img", "ref_img", "dmos", "var"], rows)
    return root


@pytest.fixture
def livec_dir(tmp_path) -> Path:
    root = tmp_path / "livec"
    for i, name in enumerate(LIVEC_NAMES):
        folder = root / "Images" / ("trainingImages" if i < 7 else "")
        fmt = "JPEG" if name.endswith(".JPG") else "BMP"
        write_image(folder / name, i, fmt=fmt)
    write_livec_mats(root, LIVEC_NAMES, [5.0 + 4.0 * i for i in range(len(LIVEC_NAMES))])
    return root


@pytest.fixture
def tid_dir(tmp_path) -> Path:
    root = tmp_path / "tid2013"
    lines = []
    for k, name in enumerate(tid_names()):
        write_image(root / "distorted_images" / name, k, fmt="BMP")
        lines.append(f"{0.3 + 0.3 * k:.5f} {name}")
    (root / "mos_with_names.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def spaq_dir(tmp_path) -> Path:
    root = tmp_path / "spaq"
    rows = []
    for i in range(1, 11):
        name = f"{i:05d}.jpg"
        write_image(root / "TestImage" / name, i)
        rows.append([name, round(8.0 * i, 2), 50, 50, 50, 50, 50])
    write_csv(root / "mos.csv", SPAQ_HEADER, rows)
    return root


@pytest.fixture
def csv_dir(tmp_path) -> Path:
    """`mos.csv` with JPEG, PNG and BMP images and an explicit split column."""
    root = tmp_path / "custom"
    rows = []
    splits = ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    for i, split in enumerate(splits):
        ext, fmt = [("jpg", "JPEG"), ("png", "PNG"), ("bmp", "BMP")][i % 3]
        rel = f"imgs/{i}.{ext}"
        write_image(root / rel, i, fmt=fmt)
        rows.append([rel, 10.0 * i, split])
    write_csv(root / "mos.csv", ["path", "mos", "split"], rows)
    return root


@pytest.fixture(scope="session")
def builtin_table(builtin_cache):
    from keras_robust_iqa.data import read_builtin

    return read_builtin(builtin_cache, seed=0, size=BUILTIN_SIZE)
