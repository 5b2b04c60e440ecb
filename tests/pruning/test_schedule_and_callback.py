"""tfmot schedules drive the channel masks during model.fit, in Keras 3."""

import os

import keras
import numpy as np
import pytest

from keras_robust_iqa.models import robustify, small_iqa_cnn
from keras_robust_iqa.pruning import ChannelGraph, masked_model
from keras_robust_iqa.pruning.callback import ChannelPruning
from keras_robust_iqa.pruning.schedule import (
    PolynomialDecay,
    ThresholdDecay,
    gradual_schedule,
    schedule_value,
)


def test_importing_tfmot_keeps_keras_3():
    """tfmot's import sets TF_USE_LEGACY_KERAS=1 for the whole process (so a `tf.keras`
    resolved later, here or in a subprocess, is tf_keras); the pruning package puts it back."""
    import tensorflow as tf

    assert "TF_USE_LEGACY_KERAS" not in os.environ
    assert keras.__version__.startswith("3.") and tf.keras.layers.Dense is keras.layers.Dense


def test_threshold_decay_is_polynomial_decay_scaled_to_tau():
    tau, begin, end, frequency = 0.02, 4, 24, 5
    ramp = ThresholdDecay(tau, begin, end, frequency=frequency)
    sparsity = PolynomialDecay(0.0, 0.5, begin, end, frequency=frequency)
    for step in range(0, 40):
        should, value = schedule_value(ramp, step)
        should_sparsity, s = schedule_value(sparsity, step)
        assert should == should_sparsity == (begin <= step <= end and (step - begin) % frequency == 0)
        p = min(1.0, max(0.0, (step - begin) / (end - begin)))
        assert value == pytest.approx(tau * (1 - (1 - p) ** 3), rel=1e-5, abs=1e-9)
    assert ramp.get_config()["config"] == {"tau": tau, "power": 3, "begin_step": begin, "end_step": end,
                                           "frequency": frequency}
    with pytest.raises(ValueError, match="tau must be a positive number"):
        ThresholdDecay(0.0, 0, 10)


def test_gradual_schedule_reaches_the_target_halfway():
    schedule = gradual_schedule(100, fraction=0.3)
    assert schedule.end_step <= 50 and schedule_value(schedule, schedule.end_step) == (True, pytest.approx(0.3))
    for bad in (1.0, -0.1, True):
        with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\)"):
            gradual_schedule(100, fraction=bad)


class MaskLog(keras.callbacks.Callback):
    def __init__(self, pruning):
        super().__init__()
        self.pruning, self.sizes = pruning, []

    def on_train_batch_end(self, batch, logs=None):
        self.sizes.append(len(self.pruning.pruned))


def test_masks_follow_the_schedule_during_fit():
    keras.utils.set_random_seed(0)
    model = robustify(small_iqa_cnn(16, widths=(8, 16), head_units=8), mode="replace")
    graph = ChannelGraph(model)
    masked, masks = masked_model(model, graph)
    masked.compile(keras.optimizers.Adam(1e-3), "mse")
    steps = 16
    schedule = gradual_schedule(steps, fraction=0.5, prunings=4)
    pruning = ChannelPruning(graph, masks, schedule)
    log = MaskLog(pruning)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(size=(steps * 2, 16, 16, 3)).astype("float32"), rng.uniform(size=(steps * 2, 1))
    masked.fit(x, y, batch_size=2, epochs=1, callbacks=[pruning, log], verbose=0)
    # Pruning happens only on the schedule's steps, and pruned groups stay pruned.
    assert log.sizes == sorted(log.sizes) and len(set(log.sizes)) > 2
    changes = [i for i in range(1, steps) if log.sizes[i] != log.sizes[i - 1]]
    assert all(i % schedule.frequency == 0 and i <= schedule.end_step for i in changes)
    # The masks zero exactly the pruned channels where they are read.
    for name, mask in masks.items():
        expected = [graph.group_of[a] not in pruning.pruned for a in graph.inputs_of[name]]
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(mask.mask), np.array(expected, "float32"))
    for component in graph.components():
        assert len(pruning.pruned & set(component)) == round(0.5 * len(component))


def test_a_threshold_schedule_prunes_below_the_current_tau():
    keras.utils.set_random_seed(0)
    model = robustify(small_iqa_cnn(16, widths=(8, 16), head_units=8), mode="replace")
    graph = ChannelGraph(model)
    masked, masks = masked_model(model, graph)
    group_scores = graph.group_scores(graph.scores())
    # Below every layer's best group: no layer is emptied, nothing is capped.
    tau = min(max(group_scores[g] for g in c) for c in graph.components())
    pruning = ChannelPruning(graph, masks, gradual_schedule(16, tau=tau, prunings=4))
    assert pruning.final_value() == pytest.approx(tau)
    seen = set()
    lowest = min(s for g, s in enumerate(group_scores) if g not in graph.frozen_groups)
    for value in ((lowest + tau) / 2, tau):
        pruning.prune_to(value)
        below = {g for g, s in enumerate(group_scores) if s < value and g not in graph.frozen_groups}
        assert below and seen <= pruning.pruned == below
        seen = set(pruning.pruned)
    x = np.random.default_rng(0).uniform(size=(2, 16, 16, 3)).astype("float32")
    assert np.all(np.isfinite(np.asarray(masked(x))))
