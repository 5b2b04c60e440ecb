"""IQATable and split_groups on their own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from keras_robust_iqa.data import IQATable, split_groups


def make(**kw):
    args = dict(name="t", root="/data", paths=("a.png", "b.png", "c.png"), mos=[1, 3, 5],
                splits=["train", "val", "test"], refs=["r1", "r1", "r2"], mos_range=(1, 5))
    args.update(kw)
    return IQATable(**args)


def test_normalize_roundtrip_and_paths():
    t = make()
    assert len(t) == 3 and t.root == Path("/data") and t.absolute_path(2) == Path("/data/c.png")
    np.testing.assert_allclose(t.normalize(t.mos), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(t.denormalize([0.25, 1.0]), [2.0, 5.0])
    assert t.mos.dtype == np.float64 and t.mos_range == (1.0, 5.0)
    assert "train=1, val=1, test=1" in repr(t)


def test_validation_of_fields():
    with pytest.raises(ValueError, match="lo < hi"):
        make(mos_range=(5, 5))
    with pytest.raises(ValueError, match="mos has 2 rows"):
        make(mos=[1, 2])
    with pytest.raises(ValueError, match="unknown split"):
        make(splits=["train", "valid", "test"])
    with pytest.raises(ValueError, match="distortions has 2 rows"):
        make(distortions=["blur", "jpeg"])
    assert make().distortions is None
    t = make(distortions=["blur", "jpeg", "noise"])
    assert t.distortions.tolist() == ["blur", "jpeg", "noise"] and not t.distortions.flags.writeable


def test_caller_arrays_are_copied():
    mos = np.array([1.0, 2.0, 3.0])
    t = make(mos=mos)
    mos[0] = 5.0
    assert t.mos[0] == 1.0


def test_split_groups_counts_and_minimums():
    groups = [f"g{i}" for i in range(25)]
    out = split_groups(groups, 0)
    counts = {s: list(out.values()).count(s) for s in ("train", "val", "test")}
    assert counts == {"train": 17, "val": 3, "test": 5}  # round(2.5) -> 3, round(5) -> 5
    out = split_groups(groups[:5], 0, min_val=2, min_test=2)
    assert sorted(out.values()) == ["test", "test", "train", "val", "val"]
    assert set(split_groups(["only"], 0).values()) == {"train"}
    # Too few groups to hold out one each: everything trains (documented).
    assert sorted(split_groups(["a", "b"], 0).values()) == ["train", "train"]
    assert sorted(split_groups(["a", "b", "c"], 0).values()) == ["test", "train", "val"]


def test_split_groups_ignores_order_and_duplicates():
    groups = [f"g{i}" for i in range(12)]
    a = split_groups(groups, 3)
    b = split_groups(groups[::-1] + groups[:4], 3)
    assert a == b
    assert any(split_groups(groups, s) != a for s in (4, 5, 6))
