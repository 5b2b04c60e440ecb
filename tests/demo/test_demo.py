import json

import pytest

from keras_robust_iqa import cli, demo


def test_settings_are_claimed_and_a_mismatch_is_refused(tmp_path):
    demo._claim(tmp_path, demo.DemoSettings())
    demo._claim(tmp_path, demo.DemoSettings())  # the same settings: a re-run reuses the folder
    with pytest.raises(ValueError, match=r"other settings \(different: attacks, epochs"):
        demo._claim(tmp_path, demo.DemoSettings.quick())
    assert json.loads((tmp_path / "demo_settings.json").read_text())["epochs"] == demo.DemoSettings().epochs


def test_training_runs_cover_the_pipeline():
    runs = demo.training_runs(demo.DemoSettings(epochs=3, robust_epochs=5))
    assert list(runs) == ["base", "insert", "replace", "nt", "adversarial"]
    assert runs["insert"].init_from == "base" and runs["insert"].robust == "insert"
    assert runs["replace"].robust == "replace" and runs["replace"].init_from is None
    assert (runs["nt"].defense, runs["adversarial"].defense) == ("nt", "adversarial")
    assert runs["base"].epochs == 3 and runs["replace"].epochs == 5
    assert runs["insert"].epochs == 1 and runs["nt"].epochs == runs["adversarial"].epochs == 1
    runs = demo.training_runs(demo.DemoSettings())
    assert [runs[name].epochs for name in runs] == [12, 4, 12, 6, 6]
    assert all(config.patience == config.epochs for config in runs.values())  # no early stop
    runs = demo.training_runs(demo.DemoSettings(epochs=3, robust_epochs=5))
    replace = runs["replace"]
    recipe = (replace.robust_conv, replace.robust_activation, replace.loss, replace.width)
    assert recipe == ("block", "relu", "mse", 2.0)
    assert all(config.width == 1 for name, config in runs.items() if name != "replace")
    for config in runs.values():
        config.validate()


def test_summary_table_reads_the_attack_at_its_budget():
    attacks = {"ifgsm@2/255": {"attack": "ifgsm", "eps": 2 / 255, "abs_gain": 0.5, "abs_gain_raw": 0.05,
                               "certified_bound": None},
               "ifgsm@4/255": {"attack": "ifgsm", "eps": 4 / 255, "abs_gain": 0.25, "abs_gain_raw": 0.025,
                               "certified_bound": 0.75}}
    report = {"models": {"replace": {"params": 1234, "test": {"srocc": 0.9, "plcc": 0.8},
                                     "lipschitz_bound": 0.125, "attacks": attacks}}}
    row = demo.summary_table(report).splitlines()[-1]
    assert row == "| replace | 1,234 | 0.900 | 0.800 | 0.125 | 0.025 | 0.25 | 0.75 |"
    # The built-in labels' own gain at the same attack and budget closes the table.
    report["labels"] = {"ifgsm@2/255": {"attack": "ifgsm", "eps": 2 / 255, "abs_gain_raw": 0.5},
                        "ifgsm@4/255": {"attack": "ifgsm", "eps": 4 / 255, "abs_gain_raw": 0.0625}}
    row = demo.summary_table(report).splitlines()[-1]
    assert row == "| labels (MS-SSIM against the pristine crop) | - | - | - | - | 0.0625 | - | - |"


def _model(srocc, gain=None, within=None, over=None, params=1000):
    attacks = {} if gain is None else {"ifgsm@4/255": {"attack": "ifgsm", "eps": 4 / 255, "abs_gain_raw": gain,
                                                       "within_certified_bound": within, "max_gain_over_bound": over}}
    return {"test": {"srocc": srocc}, "attacks": attacks, "params": params}


def test_floor_checks_say_what_was_measured_and_whether_it_holds():
    report = {"models": {"base": _model(0.8, 0.3), "replace": _model(0.76, 0.05, True, 0.25),
                         "replace-pruned": _model(0.745, 0.06, True, 0.5, params=700)}}
    srocc, gain, bound, pruned = demo.floor_checks(report)
    assert srocc["measured"] == pytest.approx(0.95) and srocc["met"] is True
    assert gain["measured"] == pytest.approx(6.0) and gain["met"] is True
    assert bound["measured"] == 0.5 and bound["met"] is True and bound["values"]["rows"] == 2
    assert pruned["measured"] == pytest.approx(0.015) and pruned["met"] is True
    text = demo.checks_text([srocc, gain, bound, pruned])
    assert "`replace` test SROCC 0.760 is 0.95x the base's 0.800 (floor: 0.9x): **met**" in text
    assert "ifgsm 4/255 gain: base 0.3, `replace` 0.05, 6x lower (floor: 3x): **met**" in text
    assert ("`replace-pruned` test SROCC 0.745 is 0.015 below `replace`'s 0.760 (floor: within 0.02) with "
            "30 % fewer parameters (floor: 25 %): **met**") in text
    # Pruning that costs more than 0.02, or removes too little, misses the floor.
    for srocc_after, params in ((0.73, 700), (0.755, 800)):
        report["models"]["replace-pruned"] = _model(srocc_after, params=params)
        assert demo.floor_checks(report)[3]["met"] is False

    # Below a floor, and an image outside its bound, are said so.
    report["models"]["replace"] = _model(0.6, 0.2, False, 1.5)
    srocc, gain, bound, _ = demo.floor_checks(report)
    assert (srocc["met"], gain["met"], bound["met"]) == (False, False, False)
    assert bound["values"]["outside"] == ["replace ifgsm@4/255"]
    assert demo.checks_text([bound]).endswith("outside: replace ifgsm@4/255: **not met**")

    # An attack the demo did not run is not measured rather than passed.
    report["models"] = {"base": _model(0.8), "replace": _model(0.76)}
    srocc, gain, bound = demo.floor_checks(report)
    assert gain["met"] is None and bound["met"] is None
    assert demo.checks_text([gain]).endswith(": not measured")


@pytest.mark.parametrize("flag", ["--epochs", "--robust-epochs", "--eval-images", "--finetune-epochs"])
def test_bad_flags_are_named(flag, capsys, tmp_path):
    assert cli.main(["demo", "--out", str(tmp_path), flag, "0"]) == 2
    assert f"{flag} must be at least 1, got 0" in capsys.readouterr().err


def test_replace_width_must_be_positive(capsys, tmp_path):
    assert cli.main(["demo", "--out", str(tmp_path), "--replace-width", "0"]) == 2
    assert "--replace-width must be a positive multiplier, got 0.0" in capsys.readouterr().err


def test_attacks_flag_takes_names_or_all_and_refuses_unknown_names():
    from keras_robust_iqa.attacks import ATTACKS

    assert demo.parse_attacks("ifgsm, square") == ("ifgsm", "square")
    assert demo.parse_attacks("all") == tuple(ATTACKS)
    with pytest.raises(ValueError, match=r"--attacks: unknown attack\(s\) \['ifsgm'\]"):
        demo.parse_attacks("ifsgm,uap")
    assert demo.parse_attacks("all", "--strength", among=("uap", "facpa")) == ("uap", "facpa")
    with pytest.raises(ValueError, match=r"--strength: unknown attack\(s\) \['square'\]"):
        demo.parse_attacks("uap,square", "--strength", among=demo.DemoSettings().attacks)


def test_scale_flags_reach_every_training_run():
    settings = demo.DemoSettings(model="resnet50", weights="imagenet", patch_size=224)
    for config in demo.training_runs(settings).values():
        assert (config.model, config.weights, config.patch_size) == ("resnet50", "imagenet", 224)
        assert config.width == 1  # the backbones keep their published widths
        config.validate()


def _tiny_csv_dataset(folder):
    """18 real built-in images shrunk to 48x48, split by source photograph, as a generic CSV."""
    import numpy as np
    from PIL import Image

    from keras_robust_iqa import data

    table = data.load_table("builtin")
    folder.mkdir()
    lines = ["path,mos,split,ref"]
    for split, count in (("train", 10), ("val", 4), ("test", 4)):
        rows = np.flatnonzero(table.splits == split)
        for i in rows[np.linspace(0, len(rows) - 1, count).astype(int)]:
            name = f"{split}{i}.png"
            Image.open(table.absolute_path(i)).convert("RGB").resize((48, 48)).save(folder / name)
            lines.append(f"{name},{table.mos[i]:.3f},{split},{table.refs[i]}")
    (folder / "mos.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_demo_runs_every_stage_resumes_after_an_interruption_and_reports_what_it_measured(tmp_path, monkeypatch):
    import keras_robust_iqa.evaluation as evaluation

    dataset = _tiny_csv_dataset(tmp_path / "data")
    out = tmp_path / "demo"
    settings = demo.DemoSettings(dataset="csv", data_dir=str(dataset), patch_size=32, epochs=1,
                                 robust_epochs=1, patches_per_image=1, finetune_epochs=1,
                                 attacks=("fgsm", "transfer"), eval_images=2)

    real_evaluate = evaluation.evaluate_runs

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C in the evaluate stage

    monkeypatch.setattr(evaluation, "evaluate_runs", interrupted)
    with pytest.raises(KeyboardInterrupt):
        demo.run(out, settings, verbose=0)
    trained = {name: (out / name / "model.keras").stat().st_mtime_ns
               for name in ("base", "insert", "replace", "nt", "adversarial", "replace-pruned")}
    recorded = json.loads((out / "stage_seconds.json").read_text())
    assert set(recorded) == {"data", "base", "robust", "baselines", "prune"}
    assert not (out / "report.json").exists()

    monkeypatch.setattr(evaluation, "evaluate_runs", real_evaluate)
    report = demo.run(out, settings, verbose=0)

    # The finished stages were reused, not redone, and keep the times they took.
    assert {name: (out / name / "model.keras").stat().st_mtime_ns for name in trained} == trained
    assert all(report["stage_seconds"][stage] == recorded[stage] for stage in recorded if stage != "data")
    assert set(report["stage_seconds"]) == {"data", "base", "robust", "baselines", "prune", "evaluate", "export"}
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))

    # Every figure of the report is the one a stage wrote.
    evaluated = json.loads((out / "evaluation" / "report.json").read_text())["models"]
    assert list(report["models"]) == list(trained)
    for name, entry in report["models"].items():
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert entry["test"] == metrics["test"] and entry["params"] == metrics["params"]
        assert entry["attacks"] == evaluated[name]["attacks"]
        assert set(entry["attacks"]) == {f"{a}@{e}/255" for a in ("fgsm", "transfer") for e in (4, 8)}
    assert report["models"]["replace"]["lipschitz_bound"] > 0 and report["models"]["base"]["lipschitz_bound"] is None
    assert report["models"]["replace-pruned"]["params"] < report["models"]["replace"]["params"]
    assert report["models"]["replace"]["conv"] == "block"
    assert [c["met"] for c in report["checks"]][1] is None  # I-FGSM did not run
    pruning = report["checks"][3]  # measured from the two run folders, whether met or not
    assert pruning["values"]["replace-pruned"] == report["models"]["replace-pruned"]["test"]["srocc"]
    assert pruning["values"]["fewer_params"] == pytest.approx(
        1 - report["models"]["replace-pruned"]["params"] / report["models"]["replace"]["params"])
    assert "## Checks" in (out / "report.md").read_text()
    for row in ("| base |", "| replace-pruned |"):
        assert row in (out / "report.md").read_text()
    assert report["labels"] is None  # a CSV set's labels are data, not a function to attack
    assert "The labels' own gain" not in (out / "report.md").read_text()
    for png in ("gain_vs_eps.png", "clean_vs_attacked.png", "attack_examples.png"):  # base and replace attacked
        assert (out / png).stat().st_size > 0
    assert {path.suffix for path in (out / "export").rglob("*") if path.is_file()} >= {".pb", ".tflite", ".onnx"}
