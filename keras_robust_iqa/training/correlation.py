"""Reference correlation statistics for IQA evaluation (NumPy / SciPy).

This is the single place where SROCC, PLCC and KRCC are defined for NumPy
inputs. Evaluation reports and tests call these functions; the Keras metrics in
`keras_robust_iqa.training.metrics` are tested against them.

All functions

- flatten both inputs (so `(N, 1)` predictions and `(N,)` MOS both work)
  and compute in float64;
- raise `ValueError` when the two inputs hold a different number of values;
- return `nan` -- without emitting a warning -- when the statistic is
  undefined: fewer than two samples, a constant input, or any non-finite value
  (NaN/inf propagate, as with SciPy's default `nan_policy="propagate"`).

Definitions (identical to SciPy, which does the actual work):

- SROCC: Spearman's rho, i.e. Pearson's r of the average ranks (ties receive
  the mean of the ranks they span, `scipy.stats.rankdata(method="average")`).
- PLCC: Pearson's r, optionally after a monotonic 4-parameter logistic mapping
  of the predictions onto the MOS scale (`fit="logistic4"`), as is customary
  when reporting IQA results (VQEG, 2000).
- KRCC: Kendall's tau-b (tie-corrected), `scipy.stats.kendalltau` default.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import optimize, stats

__all__ = [
    "srocc",
    "plcc",
    "krcc",
    "correlations",
    "correlations_by_distortion",
    "logistic4",
    "fit_logistic4",
]

_PLCC_FITS = ("none", "logistic4")


def _prepare(pred, mos):
    """Flatten to float64 and decide whether the statistic is defined.

    Returns `(x, y, defined)`.
    """
    x = np.asarray(pred, dtype=np.float64).ravel()
    y = np.asarray(mos, dtype=np.float64).ravel()
    if x.size != y.size:
        raise ValueError(
            f"pred and mos must hold the same number of values, got {x.size} "
            f"and {y.size}."
        )
    defined = (
        x.size >= 2
        and bool(np.all(np.isfinite(x)))
        and bool(np.all(np.isfinite(y)))
        # Checked explicitly (not via SciPy's warning) so constant input is a
        # quiet nan, e.g. an untrained model predicting one value everywhere.
        and not bool(np.all(x == x[0]))
        and not bool(np.all(y == y[0]))
    )
    return x, y, defined


def _quiet(fn, *args):
    # Inputs reaching here are non-constant; SciPy may still flag *near*
    # constant input, which is noise in a per-epoch evaluation loop.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        warnings.simplefilter("ignore", stats.NearConstantInputWarning)
        return float(fn(*args).statistic)


def srocc(pred, mos) -> float:
    """Spearman rank-order correlation (average ranks for ties)."""
    x, y, defined = _prepare(pred, mos)
    if not defined:
        return float("nan")
    return _quiet(stats.spearmanr, x, y)


def krcc(pred, mos) -> float:
    """Kendall rank correlation, tau-b variant (corrected for ties)."""
    x, y, defined = _prepare(pred, mos)
    if not defined:
        return float("nan")
    return _quiet(stats.kendalltau, x, y)


def logistic4(x, b1, b2, b3, b4):
    """4-parameter logistic `(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2`.

    `b1`/`b2` are the upper/lower asymptotes (on the MOS scale), `b3` the
    inflection point and `|b4|` the scale (on the prediction scale). Using
    `|b4|` keeps the direction of the mapping in `b1 - b2` only.
    """
    x = np.asarray(x, dtype=np.float64)
    z = -(x - b3) / max(abs(b4), np.finfo(np.float64).tiny)
    # exp overflow to inf is harmless here (gives the lower asymptote).
    with np.errstate(over="ignore"):
        return (b1 - b2) / (1.0 + np.exp(z)) + b2


def fit_logistic4(pred, mos, maxfev: int = 10000):
    """Least-squares fit of `logistic4` mapping `pred` onto `mos`.

    The initial guess spans the MOS range, centred on the predictions, oriented by the
    sign of the rank correlation so that anti-correlated predictions converge too.

    Returns:
        The parameters `(b1, b2, b3, b4)`.

    Raises:
        RuntimeError: when the optimiser does not converge.
        ValueError: when fewer than 5 valid samples are given or the fit is undefined
            (constant/non-finite input).
    """
    x, y, defined = _prepare(pred, mos)
    if not defined:
        raise ValueError("logistic fit needs finite, non-constant pred and mos.")
    if x.size < 5:
        raise ValueError(f"logistic fit needs at least 5 samples, got {x.size}.")
    hi, lo = float(np.max(y)), float(np.min(y))
    if _quiet(stats.spearmanr, x, y) < 0:
        hi, lo = lo, hi
    p0 = [hi, lo, float(np.mean(x)), float(np.std(x))]
    with warnings.catch_warnings():
        # "Covariance could not be estimated" is irrelevant: only the
        # parameters are used.
        warnings.simplefilter("ignore", optimize.OptimizeWarning)
        params, _ = optimize.curve_fit(logistic4, x, y, p0=p0, maxfev=maxfev)
    return tuple(float(p) for p in params)


def plcc(pred, mos, fit: str = "none") -> float:
    """Pearson linear correlation between predictions and MOS.

    Args:
        pred: predicted quality scores, any shape.
        mos: subjective scores, same number of values.
        fit: `"none"` (default) correlates the raw predictions.
            `"logistic4"` first maps the predictions with a 4-parameter
            logistic fitted by least squares to `mos`
            (`fit_logistic4`) and correlates the mapped values; this is
            the customary way to report PLCC for IQA models whose outputs are
            on a different, non-linearly related scale. The fitted mapping may
            be decreasing, so the result measures agreement regardless of
            orientation (a lower-is-better score is not penalised; SROCC and
            KRCC stay signed). It is only meaningful on a held-out set large
            enough to fit 4 parameters. If the fit
            fails (no convergence, fewer than 5 samples) a `RuntimeWarning`
            is emitted and the PLCC of the raw predictions is returned.
    """
    if fit not in _PLCC_FITS:
        raise ValueError(f"fit must be one of {_PLCC_FITS}, got {fit!r}.")
    x, y, defined = _prepare(pred, mos)
    if not defined:
        return float("nan")
    if fit == "logistic4":
        try:
            x = logistic4(x, *fit_logistic4(x, y))
        except (RuntimeError, ValueError) as err:
            warnings.warn(
                f"plcc(fit='logistic4'): logistic fit failed ({err}); "
                "returning PLCC of the unmapped predictions.",
                RuntimeWarning,
                stacklevel=2,
            )
        else:
            # A degenerate fit can flatten the mapping to a constant.
            if np.all(x == x[0]):
                return float("nan")
    return _quiet(stats.pearsonr, x, y)


def correlations(pred, mos, plcc_fit: str = "none") -> dict:
    """All three statistics as `{"srocc": .., "plcc": .., "krcc": ..}`."""
    return {
        "srocc": srocc(pred, mos),
        "plcc": plcc(pred, mos, fit=plcc_fit),
        "krcc": krcc(pred, mos),
    }


def correlations_by_distortion(pred, mos, distortions, plcc_fit: str = "none",
                               min_images: int = 3) -> dict:
    """`correlations` within each distortion type, as IQA papers report them.

    Returns `{type: {"srocc", "plcc", "krcc", "images"}}` in sorted order, for every type
    with at least `min_images` images whose MOS are not all equal: a pristine group (every
    reference at the top of the scale) or an unnamed one (`""`) has no correlation.
    """
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    mos = np.asarray(mos, dtype=np.float64).reshape(-1)
    distortions = np.asarray(distortions, dtype=str).reshape(-1)
    if not pred.size == mos.size == distortions.size:
        raise ValueError(f"pred, mos and distortions must hold as many values, got "
                         f"{pred.size}, {mos.size} and {distortions.size}")
    result = {}
    for kind in sorted(set(distortions.tolist()) - {""}):
        rows = distortions == kind
        if rows.sum() < min_images or np.ptp(mos[rows]) == 0:
            continue
        result[kind] = correlations(pred[rows], mos[rows], plcc_fit) | {"images": int(rows.sum())}
    return result
