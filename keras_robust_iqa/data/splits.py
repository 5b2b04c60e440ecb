"""Seeded train/val/test splits over groups (references, source photographs, images)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)


def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))  # Python's round() is banker's rounding: 2.5 -> 2


def split_groups(groups: Iterable[str], seed: int = 0, fractions=DEFAULT_FRACTIONS,
                 *, min_val: int = 1, min_test: int = 1) -> dict[str, str]:
    """Assign every distinct group to `"train"`, `"val"` or `"test"`.

    The groups are sorted before a seeded permutation, so the result depends only on the
    set of groups and the seed (not on row order or duplicates). Counts are
    `round(fraction * n)` for val and test, at least `min_val` / `min_test` when there
    are enough groups to keep one for training, and the rest go to train. With fewer than
    `min_val + min_test + 1` groups the rounded counts stand (two groups: both train).
    """
    uniq = sorted(set(groups))
    n = len(uniq)
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise ValueError(f"fractions must be three non-negative numbers, got {fractions}")
    total = float(sum(fractions))
    n_val = _round_half_up(fractions[1] / total * n)
    n_test = _round_half_up(fractions[2] / total * n)
    if n >= min_val + min_test + 1:
        if fractions[1] > 0:
            n_val = max(n_val, min_val)
        if fractions[2] > 0:
            n_test = max(n_test, min_test)
    # Keep at least one group for training whenever there is more than one group.
    while n_val + n_test > max(n - 1, 0) and (n_val or n_test):
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    order = np.random.default_rng(seed).permutation(n)
    out = {}
    for rank, i in enumerate(order):
        out[uniq[i]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return out
