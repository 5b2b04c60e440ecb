"""The `robust-iqa` command line: help, options, errors, and one real training run.

Most checks call `cli.main` in this process (fast); the console script and
`python -m keras_robust_iqa.cli` run in subprocesses where exit codes and stderr matter.
The end-to-end run trains on the built-in images built at 64 px (a few seconds), read as
a CSV dataset from their folder: the `builtin` dataset name always reads the 256-px build
(see tests/training/test_trainer.py for the `builtin` reader through `train`).
"""

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from keras_robust_iqa import cli
from keras_robust_iqa import data as iqa_data
from keras_robust_iqa.models import MODEL_NAMES, SMOOTH_ACTIVATIONS
from keras_robust_iqa.training import trainer
from keras_robust_iqa.training.defenses import DEFENSES
from keras_robust_iqa.training.trainer import (
    LOSSES,
    OUTPUT_SCALES,
    ROBUST_ACTIVATIONS,
    ROBUST_CONVOLUTIONS,
    ROBUST_MODES,
    ROBUST_POOLINGS,
    STRATEGIES,
    TrainConfig,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = Path(sys.executable).parent / "robust-iqa"
# TensorFlow's native start-up lines (absl, cudart stub) reach stderr before
# TF_CPP_MIN_LOG_LEVEL is read; they are not the command's output.
TF_NOISE = re.compile(r"^(WARNING: All log messages before absl|[IWEF]\d{4} |To enable the following)")


def run(*args, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TF_CONFIG", None)
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO_ROOT)
    proc.err_lines = [line for line in proc.stderr.splitlines() if not TF_NOISE.match(line)]
    return proc


def option(name):
    return "--" + name.replace("_", "-")


# ----------------------------------------------------------------------------
# Help
# ----------------------------------------------------------------------------


@pytest.mark.skipif(not CONSOLE_SCRIPT.exists(), reason="package not installed in this venv")
def test_console_script_help():
    proc = run(CONSOLE_SCRIPT, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: robust-iqa")
    assert "train" in proc.stdout and "demo" in proc.stdout


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "usage: robust-iqa" in capsys.readouterr().out


def test_train_help_mentions_every_option(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for field in dataclasses.fields(TrainConfig):
        assert option(field.name) in text, field.name
    assert "--out" in text
    for choices in (MODEL_NAMES, ROBUST_MODES, tuple(LOSSES), STRATEGIES, tuple(iqa_data.READERS)):
        for choice in choices:
            assert choice in text, choice


def test_option_choices_follow_the_library():
    commands = next(a for a in cli.build_parser()._actions
                    if isinstance(a, argparse._SubParsersAction))
    train = commands.choices["train"]
    choices = {a.dest: tuple(a.choices) for a in train._actions if a.choices}
    assert choices["model"] == MODEL_NAMES
    # An option that defaults to none takes `none` too (as --augment always has).
    assert choices["robust"] == ("none", *ROBUST_MODES)
    assert choices["defense"] == ("none", *DEFENSES)
    assert choices["robust_activation"] == ROBUST_ACTIVATIONS
    assert choices["robust_conv"] == ROBUST_CONVOLUTIONS
    assert choices["robust_pooling"] == ROBUST_POOLINGS
    assert choices["loss"] == tuple(LOSSES)
    assert choices["strategy"] == STRATEGIES
    assert choices["dataset"] == tuple(iqa_data.READERS)
    assert choices["augment"] == ("none", *iqa_data.AUGMENTATIONS[1:])
    assert choices["output_scale"] == OUTPUT_SCALES
    assert choices["model_activation"] == ("none", *SMOOTH_ACTIVATIONS)


def test_every_option_reaches_the_config(monkeypatch, capsys, tmp_path):
    calls = []

    def fake_train(config, out):
        calls.append((config, out))
        return {"test": {"srocc": 0.5}}

    monkeypatch.setattr(trainer, "train", fake_train)
    expected = TrainConfig(
        dataset="csv", data_dir="data/mine", model="resnet50", width=2.0, model_activation="gelu", robust="insert",
        robust_conv=next(c for c in ROBUST_CONVOLUTIONS if c != TrainConfig.robust_conv), robust_activation="relu",
        robust_pooling="invertible", robust_channel_gains=True, robust_bottleneck=16, output_scale="fixed",
        weights="imagenet", init_from="runs/base", distill_from="runs/teacher", distill_weight=0.25,
        epochs=3, batch_size=7, patch_size=48,
        patches_per_image=2, augment="dihedral", fresh_distortions=True,
        learning_rate=0.01, lr_schedule="constant", ema=0.9, loss="plcc",
        patience=2, seed=5,
        strategy="mirrored", defense="nt", defense_eps=8 / 255, nt_lambda=0.01, nt_h=0.001,
    )
    default = TrainConfig()
    argv = ["train", "--out", str(tmp_path / "run")]
    for field in dataclasses.fields(TrainConfig):
        value = getattr(expected, field.name)
        assert value != getattr(default, field.name), field.name  # every option is exercised
        argv += [option(field.name)] if value is True else [option(field.name), str(value)]
    assert cli.main(argv) == 0
    assert calls == [(expected, str(tmp_path / "run"))]
    assert json.loads(capsys.readouterr().out) == {"test": {"srocc": 0.5}}


def test_none_selects_no_robust_mode_defense_or_augmentation(monkeypatch, capsys, tmp_path):
    calls = []
    monkeypatch.setattr(trainer, "train", lambda config, out: calls.append(config) or {})
    argv = ["train", "--out", str(tmp_path / "run"), "--robust", "none", "--defense", "none", "--augment", "none"]
    assert cli.main(argv) == 0
    assert calls == [TrainConfig()]
    # A config built in Python gets the same choices checked, the error naming the flag.
    with pytest.raises(ValueError, match=r"^--robust must be one of \('insert', 'replace'\) or none, got 'none'"):
        TrainConfig(robust="none").validate()


# ----------------------------------------------------------------------------
# Errors: exit code 2 and one line naming the option, no traceback
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--epochs", "0"], "--epochs"),
        (["--batch-size", "-1"], "--batch-size"),
        (["--patches-per-image", "0"], "--patches-per-image"),
        (["--learning-rate", "-0.1"], "--learning-rate"),
        (["--learning-rate", "nan"], "--learning-rate"),
        (["--defense-eps", "0"], "--defense-eps"),
        (["--defense-eps", "300/255"], "--defense-eps"),
        (["--defense-eps", "nan"], "--defense-eps"),
        (["--nt-lambda", "-0.1"], "--nt-lambda"),
        (["--nt-lambda", "inf"], "--nt-lambda"),
        (["--nt-h", "0"], "--nt-h"),
        (["--nt-h", "nan"], "--nt-h"),
    ],
)
def test_bad_value_is_one_line_naming_the_option(args, flag, capsys, tmp_path):
    assert cli.main(["train", *args, "--out", str(tmp_path / "run")]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"robust-iqa train: error: {flag} "), lines
    assert captured.out == ""
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--model", "vgg16"], "--model"),
        (["--robust", "partly"], "--robust"),
        (["--loss", "huber"], "--loss"),
        (["--strategy", "tpu"], "--strategy"),
        (["--dataset", "imagenet"], "--dataset"),
        (["--epochs", "two"], "--epochs"),
        (["--learning-rate", "fast"], "--learning-rate"),
        (["--defense", "pgd"], "--defense"),
        (["--defense-eps", "4/0"], "--defense-eps"),
        (["--defense-eps", "four"], "--defense-eps"),
        (["--nt-lambda", "big"], "--nt-lambda"),
    ],
)
def test_bad_choice_or_type_is_an_argparse_error(args, flag, capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", *args, "--out", str(tmp_path / "run")])
    assert info.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith(f"robust-iqa train: error: argument {flag}: "), last


def test_csv_without_data_dir_is_a_clear_error(capsys, tmp_path):
    assert cli.main(["train", "--dataset", "csv", "--out", str(tmp_path / "run")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("robust-iqa train: error: ") and "csv" in lines[0]
    assert re.search(r"data[_-]dir", lines[0]) and "mos.csv" in lines[0]


def test_csv_with_a_missing_data_dir_is_a_clear_error(capsys, tmp_path):
    missing = tmp_path / "no-such-dataset"
    argv = ["train", "--dataset", "csv", "--data-dir", str(missing), "--out", str(tmp_path / "run")]
    assert cli.main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("robust-iqa train: error: ") and str(missing) in lines[0]
    assert "not found" in lines[0]


@pytest.mark.skipif(not CONSOLE_SCRIPT.exists(), reason="package not installed in this venv")
def test_console_script_exit_code_on_a_bad_value(tmp_path):
    proc = run(CONSOLE_SCRIPT, "train", "--learning-rate", "-1", "--out", tmp_path / "run")
    assert proc.returncode == 2
    assert proc.err_lines == ["robust-iqa train: error: --learning-rate must be positive, got -1.0."]
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------
# A real run
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_builtin_folder(tmp_path_factory):
    """The built-in dataset at 64 px: its folder holds `mos.csv` and `images/`."""
    from keras_robust_iqa.data.builtin import ensure_builtin

    return ensure_builtin(tmp_path_factory.mktemp("builtin-cache"), seed=0, size=64)


@pytest.mark.slow
def test_python_m_cli_trains_a_run_folder(small_builtin_folder, tmp_path):
    out = tmp_path / "runs" / "cli"
    proc = run(sys.executable, "-m", "keras_robust_iqa.cli", "train",
               "--dataset", "csv", "--data-dir", small_builtin_folder,
               "--patch-size", "32", "--epochs", "1", "--batch-size", "32",
               "--patches-per-image", "1", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert {p.name for p in out.iterdir()} == {"model.keras", "config.json", "metrics.json",
                                               "history.csv"}
    metrics = json.loads((out / "metrics.json").read_text())
    # The command prints the metrics it wrote (after the Keras progress output).
    printed = proc.stdout[proc.stdout.index("{\n"):]
    assert json.loads(printed) == metrics
    for split in ("test", "val"):
        for name in ("srocc", "plcc", "krcc"):
            assert -1.0 <= metrics[split][name] <= 1.0
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == "csv" and config["data_dir"] == str(small_builtin_folder)
    assert config["patch_size"] == 32 and config["epochs"] == 1
    assert config["dataset_name"] == "mos"  # the CSV file's stem
