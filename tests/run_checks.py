"""Checks of the run folders `train` writes, shared by the training tests."""

import csv
import json
import math

import keras


def history_rows(run):
    with open(run / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def all_layers(model):
    """Every layer, nested models (functional and Sequential) opened up."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)


def assert_correlations(result):
    for name in ("srocc", "plcc", "krcc"):
        assert math.isfinite(result[name]) and -1.0 <= result[name] <= 1.0, result
    assert result["images"] > 0


def assert_run_folder(run, metrics, patch=32, replicas=1):
    """The files every finished run leaves; returns the reloaded model."""
    assert {p.name for p in run.iterdir()} == {"model.keras", "config.json", "metrics.json",
                                                 "history.csv"}  # backup/ is gone
    model = keras.saving.load_model(run / "model.keras", safe_mode=True)
    assert model.input_shape == (None, patch, patch, 3)
    assert json.loads((run / "metrics.json").read_text()) == metrics
    assert_correlations(metrics["test"])
    assert_correlations(metrics["val"])
    assert metrics["params"] == model.count_params()
    assert metrics["train_seconds"] >= 0
    config = json.loads((run / "config.json").read_text())
    assert config["patch_size"] == patch and config["replicas"] == replicas
    assert config["dataset_name"] == "builtin" and config["mos_range"] == [0.0, 100.0]
    rows = history_rows(run)
    assert [int(r["epoch"]) for r in rows] == list(range(config["epochs"]))
    assert all(math.isfinite(float(r["val_srocc"])) for r in rows)
    return model
