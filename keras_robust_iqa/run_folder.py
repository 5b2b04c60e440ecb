"""A run folder, read and written in one place: `model.keras`, `config.json`, `metrics.json`.

`robust-iqa train` writes one; `prune`, `evaluate`, `export` and distillation read it. Every
stage goes through this module, so the checks (and their messages, which name the folder and
the file) are written once, and no stage imports another to read a run. It imports keras,
json and the standard library only.
"""

import json
import os
import pathlib

import keras

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"


def _folder(run, reading):
    """`run` as a path; `reading`: the file wanted, named in the error for a missing folder."""
    run = pathlib.Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"Run folder {run} does not exist (no {reading} to read).")
    return run


def load_model(run):
    """The run's `model.keras`, loaded in safe mode (uncompiled)."""
    path = _folder(run, MODEL_FILE) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"Run folder {run} holds no {MODEL_FILE} (written by `robust-iqa train`).")
    return keras.saving.load_model(path, safe_mode=True, compile=False)


def read_config(run, required=()):
    """The run's `config.json` as a dict; `required`: keys it must hold (an error names the missing ones)."""
    path = _folder(run, CONFIG_FILE) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"Run folder {run} holds no {CONFIG_FILE} (written by `robust-iqa train`).")
    config = _read_json(path)
    missing = [key for key in required if key not in config]
    if missing:
        raise ValueError(f"{path} lacks {missing}.")
    return config


def read_metrics(run):
    """The run's `metrics.json` as a dict, or None where the folder has none."""
    path = _folder(run, METRICS_FILE) / METRICS_FILE
    return _read_json(path) if path.is_file() else None


def mos_range(config, source):
    """`(lo, hi)` of a run config's `mos_range`, checked; `source` names the file in errors."""
    value = config.get("mos_range")
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
            and value[0] < value[1]):
        raise ValueError(f"{source}: `mos_range` must be [lo, hi] with lo < hi, got {value!r}.")
    return float(value[0]), float(value[1])


def facts(run):
    """`(name, patch_size, mos_range)` of a run folder that holds a model, from its config."""
    run = _folder(run, MODEL_FILE)
    if not (run / MODEL_FILE).is_file():
        raise FileNotFoundError(f"Run folder {run} holds no {MODEL_FILE} (written by `robust-iqa train`).")
    config = read_config(run, required=("patch_size",))
    return run.resolve().name, int(config["patch_size"]), mos_range(config, run / CONFIG_FILE)


def write_json(path, data):
    """Write `data` as indented JSON, atomically: next to the file, then renamed over it."""
    path = pathlib.Path(path)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(data, indent=2))
    os.replace(staging, path)


def write_config(run, config):
    write_json(pathlib.Path(run) / CONFIG_FILE, config)


def write_metrics(run, metrics):
    write_json(pathlib.Path(run) / METRICS_FILE, metrics)


def _read_json(path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}.") from None
