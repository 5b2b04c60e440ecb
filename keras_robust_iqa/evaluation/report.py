"""The evaluation report: `report.json`, a Markdown table and PNG plots."""

import json
import math
import pathlib

from keras_robust_iqa.evaluation.evaluate import eps_label
from keras_robust_iqa.evaluation.examples import plot_attack_examples
from keras_robust_iqa.evaluation.frontier import agg_pyplot, frontier_markdown, model_colours, plot_frontier, split_seed
from keras_robust_iqa.evaluation.strength import CONVERGED

_COLUMNS = (
    ("eps", "eps"), ("abs gain", "abs_gain"), ("abs gain (raw)", "abs_gain_raw"), ("rel gain", "rel_gain"),
    ("R", "robustness_score"),
    ("R 95% CI", "robustness_score_ci95"), ("Wasserstein", "wasserstein_score"),
    ("energy", "energy_distance_score"), ("SROCC", "srocc"), ("PLCC", "plcc"), ("KRCC", "krcc"),
    ("certified bound", "certified_bound"), ("within bound", "within_certified_bound"),
    ("gain / longer run's", "strength_ratio"),
)


def write_report(report, out, details=None, examples=None):
    """Write `report.json`, `report.md`, `gain_vs_eps.png`, `clean_vs_attacked.png`,
    `attack_examples.png` and `frontier.png` into `out`.

    Args:
        report: `{"models": {name: entry}}` with entries from `evaluate_model`, and
            optionally `"labels"`: the labels' own gains (`evaluate_runs(label_gain=True)`),
            and `"frontier"`: `evaluation.build_frontier(report, ...)`, drawn as
            `frontier.png` and tabulated in `report.md`.
        out: the folder to write (created if missing).
        details: `{name: {attack key: (clean, attacked)}}` MinMax-scaled
            scores for the scatter plot; without it that plot is skipped.
        examples: `evaluation.examples.attack_examples(...)`, drawn as
            `attack_examples.png`; without it that picture is skipped.

    Returns:
        The paths written.
    """
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "report.md", out / "gain_vs_eps.png"]
    paths[0].write_text(json.dumps(report, indent=2))
    paths[1].write_text(markdown_table(report))
    plot_gain_vs_eps(report, paths[2])
    if details:
        paths.append(out / "clean_vs_attacked.png")
        plot_clean_vs_attacked(details, paths[-1])
    if examples:
        paths.append(out / "attack_examples.png")
        plot_attack_examples(examples, paths[-1])
    if report.get("frontier"):
        paths.append(out / "frontier.png")
        plot_frontier(report["frontier"], paths[-1])
    return paths


def _cell(key, value, norm="linf"):
    if value is None:
        return "-"
    if key == "eps":
        return eps_label(value, norm)
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, list):
        return "[" + ", ".join(_cell(key, v) for v in value) + "]"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown_table(report):
    """One table, a row per model and attack, the clean accuracy in each model's first row; then
    clean SROCC by distortion type, the labels' own gain and the frontier where the report has them."""
    header = ["model", "attack", *(title for title, _ in _COLUMNS)]
    lines = [
        "# Adversarial robustness report",
        "",
        "Gains are on scores MinMax-scaled by the clean scores' range; R is the robustness score "
        "(higher is more robust); the certified bound (1-Lipschitz models) is the mean per-image bound "
        "on the gain, in the same units.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    if any("strength_ratio" in result for entry in report["models"].values() for result in entry["attacks"].values()):
        lines[2] += (f" \"gain / longer run's\" is the attack's gain over that of the same attack run much longer "
                     f"(`evaluation.strength`); below {CONVERGED:g} the attack has not converged (**bold**).")
    for name, entry in report["models"].items():
        clean = entry["clean"]
        row = {"srocc": clean["srocc"], "plcc": clean["plcc"], "krcc": clean["krcc"]}
        lines.append("| " + " | ".join([name, "clean", *(_cell(key, row.get(key)) for _, key in _COLUMNS)]) + " |")
        for attack, result in entry["attacks"].items():
            cells = [_cell(key, result.get(key), result.get("norm", "linf")) for _, key in _COLUMNS]
            if result.get("converged") is False:
                cells[-1] = f"**{cells[-1]}**"
            lines.append("| " + " | ".join([name, result.get("attack", attack), *cells]) + " |")
    frontier = ["", *frontier_markdown(report["frontier"])] if report.get("frontier") else []
    return "\n".join(lines + _distortion_table(report) + _label_table(report) + frontier) + "\n"


def _distortion_table(report):
    """Clean SROCC within each distortion type, a column per model (when the data has types)."""
    by_model = {name: entry["clean"]["by_distortion"] for name, entry in report["models"].items()
                if "by_distortion" in entry["clean"]}
    kinds = sorted({kind for groups in by_model.values() for kind in groups})
    if not kinds:
        return []
    lines = ["", "## Clean SROCC by distortion type", "",
             "| distortion | images | " + " | ".join(by_model) + " |", "|" + "---|" * (len(by_model) + 2)]
    for kind in kinds:
        groups = [g.get(kind) for g in by_model.values()]
        images = next(g["images"] for g in groups if g)
        lines.append(f"| {kind} | {images} | " + " | ".join(_cell("srocc", g["srocc"]) if g else "-" for g in groups)
                     + " |")
    return lines


def _label_table(report):
    """The labels' own gain next to each model's, on the MOS 0..1 scale (`--label-gain`)."""
    labels = report.get("labels")
    if not labels:
        return []
    names = list(report["models"])
    lines = ["", "## The labels' own gain", "",
             "How far each attack raises the built-in labels themselves (MS-SSIM against each image's "
             "pristine crop) on the same images, against each model's mean gain, both on the MOS 0..1 "
             "scale; in brackets, the model's gain over the labels' (where the labels rose).", "",
             "| attack | eps | labels | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 3)]
    for key, result in labels.items():
        cells = []
        for name in names:
            model_result = report["models"][name]["attacks"].get(key)
            if model_result is None:
                cells.append("-")
                continue
            gain = model_result["abs_gain_raw"]
            # No ratio where the attack did not raise the labels (one FGSM step can overshoot).
            ratio = f" ({_cell('ratio', gain / result['abs_gain_raw'])}x)" if result["abs_gain_raw"] > 0 else ""
            cells.append(_cell("abs_gain", gain) + ratio)
        lines.append(f"| {result['attack']} | {_cell('eps', result['eps'], result['norm'])} | "
                     f"{_cell('abs_gain', result['abs_gain_raw'])} | " + " | ".join(cells) + " |")
    return lines


def plot_gain_vs_eps(report, path):
    """Absolute gain (MinMax-scaled) against the budget: one panel per attack, one colour per model.

    A model keeps its colour in every panel; the seeds of one model (names that differ only
    by a `-sN` / `-seedN` suffix) share it, with a line style each. The legend is outside the
    panels, so it covers no line.
    """
    plt = agg_pyplot()
    attacks = {}  # attack -> norm, in report order
    for entry in report["models"].values():
        for result in entry["attacks"].values():
            attacks.setdefault(result["attack"], result["norm"])
    model_of = {name: split_seed(name)[0] for name in report["models"]}
    colours = model_colours(model_of.values())
    styles = ("-", "--", ":", "-.")
    seen, style = {}, {}
    for name, model in model_of.items():  # the k-th seed of a model gets the k-th line style
        style[name] = styles[seen.get(model, 0) % len(styles)]
        seen[model] = seen.get(model, 0) + 1
    columns = min(3, max(1, len(attacks)))
    rows = math.ceil(max(1, len(attacks)) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.6 * rows), squeeze=False,
                                layout="constrained")
    handles = {}
    for axis, (attack, norm) in zip(axes.flat, attacks.items()):
        scale = 255 if norm == "linf" else 1
        for name, entry in report["models"].items():
            points = sorted((r["eps"], r["abs_gain"]) for r in entry["attacks"].values() if r["attack"] == attack)
            if not points:
                continue
            (line,) = axis.plot([p[0] * scale for p in points], [p[1] for p in points], marker="o", markersize=3,
                                color=colours[model_of[name]], linestyle=style[name])
            handles.setdefault(name, line)
        axis.set_title(attack, fontsize=10)
        axis.set_xlabel("eps (x 1/255, L-inf)" if norm == "linf" else "eps (L2)")
        axis.set_ylabel("absolute gain (MinMax-scaled score)")
        axis.axhline(0, color="gray", linewidth=0.5)
    for axis in list(axes.flat)[len(attacks):]:
        axis.set_visible(False)
    if handles:
        figure.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=7,
                      ncols=1 + len(handles) // 30)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_clean_vs_attacked(details, path):
    """Scaled clean against attacked scores, one panel per model in a grid of up to three
    columns, each attack at its largest budget."""
    plt = agg_pyplot()
    columns = min(3, len(details))
    rows = math.ceil(len(details) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.6 * rows), squeeze=False)
    for axis in list(axes.flat)[len(details):]:
        axis.set_visible(False)
    for axis, (name, by_key) in zip(axes.flat, details.items()):
        largest = {}
        for key in by_key:
            attack, _, _ = key.partition("@")
            largest[attack] = key  # keys come in increasing budget order
        for attack, key in largest.items():
            clean, attacked = by_key[key]
            axis.scatter(clean, attacked, s=6, label=key)
        axis.plot([0, 1], [0, 1], color="gray", linewidth=0.8)
        axis.set_title(name)
        axis.set_xlabel("clean score (scaled)")
        axis.set_ylabel("attacked score (scaled)")
        axis.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
