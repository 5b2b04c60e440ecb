"""Validation shared by every reader: paths, MOS values, duplicates and image files.

Each reader turns its metadata into `RawRow` objects (keeping the row number as in
the file) and hands them to `finalize`, which checks them all the same way. A bad
row either raises `DataError` naming the file and row (`on_error="raise"`) or is
recorded in `IQATable.skipped` and counted in one `DataWarning`
(`on_error="skip"`). Nothing is dropped silently.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import posixpath
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError, DataWarning
from .images import TF_FORMATS, image_size, pillow_decode
from .table import SPLITS, IQATable

ON_ERROR = ("raise", "skip")


class RowProblem(Exception):
    """Internal: one row is bad; the reason becomes a DataError or a skipped entry."""


@dataclasses.dataclass
class RawRow:
    """One metadata row before validation.

    `row` is 1-based as in `file`; `mos_file` names the file holding the score when it
    differs from the one holding the path (LIVE Challenge keeps them in two .mat files).
    `problem` is set by a reader for a format-specific fault (unknown set value, malformed
    line); it is reported with the others, in row order. `distortion` is the row's
    distortion type, for datasets that record one.
    """

    file: Path
    row: int
    path: str | None
    mos: object
    split: str | None = None
    ref: str | None = None
    mos_file: Path | None = None
    problem: str | None = None
    distortion: str | None = None


class Reporter:
    """Raises or records row problems according to `on_error`."""

    def __init__(self, on_error: str):
        check_on_error(on_error)
        self.on_error = on_error
        self.skipped: list[tuple[str, int | None, str]] = []

    def problem(self, file, row: int | None, reason: str) -> None:
        if self.on_error == "raise":
            raise DataError(file, row, reason)
        self.skipped.append((str(file), row, reason))


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


def require_dir(data_dir, dataset: str) -> Path:
    """The data folder as an absolute Path; a clear error when it is missing."""
    if data_dir is None:
        raise ValueError(f"{dataset}: data_dir is required (the folder holding the dataset)")
    path = Path(data_dir).expanduser().absolute()
    if not path.is_dir():
        raise DataError(path, None, f"{dataset} data folder not found")
    return path


def require_file(path: Path, what: str = "metadata file") -> Path:
    if not path.is_file():
        raise DataError(path, None, f"{what} not found")
    return path


# --------------------------------------------------------------------------- text files


def read_text(file: Path) -> str:
    require_file(file)
    data = file.read_bytes()
    try:
        return data.decode("utf-8-sig")  # Excel's "CSV UTF-8" starts with a BOM
    except UnicodeDecodeError:
        return data.decode("latin-1")  # older Excel exports (cp1252); names are ASCII anyway


def read_csv_rows(file: Path, required, optional=()):
    """Rows of a CSV file with a header as `(row_number, {column: value or None})`.

    Columns are matched exactly, then ignoring case and surrounding spaces (spreadsheet
    exports vary). The delimiter (comma, semicolon or tab) is detected from the header.
    Blank lines are not rows. A missing required column raises a DataError naming it.
    """
    text = read_text(file)
    reader = None
    header = None
    for line in text.splitlines():
        if line.strip():
            # Delimiter: whichever of , ; TAB the header uses most (Excel exports ';' in
            # locales with a decimal comma). csv.Sniffer guesses wrong on short headers.
            delimiter = max(",;\t", key=line.count) if any(c in line for c in ",;\t") else ","
            reader = csv.reader(io.StringIO(text), delimiter=delimiter)
            header = next((rec for rec in reader if any(f.strip() for f in rec)), None)
            break
    if header is None:
        raise DataError(file, None, "empty file: expected a header row with columns "
                        + ", ".join(repr(c) for c in required))
    found = [h.strip() for h in header]
    folded = {h.casefold(): i for i, h in reversed(list(enumerate(found)))}
    index = {}
    for col in (*required, *optional):
        if col in found:
            index[col] = found.index(col)
        elif col.casefold() in folded:
            index[col] = folded[col.casefold()]
        elif col in required:
            raise DataError(file, None, f"missing required column (columns found: "
                            f"{', '.join(repr(h) for h in found)})", column=col)
    rows = []
    end = reader.line_num
    for record in reader:
        start, end = end + 1, reader.line_num  # a quoted field may span several lines
        if not any(field.strip() for field in record):
            continue
        values = {c: (record[i].strip() if i < len(record) else None) for c, i in index.items()}
        rows.append((start, values))
    return index, rows


# --------------------------------------------------------------------------- row values


def parse_mos(value, mos_range=None) -> float:
    """A finite float inside `mos_range` (when given), else RowProblem."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowProblem("missing MOS")
    if isinstance(value, str):
        try:
            mos = float(value.strip())
        except ValueError:
            raise RowProblem(f"MOS {value.strip()!r} is not a number") from None
    else:
        try:
            mos = float(value)
        except (TypeError, ValueError):
            raise RowProblem(f"MOS {value!r} is not a number") from None
    if math.isnan(mos):
        raise RowProblem("MOS is NaN")
    if math.isinf(mos):
        raise RowProblem(f"MOS is {mos}")
    if mos_range is not None:
        lo, hi = mos_range
        tol = 1e-9 * (hi - lo)
        if not lo - tol <= mos <= hi + tol:
            raise RowProblem(f"MOS {mos:g} is outside the dataset's scale [{lo:g}, {hi:g}]")
    return mos


def safe_relpath(root: Path, image_dir: str, name, base_real: Path) -> str:
    """`image_dir/name` relative to `root`, refusing anything that leaves the image folder.

    Refused: absolute paths, `..` that climbs out, and symlinks whose target lies outside
    the (resolved) image folder. A symlinked image folder itself is fine: containment is
    checked against its resolved location.
    """
    if name is None or not str(name).strip():
        raise RowProblem("missing image path")
    name = str(name).strip()
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).anchor:
        raise RowProblem(f"absolute image path {name!r} is not allowed (paths must be "
                         f"relative to the image folder)")
    norm = posixpath.normpath(name)
    if norm == ".." or norm.startswith("../"):
        raise RowProblem(f"image path {name!r} escapes the image folder")
    if norm == ".":
        raise RowProblem(f"image path {name!r} names the image folder itself")
    full = root / image_dir / norm
    real = full.resolve()
    if not real.is_relative_to(base_real):
        raise RowProblem(f"image path {name!r} resolves (through a symlink) to {real}, "
                         f"outside the image folder {base_real}")
    return posixpath.normpath(posixpath.join(image_dir, norm)) if image_dir else norm


# --------------------------------------------------------------------------- image files


def _tf_check_jpeg(path: Path) -> None:
    """Decode a JPEG with tf.io as the pipeline will.

    Pillow's libjpeg source inserts a fake end marker when corrupt data makes the decoder
    run past the end of the stream; tf.io's source raises "Input file read error" instead.
    So a few corrupt JPEGs pass Pillow but would crash training inside TensorFlow. `ratio=8`
    still reads the whole entropy-coded stream (the failing part) at a fraction of the cost.
    """
    import tensorflow as tf  # only when JPEGs are checked: reading metadata does not need it

    try:
        tf.io.decode_jpeg(tf.io.read_file(str(path)), channels=3, ratio=8)
    except tf.errors.OpError as e:
        msg = (e.message or "").strip().splitlines()
        raise RowProblem(f"image {path.name} is corrupt: tf.io cannot decode it "
                         f"({msg[-1] if msg else type(e).__name__})") from None


def check_image(path: Path, min_hw, decode: bool):
    """(height, width) of the image, upright; RowProblem if missing, corrupt or too small.

    `decode=True` decodes the file as the pipeline will (`data.images`): formats tf.io
    reads are decoded whole by Pillow (the same pixels), every other format by the
    pipeline's own Pillow decoder. For JPEG, `draft` lets libjpeg scale in the DCT
    domain: the full entropy-coded stream (where truncation and corruption show up) is
    still decoded, only the full-size inverse DCT is skipped (~3x faster); JPEGs are then
    also decoded by tf.io (see `_tf_check_jpeg`).
    Returns None when nothing had to be opened (`decode=False` and no `min_hw`).
    """
    try:
        if not decode and min_hw is None:
            if not path.is_file():
                raise RowProblem(f"image not found: {path}")
            return None
        with Image.open(path) as im:
            h, w = image_size(im)
            fmt = im.format
            if decode and fmt in TF_FORMATS:
                if fmt in ("JPEG", "MPO"):
                    im.draft(None, tuple(max(1, side // 8) for side in im.size))
                im.load()
        if decode and fmt in ("JPEG", "MPO"):
            _tf_check_jpeg(path)
        elif decode and fmt not in TF_FORMATS:
            try:
                pillow_decode(path.read_bytes())
            except ValueError as e:
                raise RowProblem(f"image {path.name} ({fmt}) cannot be decoded: {e}") from None
    except RowProblem:
        raise
    except (FileNotFoundError, NotADirectoryError):
        raise RowProblem(f"image not found: {path}") from None
    except PermissionError:
        raise RowProblem(f"image {path} cannot be read (permission denied)") from None
    except IsADirectoryError:
        raise RowProblem(f"image path is a folder, not a file: {path}") from None
    except UnidentifiedImageError:
        raise RowProblem(f"image {path.name} is not a readable image "
                         f"(empty, corrupt or unknown format)") from None
    except Image.DecompressionBombError as e:
        raise RowProblem(f"image {path.name} is too large to decode safely ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise RowProblem(f"image {path.name} is truncated or corrupt "
                         f"({type(e).__name__}: {e})") from None
    if min_hw is not None and (h < min_hw[0] or w < min_hw[1]):
        raise RowProblem(f"image {path.name} is {w}x{h} (width x height), smaller than "
                         f"min_size {min_hw[1]}x{min_hw[0]}")
    return h, w


def normalize_min_size(min_size):
    """`None`, an int (both sides) or `(height, width)` -> `None` or `(h, w)`."""
    if min_size is None:
        return None
    if isinstance(min_size, (int, np.integer)):
        hw = (int(min_size), int(min_size))
    else:
        hw = tuple(int(v) for v in min_size)
        if len(hw) != 2:
            raise ValueError(f"min_size must be an int or (height, width), got {min_size!r}")
    if min(hw) < 1:
        raise ValueError(f"min_size must be positive, got {min_size!r}")
    return hw


def _workers() -> int:
    # Pillow releases the GIL while decoding; a few threads per core also hide file I/O.
    return min(16, 2 * (os.cpu_count() or 1))


# --------------------------------------------------------------------------- the table


def finalize(name: str, root: Path, rows: list[RawRow], *, on_error: str = "raise",
             image_dir: str = "", mos_range=None, min_size=None, check_images: bool = True,
             meta_file: Path | None = None) -> IQATable:
    """Validate `rows` and build the table.

    Problems are reported in row order within each phase: first the metadata of every row
    (reader faults, path, MOS, split, duplicates), then the image files.

    `mos_range=None` means the scale is not fixed (generic CSV): it is then taken from the
    observed scores and no range check is made. `meta_file` names the file in whole-table
    errors (e.g. every row skipped).
    """
    reporter = Reporter(on_error)
    min_hw = normalize_min_size(min_size)
    root = Path(root)
    base = root / image_dir
    if not base.is_dir():
        raise DataError(base, None, "image folder not found")
    base_real = base.resolve()
    meta_file = meta_file if meta_file is not None else (rows[0].file if rows else root)

    kept: list[tuple[RawRow, str, float]] = []
    first_row: dict[str, RawRow] = {}
    for r in rows:
        if r.problem is not None:
            reporter.problem(r.file, r.row, r.problem)
            continue
        try:
            rel = safe_relpath(root, image_dir, r.path, base_real)
        except RowProblem as p:
            reporter.problem(r.file, r.row, str(p))
            continue
        try:
            mos = parse_mos(r.mos, mos_range)
        except RowProblem as p:
            reporter.problem(r.mos_file or r.file, r.row, str(p))
            continue
        if r.split not in SPLITS:
            reporter.problem(r.file, r.row, f"split {r.split!r} is not one of {SPLITS}")
            continue
        if rel in first_row:
            prev = first_row[rel]
            reporter.problem(r.file, r.row, f"duplicate row: image {rel!r} already listed at "
                             f"row {prev.row} of {prev.file.name}")
            continue
        first_row[rel] = r
        kept.append((r, rel, mos))

    if check_images and any(rel.lower().endswith((".jpg", ".jpeg", ".jpe")) for _, rel, _ in kept):
        import tensorflow  # noqa: F401 - imported once here, not first inside a worker thread

    final: list[tuple[RawRow, str, float]] = []
    sizes: list = []
    with ThreadPoolExecutor(_workers()) as ex:
        futures = [ex.submit(check_image, root / rel, min_hw, check_images)
                   for _, rel, _ in kept]
        try:
            for item, fut in zip(kept, futures):  # in row order: the first error is the earliest
                try:
                    size = fut.result()
                except RowProblem as p:
                    reporter.problem(item[0].file, item[0].row, str(p))
                    continue
                final.append(item)
                sizes.append(size)
        finally:
            for fut in futures:
                fut.cancel()  # after a raise, do not decode the rest

    skipped = tuple(sorted(reporter.skipped, key=lambda s: (s[0], s[1] or 0)))
    if not final:
        detail = f"; first problem: {skipped[0][0]}, row {skipped[0][1]}: {skipped[0][2]}" \
            if skipped else ""
        raise DataError(meta_file, None, f"no usable rows ({len(skipped)} skipped){detail}")
    mos_values = np.array([m for _, _, m in final], dtype=np.float64)
    if mos_range is None:
        lo, hi = float(mos_values.min()), float(mos_values.max())
        if not lo < hi:
            raise DataError(meta_file, None, f"cannot infer the MOS scale: every score is {lo:g}"
                            f"; pass mos_range=(lo, hi)")
        mos_range = (lo, hi)
    if skipped:
        f, row, reason = skipped[0]
        warnings.warn(f"{name}: skipped {len(skipped)} of {len(rows)} rows (on_error='skip'); "
                      f"first: {f}, row {row}: {reason}. See table.skipped for all.",
                      DataWarning, stacklevel=3)
    have_sizes = all(s is not None for s in sizes)
    # A distortion column when the reader gave one: all rows or none (a CSV cell may be empty).
    has_distortion = any(r.distortion is not None for r in rows)
    return IQATable(
        name=name,
        root=root,
        paths=tuple(rel for _, rel, _ in final),
        mos=mos_values,
        splits=np.array([r.split for r, _, _ in final], dtype=str),
        refs=np.array([r.ref if r.ref else rel for r, rel, _ in final], dtype=str),
        mos_range=mos_range,
        skipped=skipped,
        sizes=np.array(sizes, dtype=np.int64).reshape(-1, 2) if have_sizes else None,
        distortions=np.array([r.distortion or "" for r, _, _ in final], dtype=str)
        if has_distortion else None,
    )
