"""KonIQ-10k (Hosu et al., IEEE TIP 2020): 10,073 in-the-wild photos, MOS on 1..5.

Official files: `koniq10k_distributions_sets.csv` with columns
`image_name, c1..c5, c_total, MOS, SD, set` (`set`: training / validation / test,
7058 / 1000 / 2015 images) and the images in `1024x768/` (or the `512x384/` version).
The split is the official one, so `seed` is unused.
"""

from __future__ import annotations

from .table import IQATable
from .validate import RawRow, check_on_error, finalize, read_csv_rows, require_dir

METADATA = "koniq10k_distributions_sets.csv"
MOS_RANGE = (1.0, 5.0)
RESOLUTIONS = ("1024x768", "512x384")
SET_TO_SPLIT = {"training": "train", "validation": "val", "test": "test"}


def read_koniq10k(data_dir, *, on_error: str = "raise", seed: int = 0, min_size=None,
                  check_images: bool = True, resolution: str = "1024x768") -> IQATable:
    """Read KonIQ-10k from `data_dir` with its official split."""
    del seed  # the official split is used
    check_on_error(on_error)
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    root = require_dir(data_dir, "koniq10k")
    meta = root / METADATA
    _, records = read_csv_rows(meta, required=("image_name", "MOS", "set"))
    rows = []
    for line, rec in records:
        raw_set = (rec["set"] or "").strip()
        split = SET_TO_SPLIT.get(raw_set.lower())
        problem = None if split else f"set {raw_set!r} is not one of {', '.join(SET_TO_SPLIT)}"
        rows.append(RawRow(meta, line, rec["image_name"], rec["MOS"], split=split,
                           problem=problem))
    return finalize("koniq10k", root, rows, on_error=on_error, image_dir=resolution,
                    mos_range=MOS_RANGE, min_size=min_size, check_images=check_images,
                    meta_file=meta)
