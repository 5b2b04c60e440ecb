"""`training/frontier.py`: the models of the comparison, the equal-time plan, and `--quick` end to end."""

import importlib.util
import json
import types
from pathlib import Path

import numpy as np
import pytest
from helpers import BUILTIN_SIZE

from keras_robust_iqa import data
from keras_robust_iqa.data.builtin import pristine_path

REPO_ROOT = Path(__file__).resolve().parents[2]
# The end-to-end test trains on every pristine crop and one distorted image in this many.
KEEP_EVERY = 10


@pytest.fixture(scope="module")
def recipe():
    """The recipe as a module (its functions can then be patched)."""
    spec = importlib.util.spec_from_file_location("frontier_recipe", REPO_ROOT / "training" / "frontier.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def small_builtin(builtin_cache, monkeypatch):
    """`data.load_table("builtin", cache)`: the suite's 64-px build, thinned (the same photographs,
    splits and labels; every pristine crop, for the labels' own gain)."""
    load_table = data.load_table

    def small(name, data_dir=None, **kwargs):
        table = load_table(name, data_dir, **{"size": BUILTIN_SIZE, **kwargs})
        keep = [pristine_path(path) == path or i % KEEP_EVERY == 0 for i, path in enumerate(table.paths)]
        return table._select(np.asarray(keep))

    monkeypatch.setattr(data, "load_table", small)
    return builtin_cache


def test_the_models_of_the_comparison(recipe):
    models = recipe.model_overrides()
    assert list(models) == ["base", "base-nt1", "base-nt3", "base-nt10", "base-adv", "replace-w1", "replace-w2",
                            "replace-w4", "replace-nt", "sll", "insert-b16", "paper"]
    configs = {name: recipe.model_config(overrides, seed=2, epochs=5) for name, overrides in models.items()}
    base = configs["base"]
    assert base == recipe.model_config({}, seed=2, epochs=5)
    assert (base.model, base.loss, base.patches_per_image, base.robust, base.defense) == \
        ("small", "plcc", 16, None, None)
    assert all(config.seed == 2 and config.epochs == 5 and config.patience == 5 for config in configs.values())
    assert [configs[f"base-nt{lam}"].nt_lambda for lam in (1, 3, 10)] == [1.0, 3.0, 10.0]
    assert configs["base-adv"].defense == "adversarial"
    for name in ("replace-w1", "replace-w2", "replace-w4", "replace-nt"):
        config = configs[name]
        assert (config.robust, config.robust_conv, config.robust_activation, config.loss, config.learning_rate) == \
            ("replace", "block", "relu", "mse", 3e-3)
    assert [configs[f"replace-w{w}"].width for w in (1, 2, 4)] == [1.0, 2.0, 4.0]
    assert (configs["replace-nt"].defense, configs["replace-nt"].nt_lambda, configs["replace-nt"].width) == \
        ("nt", recipe.REPLACE_NT_LAMBDA, 1.0)
    assert (configs["sll"].model, configs["sll"].robust, configs["sll"].loss, configs["sll"].output_scale) == \
        ("sll", None, "mse", "learned")
    assert (configs["insert-b16"].robust, configs["insert-b16"].robust_bottleneck) == ("insert", 16)
    paper = configs["paper"]
    assert (paper.robust, paper.robust_bottleneck, paper.model_activation, paper.defense, paper.nt_lambda,
            paper.loss) == ("insert", 16, "silu", "nt", recipe.PAPER_NT_LAMBDA, "plcc")
    assert recipe.PRUNED["paper-pruned"] == ("paper", dict(fraction=0.1, criterion="mean_weight", prune_epochs=0,
                                                          finetune_epochs=15, learning_rate=1e-4))
    assert list(recipe.model_overrides((0.5,), 0.1))[1] == "base-nt0.5"


def test_plan_gives_each_model_the_base_training_time(recipe):
    plan = recipe.plan_epochs({"base": 0.1, "slow": 0.35, "fast": 0.05, "huge": 100.0}, steps=50, base_epochs=28)
    assert plan["budget_seconds"] == 140.0 and plan["steps_per_epoch"] == 50
    assert plan["budget_from"] == "base: 28 epochs of 5.0 s"
    assert {name: kind["epochs"] for name, kind in plan["kinds"].items()} == \
        {"base": 28, "slow": 8, "fast": 56, "huge": 1}  # 140 / 17.5 = 8; at least one epoch
    assert plan["kinds"]["slow"]["epoch_seconds"] == 17.5
    assert recipe.plan_epochs({"slow": 0.35}, steps=50, budget_seconds=35)["kinds"]["slow"]["epochs"] == 2
    with pytest.raises(ValueError, match="time base too, or give --budget-seconds"):
        recipe.plan_epochs({"slow": 0.35}, steps=50)
    with pytest.raises(ValueError, match="--budget-seconds must be positive"):
        recipe.plan_epochs({"slow": 0.35}, steps=50, budget_seconds=0)


def plan_args(**overrides):
    return types.SimpleNamespace(**{"plan": None, "quick": False, "budget_seconds": None, "timed_steps": 4,
                                    "data_dir": None, **overrides})


def test_the_plan_is_timed_once_and_reused(recipe, tmp_path, monkeypatch):
    timed = []

    def fake_time_steps(config, steps):
        timed.append((config.robust, config.width, config.defense, steps))
        return (0.4 if config.robust else 0.1), 10

    monkeypatch.setattr(recipe, "time_steps", fake_time_steps)
    models = recipe.model_overrides()
    first = {name: models[name] for name in ("replace-w2",)}
    # The budget is the base's: it is timed though it is not trained.
    plan = recipe.make_plan(tmp_path, first, plan_args(), verbose=False)
    assert timed == [(None, 1.0, None, 4), ("replace", 2.0, None, 4)]
    assert plan["budget_seconds"] == recipe.BASE.epochs * 1.0
    assert plan["kinds"]["replace-w2"]["epochs"] == round(recipe.BASE.epochs / 4)
    assert json.loads((tmp_path / "plan.json").read_text()) == plan

    # A re-run reuses it; a model it lacks is timed and added at its budget.
    timed.clear()
    again = recipe.make_plan(tmp_path, {name: models[name] for name in ("replace-w2", "base-adv")}, plan_args(),
                             verbose=False)
    assert timed == [(None, 1.0, "adversarial", 4)]
    assert again["kinds"]["base-adv"]["epochs"] == recipe.BASE.epochs
    assert again["kinds"]["replace-w2"] == plan["kinds"]["replace-w2"]

    # Another folder can take this plan's epochs (no timing).
    timed.clear()
    other = tmp_path / "other"
    other.mkdir()
    taken = recipe.make_plan(other, first, plan_args(plan=str(tmp_path / "plan.json")), verbose=False)
    assert timed == [] and taken["kinds"] == again["kinds"]

    with pytest.raises(ValueError, match="plans a budget of 28.0 s, not --budget-seconds 60"):
        recipe.make_plan(tmp_path, first, plan_args(budget_seconds=60.0), verbose=False)
    with pytest.raises(ValueError, match="is the plan of a run without --quick"):
        recipe.make_plan(tmp_path, first, plan_args(quick=True), verbose=False)
    with pytest.raises(FileNotFoundError, match="--plan nowhere.json"):
        recipe.make_plan(other, first, plan_args(plan="nowhere.json"), verbose=False)


def test_time_steps_measures_a_training_step(recipe, small_builtin):
    config = recipe.model_config(recipe.model_overrides()["base-nt1"], data_dir=str(small_builtin),
                                 patches_per_image=1)
    seconds, steps = recipe.time_steps(config, steps=2)
    table = data.load_table("builtin", str(small_builtin))
    assert steps == recipe.steps_per_epoch(table, config) > 0
    assert 0 < seconds < 60


def test_pruned_rows_prune_every_seed_of_their_model_once(recipe, tmp_path, monkeypatch):
    from keras_robust_iqa.pruning import pipeline

    calls = []

    def fake_prune_run(run, out, verbose, **settings):
        calls.append((run, out, settings))
        out.mkdir(parents=True)
        (out / "pruning_report.json").write_text(json.dumps({"finetune_epochs": settings["finetune_epochs"],
                                                             "pruned_fraction": settings["fraction"]}))
        (out / "metrics.json").write_text(json.dumps({"test": {"srocc": 0.5}, "train_seconds": 3.0}))

    monkeypatch.setattr(pipeline, "prune_run", fake_prune_run)
    args = types.SimpleNamespace(seeds=[0, 2], quick=False, paper_finetune_epochs=15)
    sources = {f"paper-s{seed}": tmp_path / f"paper-s{seed}" for seed in (0, 2)}
    pruned = recipe.prune_runs(tmp_path, sources, ["paper-pruned"], args)
    assert pruned == {f"paper-pruned-s{seed}": tmp_path / "runs" / f"paper-pruned-s{seed}" for seed in (0, 2)}
    assert [(run, out) for run, out, _ in calls] == [(sources[f"paper-s{seed}"], pruned[f"paper-pruned-s{seed}"])
                                                     for seed in (0, 2)]
    assert all(settings == recipe.PRUNED["paper-pruned"][1] for _, _, settings in calls)
    assert recipe.prune_runs(tmp_path, sources, ["paper-pruned"], args) == pruned and len(calls) == 2  # reused
    # The summary says what a pruned row was made from, not a planned budget it does not have.
    plan = {"kinds": {}}
    row = recipe.summary(plan, pruned, {})["runs"]["paper-pruned-s2"]
    assert row == {"pruned_from": "paper", "finetune_epochs": 15, "pruned_fraction": 0.1, "train_seconds": 3.0,
                   "test_srocc": 0.5}


@pytest.mark.parametrize("argv, message", [
    (["--models", "base,nope"], "--models: unknown model(s) ['nope']"),
    (["--attacks", "fgsm"], "keep ifgsm in --attacks and 4/255 in --eps"),
    (["--eps", "2/255"], "keep ifgsm in --attacks and 4/255 in --eps"),
    (["--seeds", "0,0"], "expected distinct seeds"),
    (["--images", "0"], "--images, --timed-steps and --paper-finetune-epochs must be at least 1"),
    (["--paper-finetune-epochs", "0"], "--images, --timed-steps and --paper-finetune-epochs must be at least 1"),
])
def test_bad_flags_are_refused_before_any_work(recipe, argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        recipe.main(["--out", str(tmp_path / "out"), *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_quick_trains_evaluates_and_reuses_its_runs(recipe, small_builtin, tmp_path, capsys):
    out = tmp_path / "frontier"
    argv = ["--quick", "--out", str(out), "--data-dir", str(small_builtin)]
    assert recipe.main(argv) == 0
    names = [f"{name}-s0" for name in recipe.QUICK_MODELS]
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(names)
    for name in names:
        config = json.loads((out / "runs" / name / "config.json").read_text())
        assert config["epochs"] == 1 and config["patches_per_image"] == 1 and config["seed"] == 0
    summary = json.loads((out / "frontier.json").read_text())
    assert summary["plan"]["quick"] is True and list(summary["runs"]) == names
    report = json.loads((out / "evaluation" / "report.json").read_text())
    frontier = report["frontier"]
    assert summary["frontier"] == frontier
    assert frontier["key"] == "ifgsm@4/255" and frontier["label_gain"] > 0
    assert list(frontier["groups"]) == list(recipe.QUICK_MODELS)
    for name in names:
        point = frontier["models"][name]
        assert point["srocc_of"] == "test split" and point["srocc"] == summary["runs"][name]["test_srocc"]
        assert point["gain_to_labels"] == pytest.approx(point["gain"] / frontier["label_gain"])
    assert frontier["models"]["replace-w1-s0"]["certified_bound"] > 0
    assert frontier["models"]["base-s0"]["certified_bound"] is None
    for png in ("frontier.png", "gain_vs_eps.png"):
        assert (out / "evaluation" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A re-run trains and evaluates nothing again.
    stamps = {name: (out / "runs" / name / "model.keras").stat().st_mtime_ns for name in names}
    report_stamp = (out / "evaluation" / "report.json").stat().st_mtime_ns
    capsys.readouterr()
    assert recipe.main(argv) == 0
    printed = capsys.readouterr().out
    assert all(f"{name}: reused" in printed for name in names) and "evaluation: reused" in printed
    assert {name: (out / "runs" / name / "model.keras").stat().st_mtime_ns for name in names} == stamps
    assert (out / "evaluation" / "report.json").stat().st_mtime_ns == report_stamp
