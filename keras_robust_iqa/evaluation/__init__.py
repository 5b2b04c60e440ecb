"""Robustness evaluation: the benchmark's scores, certified bounds, and the report."""

from keras_robust_iqa.evaluation.certified import (
    CertifiedInterval,
    certified_bounds,
    certified_bounds_or_none,
    certified_interval,
)
from keras_robust_iqa.evaluation.evaluate import attack_key, eps_label, evaluate_model
from keras_robust_iqa.evaluation.frontier import build_frontier, frontier_markdown, plot_frontier, split_seed
from keras_robust_iqa.evaluation.label_gain import label_gain
from keras_robust_iqa.evaluation.label_lipschitz import label_lipschitz
from keras_robust_iqa.evaluation.report import markdown_table, write_report
from keras_robust_iqa.evaluation.runs import evaluate_runs, read_run_config
from keras_robust_iqa.evaluation.scores import (
    absolute_gain,
    energy_distance_score,
    minmax_scale,
    relative_gain,
    robustness_score,
    robustness_scores,
    wasserstein_score,
)

__all__ = [
    "CertifiedInterval", "absolute_gain", "attack_key", "build_frontier", "certified_bounds",
    "certified_bounds_or_none", "certified_interval", "energy_distance_score", "eps_label", "evaluate_model",
    "evaluate_runs", "frontier_markdown", "label_gain", "label_lipschitz", "markdown_table", "minmax_scale",
    "plot_frontier", "read_run_config", "relative_gain", "robustness_score", "robustness_scores", "split_seed",
    "wasserstein_score", "write_report",
]
