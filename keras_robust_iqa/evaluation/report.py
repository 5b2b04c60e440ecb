"""The evaluation report: `report.json`, a Markdown table and PNG plots."""

import json
import math
import pathlib

from keras_robust_iqa.evaluation.evaluate import eps_label

_COLUMNS = (
    ("eps", "eps"), ("abs gain", "abs_gain"), ("abs gain (raw)", "abs_gain_raw"), ("rel gain", "rel_gain"), ("R", "robustness_score"),
    ("R 95% CI", "robustness_score_ci95"), ("Wasserstein", "wasserstein_score"),
    ("energy", "energy_distance_score"), ("SROCC", "srocc"), ("PLCC", "plcc"), ("KRCC", "krcc"),
    ("certified bound", "certified_bound"), ("within bound", "within_certified_bound"),
)


def write_report(report, out, details=None):
    """Write `report.json`, `report.md`, `gain_vs_eps.png` and `clean_vs_attacked.png` into `out`.

    Args:
        report: `{"models": {name: entry}}` with entries from `evaluate_model`, and
            optionally `"labels"`: the labels' own gains (`evaluate_runs(label_gain=True)`).
        out: the folder to write (created if missing).
        details: `{name: {attack key: (clean, attacked)}}` MinMax-scaled
            scores for the scatter plot; without it that plot is skipped.

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
        plot_clean_vs_attacked(details, paths[3])
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
    """One table, a row per model and attack, the clean accuracy in each model's first row."""
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
    for name, entry in report["models"].items():
        clean = entry["clean"]
        row = {"srocc": clean["srocc"], "plcc": clean["plcc"], "krcc": clean["krcc"]}
        lines.append("| " + " | ".join([name, "clean", *(_cell(key, row.get(key)) for _, key in _COLUMNS)]) + " |")
        for attack, result in entry["attacks"].items():
            cells = [_cell(key, result.get(key), result.get("norm", "linf")) for _, key in _COLUMNS]
            lines.append("| " + " | ".join([name, result.get("attack", attack), *cells]) + " |")
    return "\n".join(lines + _distortion_table(report) + _label_table(report)) + "\n"


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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_gain_vs_eps(report, path):
    """Absolute gain against the budget: one line per model and attack, one panel per norm."""
    plt = _pyplot()
    norms = sorted({r["norm"] for e in report["models"].values() for r in e["attacks"].values()}) or ["linf"]
    figure, axes = plt.subplots(1, len(norms), figsize=(6 * len(norms), 4.5), squeeze=False)
    for axis, norm in zip(axes[0], norms):
        for name, entry in report["models"].items():
            lines = {}
            for result in entry["attacks"].values():
                if result["norm"] == norm:
                    lines.setdefault(result["attack"], []).append((result["eps"], result["abs_gain"]))
            for attack, points in lines.items():
                points.sort()
                scale = 255 if norm == "linf" else 1
                axis.plot([p[0] * scale for p in points], [p[1] for p in points], marker="o",
                          label=f"{name}: {attack}")
        axis.set_xlabel("eps (x 1/255, L-inf)" if norm == "linf" else "eps (L2)")
        axis.set_ylabel("absolute gain (MinMax-scaled score)")
        axis.axhline(0, color="gray", linewidth=0.5)
        axis.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_clean_vs_attacked(details, path):
    """Scaled clean against attacked scores, one panel per model, each attack at its largest budget."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(details), figsize=(5 * len(details), 5), squeeze=False)
    for axis, (name, by_key) in zip(axes[0], details.items()):
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
