"""LIVE In the Wild Image Quality Challenge (Ghadiyaram & Bovik, IEEE TIP 2016).

Official files: `Data/AllImages_release.mat` (variable `AllImages_release`, an N x 1
MATLAB cell array of file names), `Data/AllMOS_release.mat` (`AllMOS_release`, 1 x N
double, MOS on 0..100) and the images in `Images/`. The first 7 entries are the training
images shown to raters, stored in `Images/trainingImages/`; they are usually dropped
(`drop_training_images=True`). No official split: images are split 70/10/20 from the seed.
Row numbers in errors are the 1-based entry index in the .mat arrays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from .errors import DataError
from .splits import split_groups
from .table import IQATable
from .validate import RawRow, check_on_error, finalize, require_dir, require_file

NAMES_FILE = "Data/AllImages_release.mat"
MOS_FILE = "Data/AllMOS_release.mat"
NAMES_VAR = "AllImages_release"
MOS_VAR = "AllMOS_release"
IMAGE_DIR = "Images"
TRAINING_DIR = "trainingImages"
N_TRAINING = 7
MOS_RANGE = (0.0, 100.0)


def _load_var(file: Path, var: str) -> np.ndarray:
    require_file(file)
    try:
        mat = scipy.io.loadmat(str(file))
    except NotImplementedError:  # scipy cannot read v7.3 (HDF5) files
        raise DataError(file, None, "MATLAB v7.3 (HDF5) files are not supported; re-save it "
                        "with save(..., '-v7')") from None
    except Exception as e:  # scipy raises ValueError/TypeError/OSError for broken files
        raise DataError(file, None, f"not a readable MATLAB file ({type(e).__name__}: {e})") \
            from None
    if var not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(file, None, f"missing variable '{var}' (variables found: {found})")
    return mat[var]


def _cell_to_names(arr: np.ndarray) -> list:
    """File names from a MATLAB cell array (or a char matrix); None where not a string."""
    if arr.dtype.kind == "U":  # char matrix saved without a cell array
        return [str(s).rstrip() for s in arr.ravel()]
    names = []
    for item in arr.ravel(order="F"):  # MATLAB is column-major: N x 1 and 1 x N both work
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, np.ndarray) and item.dtype.kind == "U":
            names.append("".join(str(s) for s in item.ravel()) if item.size else "")
        else:
            names.append(None)
    return names


def read_livec(data_dir, *, on_error: str = "raise", seed: int = 0, min_size=None,
               check_images: bool = True, drop_training_images: bool = True) -> IQATable:
    """Read LIVE In the Wild Challenge from `data_dir` (seeded 70/10/20 image split)."""
    check_on_error(on_error)
    root = require_dir(data_dir, "livec")
    names_file, mos_file = root / NAMES_FILE, root / MOS_FILE
    names_arr = _load_var(names_file, NAMES_VAR)
    mos_arr = _load_var(mos_file, MOS_VAR)
    if names_arr.dtype.kind not in "OU":
        raise DataError(names_file, None, f"'{NAMES_VAR}' should be a cell array of file "
                        f"names, got a {names_arr.dtype} array")
    if mos_arr.dtype.kind not in "fiu":
        raise DataError(mos_file, None, f"'{MOS_VAR}' should be a numeric array, got "
                        f"{mos_arr.dtype}")
    names = _cell_to_names(names_arr)
    mos = mos_arr.ravel(order="F")
    if len(mos) != len(names):
        raise DataError(mos_file, None, f"'{MOS_VAR}' has {len(mos)} values but '{NAMES_VAR}' "
                        f"in {names_file.name} has {len(names)} names")
    first = N_TRAINING if drop_training_images else 0
    assign = split_groups((n for n in names[first:] if n), seed)
    rows = []
    for i in range(first, len(names)):
        name = names[i]
        if name is None:
            rows.append(RawRow(names_file, i + 1, None, None,
                               problem="entry is not a file name (string)"))
            continue
        path = f"{TRAINING_DIR}/{name}" if (i < N_TRAINING and name) else name
        rows.append(RawRow(names_file, i + 1, path, mos[i], split=assign.get(name),
                           mos_file=mos_file))
    return finalize("livec", root, rows, on_error=on_error, image_dir=IMAGE_DIR,
                    mos_range=MOS_RANGE, min_size=min_size, check_images=check_images,
                    meta_file=names_file)
