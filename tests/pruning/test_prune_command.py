"""`robust-iqa prune` end to end on a tiny run, and its errors.

The run folder is made here: a small robust model (not trained: pruning does
not need it) and a synthetic CSV dataset (blurred noise textures, quality
falling with the blur), so that the whole file takes seconds.
"""

import dataclasses
import json
import re
import shutil

import keras
import numpy as np
import pytest
from PIL import Image, ImageFilter

from keras_robust_iqa import cli
from keras_robust_iqa.models import robustify, small_iqa_cnn
from keras_robust_iqa.training.trainer import TrainConfig

SIZE = 32


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune-data")
    rng = np.random.default_rng(0)
    rows = ["path,mos,split"]
    (root / "images").mkdir()
    for base in range(12):
        texture = Image.fromarray((rng.uniform(size=(SIZE, SIZE, 3)) * 255).astype("uint8"))
        split = "train" if base < 8 else ("val" if base < 10 else "test")
        for level in range(5):
            name = f"images/b{base}_l{level}.png"
            texture.filter(ImageFilter.GaussianBlur(0.6 * level)).save(root / name)
            rows.append(f"{name},{100 - 18 * level + rng.uniform(-3, 3):.2f},{split}")
    (root / "mos.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path_factory.mktemp("runs") / "robust"
    run.mkdir()
    keras.utils.set_random_seed(0)
    robustify(small_iqa_cnn(SIZE, widths=(8, 16), head_units=8), mode="replace").save(run / "model.keras")
    config = TrainConfig(dataset="csv", data_dir=str(root), model="small", robust="replace", epochs=1,
                         batch_size=8, patch_size=SIZE, patches_per_image=1)
    (run / "config.json").write_text(json.dumps(dataclasses.asdict(config)))
    return run


@pytest.fixture(scope="module")
def pruned_run(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "robust-pruned"
    code = cli.main(["prune", "--run", str(tiny_run), "--fraction", "0.4", "--prune-epochs", "1",
                     "--finetune-epochs", "1", "--out", str(out)])
    assert code == 0
    return out


def test_prune_writes_a_run_folder_and_a_report(tiny_run, pruned_run):
    for name in ("model.keras", "config.json", "metrics.json", "history.csv", "pruned/model.keras",
                 "pruning_report.json", "pruning_report.md", "pruning_report.png"):
        assert (pruned_run / name).is_file(), name
    report = json.loads((pruned_run / "pruning_report.json").read_text())
    before, after, tuned = (report["stages"][s] for s in ("before", "after_pruning", "after_finetune"))
    assert report["pruned_fraction"] >= 0.3 and report["pruned_channels"] < report["prunable_channels"]
    assert after["params"] < before["params"] and after["flops"] < before["flops"]
    assert tuned["params"] == after["params"]
    metrics = json.loads((pruned_run / "metrics.json").read_text())
    assert metrics["flops"] == tuned["flops"] and metrics["test"] == tuned["test"] and "train_seconds" in metrics
    assert after["lipschitz_bound"] <= before["lipschitz_bound"] * (1 + 1e-6)
    for stage in (before, after, tuned):
        assert -1 <= stage["test"]["srocc"] <= 1 and -1 <= stage["test"]["plcc"] <= 1
    config = json.loads((pruned_run / "config.json").read_text())
    assert config["pruning"]["fraction"] == 0.4 and config["pruning"]["schedule"]["class_name"] == "PolynomialDecay"
    assert report["criterion"] == config["pruning"]["criterion"] == "activation"  # the default
    for layer in report["layers"].values():  # every score an energy, a mean of squares
        assert 0 <= layer["score_min"] <= layer["score_max"]
    markdown = (pruned_run / "pruning_report.md").read_text()
    assert "Criterion (activation): mean squared output" in markdown
    assert "| parameters | " in markdown and "after fine-tuning" in markdown
    widths = {name: layer["channels_after"] for name, layer in report["layers"].items()}
    # round(0.4 * MaxMin pairs) of each layer: 2 of 4, 3 of 8, 2 of 4; the output stays.
    assert widths == {"conv1_ortho": 4, "conv2_ortho": 10, "fc1_ortho": 4, "quality_ortho": 1}


def test_a_distilled_run_is_pruned_and_fine_tuned_on_its_teachers_targets(tiny_run, tmp_path, monkeypatch):
    from keras_robust_iqa import data
    from keras_robust_iqa.training import trainer

    config = json.loads((tiny_run / "config.json").read_text())
    table = data.load_table("csv", config["data_dir"])
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    shutil.copytree(tiny_run, teacher)
    (teacher / "config.json").write_text(
        json.dumps(config | {"dataset_name": table.name, "mos_range": list(table.mos_range)}))
    shutil.copytree(tiny_run, student)
    (student / "config.json").write_text(json.dumps(config | {"distill_from": str(teacher), "distill_weight": 0.3}))
    seen = []
    real = trainer.distillation_targets
    monkeypatch.setattr(trainer, "distillation_targets",
                        lambda dataset, model, weight: seen.append(weight) or real(dataset, model, weight))
    out = tmp_path / "pruned"
    assert cli.main(["prune", "--run", str(student), "--fraction", "0.4", "--prune-epochs", "1",
                     "--finetune-epochs", "1", "--out", str(out)]) == 0
    assert seen == [0.3, 0.3]  # the pruning epochs and the fine-tuning learn from the same targets
    saved = json.loads((out / "config.json").read_text())
    assert (saved["distill_from"], saved["distill_weight"]) == (str(teacher), 0.3)
    assert saved["pruning"]["distill_weight"] == 0.0
    assert f"towards (1 - 0.3) MOS + 0.3 x {teacher}'s scores." in (out / "pruning_report.md").read_text()

    # --distill-weight: the fine-tuning learns from the unpruned student instead.
    seen.clear()
    (student / "config.json").write_text(
        json.dumps(config | {"distill_from": str(teacher), "distill_weight": 0.3, "dataset_name": table.name,
                             "mos_range": list(table.mos_range)}))
    out = tmp_path / "pruned-towards-student"
    assert cli.main(["prune", "--run", str(student), "--fraction", "0.4", "--prune-epochs", "0",
                     "--finetune-epochs", "1", "--distill-weight", "1", "--out", str(out)]) == 0
    # The run's own targets for the patches the criterion scores; the fine-tuning's, the student's scores.
    assert seen == [0.3, 1.0]
    saved = json.loads((out / "config.json").read_text())
    assert (saved["distill_from"], saved["distill_weight"]) == (str(student), 1.0)
    assert saved["pruning"]["distill_weight"] == 1.0
    assert "x the unpruned model's scores" in (out / "pruning_report.md").read_text()



def test_a_relu_replace_run_with_channel_gains_is_pruned_and_fine_tuned(tiny_run, tmp_path):
    # The options that built the model must not fail the fine-tuning's config validation.
    # Scored by the mean weight, the paper's criterion, while the masks close.
    config = json.loads((tiny_run / "config.json").read_text())
    run = tmp_path / "relu-gains"
    run.mkdir()
    keras.utils.set_random_seed(0)
    robustify(small_iqa_cnn(SIZE, widths=(8, 16), head_units=8), mode="replace", activation="relu",
              channel_gains=True).save(run / "model.keras")
    (run / "config.json").write_text(json.dumps(config | {"robust_activation": "relu", "robust_channel_gains": True}))
    out = tmp_path / "pruned"
    assert cli.main(["prune", "--run", str(run), "--fraction", "0.3", "--prune-epochs", "1",
                     "--finetune-epochs", "1", "--criterion", "mean_weight", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert -1 <= metrics["test"]["srocc"] <= 1 and metrics["lipschitz_bound"] > 0
    report = json.loads((out / "pruning_report.json").read_text())
    assert report["criterion"] == json.loads((out / "config.json").read_text())["pruning"]["criterion"] == "mean_weight"
    assert "Criterion (mean_weight): mean |w|" in (out / "pruning_report.md").read_text()
    model = keras.saving.load_model(out / "model.keras", safe_mode=True)
    assert any(isinstance(layer, keras.layers.ReLU) for layer in model.layers)


def test_pruned_model_reloads_safely_and_trains(pruned_run):
    model = keras.saving.load_model(pruned_run / "model.keras", safe_mode=True)
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    x = np.random.default_rng(0).uniform(size=(4, SIZE, SIZE, 3)).astype("float32")
    before = np.asarray(model(x))
    history = model.fit(x, np.full((4, 1), 0.5, "float32"), epochs=1, batch_size=4, verbose=0)
    assert np.all(np.isfinite(history.history["loss"])) and not np.allclose(np.asarray(model(x)), before)


@pytest.mark.parametrize("args,message", [
    (["--fraction", "1.0"], r"fraction must be in \[0, 1\)"),
    (["--fraction", "-0.1"], r"fraction must be in \[0, 1\)"),
    (["--tau", "1e9"], r"would remove all \d+ output channels of layer"),
    (["--tau", "-1"], "--tau must be a positive number"),
    (["--fraction", "0.3", "--finetune-epochs", "-1"], "--finetune-epochs must be an integer >= 0"),
    (["--fraction", "0.3", "--distill-weight", "1.5"], r"--distill-weight must be in \[0, 1\]"),
])
def test_bad_values_are_clear_errors(tiny_run, tmp_path, capsys, args, message):
    assert cli.main(["prune", "--run", str(tiny_run), *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robust-iqa prune: error: ")
    assert re.search(message, err), err


def test_missing_run_folder_or_model_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    assert cli.main(["prune", "--run", str(missing), "--fraction", "0.3", "--out", str(tmp_path / "o")]) == 2
    assert f"Run folder {missing} does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty-run"
    empty.mkdir()
    assert cli.main(["prune", "--run", str(empty), "--fraction", "0.3", "--out", str(tmp_path / "o")]) == 2
    assert "holds no model.keras" in capsys.readouterr().err


def test_out_must_not_be_the_run(tiny_run, capsys):
    assert cli.main(["prune", "--run", str(tiny_run), "--fraction", "0.3", "--out", str(tiny_run)]) == 2
    assert "--out must be a new run folder" in capsys.readouterr().err


def test_exactly_one_target_a_known_criterion_and_every_option_explained(capsys):
    for args in ([], ["--fraction", "0.3", "--tau", "0.01"], ["--fraction", "0.3", "--criterion", "energy"]):
        with pytest.raises(SystemExit) as info:
            cli.main(["prune", "--run", "r", "--out", "o", *args])
        assert info.value.code == 2
    assert "argument --criterion: invalid choice: 'energy'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["prune", "--help"])
    text = capsys.readouterr().out
    for option in ("--run", "--fraction", "--tau", "--criterion", "--prune-epochs", "--finetune-epochs",
                   "--learning-rate", "--distill-weight", "--out"):
        assert option in text
