"""Evaluate the models of run folders on their dataset's test split and write the report."""

import pathlib

from keras_robust_iqa import attacks as iqa_attacks
from keras_robust_iqa import data as iqa_data
from keras_robust_iqa import run_folder
from keras_robust_iqa.evaluation.evaluate import (
    LEARNED,
    attack_key,
    attack_norm,
    eps_label,
    evaluate_model,
    evenly_spaced,
    lipschitz_bound_or_none,
)
from keras_robust_iqa.evaluation.examples import attack_examples, example_attack
from keras_robust_iqa.evaluation.frontier import DEFAULT_ATTACK, DEFAULT_EPS, build_frontier, same_budget
from keras_robust_iqa.evaluation.label_gain import LABEL_ATTACKS, label_gain
from keras_robust_iqa.evaluation.report import markdown_table, write_report


def read_run_config(run):
    """The `config.json` of a run folder, with the keys evaluation needs."""
    return run_folder.read_config(run, required=("dataset", "patch_size"))


def _positive(value, name):
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f"Argument `{name}` must be a positive integer, got {value!r}.")


def evaluate_runs(runs, out, *, attacks=None, eps=(4 / 255,), l2_eps=(1.0,), images=None, train_images=64,
                  transfer_source=None, label_gain=False, label_images=None, frontier=None, strength=(),
                  learn_options=None, examples=True, batch_size=8, seed=0, verbose=1):
    """Attack each run's model on its test split; write `report.json`, `report.md` and plots into `out`.

    Args:
        runs: run folders (`model.keras` and `config.json`).
        attacks: attack names (default: all; `transfer` only when there is a
            source: two runs or more, or `transfer_source`).
        images: attack `images` evenly spaced test images only (default: all).
        train_images: how many training-split images the UAPs and FACPA learn on.
        transfer_source: the run whose model crafts transferred perturbations;
            default, for each model, the first other run.
        label_gain: also attack the built-in dataset's labels themselves
            (`evaluation.label_gain`) on the same test images (or
            `label_images` of them), with the attacks named (a list; True: all)
            among those of `LABEL_ATTACKS`, at the same budgets: `report["labels"]`.
        label_images: attack the labels of this many evenly spaced test images
            only (default: `images`); each reference photograph costs the label
            attack a compiled graph of its own.
        frontier: `(attack, eps)` of the accuracy-robustness frontier
            (`evaluation.build_frontier`: each model's test SROCC from its run's
            `metrics.json` against its gain, seeds grouped, the gain-to-labels
            ratio): `report["frontier"]`, a table in `report.md` and
            `frontier.png`. That attack and budget must be among those evaluated.
            Default (None): I-FGSM at 4/255 when it is evaluated, else no
            frontier; False: no frontier.
        strength: attacks also run much longer on every model, their
            `strength_ratio` beside each result (see `evaluate_model`); a
            warning names each result below `strength.CONVERGED`.
        examples: draw `attack_examples.png` (`evaluation.examples`): a few
            test images attacked by I-FGSM (else the first attack that needs no
            training) at its largest budget, on the first model and the first
            certified one (else the second).
        Others as in `evaluate_model`.

    Returns:
        The report dictionary.
    """
    runs = [str(run) for run in runs]
    if not runs:
        raise ValueError("Give at least one run folder.")
    _positive(images, "images")
    _positive(label_images, "label_images")
    _positive(train_images, "train_images")
    _positive(batch_size, "batch_size")
    has_source = transfer_source is not None or len(runs) > 1
    if attacks is None:
        attacks = [name for name in iqa_attacks.ATTACKS if name != "transfer" or has_source]
    unknown = [name for name in attacks if name not in iqa_attacks.ATTACKS]
    if unknown:
        raise ValueError(f"Unknown attack(s) {unknown}; choose from {sorted(iqa_attacks.ATTACKS)}.")
    if "transfer" in attacks and not has_source:
        raise ValueError("The transfer attack needs a second --run or --transfer-source.")
    frontier = _frontier_budget(frontier, attacks, eps, l2_eps)
    configs = {run: read_run_config(run) for run in runs}
    builtin_dirs = [config.get("data_dir") for config in configs.values() if config["dataset"] == "builtin"]
    if label_gain and not builtin_dirs:
        raise ValueError("--label-gain attacks the labels of the built-in dataset; no run was trained on it.")
    models = {run: run_folder.load_model(run) for run in runs}
    source_model = run_folder.load_model(transfer_source) if transfer_source is not None else None
    names = _names(runs)

    report, details, splits = {"models": {}}, {}, {}
    for run in runs:
        config = configs[run]
        key = _split_key(config)
        if key not in splits:
            splits[key] = _load_split(*key, images, train_images if set(attacks) & set(LEARNED) else None), {}
        (test_images, mos, distortions, train), crafted = splits[key]
        source = source_model or next((models[other] for other in runs if other != run), None)
        entry, details[names[run]] = evaluate_model(
            models[run], test_images, mos, attacks=attacks, eps=eps, l2_eps=l2_eps, train_images=train,
            transfer_source=source, distortions=distortions, strength=strength, learn_options=learn_options,
            crafted=crafted, batch_size=batch_size, seed=seed, verbose=verbose,
        )
        report["models"][names[run]] = {"run": run, **entry}
    for warning in not_converged(report):
        print(f"WARNING: {warning}")
    if label_gain:
        label_images = images if label_images is None else min(label_images, images or label_images)
        on_labels = attacks if label_gain is True else [name for name in attacks if name in label_gain]
        report["labels"] = _label_gains(builtin_dirs[0], on_labels, eps, l2_eps, label_images, batch_size, verbose)
    if frontier is not None:
        test_srocc = {names[run]: _test_srocc(run) for run in runs}
        report["frontier"] = build_frontier(report, *frontier, test_srocc=test_srocc)
    pictured = example_attack(attacks, eps, l2_eps) if examples else None
    if pictured is not None:
        shown = _example_models(runs, models, configs)
        (test_images, *_), _ = splits[_split_key(configs[runs[0]])]
        pictured = attack_examples({names[run]: models[run] for run in shown}, test_images, *pictured,
                                   batch_size=batch_size)
    write_report(report, out, details, pictured)
    if verbose:
        print(markdown_table(report))
    return report


def _split_key(config):
    return config["dataset"], config.get("data_dir"), int(config["patch_size"])


def _example_models(runs, models, configs):
    """The first run and the first certified one (else the second) of those on the first run's test split."""
    same = [run for run in runs[1:] if _split_key(configs[run]) == _split_key(configs[runs[0]])]
    others = [run for run in same if lipschitz_bound_or_none(models[run]) is not None] or same
    return runs[:1] + others[:1]


def not_converged(report):
    """A line per attack result whose `strength_ratio` is below `strength.CONVERGED`."""
    return [f"{name} {key}: gain {result['abs_gain_raw']:.4g} is {result['strength_ratio']:.2f}x that of the same "
            f"attack run longer ({result['stronger_gain_raw']:.4g}): not converged at its settings"
            for name, entry in report["models"].items() for key, result in entry["attacks"].items()
            if result.get("converged") is False]


def _frontier_budget(frontier, attacks, eps, l2_eps):
    """The `(attack, eps)` of the frontier, or None; an asked-for one that is not evaluated is refused."""
    if frontier is False:
        return None
    asked = frontier is not None
    attack, budget = (DEFAULT_ATTACK, None) if frontier is None else frontier
    norm = attack_norm(attack)
    budget = DEFAULT_EPS[norm] if budget is None else float(budget)
    budgets = l2_eps if norm == "l2" else eps
    if attack in attacks and any(same_budget(budget, value) for value in budgets):
        return attack, budget
    if asked:
        raise ValueError(
            f"The frontier's attack {attack} at {eps_label(budget, norm)} is not evaluated: the attacks are "
            f"{', '.join(attacks)} and the {'--l2-eps' if norm == 'l2' else '--eps'} budgets "
            f"{', '.join(eps_label(value, norm) for value in budgets)}.")
    return None


def _test_srocc(run):
    """The run's `metrics.json` test SROCC, or None where the folder has none."""
    try:
        return float(run_folder.read_metrics(run)["test"]["srocc"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _label_gains(data_dir, attacks, eps, l2_eps, images, batch_size, verbose):
    """The built-in labels' own gain under each label-attackable attack and budget."""
    table = iqa_data.load_table("builtin", data_dir)
    results = {}
    for name in [name for name in attacks if name in LABEL_ATTACKS]:
        norm = attack_norm(name)
        for budget in sorted(l2_eps if norm == "l2" else eps):
            if verbose:
                print(f"labels: {name} at eps {eps_label(budget, norm)}")
            gain = label_gain(table, "test", attack=name, eps=budget, images=images, batch_size=batch_size)
            results[attack_key(name, budget, norm)] = {
                "attack": name, "norm": norm, "eps": float(budget), "images": gain["images"],
                "abs_gain_raw": gain["abs_gain"], "max_gain_raw": gain["max"],
                "abs_gain_by_distortion": {kind: entry["abs_gain"] for kind, entry in gain["by_distortion"].items()},
            }
    return results


def _names(runs):
    """Each run's folder name, or its whole path where two folders share a name."""
    base = [pathlib.Path(run).name for run in runs]
    return {run: name if base.count(name) == 1 else run for run, name in zip(runs, base)}


def _load_split(dataset, data_dir, patch_size, images, train_images):
    """Test images, their normalised MOS and distortion types (or None), and training images
    when asked for."""
    table = iqa_data.load_table(dataset, data_dir, min_size=patch_size)
    test = table.subset("test")
    count = len(test) if images is None else min(images, len(test))
    if count == 0:
        raise ValueError(f"Dataset {dataset!r} has no test images.")
    rows = evenly_spaced(len(test), count)
    test_images = iqa_data.load_images(test, rows)
    mos = test.normalize(test.mos)[rows]
    distortions = None if test.distortions is None else test.distortions[rows]
    train = None
    if train_images is not None:
        split = table.subset("train")
        train = iqa_data.load_images(split, evenly_spaced(len(split), min(train_images, len(split))))
    return test_images, mos, distortions, train
