"""The accuracy-robustness frontier: each model's clean SROCC against its gain under one attack.

`build_frontier(report, attack, eps)` reads an evaluation report (`evaluate_runs`) and gives, per
model, its clean SROCC (the test split's, from the run's `metrics.json`, where the caller
passes it; else the attacked images' clean SROCC), its mean gain under `attack` at `eps` on
the normalised MOS 0..1 scale (`abs_gain_raw`), its certified bound where it has one, and
the ratio of its gain to the labels' own gain (`--label-gain`) at the same attack and budget.

Runs whose names differ only by a seed suffix (`replace-s0`, `replace-s1`, `replace-seed2`)
are one model: `groups` gives the mean and the sample standard deviation (ddof 1; None for a
single seed) of each coordinate over its seeds. `plot_frontier` draws it (`frontier.png`),
`frontier_markdown` tabulates it, and `model_colours` gives the colours the report's plots
share.
"""

import math
import re

import numpy as np

from keras_robust_iqa.evaluation.evaluate import attack_key, attack_norm, eps_label

DEFAULT_ATTACK = "ifgsm"
DEFAULT_EPS = {"linf": 4 / 255, "l2": 1.0}
# `NAME-sN` or `NAME-seedN`: seed N of model NAME.
SEED_SUFFIX = re.compile(r"^(?P<model>.+?)-(?:s|seed)(?P<seed>\d+)$")
SROCC_OF_TEST = "test split"
SROCC_OF_ATTACKED = "attacked images"
# Budgets that differ by less than this are the same budget (floats parsed from "4/255").
_EPS_TOLERANCE = 1e-9


def same_budget(a, b):
    """Whether two attack budgets are the same one (floats parsed from "4/255" differ in the last bits)."""
    return abs(float(a) - float(b)) < _EPS_TOLERANCE


def split_seed(name):
    """`(model, seed)` of a run name: `("replace", 1)` for `replace-s1` or `replace-seed1`,
    `(name, None)` for a name without a seed suffix."""
    match = SEED_SUFFIX.match(name)
    if match is None:
        return name, None
    return match["model"], int(match["seed"])


def find_result(results, attack, eps):
    """The entry of `results` (`{key: {"attack", "eps", ...}}`) for `attack` at `eps`, or None."""
    for result in (results or {}).values():
        if result.get("attack") == attack and same_budget(result.get("eps", math.nan), eps):
            return result
    return None


def _ratio(gain, label_gain):
    # No ratio where the attack did not raise the labels (one FGSM step can overshoot).
    return gain / label_gain if label_gain is not None and label_gain > 0 else None


def _mean_std(values):
    """`(mean, sample standard deviation)` of `values`; the std is None for one value, and
    both are None when any value is None."""
    if not values or any(value is None for value in values):
        return None, None
    values = np.asarray(values, "float64")
    return float(values.mean()), (float(values.std(ddof=1)) if values.size > 1 else None)


def build_frontier(report, attack=DEFAULT_ATTACK, eps=None, *, test_srocc=None):
    """The frontier of `report`'s models for one attack and budget.

    Args:
        report: an evaluation report, `{"models": {name: entry}, "labels": ...}`
            (`evaluate_runs`; `labels` only with `label_gain=True`).
        attack: the attack's name, e.g. `"ifgsm"`.
        eps: its budget (default: 4/255 for L-inf attacks, 1.0 for `pgd_l2`).
        test_srocc: `{name: SROCC}` on the whole test split (a run's `metrics.json`
            `test.srocc`); a model missing from it is placed at its attacked images'
            clean SROCC (`srocc_of` says which).

    Returns:
        `{"attack", "norm", "eps", "key", "label_gain", "models", "groups", "missing"}`:
        `models` per run name: `model` and `seed` (from the name), `srocc`, `srocc_of`,
        `gain` (`abs_gain_raw`, MOS 0..1 scale), `gain_to_labels` (None without a positive
        label gain), `certified_bound` (same scale as `gain`; None for an uncertified model
        or an older report) and `certified_bound_scaled` (MinMax-scaled, as `abs_gain`);
        `groups` per model: `runs`, `seeds`, `n`, and `*_mean` / `*_std` of `srocc`,
        `gain`, `gain_to_labels`, `certified_bound` and `certified_bound_scaled`;
        `missing`: runs that have no result for this attack and budget.
    """
    norm = attack_norm(attack)
    eps = DEFAULT_EPS[norm] if eps is None else float(eps)
    test_srocc = test_srocc or {}
    labels = find_result(report.get("labels"), attack, eps)
    label_gain = None if labels is None else float(labels["abs_gain_raw"])
    models, missing = {}, []
    for name, entry in report["models"].items():
        result = find_result(entry.get("attacks"), attack, eps)
        if result is None or result.get("abs_gain_raw") is None:
            missing.append(name)
            continue
        model, seed = split_seed(name)
        on_test = test_srocc.get(name) is not None
        gain = float(result["abs_gain_raw"])
        models[name] = {
            "model": model, "seed": seed,
            "srocc": float(test_srocc[name] if on_test else entry["clean"]["srocc"]),
            "srocc_of": SROCC_OF_TEST if on_test else SROCC_OF_ATTACKED,
            "gain": gain, "gain_to_labels": _ratio(gain, label_gain),
            "certified_bound": result.get("certified_bound_raw"),
            "certified_bound_scaled": result.get("certified_bound"),
        }
    return {
        "attack": attack, "norm": norm, "eps": eps, "key": attack_key(attack, eps, norm),
        "gain": "abs_gain_raw: the mean score increase on the normalised MOS 0..1 scale",
        "label_gain": label_gain, "models": models, "groups": group_seeds(models), "missing": missing,
    }


def group_seeds(models):
    """`build_frontier`'s `groups`: the runs of each model (seeds) with mean and std of each coordinate."""
    members = {}
    for name, point in models.items():
        members.setdefault(point["model"], []).append(name)
    groups = {}
    for model, names in members.items():
        points = [models[name] for name in names]
        sources = {point["srocc_of"] for point in points}
        group = {"runs": names, "seeds": [point["seed"] for point in points], "n": len(names),
                 "srocc_of": sources.pop() if len(sources) == 1 else "mixed"}
        for key in ("srocc", "gain", "gain_to_labels", "certified_bound", "certified_bound_scaled"):
            group[f"{key}_mean"], group[f"{key}_std"] = _mean_std([point[key] for point in points])
        groups[model] = group
    return groups


def _value(mean, std=None, digits=3):
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def frontier_markdown(result):
    """The frontier as Markdown lines: one row per model (seeds grouped), mean ± std."""
    budget = eps_label(result["eps"], result["norm"])
    label = result["label_gain"]
    lines = [
        f"## Accuracy-robustness frontier: {result['attack']} at {budget}", "",
        f"Each model's clean SROCC against its mean gain under {result['attack']} at {budget}, on the "
        "normalised MOS 0..1 scale; runs that differ only by a `-sN` / `-seedN` suffix are one model, "
        "given as mean ± standard deviation over its seeds. The certified bound is on the same scale "
        "(where the report has it only MinMax-scaled, it is marked `(scaled)`).",
    ]
    if label is not None:
        lines[-1] += (f" The labels' own gain under the same attack is {label:.4g}; "
                      "`gain / labels` is the ratio of the two.")
    lines += ["", "| model | seeds | clean SROCC | SROCC of | gain (MOS 0..1) | gain / labels | certified bound |",
              "|---|---:|---:|---|---:|---:|---:|"]
    for model, group in result["groups"].items():
        bound = _value(group["certified_bound_mean"], digits=4)
        if bound == "-" and group["certified_bound_scaled_mean"] is not None:
            bound = _value(group["certified_bound_scaled_mean"], digits=4) + " (scaled)"
        seeds = [seed for seed in group["seeds"] if seed is not None]
        lines.append(
            f"| {model} | {group['n']}" + (f" ({', '.join(map(str, seeds))})" if seeds else "")
            + f" | {_value(group['srocc_mean'], group['srocc_std'])} | {group['srocc_of']} "
            f"| {_value(group['gain_mean'], group['gain_std'], 4)} "
            f"| {_value(group['gain_to_labels_mean'], group['gain_to_labels_std'], 2)} | {bound} |")
    if label is not None:
        lines.append(f"| labels (MS-SSIM against the pristine crop) | - | - | - | {label:.4f} "
                     f"| {'1.00' if label > 0 else '-'} | - |")
    if result["missing"]:
        lines += ["", f"Not on the frontier (no {result['key']} result): {', '.join(result['missing'])}."]
    return lines


def agg_pyplot():
    """`matplotlib.pyplot` on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def model_colours(names):
    """One distinct colour per name, in order: tab10 up to 10 names, tab20 up to 20, else
    evenly spaced colours of a continuous colormap."""
    import matplotlib

    names = list(dict.fromkeys(names))
    if len(names) <= 10:
        colours = matplotlib.colormaps["tab10"].colors
    elif len(names) <= 20:
        colours = matplotlib.colormaps["tab20"].colors
    else:
        colours = matplotlib.colormaps["turbo"](np.linspace(0.05, 0.95, len(names)))
    return {name: colours[i] for i, name in enumerate(names)}


def plot_frontier(result, path):
    """`frontier.png`: clean SROCC against the gain, one point per model with error bars over its
    seeds, the labels' gain as a dashed vertical line (with a ratio axis on top), and each
    certified model's bound written beside its point."""
    plt = agg_pyplot()
    budget = eps_label(result["eps"], result["norm"])
    colours = model_colours(result["groups"])
    figure, axis = plt.subplots(figsize=(8, 5.5), layout="constrained")
    for model, group in result["groups"].items():
        axis.errorbar(group["gain_mean"], group["srocc_mean"], xerr=group["gain_std"], yerr=group["srocc_std"],
                      fmt="o", color=colours[model], capsize=3, markersize=6,
                      label=f"{model} (n={group['n']})")
        note = model
        if group["certified_bound_mean"] is not None:
            note += f"\ncertified ≤ {group['certified_bound_mean']:.3g}"
        elif group["certified_bound_scaled_mean"] is not None:
            note += f"\ncertified ≤ {group['certified_bound_scaled_mean']:.3g} (scaled)"
        axis.annotate(note, (group["gain_mean"], group["srocc_mean"]), xytext=(6, 4),
                      textcoords="offset points", fontsize=7, color=colours[model])
    label = result["label_gain"]
    if label is not None:
        axis.axvline(label, color="black", linestyle="--", linewidth=1,
                     label=f"labels' own gain ({label:.3g})")
        if label > 0:
            top = axis.secondary_xaxis("top", functions=(lambda g: g / label, lambda r: r * label))
            top.set_xlabel("gain / labels' gain")
    axis.set_xlabel(f"mean gain under {result['attack']} at {budget} (MOS 0..1 scale)")
    axis.set_ylabel("clean SROCC")
    axis.set_title(f"Accuracy-robustness frontier, {result['attack']} at {budget}", fontsize=10)
    axis.grid(alpha=0.3)
    figure.legend(loc="outside right upper", fontsize=7)
    figure.savefig(path, dpi=120)
    plt.close(figure)


__all__ = ["agg_pyplot", "attack_norm", "build_frontier", "find_result", "frontier_markdown", "group_seeds",
           "model_colours", "plot_frontier", "split_seed"]
