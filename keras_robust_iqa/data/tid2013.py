"""TID2013 (Ponomarenko et al., Signal Processing: Image Communication 2015).

Official files: `mos_with_names.txt`, one `MOS name` pair a line (MOS on 0..9, higher
is better), the 3000 distorted images in `distorted_images/` (`i01_01_1.bmp`: reference
01, distortion 01, level 1). The reference id is the `i01` prefix, case-insensitive (the
archive mixes `i` and `I`), the distortion type the middle number. Split 70/10/20 by
reference from the seed.
"""

from __future__ import annotations

import re

from .splits import split_groups
from .table import IQATable
from .validate import RawRow, check_on_error, finalize, read_text, require_dir

METADATA = "mos_with_names.txt"
IMAGE_DIR = "distorted_images"
MOS_RANGE = (0.0, 9.0)
NAME_RE = re.compile(r"^(i\d+)_(\d+)_\d+\.[a-z0-9]+$", re.IGNORECASE)
# The 24 distortion types, in the order of their number in the image names (Ponomarenko et al.).
DISTORTIONS = (
    "additive gaussian noise", "additive noise in color components", "spatially correlated noise",
    "masked noise", "high frequency noise", "impulse noise", "quantization noise",
    "gaussian blur", "image denoising", "jpeg", "jpeg2000", "jpeg transmission errors",
    "jpeg2000 transmission errors", "non-eccentricity pattern noise",
    "local block-wise distortions", "mean shift", "contrast change", "color saturation change",
    "multiplicative gaussian noise", "comfort noise", "lossy compression of noisy images",
    "color quantization with dither", "chromatic aberrations",
    "sparse sampling and reconstruction",
)


def _case_insensitive_lookup(folder):
    """lower-case name -> actual name, for files whose case differs from the list."""
    try:
        return {p.name.lower(): p.name for p in folder.iterdir()}
    except OSError:
        return {}


def read_tid2013(data_dir, *, on_error: str = "raise", seed: int = 0, min_size=None,
                 check_images: bool = True) -> IQATable:
    """Read TID2013 from `data_dir`, split by reference image."""
    check_on_error(on_error)
    root = require_dir(data_dir, "tid2013")
    meta = root / METADATA
    lines = read_text(meta).splitlines()
    on_disk = _case_insensitive_lookup(root / IMAGE_DIR)
    parsed = []  # (row, mos, name, ref, problem, distortion)
    for i, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue  # blank line
        if len(fields) == 1 and NAME_RE.match(fields[0]):
            fields = [None, fields[0]]  # a name without its score: reported as missing MOS
        if len(fields) != 2:
            parsed.append((i, None, None, None, f"expected 'MOS name', got {len(fields)} "
                           f"field(s): {line.strip()!r}", None))
            continue
        mos, name = fields
        m = NAME_RE.match(name)
        if m is None:
            parsed.append((i, None, None, None,
                           f"image name {name!r} does not look like iXX_YY_Z.bmp", None))
            continue
        if not (root / IMAGE_DIR / name).exists() and name.lower() in on_disk:
            name = on_disk[name.lower()]
        number = int(m.group(2))
        distortion = DISTORTIONS[number - 1] if 1 <= number <= len(DISTORTIONS) else ""
        parsed.append((i, mos, name, m.group(1).lower(), None, distortion))
    assign = split_groups({p[3] for p in parsed if p[3]}, seed)
    rows = [RawRow(meta, i, name, mos, split=assign.get(ref), ref=ref, problem=problem,
                   distortion=distortion)
            for i, mos, name, ref, problem, distortion in parsed]
    return finalize("tid2013", root, rows, on_error=on_error, image_dir=IMAGE_DIR,
                    mos_range=MOS_RANGE, min_size=min_size, check_images=check_images,
                    meta_file=meta)
