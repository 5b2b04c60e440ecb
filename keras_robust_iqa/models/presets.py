"""Presets, keras-hub style: a trained model with its card, loaded by name or path.

A preset folder holds
- `config.json`: the model's Keras config (`keras.saving.serialize_keras_object`);
- `model.weights.h5`: its weights;
- `model_card.json`: what the model is and what was measured on it: the training data,
  the recipe command that rebuilds it, test SROCC / PLCC, the certified Lipschitz bound,
  the I-FGSM 4/255 gain, the patch size and the MOS scale (`CARD_KEYS`).

`from_preset(name_or_path)` returns the Keras model (loaded in safe mode) of
- a registered preset name (the folders under `keras_robust_iqa/presets/`, shipped with
  the package: `list_presets()`);
- a preset folder (`save_to_preset` writes one);
- a run folder (`model.keras` + `config.json`, written by `robust-iqa train`);
- a `.keras` file (`model.save(...)`): its patch size from its input shape, its scores on
  the model's own [0, 1] scale.
`load_preset` returns the model with its card, `Preset(name, path, model, card)`; for a run
folder or a `.keras` file the card holds what their files record.
"""

import datetime
import json
import os
import pathlib
import shutil
import tempfile
from typing import NamedTuple

import keras

PRESETS_DIR = pathlib.Path(__file__).resolve().parent.parent / "presets"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
CARD_FILE = "model_card.json"
# The bundled preset `robust-iqa score` uses when no model is named.
DEFAULT_PRESET = "small_replace_x2_builtin"
# What every preset's card holds (save_to_preset checks).
CARD_KEYS = ("description", "training_data", "not_for", "recipe_command", "test", "lipschitz_bound",
             "ifgsm_4_255", "patch_size", "mos_range")


class Preset(NamedTuple):
    name: str
    path: pathlib.Path
    model: keras.Model
    card: dict


def list_presets():
    """`{name: card}` of the presets shipped with the package, by name."""
    found = {}
    if PRESETS_DIR.is_dir():
        for folder in sorted(PRESETS_DIR.iterdir()):
            if _is_preset(folder):
                found[folder.name] = read_card(folder)
    return found


def from_preset(name_or_path):
    """The Keras model of a preset name, preset folder, run folder or `.keras` file (safe mode)."""
    return load_preset(name_or_path).model


def load_preset(name_or_path):
    """`Preset(name, path, model, card)` of a preset name, preset folder, run folder or `.keras` file."""
    text = os.fspath(name_or_path)
    path = pathlib.Path(text).expanduser()
    if not path.exists() and (PRESETS_DIR / text).is_dir() and os.sep not in text:
        path = PRESETS_DIR / text
    if _is_preset(path):
        config = json.loads((path / CONFIG_FILE).read_text())
        model = keras.saving.deserialize_keras_object(config, safe_mode=True)
        model.load_weights(path / WEIGHTS_FILE)
        return Preset(path.name, path, model, read_card(path))
    if path.is_dir() and (path / "model.keras").is_file():
        return load_run(path)
    if path.is_file() and path.suffix == ".keras":
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
        return Preset(path.stem, path, model, {"patch_size": model.input_shape[1], "mos_range": [0.0, 1.0]})
    if path.suffix in (".tflite", ".onnx") or (path / "saved_model.pb").is_file():
        # An export takes whole images and answers on the MOS scale on its own runtime: it is
        # no Keras model, so it is run, not loaded here.
        raise ValueError(f"{text!r} is an exported model, not a Keras model: score with it through "
                         f"`robust-iqa score --model {text}` or `deployment.runtimes.load_runtime(format, path)`.")
    names = ", ".join(list_presets()) or "none"
    raise FileNotFoundError(
        f"{text!r} is neither a preset (registered: {names}), a preset folder ({CONFIG_FILE}, {WEIGHTS_FILE}, "
        f"{CARD_FILE}), a run folder (model.keras, config.json) nor a .keras file.")


def load_run(run):
    """`Preset` of a run folder: its model, and a card of its patch size, MOS scale and metrics.

    Raises FileNotFoundError naming what the folder lacks.
    """
    from keras_robust_iqa import run_folder

    name, patch_size, mos_range = run_folder.facts(run)
    card = {"patch_size": patch_size, "mos_range": list(mos_range)}
    metrics = run_folder.read_metrics(run)
    if metrics is not None:
        card["test"] = {key: metrics["test"][key] for key in ("srocc", "plcc", "images") if key in metrics["test"]}
        card["lipschitz_bound"] = metrics.get("lipschitz_bound")
    return Preset(name, pathlib.Path(run).resolve(), run_folder.load_model(run), card)


def read_card(folder):
    """The model card of a preset folder, checked to hold `CARD_KEYS`."""
    path = pathlib.Path(folder) / CARD_FILE
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable model card ({error}).") from None
    missing = [key for key in CARD_KEYS if key not in card]
    if missing:
        raise ValueError(f"{path}: the model card lacks {', '.join(missing)}.")
    return card


def save_to_preset(model, preset_dir, card):
    """Write `model` and its `card` (a dict holding `CARD_KEYS`) as a preset folder.

    The folder is written beside its target and renamed into place: an interrupted save
    leaves the previous preset whole.
    """
    missing = [key for key in CARD_KEYS if key not in card]
    if missing:
        raise ValueError(f"Argument `card` lacks {', '.join(missing)}.")
    from keras_robust_iqa import __version__

    preset_dir = pathlib.Path(preset_dir)
    preset_dir.parent.mkdir(parents=True, exist_ok=True)
    card = {"name": preset_dir.name, **card, "parameter_count": int(model.count_params()),
            "keras_version": keras.__version__, "keras_robust_iqa_version": __version__,
            "date_saved": datetime.date.today().isoformat()}
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{preset_dir.name}.", dir=preset_dir.parent))
    try:
        staging.chmod(0o755)  # mkdtemp's folder is private; a preset is shipped and shared
        (staging / CONFIG_FILE).write_text(json.dumps(keras.saving.serialize_keras_object(model), indent=2))
        model.save_weights(staging / WEIGHTS_FILE)
        (staging / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        if preset_dir.exists():
            old = preset_dir.with_name(f".{preset_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)  # left by an interrupted save
            os.replace(preset_dir, old)
            os.replace(staging, preset_dir)
            shutil.rmtree(old)
        else:
            os.replace(staging, preset_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return preset_dir


def _is_preset(path):
    return path.is_dir() and all((path / name).is_file() for name in (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE))


__all__ = ["CARD_KEYS", "DEFAULT_PRESET", "PRESETS_DIR", "Preset", "from_preset", "list_presets", "load_preset",
           "load_run", "read_card", "save_to_preset"]
