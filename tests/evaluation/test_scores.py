"""Robustness scores against hand-computed values, and the certified bound's formula."""

import math

import keras
import numpy as np
import pytest
from scipy import stats

from keras_robust_iqa import evaluation
from keras_robust_iqa.models import build_model, lipschitz_bound, robustify

# Clean scores 2, 3, 4 scale to 0, 0.5, 1; attacked 2.2, 3, 4.4 to 0.1, 0.5, 1.2.
CLEAN = np.array([2.0, 3.0, 4.0])
ATTACKED = np.array([2.2, 3.0, 4.4])


def test_minmax_scaling_uses_the_clean_range():
    s, s_adv = evaluation.minmax_scale(CLEAN, ATTACKED)
    np.testing.assert_allclose(s, [0, 0.5, 1])
    np.testing.assert_allclose(s_adv, [0.1, 0.5, 1.2])


def test_gains_by_hand():
    assert evaluation.absolute_gain(CLEAN, ATTACKED) == pytest.approx((0.1 + 0 + 0.2) / 3)
    assert evaluation.relative_gain(CLEAN, ATTACKED) == pytest.approx((0.1 / 1 + 0 / 1.5 + 0.2 / 2) / 3)


def test_robustness_score_and_its_interval_by_hand():
    r = [math.log10(1 / (0.1 + 1e-6)), math.log10(0.5 / 1e-6), math.log10(1 / (0.2 + 1e-6))]
    mean = sum(r) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in r) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t_{0.975} with 2 degrees of freedom
    value, (low, high) = evaluation.robustness_score(CLEAN, ATTACKED)
    assert value == pytest.approx(mean)
    assert (low, high) == pytest.approx((mean - half, mean + half))


def test_distribution_scores_by_hand_and_signed():
    # Wasserstein-1 in 1-D: the mean distance between sorted samples.
    assert evaluation.wasserstein_score(CLEAN, ATTACKED) == pytest.approx((0.1 + 0 + 0.2) / 3)
    s, s_adv = np.array([0, 0.5, 1]), np.array([0.1, 0.5, 1.2])
    cross = np.abs(s[:, None] - s_adv[None]).mean()
    energy = math.sqrt(2 * cross - np.abs(s[:, None] - s[None]).mean() - np.abs(s_adv[:, None] - s_adv[None]).mean())
    assert evaluation.energy_distance_score(CLEAN, ATTACKED) == pytest.approx(energy)
    # An attack that lowers the scores gets negative scores.
    assert evaluation.wasserstein_score(CLEAN, 2 * CLEAN[0] - ATTACKED + 2) < 0
    assert evaluation.energy_distance_score(ATTACKED, CLEAN) == pytest.approx(
        -stats.energy_distance(*evaluation.minmax_scale(ATTACKED, CLEAN)))


def test_scores_reject_bad_input():
    with pytest.raises(ValueError, match="equal"):
        evaluation.absolute_gain([1.0, 1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="as many"):
        evaluation.robustness_scores(CLEAN, ATTACKED[:2])


@pytest.fixture(scope="module")
def replace_model():
    keras.utils.set_random_seed(0)
    return robustify(build_model("small", patch_size=32), mode="replace")


def test_certified_bound_formula(replace_model):
    patch_bound = lipschitz_bound(replace_model)
    eps = 4 / 255
    # L-inf: each 32x32x3 patch moves by at most eps * sqrt(32 * 32 * 3) in L2, so does their mean;
    # the 70x100 image's centred 2x3 grid is what is scored.
    linf = evaluation.certified_bounds(replace_model, [(32, 32, 3), (70, 100, 3)], eps, "linf")
    np.testing.assert_allclose(linf, patch_bound * eps * math.sqrt(32 * 32 * 3), rtol=1e-6)
    # L2: a budget spread over K disjoint patches moves the mean by at most L eps / sqrt(K).
    l2 = evaluation.certified_bounds(replace_model, [(32, 32, 3), (70, 100, 3)], 0.5, "l2")
    np.testing.assert_allclose(l2, [patch_bound * 0.5, patch_bound * 0.5 / math.sqrt(6)], rtol=1e-6)
    with pytest.raises(ValueError, match="norm"):
        evaluation.certified_bounds(replace_model, [(32, 32, 3)], eps, "l1")


def test_no_certified_bound_for_a_base_model():
    assert evaluation.certified_bounds_or_none(build_model("small", patch_size=32), [(32, 32, 3)], 0.1) is None
