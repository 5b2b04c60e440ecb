"""Attack one model with a suite of attacks and score what they did."""

import time

import numpy as np

from keras_robust_iqa import attacks as iqa_attacks
from keras_robust_iqa.evaluation import strength as strength_module
from keras_robust_iqa.evaluation.certified import certified_bounds_or_none
from keras_robust_iqa.evaluation.scores import minmax_scale, robustness_scores
from keras_robust_iqa.models.lipschitz import lipschitz_bound
from keras_robust_iqa.models.patches import score_images
from keras_robust_iqa.training.correlation import correlations, correlations_by_distortion

# Attacks learned on training images once per model, then applied at every budget.
LEARNED = {"uap": "plain", "cumulative_uap": "cumulative", "generative_uap": "generative", "facpa": None}
# Slack for float32 rounding when checking a measured gain against its certified bound.
BOUND_TOLERANCE = 1e-5


def eps_label(eps, norm="linf"):
    """`4/255` for L-inf budgets on the 8-bit grid, else the number."""
    levels = eps * 255
    if norm == "linf" and abs(levels - round(levels)) < 1e-6:
        return f"{round(levels)}/255"
    return f"{eps:g}"


def evenly_spaced(total, count):
    """`count` evenly spaced row numbers: tables are ordered by source and distortion,
    so the first rows would all show one photograph."""
    return np.unique(np.linspace(0, total - 1, count).round().astype(int))


def attack_norm(attack):
    """`"l2"` for the whole-image L2 attacks, else `"linf"`."""
    return "l2" if attack in iqa_attacks.L2_ATTACKS else "linf"


def attack_key(name, eps, norm="linf"):
    return f"{name}@{eps_label(eps, norm)}"


def evaluate_model(model, images, mos, *, attacks=None, eps=(4 / 255,), l2_eps=(1.0,),
                   train_images=None, transfer_source=None, distortions=None, strength=(), learn_options=None,
                   crafted=None, batch_size=8, seed=0, verbose=1):
    """Clean accuracy, then every attack at every budget, scored.

    Args:
        model: the Keras model under attack (patch-scoring).
        images: test images in [0, 1] (a list of arrays of any size, or an array).
        mos: their MOS, normalised to [0, 1].
        attacks: names from `keras_robust_iqa.attacks.ATTACKS` (default: all;
            `transfer` only with a `transfer_source`).
        eps: L-inf budgets for every attack but `pgd_l2`.
        l2_eps: L2 radii for `pgd_l2` (whole image).
        train_images: images the UAP variants and FACPA learn on (a training split).
        transfer_source: the model `transfer` crafts its perturbations on.
        distortions: the distortion type of each image (optional): the clean
            correlations and each attack's gain are then also given per type
            (`by_distortion`, `abs_gain_by_distortion`).
        strength: attacks (names among `attacks`, or True for all) also run much
            longer (`evaluation.strength`): each result then has
            `stronger_gain_raw`, `strength_ratio` (its gain over the stronger
            run's) and `converged` (the ratio at least `strength.CONVERGED`).
        learn_options: keyword arguments for `train_uap` / `train_facpa` (e.g.
            `{"seconds": 30}`), for the learned attacks and their strength check.
        crafted: a dict shared by calls on the same `images`: the transfer
            attack's images, crafted once per source model and budget (the
            source does not depend on the attacked model). Its `seconds` is
            then the first call's.

    Returns:
        `(entry, details)`: the model's `report.json` entry and, per attack key,
        the MinMax-scaled `(clean, attacked)` scores for the plots.
    """
    if attacks is None:
        attacks = [name for name in iqa_attacks.ATTACKS if name != "transfer" or transfer_source is not None]
    unknown = [name for name in attacks if name not in iqa_attacks.ATTACKS]
    if unknown:
        raise ValueError(f"Unknown attack(s) {unknown}; choose from {sorted(iqa_attacks.ATTACKS)}.")
    if any(name in LEARNED for name in attacks) and train_images is None:
        raise ValueError("The UAP and FACPA attacks need `train_images` to learn on.")
    if "transfer" in attacks and transfer_source is None:
        raise ValueError("The transfer attack needs a `transfer_source` model.")
    images = images if isinstance(images, np.ndarray) else list(images)
    if distortions is not None:
        distortions = np.asarray(distortions, dtype=str).reshape(-1)
        if distortions.size != len(images):
            raise ValueError(f"distortions has {distortions.size} entries for {len(images)} images.")
    shapes = [np.shape(image) for image in images]
    clean = score_images(model, images)
    entry = {
        "clean": correlations(clean, mos),
        "params": int(model.count_params()),
        "lipschitz_bound": lipschitz_bound_or_none(model),
        "images": len(images),
        "attacks": {},
    }
    if distortions is not None:
        entry["clean"]["by_distortion"] = correlations_by_distortion(clean, mos, distortions)
    details = {}
    options = {"batch_size": batch_size, "verbose": verbose}
    checked = set(attacks) if strength is True else set(strength or ())
    if checked - set(attacks):
        raise ValueError(f"Argument `strength` names attacks not evaluated: {sorted(checked - set(attacks))}.")
    for name in attacks:
        attack = iqa_attacks.ATTACKS[name]
        norm = attack_norm(name)
        settings = dict(options)
        stronger = None
        if name == "transfer":
            settings["source"] = transfer_source
        elif name in LEARNED:
            learned_as = "perturbation" if LEARNED[name] else "generator"
            settings[learned_as] = _learn(name, model, train_images, max(eps), seed, verbose, learn_options)
            if name in checked:
                longer = strength_module.stronger_training(name, learn_options)
                stronger = attack, dict(settings, **{learned_as: _learn(
                    name, model, train_images, max(eps), seed, verbose, longer)}), 1
        for budget in sorted(l2_eps if norm == "l2" else eps):
            if verbose:
                print(f"{model.name}: {name} at eps {eps_label(budget, norm)}")
            reuse = (id(transfer_source), budget) if name == "transfer" and crafted is not None else None
            if reuse in (crafted or {}):
                adversarial, seconds = crafted[reuse]
            else:
                start = time.perf_counter()
                adversarial = attack(model, images, budget, **settings)
                seconds = time.perf_counter() - start
                if reuse is not None:
                    crafted[reuse] = adversarial, seconds
            attacked = score_images(model, adversarial)
            result = {"attack": name, "norm": norm, "eps": float(budget)}
            result |= robustness_scores(clean, attacked)
            result["abs_gain_raw"] = float(np.mean(attacked - clean))  # in the model's output units
            result |= correlations(attacked, mos)
            result |= _certified(model, shapes, budget, norm, clean, attacked)
            result["seconds"] = round(seconds, 2)
            if name in checked:
                result |= _strength(model, images, clean, budget, result["abs_gain_raw"],
                                    stronger or _stronger_attack(name, budget, options))
            key = attack_key(name, budget, norm)
            entry["attacks"][key] = result
            details[key] = minmax_scale(clean, attacked)
            if distortions is not None:
                gains = details[key][1] - details[key][0]
                result["abs_gain_by_distortion"] = {
                    kind: float(np.mean(gains[distortions == kind]))
                    for kind in sorted(set(distortions.tolist()) - {""})}
    return entry, details


def _learn(name, model, train_images, eps, seed, verbose, options=None):
    """The UAP's perturbation or FACPA's generator, learned once for all budgets, at the largest."""
    options = dict(options or {}, seed=seed, verbose=verbose)
    if name == "facpa":
        return iqa_attacks.train_facpa(model, train_images, eps, **options)
    return iqa_attacks.train_uap(model, train_images, variant=LEARNED[name], **{"clip": eps, **options})


def _stronger_attack(name, eps, options):
    """`(attack, settings, restarts)` of the stronger run of a gradient attack, or None."""
    found = strength_module.stronger_attack(name, eps)
    if found is None:
        return None
    attack, settings, restarts = found
    return attack, dict(options, **settings), restarts


def _strength(model, images, clean, eps, gain, stronger):
    """The `strength_entry` of one result: its gain against the stronger run's (None: none to run)."""
    if stronger is None:
        return strength_module.strength_entry(gain, None)
    attack, settings, restarts = stronger
    attacked = strength_module.best_of_restarts(model, images, attack, eps, settings, restarts)
    return strength_module.strength_entry(gain, float(np.mean(attacked - clean)))


def _certified(model, shapes, eps, norm, clean, attacked):
    """The certified bound, in the MinMax-scaled units of `abs_gain` (`certified_bound`) and in the
    model's output units of `abs_gain_raw` (`certified_bound_raw`), and whether the attack kept within it."""
    bounds = certified_bounds_or_none(model, shapes, eps, norm)
    if bounds is None:
        return {"certified_bound": None, "certified_bound_raw": None, "within_certified_bound": None}
    gains = np.asarray(attacked) - np.asarray(clean)
    spread = float(np.ptp(clean))
    return {
        "certified_bound": float(np.mean(bounds) / spread),
        "certified_bound_raw": float(np.mean(bounds)),
        "max_gain_over_bound": float(np.max(np.abs(gains) / bounds)),
        "within_certified_bound": bool(np.all(np.abs(gains) <= bounds * (1 + BOUND_TOLERANCE) + BOUND_TOLERANCE)),
    }


def lipschitz_bound_or_none(model):
    """The model's certified Lipschitz bound, or None for a model with no certificate."""
    try:
        return lipschitz_bound(model)
    except ValueError:
        return None
