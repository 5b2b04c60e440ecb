"""How close an attack at its defaults comes to the same attack run much longer.

An evaluation supports "robust to attack X" only where X is as strong as it can be
made. The check runs each attack a second time, stronger, on the same images:

- the learned attacks (UAPs, FACPA): learned `LONGER` times longer (epochs and
  patience) at `FASTER` times the learning rate (the cumulative UAP: the step);
- the iterative gradient attacks and Square: `MORE_STEPS` times the steps, and where
  the attack has a random start or seed, the best of `RESTARTS` restarts per image;
- FGSM (one step by definition): I-FGSM at the same budget, `10 * MORE_STEPS`
  steps of `eps / 10`, with restarts.

The ratio of the two mean gains (`abs_gain_raw`, the model's output units) is
`strength_ratio`; below `CONVERGED` the attack at its defaults has not converged
and understates what the budget allows. The transfer attack has no stronger
version of itself here (its strength is that of its source attack): no ratio.
"""

import inspect

import numpy as np

from keras_robust_iqa import attacks as iqa_attacks
from keras_robust_iqa.attacks.generators import GENERATOR_LEARNING_RATE
from keras_robust_iqa.models.patches import score_images

LONGER = 8
FASTER = 10
MORE_STEPS = 4
RESTARTS = 3
CONVERGED = 0.85  # a ratio below this is reported as not converged


def _default(function, name):
    return inspect.signature(function).parameters[name].default


def stronger_training(name, options=None):
    """`train_uap` / `train_facpa` keyword arguments of a learned attack run longer, faster.

    `options` are the arguments of the default run (an empty dict for the defaults).
    """
    options = dict(options or {})
    train = iqa_attacks.train_facpa if name == "facpa" else iqa_attacks.train_uap
    stronger = dict(options)
    stronger["epochs"] = LONGER * options.get("epochs", _default(train, "epochs"))
    patience = options.get("patience", _default(train, "patience"))
    stronger["patience"] = None if patience is None else LONGER * patience
    if options.get("seconds") is not None:
        stronger["seconds"] = LONGER * options["seconds"]
    if name == "cumulative_uap":
        stronger["step_size"] = min(1.0, FASTER * options.get("step_size", _default(train, "step_size")))
    else:
        rate = options.get("learning_rate", _default(train, "learning_rate"))
        if rate is None:  # train_uap's per-variant default
            rate = GENERATOR_LEARNING_RATE if name == "generative_uap" else 0.1
        stronger["learning_rate"] = FASTER * rate
    return stronger


def stronger_attack(name, eps):
    """`(attack function, settings, restarts)` of a gradient or gradient-free attack run longer,
    or None for an attack with no stronger version here (transfer, the learned attacks)."""
    if name == "fgsm":
        return iqa_attacks.ifgsm, {"steps": 10 * MORE_STEPS, "step_size": eps / 10, "random_start": True}, RESTARTS
    if name == "ifgsm":
        return iqa_attacks.ifgsm, {"steps": MORE_STEPS * _default(iqa_attacks.ifgsm, "steps"),
                                   "random_start": True}, RESTARTS
    if name == "square":
        return iqa_attacks.square, {"steps": MORE_STEPS * _default(iqa_attacks.square, "steps")}, RESTARTS
    if name in ("mifgsm", "amifgsm", "pgd_l2", "korhonen"):  # deterministic: more steps, no restarts
        function = iqa_attacks.ATTACKS[name]
        return function, {"steps": MORE_STEPS * _default(function, "steps")}, 1
    return None


def best_of_restarts(model, images, attack, eps, settings, restarts):
    """Each image's highest score over `restarts` runs of `attack` (seeds 0, 1, ...): `(N,)` scores."""
    best = None
    for seed in range(restarts):
        seeded = dict(settings, seed=seed) if restarts > 1 else settings
        scores = score_images(model, attack(model, images, eps, **seeded))
        best = scores if best is None else np.maximum(best, scores)
    return best


def strength_ratio(gain, stronger_gain):
    """The attack's gain over its stronger version's; None where the stronger one gained nothing."""
    if stronger_gain is None or not stronger_gain > 0:
        return None
    return float(gain / stronger_gain)


def strength_entry(gain, stronger_gain):
    """The `strength` fields of a `report.json` attack result."""
    ratio = strength_ratio(gain, stronger_gain)
    return {"stronger_gain_raw": None if stronger_gain is None else float(stronger_gain),
            "strength_ratio": ratio, "converged": None if ratio is None else bool(ratio >= CONVERGED)}
