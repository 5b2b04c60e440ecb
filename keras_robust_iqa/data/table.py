"""The table every reader returns: image paths, MOS on the dataset's scale, splits."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")


def _frozen_array(values, dtype) -> np.ndarray:
    arr = np.array(values, dtype=dtype)  # always a copy: the table must not alias caller data
    arr.flags.writeable = False
    return arr


@dataclasses.dataclass(frozen=True, eq=False)
class IQATable:
    """An IQA dataset as parallel columns, one row per (distorted) image.

    Attributes:
        name: dataset name (`"koniq10k"`, `"builtin"`, the CSV's stem, ...).
        root: the data folder; `paths` are relative to it.
        paths: image paths relative to `root` (POSIX separators).
        mos: float64 scores on the dataset's own scale (higher is better).
        splits: `"train"`, `"val"` or `"test"` per row.
        refs: reference/source id per row (the split unit), or the path itself when the
            dataset has no references.
        mos_range: `(lo, hi)` of the dataset's scale; `normalize` maps it to [0, 1].
        skipped: `(file, row, reason)` for each row dropped under `on_error="skip"`.
        sizes: optional `(N, 2)` int array of image `(height, width)` when the reader
            opened the images; the pipeline uses it to avoid re-reading headers.
        distortions: optional distortion type per row (`"jpeg"`, `"gaussian blur"`,
            ...) for the synthetic datasets that record one (KADID-10k, TID2013, the
            built-in set, a CSV with a `distortion` column), `None` for the authentic ones;
            per-distortion correlations are computed from it.
    """

    name: str
    root: Path
    paths: tuple[str, ...]
    mos: np.ndarray
    splits: np.ndarray
    refs: np.ndarray
    mos_range: tuple[float, float]
    skipped: tuple[tuple[str, int | None, str], ...] = ()
    sizes: np.ndarray | None = None
    distortions: np.ndarray | None = None

    def __post_init__(self):
        def set_(key, value):  # the dataclass is frozen; normalise fields once here
            object.__setattr__(self, key, value)

        set_("root", Path(self.root))
        set_("paths", tuple(str(p) for p in self.paths))
        set_("mos", _frozen_array(self.mos, np.float64).reshape(-1))
        set_("splits", _frozen_array(self.splits, str).reshape(-1))
        set_("refs", _frozen_array(self.refs, str).reshape(-1))
        set_("skipped", tuple(tuple(s) for s in self.skipped))
        lo, hi = (float(v) for v in self.mos_range)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ValueError(f"mos_range must be finite with lo < hi, got {self.mos_range}")
        set_("mos_range", (lo, hi))
        n = len(self.paths)
        if self.sizes is not None:
            set_("sizes", _frozen_array(self.sizes, np.int64).reshape(n, 2))
        if self.distortions is not None:
            set_("distortions", _frozen_array(self.distortions, str).reshape(-1))
        for field in ("mos", "splits", "refs") + (("distortions",) if self.distortions is not None else ()):
            if len(getattr(self, field)) != n:
                raise ValueError(f"{field} has {len(getattr(self, field))} rows, paths has {n}")
        bad = sorted(set(self.splits.tolist()) - set(SPLITS))
        if bad:
            raise ValueError(f"unknown split values {bad}; expected {SPLITS}")

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={int(np.sum(self.splits == s))}" for s in SPLITS)
        return (f"IQATable(name={self.name!r}, root={str(self.root)!r}, rows={len(self)} "
                f"({counts}), mos_range={self.mos_range}, skipped={len(self.skipped)})")

    def _select(self, mask: np.ndarray) -> "IQATable":
        idx = np.flatnonzero(mask)
        return dataclasses.replace(
            self,
            paths=tuple(self.paths[i] for i in idx),
            mos=self.mos[idx],
            splits=self.splits[idx],
            refs=self.refs[idx],
            sizes=None if self.sizes is None else self.sizes[idx],
            distortions=None if self.distortions is None else self.distortions[idx],
        )

    def subset(self, split: str) -> "IQATable":
        """The rows of one split, in table order (`skipped` is kept for reference)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return self._select(self.splits == split)

    def normalize(self, mos) -> np.ndarray:
        """Map scores on the dataset's scale to [0, 1] (linear in `mos_range`)."""
        lo, hi = self.mos_range
        return (np.asarray(mos, dtype=np.float64) - lo) / (hi - lo)

    def denormalize(self, x01) -> np.ndarray:
        """Inverse of `normalize`: [0, 1] back to the dataset's scale."""
        lo, hi = self.mos_range
        return np.asarray(x01, dtype=np.float64) * (hi - lo) + lo

    def absolute_path(self, i: int) -> Path:
        return self.root / self.paths[i]

    def absolute_paths(self) -> list[str]:
        return [str(self.root / p) for p in self.paths]
