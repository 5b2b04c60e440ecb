"""The accuracy-robustness frontier (`evaluation.frontier`) on hand-made reports with known answers,
its table and plots, and the redrawn `gain_vs_eps.png`."""

import argparse
import json
import math

import numpy as np
import pytest
from PIL import Image

from keras_robust_iqa import cli, evaluation
from keras_robust_iqa.evaluation import command
from keras_robust_iqa.evaluation.frontier import model_colours

EPS4 = 4 / 255


def result(attack, eps, raw, *, bound=None, bound_raw=None, norm="linf"):
    return {"attack": attack, "norm": norm, "eps": eps, "abs_gain": 10 * raw, "abs_gain_raw": raw,
            "certified_bound": bound, "certified_bound_raw": bound_raw}


def entry(srocc, raw, **bounds):
    return {"clean": {"srocc": srocc, "plcc": 0.5, "krcc": 0.4},
            "attacks": {"ifgsm@2/255": result("ifgsm", 2 / 255, raw / 2),
                        "ifgsm@4/255": result("ifgsm", EPS4, raw, **bounds),
                        "pgd_l2@1": result("pgd_l2", 1.0, raw / 3, norm="l2")}}


@pytest.fixture
def report():
    """Two seeds of base, three of replace (certified), one NT run without a seed, one run
    without the frontier's attack; the labels gain 0.05 at I-FGSM 4/255."""
    models = {
        "base-s0": entry(0.80, 0.30), "base-s1": entry(0.84, 0.20),
        "replace-seed0": entry(0.70, 0.04, bound=0.9, bound_raw=0.20),
        "replace-seed1": entry(0.72, 0.06, bound=1.1, bound_raw=0.30),
        "replace-seed2": entry(0.74, 0.08, bound=1.0, bound_raw=0.40),
        "nt": entry(0.60, 0.05),
        "fgsm-only": {"clean": {"srocc": 0.5, "plcc": 0.5, "krcc": 0.4},
                      "attacks": {"fgsm@4/255": result("fgsm", EPS4, 0.1)}},
    }
    labels = {"ifgsm@4/255": {"attack": "ifgsm", "norm": "linf", "eps": EPS4, "abs_gain_raw": 0.05},
              "ifgsm@2/255": {"attack": "ifgsm", "norm": "linf", "eps": 2 / 255, "abs_gain_raw": -0.01}}
    return {"models": models, "labels": labels}


@pytest.mark.parametrize("name, expected", [
    ("replace-s0", ("replace", 0)), ("replace-seed12", ("replace", 12)), ("base-nt1-s2", ("base-nt1", 2)),
    ("replace", ("replace", None)), ("replace-w4", ("replace-w4", None)), ("runs/a-s1", ("runs/a", 1)),
    ("-s1", ("-s1", None)),
])
def test_split_seed(name, expected):
    assert evaluation.split_seed(name) == expected


def test_frontier_groups_seeds_with_mean_std_and_ratio(report):
    frontier = evaluation.build_frontier(report, test_srocc={"base-s0": 0.90, "base-s1": 0.86, "nt": None})
    assert (frontier["attack"], frontier["norm"], frontier["key"]) == ("ifgsm", "linf", "ifgsm@4/255")
    assert frontier["eps"] == pytest.approx(EPS4) and frontier["label_gain"] == 0.05
    assert frontier["missing"] == ["fgsm-only"]
    assert list(frontier["groups"]) == ["base", "replace", "nt"]

    point = frontier["models"]["base-s0"]
    assert point == {"model": "base", "seed": 0, "srocc": 0.90, "srocc_of": "test split", "gain": 0.30,
                     "gain_to_labels": pytest.approx(6.0), "certified_bound": None, "certified_bound_scaled": None}
    # No metrics: the attacked images' clean SROCC.
    assert frontier["models"]["replace-seed1"]["srocc"] == 0.72
    assert frontier["models"]["replace-seed1"]["srocc_of"] == "attacked images"

    base = frontier["groups"]["base"]
    assert (base["runs"], base["seeds"], base["n"], base["srocc_of"]) == (["base-s0", "base-s1"], [0, 1], 2,
                                                                          "test split")
    assert base["srocc_mean"] == pytest.approx(0.88) and base["srocc_std"] == pytest.approx(0.04 / math.sqrt(2))
    assert base["gain_mean"] == pytest.approx(0.25) and base["gain_std"] == pytest.approx(0.1 / math.sqrt(2))
    assert base["gain_to_labels_mean"] == pytest.approx(5.0)
    assert base["gain_to_labels_std"] == pytest.approx(2 / math.sqrt(2))
    assert base["certified_bound_mean"] is None

    replace = frontier["groups"]["replace"]
    assert replace["seeds"] == [0, 1, 2] and replace["n"] == 3
    assert replace["srocc_mean"] == pytest.approx(0.72) and replace["srocc_std"] == pytest.approx(0.02)
    assert replace["gain_mean"] == pytest.approx(0.06) and replace["gain_std"] == pytest.approx(0.02)
    assert replace["gain_to_labels_mean"] == pytest.approx(1.2) and replace["gain_to_labels_std"] == pytest.approx(0.4)
    assert replace["certified_bound_mean"] == pytest.approx(0.30)
    assert replace["certified_bound_scaled_mean"] == pytest.approx(1.0)

    nt = frontier["groups"]["nt"]
    assert (nt["n"], nt["seeds"], nt["srocc_std"], nt["gain_std"]) == (1, [None], None, None)
    assert nt["gain_to_labels_mean"] == pytest.approx(1.0)
    json.dumps(frontier)  # goes into report.json as it is


def test_frontier_gives_no_ratio_where_the_labels_did_not_rise(report):
    frontier = evaluation.build_frontier(report, "ifgsm", 2 / 255)
    assert frontier["label_gain"] == -0.01
    assert all(point["gain_to_labels"] is None for point in frontier["models"].values())
    assert frontier["groups"]["base"]["gain_to_labels_mean"] is None
    assert frontier["groups"]["base"]["gain_mean"] == pytest.approx(0.125)
    # Without labels, and for an L2 attack at its default budget (1.0).
    del report["labels"]
    l2 = evaluation.build_frontier(report, "pgd_l2")
    assert (l2["norm"], l2["eps"], l2["key"], l2["label_gain"]) == ("l2", 1.0, "pgd_l2@1", None)
    assert l2["groups"]["nt"]["gain_mean"] == pytest.approx(0.05 / 3)


def test_frontier_table(report):
    report["frontier"] = evaluation.build_frontier(report, test_srocc={"base-s0": 0.90, "base-s1": 0.86})
    table = evaluation.markdown_table(report)
    section = table.split("## Accuracy-robustness frontier: ifgsm at 4/255")[1]
    assert "| base | 2 (0, 1) | 0.880 ± 0.028 | test split | 0.2500 ± 0.0707 | 5.00 ± 1.41 | - |" in section
    assert "| replace | 3 (0, 1, 2) | 0.720 ± 0.020 | attacked images | 0.0600 ± 0.0200 | 1.20 ± 0.40 | 0.3000 |" \
        in section
    assert "| nt | 1 | 0.600 | attacked images | 0.0500 | 1.00 | - |" in section
    assert "| labels (MS-SSIM against the pristine crop) | - | - | - | 0.0500 | 1.00 | - |" in section
    assert "no ifgsm@4/255 result): fgsm-only." in section
    # An older report has the bound MinMax-scaled only: it is marked so.
    for name in ("replace-seed0", "replace-seed1", "replace-seed2"):
        report["models"][name]["attacks"]["ifgsm@4/255"]["certified_bound_raw"] = None
    report["frontier"] = evaluation.build_frontier(report)
    assert "| 1.20 ± 0.40 | 1.0000 (scaled) |" in evaluation.markdown_table(report)
    # A report without a frontier (the demo's) has no such section.
    del report["frontier"]
    assert "frontier" not in evaluation.markdown_table(report)


def assert_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        assert width > 300 and height > 200
        return np.asarray(image.convert("RGB"))


def test_write_report_draws_the_frontier_and_one_panel_per_attack(report, tmp_path):
    report["frontier"] = evaluation.build_frontier(report)
    paths = evaluation.write_report(report, tmp_path)
    assert [p.name for p in paths] == ["report.json", "report.md", "gain_vs_eps.png", "frontier.png"]
    assert json.loads((tmp_path / "report.json").read_text())["frontier"]["groups"]["replace"]["n"] == 3
    frontier_png = assert_png(tmp_path / "frontier.png")
    gains = assert_png(tmp_path / "gain_vs_eps.png")
    # Three panels (ifgsm, pgd_l2, fgsm) side by side, the legend to their right.
    assert gains.shape[1] > 1.5 * gains.shape[0]
    assert frontier_png.std() > 0  # something was drawn
    # Without a frontier: no frontier.png.
    del report["frontier"]
    out = tmp_path / "plain"
    assert "frontier.png" not in [p.name for p in evaluation.write_report(report, out)]


def test_model_colours_are_distinct_for_many_models():
    for count in (3, 12, 27):
        colours = model_colours(f"m{i}" for i in range(count))
        assert len(colours) == count
        assert len({tuple(np.round(np.asarray(c, float)[:3], 4)) for c in colours.values()}) == count


def parse_evaluate(argv):
    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers())
    return parser.parse_args(["evaluate", "--run", "r", "--out", "o", *argv])


def test_frontier_flags():
    assert command.frontier_choice(parse_evaluate([])) is None
    assert command.frontier_choice(parse_evaluate(["--no-frontier"])) is False
    assert command.frontier_choice(parse_evaluate(["--frontier-eps", "8/255"])) == ("ifgsm", pytest.approx(8 / 255))
    assert command.frontier_choice(parse_evaluate(["--frontier-attack", "pgd_l2"])) == ("pgd_l2", None)
    with pytest.raises(ValueError, match="--no-frontier contradicts"):
        command.frontier_choice(parse_evaluate(["--no-frontier", "--frontier-attack", "fgsm"]))


@pytest.mark.parametrize("argv, message", [
    (["--frontier-eps", "4/255,8/255"], "expected one budget"),
    (["--frontier-eps", "0"], "budgets must be numbers in (0, 1]"),
])
def test_frontier_eps_is_one_budget(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_evaluate(argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--attacks", "fgsm", "--frontier-attack", "ifgsm"], "The frontier's attack ifgsm at 4/255 is not evaluated"),
    (["--attacks", "ifgsm", "--eps", "2/255", "--frontier-eps", "4/255"], "the --eps budgets 2/255"),
    (["--attacks", "pgd_l2", "--l2-eps", "0.5", "--frontier-attack", "pgd_l2"], "the --l2-eps budgets 0.5"),
])
def test_a_frontier_asked_for_must_be_evaluated(argv, message, tmp_path, capsys):
    # Refused before any run folder is read.
    assert cli.main(["evaluate", "--run", str(tmp_path / "none"), *argv, "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
