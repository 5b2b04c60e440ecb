"""The accuracy-robustness frontier on the built-in dataset: `replace` models against the
data-driven defenses, on three seeds, at equal training time (issue 23).

    python training/frontier.py --out runs/frontier              # 13 models x 3 seeds, 3 prunings, then the evaluation
    python training/frontier.py --quick --out runs/frontier-quick   # a smoke test (1 seed, 1 epoch, 2 models)

The models, each trained on every seed of `--seeds` into OUT/runs/NAME-sSEED:
- `base`: `training/builtin.py`'s settings (the small CNN, PLCC loss, 16 patches per image,
  learning rate 1e-3);
- `base-nt1`, `base-nt3`, `base-nt10`: base + NT at lambda 1, 3 and 10 (`--nt-lambdas`;
  with the PLCC loss NT penalises the gain relative to the batch's score spread);
- `base-adv`: base + FGSM adversarial training at 4/255;
- `replace-w1`, `replace-w2`, `replace-w4`: `replace` with BlockOrthoConv2D
  (`robust_conv="block"`) at widths x1, x2 and x4;
- `replace-nt`: `replace-w1` + NT at lambda `--replace-nt-lambda`;
- `sll`: the network 1-Lipschitz by construction (`--model sll`: AOL stem, residual SLL
  layers), MSE, learning rate 3e-3, its output scale learned from 1 (`SLL`);
- `insert-b16`: `insert` with RobustBlocks that narrow to 16 channels and widen back
  (`--robust-bottleneck 16`, the paper's block narrows to 200), from scratch like the others;
- `paper`: the paper's recipe as its code runs it: `insert-b16` with every ReLU swapped for
  SiLU (`--model-activation silu`) and NT's finite-difference penalty (`--defense nt`,
  lambda `--paper-nt-lambda`, the PLCC loss of the base);
- `paper-pruned`: each `paper` run pruned as the paper's code does: 10 % of the channels by
  mean |weight|, then 15 fine-tuning epochs (`--paper-finetune-epochs`) at learning rate 1e-4
  (`robust-iqa prune`), on top of the equal training time (its `metrics.json` says how long).
The `replace` models use this recipe's settings for the block convolution: ReLU
(`robust_activation="relu"`), the MSE loss and learning rate 3e-3.

Equal training time: first each model's seconds per training step are measured (seed 0, a
few warm-up steps, then `--timed-steps` steps: the optimisation only, the model defended as
it trains). The budget is the base's training time, `training/builtin.py`'s epochs times the
base's seconds per epoch, or `--budget-seconds`; each model gets the number of epochs that
fills it (at least 1), with patience as large, so no run stops early. The plan (budget,
step times, epochs) is written to OUT/plan.json and reused on a re-run, so the epochs do not
move with the machine's load; `--plan FILE` takes the epochs of another folder's plan. The
per-epoch validation is not counted: it scores the same images for every model. Each run's
`config.json` records its epochs and `metrics.json` the seconds its training took;
OUT/frontier.json puts the planned and the measured seconds side by side. The whole comparison
is 39 runs of about the base's training time each, plus their validation and the prunings: hours on a CPU.

Then `evaluate_runs` attacks every run (`--attacks`, `--eps`, `--images`) with the labels' own
gain on the built-in data, into OUT/evaluation: report.json (with `frontier`: I-FGSM at 4/255,
seeds grouped, the gain-to-labels ratio), report.md, frontier.png and gain_vs_eps.png.

A finished run (its metrics.json) is reused on a re-run, and an interrupted one resumes from
its last finished epoch; the evaluation is reused while it covers the same runs and settings.
"""

import argparse
import dataclasses
import json
import math
import pathlib
import runpy
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent
# The base model's settings: training/builtin.py's recipe.
BASE = runpy.run_path(str(ROOT / "builtin.py"))["CONFIG"]
# The replace recipe for BlockOrthoConv2D (the recipe's settings, see the docstring).
REPLACE = dict(robust="replace", robust_conv="block", robust_activation="relu", loss="mse", learning_rate=3e-3)
# The sll network's recipe: the output scale learned from 1, with MSE (docs/experiments.md: a scale
# set from the labels was 9x to 15x as easy to inflate, with no steady gain in ranking).
SLL = dict(model="sll", loss="mse", learning_rate=3e-3, output_scale="learned")
INSERT_BOTTLENECK = 16
PAPER_NT_LAMBDA = 0.1  # the weight of the paper's code for Linearity (with h = 0.01 here)
# Rows made by pruning a trained model: name -> (the model pruned, `prune_run`'s settings).
PRUNED = {"paper-pruned": ("paper", dict(fraction=0.1, criterion="mean_weight", prune_epochs=0, finetune_epochs=15,
                                         learning_rate=1e-4))}
NT_LAMBDAS = (1.0, 3.0, 10.0)
REPLACE_NT_LAMBDA = 1e-3
WIDTHS = (1, 2, 4)
FRONTIER = ("ifgsm", 4 / 255)
DEFAULT_ATTACKS = "fgsm,ifgsm,pgd_l2"
DEFAULT_EPS = "2/255,4/255,8/255"
QUICK_MODELS = ("base", "replace-w1")
WARMUP_STEPS = 2


def model_overrides(nt_lambdas=NT_LAMBDAS, replace_nt_lambda=REPLACE_NT_LAMBDA, paper_nt_lambda=PAPER_NT_LAMBDA):
    """name -> the TrainConfig fields that make the model from the base recipe, in training order
    (the pruned rows, `PRUNED`, are made from these)."""
    models = {"base": {}}
    for lam in nt_lambdas:
        models[f"base-nt{lam:g}"] = dict(defense="nt", nt_lambda=float(lam))
    models["base-adv"] = dict(defense="adversarial")
    for width in WIDTHS:
        models[f"replace-w{width:g}"] = dict(REPLACE, width=float(width))
    models["replace-nt"] = dict(REPLACE, defense="nt", nt_lambda=float(replace_nt_lambda))
    models["sll"] = dict(SLL)
    models[f"insert-b{INSERT_BOTTLENECK}"] = dict(robust="insert", robust_bottleneck=INSERT_BOTTLENECK)
    models["paper"] = dict(models[f"insert-b{INSERT_BOTTLENECK}"], model_activation="silu", defense="nt",
                           nt_lambda=float(paper_nt_lambda))
    return models


def model_config(overrides, *, data_dir=None, seed=0, epochs=None, patches_per_image=None):
    """The TrainConfig of one model and seed: the base recipe with `overrides`, trained for
    `epochs` (default: the base recipe's) with patience as large."""
    epochs = BASE.epochs if epochs is None else int(epochs)
    config = dataclasses.replace(BASE, data_dir=data_dir, seed=int(seed), epochs=epochs, patience=epochs,
                                 **overrides)
    if patches_per_image is not None:
        config = dataclasses.replace(config, patches_per_image=int(patches_per_image))
    config.validate()
    return config


def steps_per_epoch(table, config):
    """Training steps in one epoch (as `train` counts them)."""
    return math.ceil(int((table.splits == "train").sum()) * config.patches_per_image / config.batch_size)


def time_steps(config, steps=8, warmup=WARMUP_STEPS):
    """`(seconds per training step, steps per epoch)` of `config`'s model, defended as it trains,
    measured over `steps` steps after `warmup` (graph tracing happens in those)."""
    import keras

    from keras_robust_iqa.training.calibration import CORRELATION_LOSSES
    from keras_robust_iqa.training.defenses import defend
    from keras_robust_iqa.training.trainer import build, compile_model, load_datasets

    class StepClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    keras.utils.set_random_seed(config.seed)
    table, train_ds, _ = load_datasets(config)
    model = defend(build(config), config.defense, eps=config.defense_eps, nt_lambda=config.nt_lambda,
                   nt_h=config.nt_h, scale_free_loss=config.loss in CORRELATION_LOSSES)
    compile_model(model, config)
    clock = StepClock()
    model.fit(train_ds.repeat(), steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[clock],
              shuffle=False)
    return (clock.ends[-1] - clock.ends[warmup - 1]) / steps, steps_per_epoch(table, config)


def plan_epochs(step_seconds, steps, budget_seconds=None, base="base", base_epochs=None):
    """The equal-time plan: `{"budget_seconds", "budget_from", "kinds": {name: {"step_seconds",
    "epoch_seconds", "epochs"}}}`, each model's epochs `max(1, round(budget / epoch_seconds))`.

    Args:
        step_seconds: name -> measured seconds per training step.
        steps: training steps per epoch (the same for every model: same data and batch).
        budget_seconds: the training time of every model; default the base's,
            `base_epochs` (the base recipe's epochs) times its seconds per epoch.
    """
    if budget_seconds is None:
        base_epochs = BASE.epochs if base_epochs is None else base_epochs
        if base not in step_seconds:
            raise ValueError(f"The budget is the {base} model's training time: time {base} too, "
                             f"or give --budget-seconds.")
        budget_seconds = base_epochs * step_seconds[base] * steps
        budget_from = f"{base}: {base_epochs} epochs of {step_seconds[base] * steps:.1f} s"
    else:
        budget_from = "--budget-seconds"
    if not budget_seconds > 0:
        raise ValueError(f"--budget-seconds must be positive, got {budget_seconds!r}.")
    kinds = {}
    for name, seconds in step_seconds.items():
        epoch_seconds = seconds * steps
        kinds[name] = {"step_seconds": round(seconds, 5), "epoch_seconds": round(epoch_seconds, 2),
                       "epochs": max(1, round(budget_seconds / epoch_seconds))}
    return {"budget_seconds": round(float(budget_seconds), 1), "budget_from": budget_from,
            "steps_per_epoch": steps, "kinds": kinds}


def make_plan(out, models, args, verbose=True):
    """The epochs of every model: OUT/plan.json where it exists (or `--plan`), the models it lacks
    timed and added at its budget; else every model timed. `--quick`: one epoch each, untimed.
    The plan is written to OUT/plan.json."""
    path = out / "plan.json"
    source = pathlib.Path(args.plan) if args.plan else path
    if args.plan and not source.is_file():
        raise FileNotFoundError(f"--plan {args.plan}: no such file.")
    plan = json.loads(source.read_text()) if source.is_file() else None
    if plan is not None and plan.get("quick", False) != args.quick:
        raise ValueError(f"{source} is the plan of a run {'with' if plan.get('quick') else 'without'} --quick: "
                         f"pass another --out, or delete {source}.")
    if plan is not None and args.budget_seconds is not None and \
            abs((plan["budget_seconds"] or 0) - args.budget_seconds) > 0.05:
        raise ValueError(f"{source} plans a budget of {plan['budget_seconds']} s, not --budget-seconds "
                         f"{args.budget_seconds:g}: pass another --out, or delete {source}.")
    if args.quick:
        plan = {"quick": True, "budget_seconds": None, "budget_from": "--quick: one epoch each",
                "kinds": {name: {"epochs": 1} for name in models}}
    else:
        todo = [name for name in models if plan is None or name not in plan["kinds"]]
        # The default budget is the base's time: time the base even when it is not trained.
        needs_base = plan is None and args.budget_seconds is None and "base" not in models
        timed, steps = {}, None
        for name in ["base"] * needs_base + todo:
            if verbose:
                print(f"timing {name}: {args.timed_steps} steps after {WARMUP_STEPS}", flush=True)
            config = model_config(models.get(name, {}), data_dir=args.data_dir)
            timed[name], steps = time_steps(config, steps=args.timed_steps)
        if plan is None:
            plan = plan_epochs(timed, steps, args.budget_seconds) | {
                "timed_steps": args.timed_steps, "warmup_steps": WARMUP_STEPS}
        elif todo:
            plan["kinds"] |= plan_epochs(timed, steps, plan["budget_seconds"])["kinds"]
    path.write_text(json.dumps(plan, indent=2))
    return plan


def train_runs(out, models, plan, args, verbose="auto"):
    """Train every model on every seed (reusing finished runs); returns name -> run folder."""
    from keras_robust_iqa.training.trainer import train

    runs = {}
    for name, overrides in models.items():
        for seed in args.seeds:
            run_name = f"{name}-s{seed}"
            run = out / "runs" / run_name
            config = model_config(overrides, data_dir=args.data_dir, seed=seed,
                                  epochs=plan["kinds"][name]["epochs"],
                                  patches_per_image=1 if args.quick else None)
            runs[run_name] = run
            if (run / "metrics.json").is_file():
                _check_reused(run, config)
                print(f"{run_name}: reused {run}", flush=True)
                continue
            print(f"{run_name}: {config.epochs} epochs -> {run}", flush=True)
            train(config, run, verbose=verbose)
    return runs


def prune_runs(out, runs, names, args, verbose="auto"):
    """The pruned rows `names` (of `PRUNED`), each seed's run of its model pruned into
    OUT/runs/NAME-sSEED (reusing finished ones); returns run name -> folder."""
    from keras_robust_iqa.pruning.pipeline import prune_run

    pruned = {}
    for name in names:
        source, settings = PRUNED[name]
        settings = dict(settings, finetune_epochs=1 if args.quick else args.paper_finetune_epochs)
        for seed in args.seeds:
            run_name = f"{name}-s{seed}"
            run = out / "runs" / run_name
            pruned[run_name] = run
            if (run / "pruning_report.json").is_file():
                print(f"{run_name}: reused {run}", flush=True)
                continue
            print(f"{run_name}: {source}-s{seed} pruned ({settings}) -> {run}", flush=True)
            prune_run(runs[f"{source}-s{seed}"], run, verbose=verbose, **settings)
    return pruned


def _check_reused(run, config):
    """A finished run is reused only when it was trained as asked."""
    found = json.loads((run / "config.json").read_text())
    changed = sorted(key for key, value in dataclasses.asdict(config).items() if found.get(key) != value)
    if changed:
        raise ValueError(f"{run} was trained with other settings (different: {', '.join(changed)}); "
                         f"pass another --out, or delete {run} to train it again.")


def evaluate(out, runs, args, verbose=1):
    """`evaluate_runs` over every run into OUT/evaluation, with the labels' gain and the frontier;
    reused while its report covers the same runs and settings."""
    from keras_robust_iqa.evaluation import evaluate_runs

    folder = out / "evaluation"
    settings = {"runs": sorted(runs), "attacks": args.attacks, "eps": args.eps, "images": args.images,
                "frontier": list(FRONTIER)}
    stamp = folder / "recipe_settings.json"
    if (folder / "report.json").is_file() and stamp.is_file() and json.loads(stamp.read_text()) == settings:
        print(f"evaluation: reused {folder}", flush=True)
        return json.loads((folder / "report.json").read_text())
    report = evaluate_runs([str(run) for run in runs.values()], folder, attacks=args.attacks, eps=args.eps,
                           images=args.images, label_gain=True, frontier=FRONTIER, verbose=verbose)
    stamp.write_text(json.dumps(settings, indent=2))
    return report


def summary(plan, runs, report):
    """OUT/frontier.json: the plan, each run's epochs, planned and measured training seconds and
    test SROCC, and the frontier."""
    from keras_robust_iqa.evaluation.frontier import split_seed

    per_run = {}
    for run_name, run in runs.items():
        name = split_seed(run_name)[0]
        metrics = json.loads((run / "metrics.json").read_text())
        if name in PRUNED:  # fine-tuned on top of its source's budget
            report = json.loads((run / "pruning_report.json").read_text())
            entry = {"pruned_from": PRUNED[name][0], "finetune_epochs": report["finetune_epochs"],
                     "pruned_fraction": report["pruned_fraction"]}
        else:
            kind = plan["kinds"][name]
            entry = {"epochs": kind["epochs"], "planned_seconds": round(kind["epochs"] * kind["epoch_seconds"], 1)
                     if "epoch_seconds" in kind else None}
        per_run[run_name] = entry | {"train_seconds": metrics.get("train_seconds"),
                                     "test_srocc": metrics["test"]["srocc"]}
    return {"plan": plan, "runs": per_run, "frontier": report.get("frontier")}


def _seeds(text):
    try:
        seeds = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"expected distinct seeds >= 0, got {text!r}")
    return seeds


def parser():
    from keras_robust_iqa.evaluation.command import budget_list, comma_list
    from keras_robust_iqa.training.options import fraction

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/frontier",
                   help="folder of the plan, the runs (OUT/runs/NAME-sSEED) and the evaluation "
                   "(default: runs/frontier)")
    p.add_argument("--data-dir", help="cache folder of the built-in dataset (default: $ROBUST_IQA_CACHE or ~/.cache)")
    p.add_argument("--seeds", type=_seeds, default=[0, 1, 2], help="comma-separated seeds (default: 0,1,2)")
    p.add_argument("--models", type=comma_list,
                   help="comma-separated subset of the models (default: all; names in the description)")
    p.add_argument("--budget-seconds", type=float,
                   help=f"training time of every model, in seconds of optimisation steps (default: the base's, "
                   f"{BASE.epochs} epochs of training/builtin.py, as timed)")
    p.add_argument("--timed-steps", type=int, default=20,
                   help="training steps timed per model, after 2 warm-up steps (default: 20)")
    p.add_argument("--plan", metavar="FILE",
                   help="take the epochs from this plan.json (another folder's, e.g. to rerun on another machine) "
                   "instead of timing")
    p.add_argument("--nt-lambdas", type=lambda text: [float(v) for v in comma_list(text)], default=list(NT_LAMBDAS),
                   help=f"NT weights of the base + NT models (default: {','.join(f'{v:g}' for v in NT_LAMBDAS)})")
    p.add_argument("--replace-nt-lambda", type=float, default=REPLACE_NT_LAMBDA,
                   help=f"NT weight of the replace + NT model, with the MSE loss (default: {REPLACE_NT_LAMBDA:g})")
    p.add_argument("--paper-nt-lambda", type=float, default=PAPER_NT_LAMBDA,
                   help=f"NT weight of the paper model, with the base's PLCC loss (default: {PAPER_NT_LAMBDA:g})")
    p.add_argument("--paper-finetune-epochs", type=int, default=PRUNED["paper-pruned"][1]["finetune_epochs"],
                   help="fine-tuning epochs of the paper-pruned runs (default: %(default)s, the paper's)")
    p.add_argument("--skip-evaluation", action="store_true",
                   help="train (and prune) only; a later run without it reuses the runs and evaluates them all")
    p.add_argument("--attacks", type=comma_list, default=comma_list(DEFAULT_ATTACKS),
                   help=f"comma-separated attacks of the evaluation, ifgsm among them (default: {DEFAULT_ATTACKS})")
    p.add_argument("--eps", type=lambda text: budget_list(text, fraction), default=budget_list(DEFAULT_EPS, fraction),
                   help=f"comma-separated L-inf budgets, 4/255 among them (default: {DEFAULT_EPS})")
    p.add_argument("--images", type=int, default=64,
                   help="test images attacked, evenly spaced over the split (default: 64)")
    p.add_argument("--quick", action="store_true",
                   help=f"a smoke test: seed 0 only, one epoch of one patch per image, models "
                   f"{', '.join(QUICK_MODELS)}, ifgsm at 4/255 on 4 images, no timing")
    return p


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.attacks, args.eps, args.images = [0], ["ifgsm"], [FRONTIER[1]], 4
        args.models = args.models or list(QUICK_MODELS)
    all_models = model_overrides(args.nt_lambdas, args.replace_nt_lambda, args.paper_nt_lambda)
    unknown = sorted(set(args.models or ()) - set(all_models) - set(PRUNED))
    if unknown:
        p.error(f"--models: unknown model(s) {unknown}; choose from {', '.join([*all_models, *PRUNED])}")
    if FRONTIER[0] not in args.attacks or not any(abs(e - FRONTIER[1]) < 1e-9 for e in args.eps):
        p.error("the frontier is ifgsm at 4/255: keep ifgsm in --attacks and 4/255 in --eps")
    if args.images < 1 or args.timed_steps < 1 or args.paper_finetune_epochs < 1:
        p.error("--images, --timed-steps and --paper-finetune-epochs must be at least 1")
    pruned_rows = [name for name in PRUNED if args.models is None or name in args.models]
    # A pruned row needs its model's runs.
    wanted = set(all_models if args.models is None else args.models) | {PRUNED[name][0] for name in pruned_rows}
    models = {name: all_models[name] for name in all_models if name in wanted}
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        plan = make_plan(out, models, args)
        runs = train_runs(out, models, plan, args)
        runs |= prune_runs(out, runs, pruned_rows, args)
        if args.skip_evaluation:
            print(f"trained {len(runs)} runs in {out / 'runs'}; evaluate them with a run without --skip-evaluation")
            return 0
        report = evaluate(out, runs, args)
    except (ValueError, FileNotFoundError) as error:
        print(f"{p.prog}: error: {error}", file=sys.stderr)
        return 2
    result = summary(plan, runs, report)
    (out / "frontier.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'frontier.json'}, {out / 'evaluation'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
