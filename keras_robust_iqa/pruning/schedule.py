"""tensorflow-model-optimization's pruning schedules, driving channel pruning in Keras 3.

tfmot's layer wrappers (`prune_low_magnitude`) only work on `tf_keras` models,
and they prune single weights, not channels. Its schedules are plain callables
`step -> (should_prune, value)`, independent of Keras: `PolynomialDecay` and
`ConstantSparsity` give the fraction of channels pruned at each step, and
`ThresholdDecay` (a `PolynomialDecay` subclass) the mean-weight threshold.
"""

import math
import os

import tensorflow as tf


def _import_tfmot_sparsity():
    """`tfmot.sparsity.keras`, imported without switching the process to Keras 2.

    tfmot's compat module sets `TF_USE_LEGACY_KERAS=1` for the whole process,
    after which a `tf.keras` resolved for the first time (here, in other
    libraries, in subprocesses) is `tf_keras`. Resolve `tf.keras` (Keras 3)
    first and put the variable back as it was.
    """
    saved = os.environ.get("TF_USE_LEGACY_KERAS")
    tf.keras.layers  # resolves TensorFlow's lazy `tf.keras` now
    try:
        import tensorflow_model_optimization as tfmot
    finally:
        if saved is None:
            os.environ.pop("TF_USE_LEGACY_KERAS", None)
        else:
            os.environ["TF_USE_LEGACY_KERAS"] = saved
    return tfmot.sparsity.keras


sparsity = _import_tfmot_sparsity()
PruningSchedule = sparsity.PruningSchedule
PolynomialDecay = sparsity.PolynomialDecay
ConstantSparsity = sparsity.ConstantSparsity


class ThresholdDecay(PolynomialDecay):
    """`PolynomialDecay`'s ramp for the mean-weight threshold: `tau(t)` rises from 0 to `tau`.

    `tau(t) = tau * (1 - (1 - p) ** power)`, `p` the progress from `begin_step`
    to `end_step`; pruning happens every `frequency` steps in that range, as
    with every tfmot schedule.
    """

    _RAMP = 0.5  # the sparsity the parent ramps to; only the ramp's shape is used

    def __init__(self, tau, begin_step, end_step, power=3, frequency=100):
        if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
            raise ValueError(f"tau must be a positive number, got tau={tau!r}.")
        super().__init__(0.0, self._RAMP, begin_step, end_step, power=power, frequency=frequency)
        self.tau = float(tau)

    def __call__(self, step):
        should_prune, ramp = super().__call__(step)
        return should_prune, ramp * (self.tau / self._RAMP)

    def get_config(self):
        config = super().get_config()
        del config["config"]["initial_sparsity"], config["config"]["final_sparsity"]
        config["config"]["tau"] = self.tau
        return config


def check_fraction(fraction):
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got fraction={fraction!r}.")
    return float(fraction)


def check_target(fraction, tau, prefix="`"):
    """Exactly one of `fraction` (in [0, 1)) and `tau` (positive): `(fraction, tau)`, validated.

    `prefix`: how the messages quote the two names (`"--"` for the command line's flags).
    """
    quote = lambda name: f"{prefix}{name}`" if prefix == "`" else f"{prefix}{name}"  # noqa: E731
    if (fraction is None) == (tau is None):
        raise ValueError(f"Give exactly one of {quote('fraction')} and {quote('tau')}.")
    if fraction is not None:
        fraction = check_fraction(fraction)
    if tau is not None and not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"{quote('tau')} must be a positive number, got {tau!r}.")
    return fraction, tau


def gradual_schedule(steps, *, fraction=None, tau=None, prunings=8):
    """A schedule that reaches `fraction` (or `tau`) halfway through `steps` training steps.

    Pruning happens `prunings` times, ramping fast then slowly (power 3, as
    tfmot's default), and the second half trains with the final masks.
    """
    if (fraction is None) == (tau is None):
        raise ValueError("Give exactly one of `fraction` and `tau`.")
    frequency = max(1, steps // (2 * prunings))
    end_step = frequency * prunings
    if tau is not None:
        return ThresholdDecay(tau, 0, end_step, frequency=frequency)
    return PolynomialDecay(0.0, check_fraction(fraction), 0, end_step, frequency=frequency)


def schedule_value(schedule, step):
    """`(should_prune, value)` of a tfmot schedule at `step`, as Python values."""
    should_prune, value = schedule(tf.constant(step, tf.int64))
    return bool(should_prune), float(value)
