"""`prune_run`: prune the model of a run folder, fine-tune it, write a run folder and a report.

The output folder is a run folder like `train`'s (`model.keras`, `config.json`,
`metrics.json`, `history.csv`) plus `pruned/model.keras` (right after the
surgery, before fine-tuning) and `pruning_report.json` / `.md` / `.png`: parameters,
FLOPs, latency, SROCC / PLCC and the Lipschitz bound before pruning, after
pruning and after fine-tuning.
"""

import dataclasses
import pathlib

import keras
import numpy as np
import tensorflow as tf

from keras_robust_iqa import models as iqa_models
from keras_robust_iqa import run_folder
from keras_robust_iqa.layers.keras_rules import contract_of
from keras_robust_iqa.pruning.callback import ChannelPruning
from keras_robust_iqa.pruning.cost import count_flops, inference_latency, leaf_layers
from keras_robust_iqa.pruning.criterion import check_criterion
from keras_robust_iqa.pruning.graph import ChannelGraph
from keras_robust_iqa.pruning.schedule import check_target, gradual_schedule
from keras_robust_iqa.pruning.surgery import masked_model, prune
from keras_robust_iqa.training.trainer import (
    TrainConfig,
    compile_model,
    evaluate_images,
    load_datasets,
    train,
)

STAGES = ("before", "after_pruning", "after_finetune")
ACTIVATION_BATCHES = 4  # training batches the activation criterion measures on
CRITERION_TEXT = {
    "mean_weight": "mean |w| over each output channel's weights; for OrthoConv2D / OrthoDense the weights of "
                   "the orthogonal operator they compute, times |d| of a ChannelGain that follows "
                   "(see keras_robust_iqa.pruning.criterion)",
    "activation": "mean squared output of each channel on {batches} batches of training patches, in the "
                  "masked model as pruning goes, times d^2 of a ChannelGain that follows "
                  "(see keras_robust_iqa.pruning.criterion)",
}


# The TrainConfig options that only build a model, at their defaults.
_BUILD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)
                   if f.name in ("robust", "robust_conv", "robust_activation", "robust_pooling", "robust_channel_gains",
                                 "robust_bottleneck", "model_activation",
                                 "weights")}


def read_run(run):
    """The model (safe mode) and `TrainConfig` of a run folder."""
    model = run_folder.load_model(run)
    saved = run_folder.read_config(run)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    # Runs saved before `robust_conv` existed built the Fourier layer, today's default is "block".
    saved.setdefault("robust_conv", "fourier")
    return model, TrainConfig(**{k: v for k, v in saved.items() if k in fields})


def model_facts(model, table, metrics=None, latency_batch=16):
    """Parameters, FLOPs per patch, latency, test / val correlations, Lipschitz bound.

    `metrics`: test / val correlations already computed (by `train`).
    """
    metrics = metrics or {split: evaluate_images(model, table, split) for split in ("test", "val")}
    try:
        bound = iqa_models.lipschitz_bound(model)
    except ValueError:
        bound = None
    return {
        "params": int(model.count_params()),
        "flops": count_flops(model),
        "latency_ms": round(1e3 * inference_latency(model, batch_size=latency_batch), 3),
        "latency_batch": latency_batch,
        "test": metrics["test"],
        "val": metrics["val"],
        "lipschitz_bound": bound,
    }


def _check_epochs(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"--{name} must be an integer >= 0, got {value!r}.")


def prune_run(run, out, *, fraction=None, tau=None, prune_epochs=1, finetune_epochs=15,
              learning_rate=None, criterion="activation", distill_weight=0.0, verbose="auto"):
    """Prune the model of run folder `run`, fine-tune it, and write run folder `out`.

    1. The criterion scores each channel: `"activation"` (the default), its mean
       squared output on `ACTIVATION_BATCHES` batches of training patches, or
       `"mean_weight"`, the mean |w| of the weights that produce it (the paper's). With
       `fraction`, that share of the prunable channels of each tied set of
       layers goes, smallest score first; with `tau`, every channel scoring
       below `tau`.
    2. `prune_epochs` of `model.fit` with channel masks, the fraction (or tau)
       ramped by a tfmot `PolynomialDecay` (`ThresholdDecay`), so the rest of
       the network adapts while channels go; 0 prunes at once.
    3. Surgery: the model is rebuilt without the pruned channels.
    4. `finetune_epochs` of `train` (same dataset settings as the run, the
       best epoch by validation SROCC kept), at `learning_rate` (default: the
       run's own: a network that lost a third of its channels has much to
       relearn). With `distill_weight` w > 0 each training patch's target is
       `(1 - w) * MOS + w * the source model's score` (`TrainConfig.distill_from`
       the source run): the pruned model is taught the function it was cut from.

    Returns:
        The report written to `pruning_report.json`.
    """
    fraction, tau = check_target(fraction, tau, prefix="--")
    _check_epochs("prune-epochs", prune_epochs)
    _check_epochs("finetune-epochs", finetune_epochs)
    criterion = check_criterion(criterion)
    if not 0 <= distill_weight <= 1:
        raise ValueError(f"--distill-weight must be in [0, 1], got {distill_weight!r}.")
    if learning_rate is not None and not learning_rate > 0:
        raise ValueError(f"--learning-rate must be positive, got {learning_rate!r}.")
    if pathlib.Path(out).resolve() == pathlib.Path(run).resolve():
        raise ValueError(f"--out must be a new run folder, not the pruned run itself ({run}).")
    model, config = read_run(run)
    learning_rate = learning_rate or config.learning_rate
    graph = ChannelGraph(model)
    # The model is built: the options that build one (robustify's, the backbone weights) no
    # longer apply, and the replace-only ones would fail validation without --robust replace.
    config = dataclasses.replace(config, learning_rate=learning_rate, **_BUILD_DEFAULTS)
    keras.utils.set_random_seed(config.seed)
    table, train_ds, val_ds = load_datasets(config)
    batches = None
    if criterion == "activation":  # a few fixed batches, in memory: every rescoring sees the same patches
        batches = [x for x, *_ in train_ds.take(ACTIVATION_BATCHES).as_numpy_iterator()]
    initial_scores = graph.scores(criterion, batches)
    if tau is not None:
        graph.select(initial_scores, tau=tau)  # a tau that empties a layer fails here, before any training
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)

    stages = {"before": model_facts(model, table)}

    schedule = None
    if prune_epochs:
        masked, masks = masked_model(model, graph)
        steps = prune_epochs * int(tf.data.experimental.cardinality(train_ds))
        schedule = gradual_schedule(max(steps, 1), fraction=fraction, tau=tau)
        pruning = ChannelPruning(graph, masks, schedule, criterion, batches)
        # The weights that set the bound uncapped (the layer contract's `bound_by_weights`)
        # stay as they are while channels are masked.
        frozen = [layer for layer in leaf_layers(model)
                  if getattr(contract_of(layer), "bound_by_weights", False) and layer.trainable]
        for layer in frozen:
            layer.trainable = False
        compile_model(masked, config)
        try:
            masked.fit(train_ds, validation_data=val_ds, epochs=prune_epochs, callbacks=[pruning],
                       verbose=verbose, shuffle=False)  # the pipeline shuffles
        finally:
            for layer in frozen:
                layer.trainable = True
        pruning.prune_to(pruning.final_value())  # the target, even if fit ended early
        pruned_groups = pruning.pruned
    else:
        pruned_groups = graph.select(initial_scores, fraction=fraction, tau=tau)
    final_scores = graph.scores(criterion, batches)
    pruned = prune(model, graph=graph, groups=pruned_groups)
    (out / "pruned").mkdir(exist_ok=True)
    pruned.save(out / "pruned" / "model.keras")
    stages["after_pruning"] = model_facts(pruned, table)

    metrics = {}
    # A run trained by distillation keeps its teacher's targets unless `distill_weight` points
    # the fine-tuning at the unpruned model.
    teacher = dict(distill_from=str(run), distill_weight=distill_weight) if distill_weight else {}
    finetune = dataclasses.replace(config, init_from=str(out / "pruned"), epochs=finetune_epochs, **teacher)
    if finetune_epochs:
        metrics = train(finetune, out, verbose=verbose)
        stages["after_finetune"] = model_facts(run_folder.load_model(out), table, metrics)
    else:
        pruned.save(out / run_folder.MODEL_FILE)
        run_folder.write_config(out, dataclasses.asdict(config))
        stages["after_finetune"] = stages["after_pruning"]

    report = _report(run, graph, pruned_groups, final_scores, stages, criterion=criterion, fraction=fraction,
                     tau=tau, prune_epochs=prune_epochs, finetune_epochs=finetune_epochs,
                     learning_rate=learning_rate, distill_weight=distill_weight,
                     finetune_targets=_finetune_targets(finetune, run), schedule=schedule)
    final = stages["after_finetune"]
    metrics |= {k: final[k] for k in ("test", "val", "params", "flops", "lipschitz_bound")}
    run_folder.write_metrics(out, metrics)
    saved_config = run_folder.read_config(out)
    saved_config["pruning"] = {k: report[k] for k in ("source_run", "criterion", "fraction", "tau", "prune_epochs",
                                                       "finetune_epochs", "learning_rate", "distill_weight",
                                                       "schedule")}
    run_folder.write_config(out, saved_config)
    run_folder.write_json(out / "pruning_report.json", report)
    (out / "pruning_report.md").write_text(report_markdown(report))
    plot_channels(report, out / "pruning_report.png")
    return report


def _finetune_targets(config, run):
    """What the fine-tuning of `config` learns from, in words: the MOS, or its mix with a teacher's scores."""
    if not config.distill_from:
        return "the MOS"
    teacher = "the unpruned model's" if config.distill_from == str(run) else f"{config.distill_from}'s"
    return f"(1 - {config.distill_weight:g}) MOS + {config.distill_weight:g} x {teacher} scores"


def _report(run, graph, pruned_groups, scores, stages, *, schedule, criterion, **settings):
    layers = {}
    for name in graph.producers:
        kept = graph.kept_positions(graph.outputs_of[name], pruned_groups)
        s = scores[name]
        layers[name] = {
            "channels_before": len(s),
            "channels_after": len(kept),
            "score_min": float(s.min()),
            "score_max": float(s.max()),
            "largest_pruned_score": float(np.max(np.delete(s, kept))) if len(kept) < len(s) else None,
        }
    pruned_channels = sum(len(graph.groups[g]) for g in pruned_groups)
    return {
        "source_run": str(run),
        "criterion": criterion,
        **settings,
        "schedule": schedule.get_config() if schedule is not None else None,
        "criterion_text": CRITERION_TEXT[criterion].format(batches=ACTIVATION_BATCHES),
        "prunable_channels": graph.prunable_channels,
        "pruned_channels": pruned_channels,
        "pruned_fraction": pruned_channels / graph.prunable_channels,
        "layers": layers,
        "stages": stages,
    }


def plot_channels(report, path):
    """Output channels of each prunable layer before and after pruning, as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["layers"])
    x = np.arange(len(names))
    figure, axis = plt.subplots(figsize=(max(5, 0.9 * len(names) + 2), 4))
    axis.bar(x - 0.2, [report["layers"][n]["channels_before"] for n in names], 0.4, label="before")
    axis.bar(x + 0.2, [report["layers"][n]["channels_after"] for n in names], 0.4, label="after pruning")
    axis.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    axis.set_ylabel("output channels")
    axis.set_title(f"{report['pruned_channels']} of {report['prunable_channels']} prunable channels pruned")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _fmt(value, digits=4):
    if value is None:
        return "none"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}"


def report_markdown(report):
    """The report as a Markdown page: one table of the three stages, one of the layers."""
    stages = report["stages"]
    rows = [
        ("parameters", lambda s: s["params"]),
        ("FLOPs per patch", lambda s: s["flops"]),
        (f"latency, batch of {stages['before']['latency_batch']} (ms)", lambda s: s["latency_ms"]),
        ("test SROCC", lambda s: s["test"]["srocc"]),
        ("test PLCC", lambda s: s["test"]["plcc"]),
        ("val SROCC", lambda s: s["val"]["srocc"]),
        ("val PLCC", lambda s: s["val"]["plcc"]),
        ("certified Lipschitz bound (per patch)", lambda s: s["lipschitz_bound"]),
    ]
    target = f"fraction {report['fraction']}" if report["fraction"] is not None else f"tau {report['tau']}"
    lines = [
        f"# Pruning report: {report['source_run']}",
        "",
        f"Target: {target}; pruned {report['pruned_channels']} of {report['prunable_channels']} prunable "
        f"channels ({100 * report['pruned_fraction']:.1f} %); {report['prune_epochs']} masked epoch(s), "
        f"{report['finetune_epochs']} fine-tuning epoch(s) at learning rate {report['learning_rate']:g}"
        f", towards {report['finetune_targets']}.",
        "",
        "| | before | after pruning | after fine-tuning |",
        "|---|---|---|---|",
    ]
    for label, get in rows:
        lines.append(f"| {label} | " + " | ".join(_fmt(get(stages[s])) for s in STAGES) + " |")
    lines += ["", f"Criterion ({report['criterion']}): {report['criterion_text']}.", "",
              "| layer | channels before | after | scores | largest pruned |", "|---|---|---|---|---|"]
    for name, layer in report["layers"].items():
        lines.append(
            f"| {name} | {layer['channels_before']} | {layer['channels_after']} | "
            f"{_fmt(layer['score_min'], 3)} to {_fmt(layer['score_max'], 3)} | "
            f"{_fmt(layer['largest_pruned_score'], 3)} |"
        )
    return "\n".join(lines) + "\n"
