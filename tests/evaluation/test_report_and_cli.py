"""`evaluate_model`, the report files, and `robust-iqa evaluate` end to end and on bad input."""

import json
import shutil

import keras
import numpy as np
import pytest

from keras_robust_iqa import cli, data, evaluation
from keras_robust_iqa.models import build_model, robustify

ATTACK_FIELDS = {"eps", "abs_gain", "rel_gain", "robustness_score", "srocc", "plcc", "certified_bound"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two run folders (untrained base and replace models, patch 32) on the built-in dataset."""
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("runs")
    base = build_model("small", patch_size=32)
    folders = []
    for name, model in (("base", base), ("replace", robustify(base, mode="replace"))):
        folder = root / name
        folder.mkdir()
        model.save(folder / "model.keras")
        (folder / "config.json").write_text(json.dumps({"dataset": "builtin", "data_dir": None, "patch_size": 32}))
        folders.append(str(folder))
    return folders


def test_evaluate_command_writes_the_report(runs, tmp_path, capsys):
    out = tmp_path / "report"
    code = cli.main(["evaluate", "--run", runs[0], "--run", runs[1], "--attacks", "fgsm,transfer",
                     "--eps", "2/255,4/255", "--images", "2", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report) == {"models"} and set(report["models"]) == {"base", "replace"}
    for name, entry in report["models"].items():
        # The built-in set records distortion types; 2 images are too few for any type's correlation.
        assert set(entry["clean"]) == {"srocc", "plcc", "krcc", "by_distortion"}
        assert entry["clean"]["by_distortion"] == {}
        assert entry["params"] > 0
        assert set(entry["attacks"]) == {"fgsm@2/255", "fgsm@4/255", "transfer@2/255", "transfer@4/255"}
        for result in entry["attacks"].values():
            assert ATTACK_FIELDS <= set(result)
            low, high = result["robustness_score_ci95"]
            assert low <= result["robustness_score"] <= high
    base, replace = report["models"]["base"], report["models"]["replace"]
    assert base["lipschitz_bound"] is None and base["attacks"]["fgsm@4/255"]["certified_bound"] is None
    assert replace["lipschitz_bound"] > 0
    for result in replace["attacks"].values():
        assert result["within_certified_bound"] is True
        assert result["abs_gain"] <= result["certified_bound"] * (1 + 1e-5)
        # The same bound on the scale of abs_gain_raw (the model's output units).
        assert result["certified_bound_raw"] / result["certified_bound"] == pytest.approx(
            result["abs_gain_raw"] / result["abs_gain"])
    assert base["attacks"]["fgsm@4/255"]["certified_bound_raw"] is None
    # Twice the budget, twice the certified bound.
    assert replace["attacks"]["fgsm@4/255"]["certified_bound"] == pytest.approx(
        2 * replace["attacks"]["fgsm@2/255"]["certified_bound"])
    assert all("strength_ratio" not in result for entry in report["models"].values()
               for result in entry["attacks"].values())  # no --strength: no second, longer run
    table = (out / "report.md").read_text()
    assert "| replace | fgsm | 4/255 |" in table and "| base | clean |" in table
    for png in ("gain_vs_eps.png", "clean_vs_attacked.png", "attack_examples.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_command_reports_the_labels_own_gain(runs, tmp_path):
    out = tmp_path / "report"
    code = cli.main(["evaluate", "--run", runs[0], "--attacks", "ifgsm,uap,pgd_l2", "--eps", "4/255",
                     "--l2-eps", "0.5", "--images", "3", "--train-images", "2", "--learn-seconds", "0.1",
                     "--label-gain", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    labels = report["labels"]
    assert set(labels) == {"ifgsm@4/255", "pgd_l2@0.5"}  # a UAP learns on training images: not on labels
    expected = evaluation.label_gain(data.load_table("builtin"), "test", attack="ifgsm", eps=4 / 255, images=3)
    assert labels["ifgsm@4/255"]["images"] == 3
    assert labels["ifgsm@4/255"]["abs_gain_raw"] == pytest.approx(expected["abs_gain"], abs=1e-6)
    assert labels["ifgsm@4/255"]["abs_gain_raw"] > 0
    base = report["models"]["base"]["attacks"]["ifgsm@4/255"]["abs_gain_raw"]
    ratio = base / labels["ifgsm@4/255"]["abs_gain_raw"]
    table = (out / "report.md").read_text()
    assert "## The labels' own gain" in table
    assert f"| ifgsm | 4/255 | {labels['ifgsm@4/255']['abs_gain_raw']:.4g} | {base:.4g} ({ratio:.4g}x) |" in table


def test_label_gain_needs_a_run_on_the_builtin_dataset(runs, tmp_path):
    run = tmp_path / "csv-run"
    run.mkdir()
    shutil.copy(f"{runs[0]}/model.keras", run / "model.keras")
    (run / "config.json").write_text(json.dumps({"dataset": "csv", "data_dir": "x.csv", "patch_size": 32}))
    with pytest.raises(ValueError, match="--label-gain attacks the labels of the built-in dataset"):
        evaluation.evaluate_runs([str(run)], tmp_path / "out", attacks=["fgsm"], label_gain=True, verbose=0)


def test_evaluate_model_by_distortion_type(runs):
    base = keras.saving.load_model(runs[0] + "/model.keras", safe_mode=True)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (9, 64, 64, 3)).astype("float32")
    mos = np.linspace(0.1, 0.9, 9)
    kinds = np.array(["noise", "blur", "jpeg"] * 3)
    entry, details = evaluation.evaluate_model(base, images, mos, attacks=["fgsm"], distortions=kinds,
                                               verbose=0)
    clean, attacked = details["fgsm@4/255"]
    by_type = entry["clean"]["by_distortion"]
    assert list(by_type) == ["blur", "jpeg", "noise"] and all(g["images"] == 3 for g in by_type.values())
    from keras_robust_iqa.training import correlations_by_distortion

    expected = correlations_by_distortion(clean, mos, kinds)  # MinMax scaling keeps ranks and r
    for kind, group in by_type.items():
        assert group == pytest.approx(expected[kind], abs=1e-12)
    result = entry["attacks"]["fgsm@4/255"]
    gains = result["abs_gain_by_distortion"]
    assert gains["jpeg"] == pytest.approx(np.mean((attacked - clean)[kinds == "jpeg"]))
    assert np.mean(list(gains.values())) == pytest.approx(result["abs_gain"])  # equal-sized groups
    table = evaluation.markdown_table({"models": {"base": entry}})
    assert "## Clean SROCC by distortion type" in table
    assert f"| jpeg | 3 | {by_type['jpeg']['srocc']:.4g} |" in table
    with pytest.raises(ValueError, match="distortions has 8 entries for 9 images"):
        evaluation.evaluate_model(base, images, mos, attacks=["fgsm"], distortions=kinds[:8], verbose=0)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--run", "missing-run-folder"], "missing-run-folder"),
        (["--attacks", "nope"], "nope"),
        (["--attacks", "transfer"], "transfer"),
        (["--images", "0"], "images"),
    ],
)
def test_evaluate_command_names_bad_input(runs, tmp_path, capsys, argv, message):
    argv = argv if argv[0] == "--run" else ["--run", runs[0], *argv]
    assert cli.main(["evaluate", *argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_evaluate_command_rejects_a_bad_budget(runs, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--run", runs[0], "--eps", "0", "--out", str(tmp_path)])
    assert "budgets must be numbers in (0, 1]" in capsys.readouterr().err


def test_label_table_gives_ratios_only_where_the_labels_rose():
    def result(eps, gain):
        return {"attack": "fgsm", "norm": "linf", "eps": eps, "abs_gain_raw": gain}

    report = {
        "models": {"m": {"clean": {"srocc": 0.9, "plcc": 0.9, "krcc": 0.8},
                         "attacks": {"fgsm@4/255": result(4 / 255, 0.1), "fgsm@8/255": result(8 / 255, 0.2)}}},
        "labels": {"fgsm@4/255": result(4 / 255, 0.05), "fgsm@8/255": result(8 / 255, -0.01)},
    }
    table = evaluation.markdown_table(report)
    assert "| fgsm | 4/255 | 0.05 | 0.1 (2x) |" in table
    assert "| fgsm | 8/255 | -0.01 | 0.2 |" in table  # one FGSM step overshot: no ratio to a fall


def test_evaluate_command_writes_the_frontier(runs, tmp_path):
    """Two seeds of one model (one with a metrics.json): the frontier at I-FGSM 4/255 by default,
    the seeds grouped (the frontier's math and plots: test_frontier.py)."""
    seeds = []
    for seed, srocc in ((0, 0.5), (1, None)):
        folder = tmp_path / f"base-s{seed}"
        shutil.copytree(runs[0], folder)
        if srocc is not None:
            (folder / "metrics.json").write_text(json.dumps({"test": {"srocc": srocc}}))
        seeds.append(str(folder))
    out = tmp_path / "report"
    assert cli.main(["evaluate", *(arg for s in seeds for arg in ("--run", s)), "--attacks", "ifgsm",
                     "--eps", "4/255", "--images", "2", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report) == {"models", "frontier"}
    frontier = report["frontier"]
    assert frontier["key"] == "ifgsm@4/255" and frontier["label_gain"] is None
    assert list(frontier["groups"]) == ["base"]
    base = frontier["groups"]["base"]
    assert base["n"] == 2 and base["seeds"] == [0, 1] and base["srocc_of"] == "mixed"
    assert frontier["models"]["base-s0"]["srocc"] == 0.5  # its run's test SROCC
    assert frontier["models"]["base-s1"]["srocc"] == report["models"]["base-s1"]["clean"]["srocc"]
    gains = [report["models"][name]["attacks"]["ifgsm@4/255"]["abs_gain_raw"] for name in ("base-s0", "base-s1")]
    assert base["gain_mean"] == pytest.approx(np.mean(gains)) and base["gain_to_labels_mean"] is None
    assert "## Accuracy-robustness frontier: ifgsm at 4/255" in (out / "report.md").read_text()
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --no-frontier: none.
    assert cli.main(["evaluate", "--run", seeds[0], "--attacks", "ifgsm", "--eps", "4/255", "--images", "2",
                     "--no-frontier", "--out", str(tmp_path / "plain")]) == 0
    assert "frontier" not in json.loads((tmp_path / "plain" / "report.json").read_text())
    assert not (tmp_path / "plain" / "frontier.png").exists()
