"""Helpers for the data tests: tiny images and metadata in the official formats."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import scipy.io
from helpers import BUILTIN_SIZE  # noqa: F401  (re-exported for the data tests)
from PIL import Image

W, H = 40, 32  # fixture images are 40 wide, 32 high


def pixels(seed: int, w: int = W, h: int = H, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels == 1 else (h, w, channels)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def write_image(path: Path, seed: int = 0, *, w: int = W, h: int = H, fmt: str | None = None,
                mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "L":
        im = Image.fromarray(pixels(seed, w, h, 1))
    elif mode == "RGBA":
        im = Image.fromarray(pixels(seed, w, h, 4))
    else:
        im = Image.fromarray(pixels(seed, w, h, 3))
    im.save(path, fmt)
    return path


def write_csv(path: Path, header, rows, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, **kwargs)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_csv_lines(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def edit_csv(path: Path, row: int, column: str, value) -> None:
    """Set `column` of 1-based file row `row` (row 1 is the header)."""
    lines = read_csv_lines(path)
    lines[row - 1][lines[0].index(column)] = value
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(lines)


KONIQ_HEADER = ["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "set"]
KONIQ_SETS = ["training"] * 6 + ["validation"] * 2 + ["test"] * 2


KADID_REFS = [f"I{r:02d}.png" for r in range(1, 11)]


LIVEC_NAMES = [f"t{i}.bmp" for i in range(1, 8)] + [f"{i}.JPG" if i % 2 else f"{i}.bmp"
                                                     for i in range(10, 23)]


def write_livec_mats(root: Path, names, mos) -> None:
    data = root / "Data"
    data.mkdir(parents=True, exist_ok=True)
    cells = np.empty((len(names), 1), dtype=object)  # an N x 1 MATLAB cell array
    for i, n in enumerate(names):
        cells[i, 0] = n
    scipy.io.savemat(data / "AllImages_release.mat", {"AllImages_release": cells})
    scipy.io.savemat(data / "AllMOS_release.mat",
                     {"AllMOS_release": np.asarray(mos, dtype=np.float64).reshape(1, -1)})


def tid_names():
    names = []
    for r in range(1, 11):
        for d in (1, 2):
            prefix = "I" if r == 5 else "i"  # the archive mixes cases
            names.append(f"{prefix}{r:02d}_{d:02d}_1.bmp")
    return names


SPAQ_HEADER = ["Image name", "MOS", "Brightness", "Colorfulness", "Contrast", "Noisiness",
               "Sharpness"]


def write_png16_rgb(path: Path, arr: np.ndarray) -> Path:
    """A 16-bit RGB PNG (Pillow cannot write one): IHDR bit depth 16, colour type 2."""
    import struct
    import zlib

    arr = np.asarray(arr, dtype=np.uint16)
    h, w, _ = arr.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in arr)
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path


def png_bit_depth(path: Path) -> int:
    return Path(path).read_bytes()[24]  # IHDR: 8 signature + 8 chunk head + 8 size bytes
