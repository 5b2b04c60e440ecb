"""The per-dataset recipes in `training/` and their shared command line (`training.recipe`).

The recipes are thin: a `TrainConfig` and `run_recipe`. Training itself is tested in
tests/training/test_trainer.py; here `train` is replaced by a stand-in that records its call.
"""

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from keras_robust_iqa.models import BACKBONES
from keras_robust_iqa.training import recipe
from keras_robust_iqa.training.trainer import TrainConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
# Recipes that do more than train one model per dataset: frontier trains and compares several
# (test_frontier_recipe.py), preset_builtin trains, measures and writes the bundled preset
# (tests/models/test_presets.py).
OTHERS = ("frontier", "preset_builtin")
RECIPES = sorted(p for p in (REPO_ROOT / "training").glob("*.py") if p.stem not in OTHERS)
NAMES = [p.stem for p in RECIPES]


def load(name):
    """The recipe's module globals (not run as a script)."""
    return runpy.run_path(str(REPO_ROOT / "training" / f"{name}.py"))


def test_one_recipe_per_dataset():
    assert set(NAMES) == {"builtin", "koniq10k", "kadid10k", "livec", "tid2013", "spaq"}


@pytest.mark.parametrize("name", NAMES)
def test_recipe_settings(name):
    config = load(name)["CONFIG"]
    assert isinstance(config, TrainConfig)
    config.validate()
    assert config.dataset == name
    assert config.data_dir is None and config.robust is None and config.init_from is None
    assert config.distill_from is None
    assert config.patch_size % 8 == 0  # every model, the small one included, takes it
    if name == "builtin":
        assert config.model == "small" and config.weights is None
    else:
        assert config.model in BACKBONES and config.weights == "imagenet"
        assert "GPU" in load(name)["__doc__"]


@pytest.mark.parametrize("name", NAMES)
def test_recipe_script_help(name, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--help"])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(REPO_ROOT / "training" / f"{name}.py"), run_name="__main__")
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--data-dir", "--out", "--model", "--robust", "--init-from", "--distill-from"):
        assert option in text
    assert f"patch_size={load(name)['CONFIG'].patch_size}" in text


def test_readme_lists_every_recipe():
    readme = (REPO_ROOT / "training" / "README.md").read_text()
    for name in (*NAMES, *OTHERS):
        assert f"training/{name}.py" in readme
    assert "python training/koniq10k.py --data-dir" in readme


KONIQ = TrainConfig(dataset="koniq10k", model="resnet50", weights="imagenet", patch_size=224)


def test_defaults_and_overrides():
    config, out = recipe.recipe_config(KONIQ, ["--data-dir", "/data/koniq"])
    assert config == TrainConfig(dataset="koniq10k", data_dir="/data/koniq", model="resnet50",
                                 weights="imagenet", patch_size=224)
    assert out == "runs/koniq10k-resnet50"

    config, out = recipe.recipe_config(
        KONIQ, ["--data-dir", "d", "--robust", "insert", "--init-from", "runs/base",
                "--model", "mobilenetv3", "--out", "runs/x"])
    assert (config.robust, config.init_from, config.model, config.weights) == \
        ("insert", "runs/base", "mobilenetv3", "imagenet")
    assert out == "runs/x"

    # The small model has no pretrained weights: it starts from scratch.
    config, out = recipe.recipe_config(KONIQ, ["--data-dir", "d", "--model", "small",
                                               "--robust", "replace", "--robust-conv", "block",
                                               "--robust-activation", "relu",
                                               "--robust-pooling", "invertible", "--robust-channel-gains",
                                               "--distill-from", "runs/teacher"])
    assert (config.model, config.weights, config.robust) == ("small", None, "replace")
    assert (config.robust_activation, config.robust_pooling, config.robust_channel_gains) == \
        ("relu", "invertible", True)
    assert config.distill_from == "runs/teacher"
    assert config.robust_conv == "block"
    assert out == "runs/koniq10k-small-replace"


def test_data_dir_is_required_but_for_the_builtin_dataset(capsys):
    with pytest.raises(SystemExit) as info:
        recipe.recipe_config(KONIQ, [])
    assert info.value.code == 2
    assert "--data-dir" in capsys.readouterr().err.splitlines()[-1]
    config, out = recipe.recipe_config(TrainConfig(), [])
    assert config.data_dir is None and out == "runs/builtin-small"


def test_bad_choice_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        recipe.recipe_config(KONIQ, ["--data-dir", "d", "--robust", "partly"])
    assert info.value.code == 2
    assert "argument --robust" in capsys.readouterr().err


def test_run_recipe_trains_and_prints_the_metrics(monkeypatch, capsys):
    calls = []

    def fake_train(config, out):
        calls.append((config, out))
        return {"test": {"srocc": 0.9}}

    monkeypatch.setattr(recipe, "train", fake_train)
    assert recipe.run_recipe(KONIQ, ["--data-dir", "d", "--out", "runs/k"]) == 0
    assert calls == [(TrainConfig(dataset="koniq10k", data_dir="d", model="resnet50",
                                  weights="imagenet", patch_size=224), "runs/k")]
    assert json.loads(capsys.readouterr().out) == {"test": {"srocc": 0.9}}


def test_run_recipe_bad_input_is_one_line(monkeypatch, capsys, tmp_path):
    missing = tmp_path / "no-such-folder"
    # The real train: the data folder is checked before any model is built.
    assert recipe.run_recipe(KONIQ, ["--data-dir", str(missing), "--out", str(tmp_path / "run")]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and ": error: " in lines[0] and str(missing) in lines[0], lines
    assert captured.out == ""


def test_recipe_runs_as_a_script():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "training/koniq10k.py", "--out", "runs/never"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=REPO_ROOT)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == \
        "koniq10k.py: error: the following arguments are required: --data-dir"
    assert not (REPO_ROOT / "runs" / "never").exists()
