"""KADID-10k (Lin, Hosu & Saupe, QoMEX 2019): 81 references x 25 distortions x 5 levels.

Official files: `dmos.csv` with columns `dist_img, ref_img, dmos, var` and all images
(distorted and references) in `images/`. Despite its name `dmos` is higher-is-better,
on 1..5. There is no official split: references are split 70/10/20 from the seed, so no
reference (and none of its 125 distorted versions) appears in two splits. The distortion
type comes from the image name (`I01_05_03.png`: reference 01, distortion 05, level 3).
"""

from __future__ import annotations

import re

from .splits import split_groups
from .table import IQATable
from .validate import RawRow, check_on_error, finalize, read_csv_rows, require_dir

METADATA = "dmos.csv"
IMAGE_DIR = "images"
MOS_RANGE = (1.0, 5.0)
NAME_RE = re.compile(r"^i\d+_(\d+)_\d+\.[a-z0-9]+$", re.IGNORECASE)
# The 25 distortion types, in the order of their number in the image names (Lin et al. 2019).
DISTORTIONS = (
    "gaussian blur", "lens blur", "motion blur", "color diffusion", "color shift",
    "color quantization", "color saturation 1", "color saturation 2", "jpeg2000", "jpeg",
    "white noise", "white noise in color component", "impulse noise", "multiplicative noise",
    "denoise", "brighten", "darken", "mean shift", "jitter", "non-eccentricity patch",
    "pixelate", "quantization", "color block", "high sharpen", "contrast change",
)


def distortion_of(name: str | None) -> str:
    """The distortion type named by a KADID-10k image name, `""` when it names none."""
    m = NAME_RE.match(name or "")
    number = int(m.group(1)) if m else 0
    return DISTORTIONS[number - 1] if 1 <= number <= len(DISTORTIONS) else ""


def read_kadid10k(data_dir, *, on_error: str = "raise", seed: int = 0, min_size=None,
                  check_images: bool = True) -> IQATable:
    """Read KADID-10k from `data_dir`, split by reference image."""
    check_on_error(on_error)
    root = require_dir(data_dir, "kadid10k")
    meta = root / METADATA
    _, records = read_csv_rows(meta, required=("dist_img", "ref_img", "dmos"))
    # The split is computed over every reference named in the file, before any row is
    # skipped, so a broken image never reshuffles the split of the others.
    refs = {rec["ref_img"] for _, rec in records if rec["ref_img"]}
    assign = split_groups(refs, seed)
    rows = []
    for line, rec in records:
        ref = rec["ref_img"]
        problem = None if ref else "missing ref_img (needed for the split by reference)"
        rows.append(RawRow(meta, line, rec["dist_img"], rec["dmos"], split=assign.get(ref),
                           ref=ref, problem=problem, distortion=distortion_of(rec["dist_img"])))
    return finalize("kadid10k", root, rows, on_error=on_error, image_dir=IMAGE_DIR,
                    mos_range=MOS_RANGE, min_size=min_size, check_images=check_images,
                    meta_file=meta)
