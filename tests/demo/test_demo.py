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
    for config in runs.values():
        config.validate()


def test_summary_table_reads_the_attack_at_its_budget():
    attacks = {"ifgsm@2/255": {"attack": "ifgsm", "eps": 2 / 255, "abs_gain": 0.5, "certified_bound": None},
               "ifgsm@4/255": {"attack": "ifgsm", "eps": 4 / 255, "abs_gain": 0.25, "certified_bound": 0.75}}
    report = {"models": {"replace": {"params": 1234, "test": {"srocc": 0.9, "plcc": 0.8},
                                     "lipschitz_bound": 0.125, "attacks": attacks}}}
    row = demo.summary_table(report).splitlines()[-1]
    assert row == "| replace | 1,234 | 0.900 | 0.800 | 0.125 | 0.25 | 0.75 |"


@pytest.mark.parametrize("flag", ["--epochs", "--robust-epochs", "--eval-images", "--finetune-epochs"])
def test_bad_flags_are_named(flag, capsys, tmp_path):
    assert cli.main(["demo", "--out", str(tmp_path), flag, "0"]) == 2
    assert f"{flag} must be at least 1, got 0" in capsys.readouterr().err


def test_attacks_flag_takes_names_or_all_and_refuses_unknown_names():
    from keras_robust_iqa.attacks import ATTACKS

    assert demo.parse_attacks("ifgsm, square") == ("ifgsm", "square")
    assert demo.parse_attacks("all") == tuple(ATTACKS)
    with pytest.raises(ValueError, match=r"--attacks: unknown attack\(s\) \['ifsgm'\]"):
        demo.parse_attacks("ifsgm,uap")


def test_scale_flags_reach_every_training_run():
    settings = demo.DemoSettings(model="resnet50", weights="imagenet", patch_size=224)
    for config in demo.training_runs(settings).values():
        assert (config.model, config.weights, config.patch_size) == ("resnet50", "imagenet", 224)
