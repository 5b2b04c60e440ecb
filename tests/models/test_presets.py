"""Presets: `models.from_preset` for a preset, a run folder and a `.keras` file; the recipe of the
bundled preset writes a card of what its own evaluation measured; the shipped weights reproduce
the shipped card on the built-in test split."""

import dataclasses
import functools
import importlib.util
import json
import pathlib
import runpy
import sys

import numpy as np
import pytest
from helpers import BUILTIN_SIZE

from keras_robust_iqa import cli
from keras_robust_iqa import data as iqa_data
from keras_robust_iqa.data.builtin import read_builtin
from keras_robust_iqa.evaluation.evaluate import evenly_spaced
from keras_robust_iqa.models import from_preset, lipschitz_bound, list_presets, load_preset, save_to_preset
from keras_robust_iqa.models.presets import CARD_FILE, DEFAULT_PRESET, PRESETS_DIR
from keras_robust_iqa.training.trainer import evaluate_images, load_run_model

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
PATCH = 32


def load_recipe():
    spec = importlib.util.spec_from_file_location("preset_builtin", REPO_ROOT / "training" / "preset_builtin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def small_builtin(builtin_cache):
    """`load_table("builtin", cache)` reads the suite's 64-px build."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(iqa_data, "read_builtin", functools.partial(iqa_data.read_builtin, size=BUILTIN_SIZE))
        yield builtin_cache


@pytest.fixture(scope="module")
def tiny_preset(small_builtin, tmp_path_factory):
    """The bundled preset's recipe at a tiny size: the base widths, 1 epoch of 32-px patches, 4 attacked images."""
    recipe = load_recipe()
    root = tmp_path_factory.mktemp("preset")
    config = dataclasses.replace(recipe.CONFIG, data_dir=str(small_builtin), width=1.0, epochs=1, patience=1,
                                 patch_size=PATCH, patches_per_image=1)
    card = recipe.build_preset(config, root / "run", root / "preset", attack_images=4, verbose=0)
    return root, config, card


def test_the_recipe_writes_a_card_of_what_its_own_evaluation_measured(tiny_preset):
    from keras_robust_iqa.evaluation.evaluate import evaluate_model

    root, config, card = tiny_preset
    assert json.loads((root / "preset" / CARD_FILE).read_text()) == card
    assert card["recipe_command"] == "python training/preset_builtin.py"
    assert "synthetic distortions" in card["training_data"] and "training/koniq10k.py" in card["not_for"]
    assert card["patch_size"] == PATCH and card["mos_range"] == [0.0, 100.0]
    assert card["training_config"] == dataclasses.asdict(config)
    # Measured again, on the model the preset folder holds.
    preset = load_preset(root / "preset")
    assert preset.card == card and preset.name == "preset"
    table = iqa_data.load_table("builtin", config.data_dir, min_size=PATCH)
    test = evaluate_images(preset.model, table, "test")
    for key in ("srocc", "plcc", "krcc", "images"):
        assert card["test"][key] == pytest.approx(test[key], abs=1e-6)
    assert card["lipschitz_bound"] == pytest.approx(lipschitz_bound(preset.model), rel=1e-6)
    split = table.subset("test")
    rows = evenly_spaced(len(split), 4)
    entry, _ = evaluate_model(preset.model, iqa_data.load_images(split, rows), split.normalize(split.mos[rows]),
                              attacks=["ifgsm"], eps=(4 / 255,), verbose=0)
    attack = entry["attacks"]["ifgsm@4/255"]
    assert card["ifgsm_4_255"]["images"] == 4
    assert card["ifgsm_4_255"]["gain_mos01"] == pytest.approx(attack["abs_gain_raw"], abs=1e-6)
    assert card["ifgsm_4_255"]["certified_bound_mos01"] == pytest.approx(attack["certified_bound_raw"], rel=1e-6)
    assert card["ifgsm_4_255"]["within_certified_bound"] is True
    # The run folder the recipe trained agrees with the card.
    assert json.loads((root / "run" / "metrics.json").read_text())["test"]["srocc"] == card["test"]["srocc"]


def predictions(model, seed=0):
    x = np.random.default_rng(seed).uniform(size=(3, *model.input_shape[1:3], 3)).astype("float32")
    return np.asarray(model(x, training=False))


def test_from_preset_round_trips_a_run_folder_a_keras_file_and_the_bundled_preset(tiny_preset, tmp_path):
    root, _, card = tiny_preset
    run = root / "run"
    # A run folder: the run's model, a card from its config.json and metrics.json.
    loaded = load_preset(run)
    want = predictions(load_run_model(run))
    np.testing.assert_array_equal(predictions(from_preset(run)), want)
    assert loaded.card["patch_size"] == PATCH and loaded.card["mos_range"] == [0.0, 100.0]
    assert loaded.card["test"]["srocc"] == card["test"]["srocc"]
    # A .keras file saved by the user: the same door.
    model = load_run_model(run)
    model.save(tmp_path / "mine.keras")
    np.testing.assert_array_equal(predictions(from_preset(tmp_path / "mine.keras")), want)
    assert load_preset(tmp_path / "mine.keras").card == {"patch_size": PATCH, "mos_range": [0.0, 1.0]}
    # The bundled preset: by name, saved again and loaded back, same scores and card.
    assert DEFAULT_PRESET in list_presets()
    bundled = load_preset(DEFAULT_PRESET)
    assert bundled.path == PRESETS_DIR / DEFAULT_PRESET
    keep = {key: value for key, value in bundled.card.items() if key not in ("name", "date_saved")}
    save_to_preset(bundled.model, tmp_path / "copy", keep)
    copy = load_preset(tmp_path / "copy")
    np.testing.assert_array_equal(predictions(copy.model), predictions(bundled.model))
    assert {k: v for k, v in copy.card.items() if k not in ("name", "date_saved")} == keep
    # Saved again over itself: replaced whole, nothing left beside it.
    save_to_preset(copy.model, tmp_path / "copy", keep)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "mine.keras"]
    with pytest.raises(ValueError, match="lacks description"):
        save_to_preset(copy.model, tmp_path / "bad", {"patch_size": 64})
    with pytest.raises(FileNotFoundError, match="'nope' is neither a preset"):
        from_preset("nope")
    # An export is run on its runtime, not loaded as a Keras model: the error says where to go.
    (tmp_path / "robust.float32.tflite").write_bytes(b"TFL3")
    with pytest.raises(ValueError, match="is an exported model.*robust-iqa score --model"):
        from_preset(tmp_path / "robust.float32.tflite")


def test_the_shipped_weights_reproduce_the_shipped_card():
    """The built-in test split at the card's size (built into the user's cache on first use),
    scored with the bundled weights: the card's test SROCC, PLCC and Lipschitz bound."""
    preset = load_preset(DEFAULT_PRESET)
    card = preset.card
    assert (PRESETS_DIR / DEFAULT_PRESET / "model.weights.h5").stat().st_size < 5 * 2**20
    # The reader itself: this module's fixture points `data.read_builtin` at the suite's 64-px build.
    table = read_builtin(card["training_config"]["data_dir"], min_size=card["patch_size"])
    test = evaluate_images(preset.model, table, "test")
    assert test["images"] == card["test"]["images"]
    assert test["srocc"] == pytest.approx(card["test"]["srocc"], abs=1e-3)
    assert test["plcc"] == pytest.approx(card["test"]["plcc"], abs=1e-3)
    assert lipschitz_bound(preset.model) == pytest.approx(card["lipschitz_bound"], abs=1e-3)


def test_recipe_script_help(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["preset_builtin.py", "--help"])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(REPO_ROOT / "training" / "preset_builtin.py"), run_name="__main__")
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert all(option in text for option in ("--data-dir", "--run-dir", "--out", "--attack-images"))


def test_presets_command_lists_the_cards(capsys):
    assert cli.main(["presets"]) == 0
    out = capsys.readouterr().out
    card = list_presets()[DEFAULT_PRESET]
    assert out.startswith(f"{DEFAULT_PRESET} (default of robust-iqa score)")
    assert f"test SROCC {card['test']['srocc']:.3f}" in out and "rebuild: python training/preset_builtin.py" in out
    assert cli.main(["presets", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == list_presets()
