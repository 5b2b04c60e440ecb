"""Generic CSV datasets: `path, mos[, split][, ref][, distortion]` with a header.

Paths are relative to the CSV's folder. `split` (train/val/test, also
training/validation/valid/testing) is optional: without it rows are split 70/10/20 from
the seed by `ref` when that column exists (keep versions of one source together), else
by image. The scale is `mos_range=` when given (scores outside it are errors), else the
observed minimum and maximum. `distortion` (optional) names each row's distortion type,
for per-distortion correlations.
"""

from __future__ import annotations

from pathlib import Path

from .errors import DataError
from .splits import split_groups
from .table import IQATable
from .validate import RawRow, check_on_error, finalize, read_csv_rows

DEFAULT_NAME = "mos.csv"
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test"}


def resolve_csv(path) -> Path:
    """The CSV file itself, or `mos.csv` inside a folder."""
    if path is None:
        raise ValueError("csv: data_dir is required (a CSV file or a folder holding mos.csv)")
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        path = path / DEFAULT_NAME
    if not path.is_file():
        raise DataError(path, None, "metadata file not found")
    return path


def read_csv(csv_path, *, on_error: str = "raise", seed: int = 0, min_size=None,
             check_images: bool = True, mos_range=None, name: str | None = None) -> IQATable:
    """Read a generic `path, mos[, split][, ref][, distortion]` CSV (or a folder holding `mos.csv`)."""
    check_on_error(on_error)
    if mos_range is not None:
        mos_range = (float(mos_range[0]), float(mos_range[1]))
        if not mos_range[0] < mos_range[1]:
            raise ValueError(f"mos_range must be (lo, hi) with lo < hi, got {mos_range}")
    meta = resolve_csv(csv_path)
    index, records = read_csv_rows(meta, required=("path", "mos"), optional=("split", "ref", "distortion"))
    has_split, has_ref = "split" in index, "ref" in index
    assign = {}
    if not has_split:
        key = "ref" if has_ref else "path"
        assign = split_groups((rec[key] for _, rec in records if rec[key]), seed)
    rows = []
    for line, rec in records:
        ref = rec.get("ref") or None
        problem = None
        if has_split:
            raw = rec["split"] or ""
            split = SPLIT_ALIASES.get(raw.lower())
            if split is None:
                problem = f"split {raw!r} is not one of train, val, test" if raw \
                    else "missing split"
        else:
            split = assign.get((ref if has_ref else rec["path"]) or "")
            if has_ref and ref is None:
                problem = "missing ref (needed for the split by ref)"
        rows.append(RawRow(meta, line, rec["path"], rec["mos"], split=split, ref=ref,
                           problem=problem, distortion=rec.get("distortion") or None))
    return finalize(name or meta.stem, meta.parent, rows, on_error=on_error, image_dir="",
                    mos_range=mos_range, min_size=min_size, check_images=check_images,
                    meta_file=meta)
