"""SPAQ (Fang et al., CVPR 2020): 11,125 smartphone photos, MOS on 0..100.

The official scores come as an xlsx (`MOS and Image attribute scores.xlsx`) with columns
`Image name, MOS, Brightness, Colorfulness, Contrast, Noisiness, Sharpness`; this reader
takes its CSV export (`metadata=` names the file, default `mos.csv`, else the only CSV
in the folder). Other columns are ignored. Images in `TestImage/`. No official split:
images are split 70/10/20 from the seed.
"""

from __future__ import annotations

from .errors import DataError
from .splits import split_groups
from .table import IQATable
from .validate import RawRow, check_on_error, finalize, read_csv_rows, require_dir

DEFAULT_METADATA = "mos.csv"
IMAGE_DIR = "TestImage"
MOS_RANGE = (0.0, 100.0)


def _find_metadata(root, metadata):
    if metadata is not None:
        return root / metadata
    if (root / DEFAULT_METADATA).is_file():
        return root / DEFAULT_METADATA
    csvs = sorted(p for p in root.glob("*.csv") if p.is_file())
    if len(csvs) == 1:
        return csvs[0]
    if not csvs:
        raise DataError(root / DEFAULT_METADATA, None, "metadata file not found (export the "
                        "SPAQ xlsx to CSV, or pass metadata='<file>.csv')")
    raise DataError(root, None, f"several CSV files {[p.name for p in csvs]}; pass "
                    f"metadata='<file>.csv'")


def read_spaq(data_dir, *, on_error: str = "raise", seed: int = 0, min_size=None,
              check_images: bool = True, metadata: str | None = None) -> IQATable:
    """Read SPAQ from `data_dir` (a CSV export of the official xlsx + `TestImage/`)."""
    check_on_error(on_error)
    root = require_dir(data_dir, "spaq")
    meta = _find_metadata(root, metadata)
    _, records = read_csv_rows(meta, required=("Image name", "MOS"))
    assign = split_groups((rec["Image name"] for _, rec in records if rec["Image name"]), seed)
    rows = [RawRow(meta, line, rec["Image name"], rec["MOS"],
                   split=assign.get(rec["Image name"] or ""))
            for line, rec in records]
    return finalize("spaq", root, rows, on_error=on_error, image_dir=IMAGE_DIR,
                    mos_range=MOS_RANGE, min_size=min_size, check_images=check_images,
                    meta_file=meta)
