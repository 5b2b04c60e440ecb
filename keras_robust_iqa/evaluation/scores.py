"""Robustness scores of the MSU metrics robustness benchmark (Antsiferova et al., AAAI 2024).

All scores compare a model's clean scores `s` and attacked scores `s'` on the
same images, after MinMax-scaling both with the minimum and maximum of the
clean scores, so models with different output scales compare.
"""

import numpy as np
from scipy import stats


def _pair(clean, attacked):
    clean = np.asarray(clean, "float64").ravel()
    attacked = np.asarray(attacked, "float64").ravel()
    if clean.size != attacked.size:
        raise ValueError(f"clean and attacked must hold as many scores, got {clean.size} and {attacked.size}.")
    if clean.size < 2 or not np.all(np.isfinite(clean)) or not np.all(np.isfinite(attacked)):
        raise ValueError("clean and attacked must hold at least two finite scores each.")
    if np.ptp(clean) == 0:
        raise ValueError("clean scores are all equal: there is no range to scale by.")
    return clean, attacked


def minmax_scale(clean, attacked):
    """`(s, s')`: both scaled linearly so that the clean scores span [0, 1]."""
    clean, attacked = _pair(clean, attacked)
    low, spread = clean.min(), np.ptp(clean)
    return (clean - low) / spread, (attacked - low) / spread


def absolute_gain(clean, attacked):
    """Mean of `s' - s`: how far the attack raised the scaled score."""
    s, s_adv = minmax_scale(clean, attacked)
    return float(np.mean(s_adv - s))


def relative_gain(clean, attacked):
    """Mean of `(s' - s) / (s + 1)`."""
    s, s_adv = minmax_scale(clean, attacked)
    return float(np.mean((s_adv - s) / (s + 1)))


def robustness_score(clean, attacked, confidence=0.95):
    """`R = log10(max(1 - s, s) / (|s - s'| + 1e-6))` averaged over images, with a t-interval.

    Higher is more robust: `R = 1` means the score moved by a tenth of the
    largest move its place in the range allows.

    Returns:
        `(mean, (low, high))`: the mean and its `confidence` t-interval.
    """
    s, s_adv = minmax_scale(clean, attacked)
    r = np.log10(np.maximum(1 - s, s) / (np.abs(s - s_adv) + 1e-6))
    mean, sem = float(np.mean(r)), float(stats.sem(r))
    if sem == 0:
        return mean, (mean, mean)
    low, high = stats.t.interval(confidence, r.size - 1, loc=mean, scale=sem)
    return mean, (float(low), float(high))


def wasserstein_score(clean, attacked):
    """Wasserstein-1 distance between the scaled score distributions, signed by the mean shift."""
    s, s_adv = minmax_scale(clean, attacked)
    return float(np.sign(s_adv.mean() - s.mean()) * stats.wasserstein_distance(s, s_adv))


def energy_distance_score(clean, attacked):
    """Energy distance between the scaled score distributions, signed by the mean shift."""
    s, s_adv = minmax_scale(clean, attacked)
    return float(np.sign(s_adv.mean() - s.mean()) * stats.energy_distance(s, s_adv))


def robustness_scores(clean, attacked):
    """All the scores above, as a dictionary."""
    r, (low, high) = robustness_score(clean, attacked)
    return {
        "abs_gain": absolute_gain(clean, attacked),
        "rel_gain": relative_gain(clean, attacked),
        "robustness_score": r,
        "robustness_score_ci95": [low, high],
        "wasserstein_score": wasserstein_score(clean, attacked),
        "energy_distance_score": energy_distance_score(clean, attacked),
    }
