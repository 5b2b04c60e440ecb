"""`robust-iqa demo`: the whole pipeline, end to end, in one command.

Stages, in order (each writes a folder under `out` that the next ones read):

1. data: build or reuse the dataset (the built-in one by default).
2. base: train the base model.
3. robust: apply RobustBlocks, "insert" (fine-tuned from the base) and
   "replace" (a 1-Lipschitz network trained from scratch).
4. baselines: the data-driven defenses, NT and FGSM adversarial training.
5. prune: channel pruning of the "replace" model, then fine-tuning.
6. evaluate: every model under the attack suite.
7. export: the pruned robust model to SavedModel, TFLite and ONNX.
8. report: `report.json`, `report.md` and the plots in `out`, and a summary table.

A finished stage is reused on a re-run; an interrupted training resumes from its
last finished epoch (BackupAndRestore), so Ctrl-C loses at most one epoch. The
settings are written to `demo_settings.json`; re-running the same folder with
other settings is refused rather than mixing results.
"""

import dataclasses
import json
import pathlib
import shutil
import time

# Models trained in stages 2-4: name -> TrainConfig overrides.
ROBUST_LR = 1e-4  # the insert model starts from the trained base: fine-tune gently
# The replace model's recipe: MSE ties its score's scale to MOS (a scale-free loss such as
# PLCC lets the scale, and with it the gain, grow), and ReLU exports as fast as the base.
REPLACE_RECIPE = dict(robust_activation="relu", loss="mse", learning_rate=3e-3)
EVAL_EPS = (4 / 255, 8 / 255)
# Sized for the 15 minutes (docs/experiments.md: what each costs):
EVAL_IMAGES = 16  # evenly spaced test images attacked
UAP_TRAIN_IMAGES = 16  # training images the UAP and FACPA learn on (evaluate's default: 64)
# The learned attacks' budget in epochs, not seconds, so the demo's figures do not depend on the
# machine: 32 steps, where a UAP reaches about 0.9 of its gain at the defaults (FACPA stops sooner).
LEARN_EPOCHS = 16
# The labels' own gain, for the summary's attack only, on fewer images: the attack on the labels
# compiles a graph per reference photograph.
LABEL_ATTACKS = ("ifgsm",)
LABEL_IMAGES = 12


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """What the demo's figures depend on; `--quick` and the flags set these."""

    dataset: str = "builtin"
    data_dir: str | None = None
    model: str = "small"
    weights: str | None = None  # the backbones' starting weights: "imagenet" or a file
    patch_size: int = 64
    # Sized for 15 minutes on 2 CPU cores; `robust-iqa evaluate` runs the whole attack suite.
    epochs: int = 12
    robust_epochs: int = 12
    # Channel multiplier of the small model's replace version: a 1-Lipschitz network cannot
    # rescale its activations, and more channels buy back ranking accuracy. Backbones keep theirs.
    replace_width: float = 2.0
    patches_per_image: int = 4
    # Pruning, sized for its ~2 minutes: 15 % of the channels removes 28 % of the replace model's
    # parameters (they go with about the square of the width), at once (no masked epoch: the
    # surgery changes the orthogonal layers anyway), then 5 fine-tuning epochs towards the
    # unpruned model's scores (3 left it 0.021 below its parent, 5 0.013: docs/experiments.md).
    # docs/experiments.md#pruning-criteria-and-fine-tuning-at-the-demos-budget compares them.
    prune_fraction: float = 0.15
    prune_criterion: str = "activation"
    prune_epochs: int = 0
    finetune_epochs: int = 5
    # Fine-tuning targets: the unpruned model's scores (1) rather than the MOS (0).
    prune_distill_weight: float = 1.0
    attacks: tuple = ("fgsm", "ifgsm", "uap", "facpa", "transfer")
    eval_images: int = EVAL_IMAGES
    # Attacks also run much longer, their gain's ratio to it reported (`evaluate --strength`);
    # none by default: the learned attacks' check costs more than the demo's 15 minutes allow.
    strength: tuple = ()
    seed: int = 0

    @classmethod
    def quick(cls, **overrides):
        """A smoke test: one short epoch per model, few images, few attacks."""
        return cls(**{"epochs": 1, "robust_epochs": 1, "patches_per_image": 1, "finetune_epochs": 1,
                      "attacks": ("ifgsm", "uap"), "eval_images": 4, **overrides})


def parse_attacks(text, flag="--attacks", among=None):
    """`--attacks`: comma-separated names, or `all`; unknown names are refused here, before any training.

    `among`: the names allowed (default: every attack), e.g. the attacks `--strength` may check.
    """
    from keras_robust_iqa.attacks import ATTACKS

    among = tuple(ATTACKS) if among is None else tuple(among)
    names = among if text.strip() == "all" else tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in among]
    if unknown or not names:
        raise ValueError(f"{flag}: unknown attack(s) {unknown or text!r}; choose from {sorted(among)} or all.")
    return names


def training_runs(settings):
    """name -> TrainConfig of every model the demo trains, in order."""
    from keras_robust_iqa.training.trainer import TrainConfig

    common = dict(dataset=settings.dataset, data_dir=settings.data_dir, model=settings.model,
                  weights=settings.weights, patch_size=settings.patch_size,
                  patches_per_image=settings.patches_per_image, seed=settings.seed)
    plain = dict(common, epochs=settings.epochs, patience=settings.epochs)
    robust = dict(common, epochs=settings.robust_epochs, patience=settings.robust_epochs)
    # insert fine-tunes the trained base: a third of the robust epochs.
    insert_epochs = max(1, settings.robust_epochs // 3)
    # A defended step costs about two plain ones (NT's second pass, adversarial training's
    # FGSM step): half the epochs is about the base's training time.
    defended = dict(plain, epochs=max(1, settings.epochs // 2), patience=max(1, settings.epochs // 2))
    return {
        "base": TrainConfig(**plain),
        "insert": TrainConfig(**dict(robust, robust="insert", init_from="base", learning_rate=ROBUST_LR,
                                     epochs=insert_epochs, patience=insert_epochs)),
        "replace": TrainConfig(**dict(robust, robust="replace", **REPLACE_RECIPE,
                                      width=settings.replace_width if settings.model == "small" else 1.0)),
        "nt": TrainConfig(**dict(defended, defense="nt")),
        "adversarial": TrainConfig(**dict(defended, defense="adversarial")),
    }


STAGES = ("data", "base", "robust", "baselines", "prune", "evaluate", "export", "report")


def run(out="runs/demo", settings=None, verbose="auto"):
    """Run every stage into `out`; returns the report dictionary."""
    settings = settings or DemoSettings()
    out = pathlib.Path(out)
    _claim(out, settings)
    progress = _Progress(out / "stage_seconds.json")
    timings = progress.timings

    with progress("data", "the dataset"):
        from keras_robust_iqa import data

        table = data.load_table(settings.dataset, settings.data_dir)
        counts = {split: int((table.splits == split).sum()) for split in ("train", "val", "test")}
        print(f"      {len(table)} images {counts}, MOS range {table.mos_range}")

    configs = training_runs(settings)
    for stage, names in (("base", ("base",)), ("robust", ("insert", "replace")),
                         ("baselines", ("nt", "adversarial"))):
        with progress(stage, ", ".join(names)) as step:
            reused = []
            for name in names:
                config = configs[name]
                if config.init_from:
                    config = dataclasses.replace(config, init_from=str(out / config.init_from))
                reused.append(_train(name, config, out / name, verbose))
            step.reused = all(reused)

    pruned = out / "replace-pruned"
    with progress("prune", f"{settings.prune_fraction:.0%} of the replace model's channels, "
                           f"by {settings.prune_criterion}") as step:
        if (pruned / "pruning_report.json").is_file():
            print(f"      reused {pruned}")
            step.reused = True
        else:
            from keras_robust_iqa.pruning.pipeline import prune_run

            prune_run(out / "replace", pruned, fraction=settings.prune_fraction,
                      criterion=settings.prune_criterion, prune_epochs=settings.prune_epochs,
                      finetune_epochs=settings.finetune_epochs, distill_weight=settings.prune_distill_weight,
                      verbose=verbose)

    model_runs = [out / name for name in configs] + [pruned]
    with progress("evaluate", f"{len(model_runs)} models x {len(settings.attacks)} attacks") as step:
        evaluation = out / "evaluation"
        if (evaluation / "report.json").is_file():
            print(f"      reused {evaluation}")
            step.reused = True
        else:
            from keras_robust_iqa.evaluation import evaluate_runs

            # `transfer` crafts on the first other run: the insert model for the base, the
            # base model for every other one.
            # On the built-in set the labels are a function of the image: attack them too.
            evaluate_runs(model_runs, evaluation, attacks=list(settings.attacks), eps=EVAL_EPS,
                          images=settings.eval_images, train_images=UAP_TRAIN_IMAGES,
                          strength=list(settings.strength),
                          learn_options={"epochs": LEARN_EPOCHS},
                          label_gain=LABEL_ATTACKS if settings.dataset == "builtin" else False,
                          label_images=LABEL_IMAGES, seed=settings.seed,
                          verbose=0 if verbose == 0 else 1)

    export = out / "export"
    with progress("export", f"{pruned.name} to SavedModel, TFLite and ONNX") as step:
        if (export / f"{pruned.name}.export.json").is_file():
            print(f"      reused {export}")
            step.reused = True
        else:
            from keras_robust_iqa.deployment.export import export_run

            export_run(pruned, export, "all", verbose=False)

    with progress("report", f"{out / 'report.md'}"):
        report = build_report(out, settings, model_runs, timings)
        (out / "report.json").write_text(json.dumps(report, indent=2))
        (out / "report.md").write_text(report_markdown(report))
        for plot in sorted((out / "evaluation").glob("*.png")):
            shutil.copyfile(plot, out / plot.name)
    print()
    print(summary_table(report))
    print()
    print(checks_text(report["checks"]))
    return report


def _claim(out, settings):
    """Refuse to mix results made with other settings in one folder."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "demo_settings.json"
    wanted = json.loads(json.dumps(dataclasses.asdict(settings)))
    if path.is_file():
        found = json.loads(path.read_text())
        if found != wanted:
            changed = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
            raise ValueError(
                f"{out} holds a demo made with other settings (different: {', '.join(changed)}); "
                f"pass another --out, or delete {out} to start over."
            )
    else:
        path.write_text(json.dumps(wanted, indent=2))


def _train(name, config, run, verbose):
    from keras_robust_iqa.training.trainer import train

    if (run / "metrics.json").is_file():
        print(f"      {name}: reused {run}")
        return True
    what = f"{config.model}" + (f", {config.robust}" if config.robust else "") + (
        f", {config.defense} defense" if config.defense else "")
    resumed = " (resuming)" if (run / "backup").is_dir() else ""
    print(f"      {name}: {what}, {config.epochs} epochs{resumed} -> {run}")
    train(config, run, verbose=verbose)
    return False


class _Progress:
    """`with progress(stage, what) as step:` prints `[k/8] stage: what` and times the stage.

    A stage that sets `step.reused = True` did no work: it keeps the time recorded in
    `stage_seconds.json` when it ran, so a re-run's report shows what each stage cost.
    """

    def __init__(self, path):
        self.path = path
        self.recorded = json.loads(path.read_text()) if path.is_file() else {}
        self.timings = {}

    def __call__(self, stage, what):
        progress = self

        class _Stage:
            reused = False

            def __enter__(self):
                print(f"[{STAGES.index(stage) + 1}/{len(STAGES)}] {stage}: {what}", flush=True)
                self.start = time.perf_counter()
                return self

            def __exit__(self, exc_type, *exc):
                if exc_type is not None:
                    return
                seconds = round(time.perf_counter() - self.start, 1)
                if self.reused and stage in progress.recorded:
                    seconds = progress.recorded[stage]
                progress.timings[stage] = seconds
                progress.recorded[stage] = seconds
                progress.path.write_text(json.dumps(progress.recorded, indent=2))

        return _Stage()


def build_report(out, settings, model_runs, timings):
    """Everything the stages measured, gathered from their folders."""
    from keras_robust_iqa import run_folder

    evaluation = json.loads((out / "evaluation" / "report.json").read_text())
    models = {}
    for run in model_runs:
        metrics, config = run_folder.read_metrics(run), run_folder.read_config(run)
        attacked = evaluation["models"].get(run.name, {})
        models[run.name] = {
            "run": str(run),
            "robust": config.get("robust"),
            "conv": config.get("robust_conv") if config.get("robust") else None,
            "defense": config.get("defense"),
            "params": metrics["params"],
            "test": metrics["test"],
            "lipschitz_bound": metrics.get("lipschitz_bound"),
            "train_seconds": metrics.get("train_seconds"),
            "attacks": attacked.get("attacks", {}),
            # Clean correlations on the attacked subset, the baseline of the attacked ones.
            "attacked_images_clean": attacked.get("clean"),
            "attacked_images": attacked.get("images"),
        }
    pruning = json.loads((out / "replace-pruned" / "pruning_report.json").read_text())
    export = json.loads((out / "export" / "replace-pruned.export.json").read_text())
    report = {
        "settings": dataclasses.asdict(settings),
        "stage_seconds": dict(timings),
        "models": models,
        "labels": evaluation.get("labels"),
        "pruning": {key: pruning[key] for key in ("prunable_channels", "pruned_channels", "pruned_fraction",
                                                  "stages")},
        "export": export["files"],
    }
    report["checks"] = floor_checks(report)
    return report


def summary_table(report, attack="ifgsm", eps=4 / 255):
    """One line per model: accuracy, certificate and what `attack` at `eps` achieved.

    The gain is given twice: on the normalised MOS scale [0, 1] the models predict, which
    compares models directly, and MinMax-scaled by each model's clean score range (the
    benchmark's score, in which the certified bound is given). Where the report has the
    labels' own gain (built-in dataset), a last line gives it on the MOS scale.
    """
    from keras_robust_iqa.evaluation.frontier import find_result

    label = f"{attack} {round(eps * 255)}/255"
    lines = [
        f"| model | params | test SROCC | test PLCC | Lipschitz bound | {label} gain (MOS 0..1) "
        f"| {label} gain (scaled) | certified bound (scaled) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in report["models"].items():
        row = find_result(m["attacks"], attack, eps) or {}
        lines.append(
            f"| {name} | {m['params']:,} | {m['test']['srocc']:.3f} | {m['test']['plcc']:.3f} "
            f"| {_fmt(m['lipschitz_bound'])} | {_fmt(row.get('abs_gain_raw'))} | {_fmt(row.get('abs_gain'))} "
            f"| {_fmt(row.get('certified_bound'))} |"
        )
    labels = find_result(report.get("labels") or {}, attack, eps)
    if labels is not None:
        lines.append(f"| labels (MS-SSIM against the pristine crop) | - | - | - | - | {_fmt(labels['abs_gain_raw'])} "
                     f"| - | - |")
    return "\n".join(lines)


# What the demo's `replace` model must show against the base, at `summary_table`'s attack.
SROCC_FLOOR = 0.9  # its test SROCC, as a fraction of the base's
GAIN_FLOOR = 3.0  # how many times lower its gain is than the base's
# What pruning must keep: the pruned model's test SROCC at most this far below its parent's,
PRUNED_SROCC_DROP = 0.02
PRUNED_PARAMS_FLOOR = 0.25  # with at least this share of the parent's parameters gone


def floor_checks(report, attack="ifgsm", eps=4 / 255):
    """The demo's claims about its `replace` model, each as measured.

    - test SROCC at least `SROCC_FLOOR` times the base model's;
    - `attack` at `eps` raises its score (MOS 0..1) at least `GAIN_FLOOR` times less than
      the base's;
    - no attacked image of any certified model gained more than its certified bound;
    - the pruned `replace` model's test SROCC at most `PRUNED_SROCC_DROP` below its
      parent's, with at least `PRUNED_PARAMS_FLOOR` of the parameters gone.

    Returns a list of `{"check", "measured", "floor", "met"}`; `met` is None where the
    report lacks what a check needs (the attack was not run, or no model is certified).
    """
    from keras_robust_iqa.evaluation.frontier import find_result

    models = report["models"]
    base, robust = models["base"], models["replace"]
    ratio = robust["test"]["srocc"] / base["test"]["srocc"] if base["test"]["srocc"] > 0 else None
    checks = [{"check": "replace test SROCC / base test SROCC", "measured": ratio, "floor": SROCC_FLOOR,
               "met": None if ratio is None else bool(ratio >= SROCC_FLOOR),
               "values": {"replace": robust["test"]["srocc"], "base": base["test"]["srocc"]}}]
    rows = [find_result(m["attacks"], attack, eps) for m in (base, robust)]
    gains = [None if row is None else row.get("abs_gain_raw") for row in rows]
    ratio = gains[0] / gains[1] if None not in gains and gains[1] > 0 else None
    label = f"{attack} {round(eps * 255)}/255"
    checks.append({"check": f"base {label} gain / replace {label} gain (MOS 0..1)", "measured": ratio,
                   "floor": GAIN_FLOOR, "met": None if ratio is None else bool(ratio >= GAIN_FLOOR),
                   "values": {"base": gains[0], "replace": gains[1]}})
    certified = [(name, key, entry) for name, m in models.items() for key, entry in m["attacks"].items()
                 if entry.get("within_certified_bound") is not None]
    largest = max((entry.get("max_gain_over_bound", 0.0) for *_, entry in certified), default=None)
    checks.append({"check": "largest attacked image's gain / its certified bound", "measured": largest,
                   "floor": 1.0, "met": bool(all(entry["within_certified_bound"] for *_, entry in certified))
                   if certified else None,
                   "values": {"rows": len(certified),
                              "outside": [f"{name} {key}" for name, key, entry in certified
                                          if not entry["within_certified_bound"]]}})
    pruned = models.get("replace-pruned")
    if pruned is not None:
        drop = robust["test"]["srocc"] - pruned["test"]["srocc"]
        fewer = 1 - pruned["params"] / robust["params"]
        checks.append({"check": "replace-pruned test SROCC below replace test SROCC", "measured": drop,
                       "floor": PRUNED_SROCC_DROP,
                       "met": bool(drop <= PRUNED_SROCC_DROP and fewer >= PRUNED_PARAMS_FLOOR),
                       "values": {"replace": robust["test"]["srocc"], "replace-pruned": pruned["test"]["srocc"],
                                  "fewer_params": fewer, "params_floor": PRUNED_PARAMS_FLOOR}})
    return checks


def checks_text(checks):
    """One Markdown bullet per floor check, saying what was measured and whether it holds."""
    verdict = {True: "**met**", False: "**not met**", None: "not measured"}
    lines = []
    for c in checks:
        v = c["values"]
        if c["check"].startswith("replace test SROCC"):
            what = (f"`replace` test SROCC {v['replace']:.3f} is {_fmt(c['measured'])}x the base's "
                    f"{v['base']:.3f} (floor: {c['floor']:g}x)")
        elif c["check"].startswith("base "):
            what = (f"{c['check'].split(' gain')[0][5:]} gain: base {_fmt(v['base'])}, `replace` "
                    f"{_fmt(v['replace'])}, {_fmt(c['measured'])}x lower (floor: {c['floor']:g}x)")
        elif c["check"].startswith("replace-pruned test SROCC"):
            what = (f"`replace-pruned` test SROCC {v['replace-pruned']:.3f} is {c['measured']:.3f} below "
                    f"`replace`'s {v['replace']:.3f} (floor: within {c['floor']:g}) with "
                    f"{100 * v['fewer_params']:.0f} % fewer parameters (floor: {100 * v['params_floor']:.0f} %)")
        else:
            what = (f"no attacked image of a certified model beat its certified bound: largest gain "
                    f"{_fmt(c['measured'])} of the bound over {v['rows']} model x attack rows"
                    + (f"; outside: {', '.join(v['outside'])}" if v["outside"] else ""))
        lines.append(f"- {what}: {verdict[c['met']]}")
    return "\n".join(lines)


def _fmt(value):
    return "-" if value is None else f"{value:.4g}"


def _what_was_measured(report):
    models = report["models"].values()
    tested = max(m["test"].get("images", 0) for m in models)
    attacked = max(m.get("attacked_images") or 0 for m in models)
    labels = [entry["images"] for entry in (report.get("labels") or {}).values()]
    on_labels = f" The labels' own gain: {max(labels)} evenly spaced test images." if labels else ""
    return (f"Test SROCC and PLCC: every test image ({tested}), scored by patch averaging. Attacks: "
            f"{attacked} evenly spaced test images; the `clean` rows below are their correlations. "
            "Gain (MOS 0..1): mean score increase on the normalised MOS scale the models predict." + on_labels)


def report_markdown(report):
    from keras_robust_iqa.evaluation.report import markdown_table

    evaluation = {"models": {name: {"attacks": m["attacks"], "clean": m["attacked_images_clean"] or m["test"],
                                    "params": m["params"],
                                    "lipschitz_bound": m["lipschitz_bound"]}
                             for name, m in report["models"].items()},
                  "labels": report.get("labels")}
    seconds = ", ".join(f"{stage} {s:.0f} s" for stage, s in report["stage_seconds"].items())
    return "\n".join([
        "# robust-iqa demo report",
        "",
        f"Settings: `{json.dumps(report['settings'])}`",
        "",
        f"Stage times (as measured when each stage ran): {seconds}.",
        "",
        "## Summary",
        "",
        summary_table(report),
        "",
        _what_was_measured(report),
        "",
        "## Checks",
        "",
        checks_text(report["checks"]),
        "",
        markdown_table(evaluation).replace("# Adversarial robustness report", "## Every attack"),
        "",
        "Plots: `gain_vs_eps.png`, `clean_vs_attacked.png`, `attack_examples.png` (a few test images, clean and "
        "attacked, base and `replace` side by side) and, when I-FGSM at 4/255 ran, `frontier.png`.",
        "",
    ])
