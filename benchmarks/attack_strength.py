"""Do the learned attacks use their budget? Their gain at the defaults against 8x longer at 10x the rate.

On a trained model (a run folder), each learned attack (the UAP variants, FACPA)
is learned on training-split images at its defaults, then again with
`evaluation.strength.stronger_training` (8x the epochs and patience, 10x the
learning rate or step), and optionally with the MSU benchmark's settings; each is
applied to evenly spaced test images at every budget. Printed per attack and
budget: the mean gain (MOS 0..1, the model's output units), its ratio to the
stronger run's, the learning time, and for the UAPs the budget use, the mean
`|x' - x| / eps` over the pixels the clip to [0, 1] leaves free (`eps <= x <= 1 - eps`).

    python benchmarks/attack_strength.py --run runs/demo/base [--train-images 32] [--images 64]
        [--eps 4/255,8/255] [--attacks uap,cumulative_uap,generative_uap,facpa] [--msu] [--out FILE.json]
"""

import argparse
import json
import time

import numpy as np

DEFAULT_ATTACKS = "uap,cumulative_uap,generative_uap,facpa"


def budget_use(images, adversarial, eps):
    """Mean `|x' - x| / eps` over the pixels where the clip to [0, 1] cannot bind."""
    images, adversarial = np.asarray(images), np.asarray(adversarial)
    free = (images >= eps) & (images <= 1 - eps)
    return float(np.abs(adversarial - images)[free].mean() / eps)


def learn(name, model, train, eps, options):
    """The UAP's perturbation or FACPA's generator, as `robust-iqa evaluate` learns it, and the seconds it took."""
    from keras_robust_iqa.evaluation.evaluate import _learn

    start = time.perf_counter()
    learned = _learn(name, model, train, eps, seed=0, verbose=0, options=options)
    return learned, time.perf_counter() - start


def apply(name, model, images, eps, learned):
    from keras_robust_iqa import attacks

    key = "generator" if name == "facpa" else "perturbation"
    return attacks.ATTACKS[name](model, images, eps, **{key: learned}, verbose=0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run folder of the attacked model (model.keras, config.json)")
    parser.add_argument("--train-images", type=int, default=32, help="training images the attacks learn on")
    parser.add_argument("--images", type=int, default=64, help="evenly spaced test images attacked")
    parser.add_argument("--eps", default="4/255,8/255", help="L-inf budgets; learned at the largest")
    parser.add_argument("--attacks", default=DEFAULT_ATTACKS, help="comma-separated learned attacks")
    parser.add_argument("--msu", action="store_true", help="also learn with the MSU benchmark's settings")
    parser.add_argument("--out", help="also write the results as JSON")
    args = parser.parse_args(argv)

    from keras_robust_iqa.attacks import FACPA_MSU_SETTINGS, UAP_MSU_SETTINGS
    from keras_robust_iqa.evaluation.command import budget_list
    from keras_robust_iqa.evaluation.evaluate import LEARNED
    from keras_robust_iqa.evaluation.runs import _load_split, read_run_config
    from keras_robust_iqa.evaluation.strength import strength_ratio, stronger_training
    from keras_robust_iqa.models.patches import score_images
    from keras_robust_iqa.training.options import fraction
    from keras_robust_iqa.training.trainer import load_run_model

    budgets = sorted(budget_list(args.eps, fraction))
    config = read_run_config(args.run)
    model = load_run_model(args.run)
    images, _, _, train = _load_split(config["dataset"], config.get("data_dir"), int(config["patch_size"]),
                                      args.images, args.train_images)
    clean = score_images(model, images)
    results = []
    print("| attack | settings | eps | gain (MOS 0..1) | / stronger gain | budget use | learning s |")
    print("|---|---|---|---:|---:|---:|---:|")
    for name in args.attacks.split(","):
        runs = {"defaults": {}, "stronger": stronger_training(name, {})}
        if args.msu:
            runs["msu"] = FACPA_MSU_SETTINGS if name == "facpa" else UAP_MSU_SETTINGS[LEARNED[name]]
        gains = {}
        for label, options in runs.items():
            learned, seconds = learn(name, model, train, max(budgets), options)
            for eps in budgets:
                adversarial = apply(name, model, images, eps, learned)
                gains[label, eps] = float(np.mean(score_images(model, adversarial) - clean))
                results.append({"attack": name, "settings": label, "options": options, "eps": eps,
                                "gain": gains[label, eps], "budget_use": budget_use(images, adversarial, eps),
                                "learning_seconds": round(seconds, 1)})
        for row in results[-len(runs) * len(budgets):]:
            row["ratio_to_stronger"] = strength_ratio(row["gain"], gains["stronger", row["eps"]])
            ratio = "-" if row["ratio_to_stronger"] is None else f"{row['ratio_to_stronger']:.3f}"
            print(f"| {name} | {row['settings']} | {round(row['eps'] * 255)}/255 | {row['gain']:.4f} | {ratio} "
                  f"| {row['budget_use']:.3f} | {row['learning_seconds']} |", flush=True)
    if args.out:
        with open(args.out, "w") as file:
            json.dump({"run": args.run, "images": len(images), "train_images": len(train), "results": results}, file,
                      indent=2)


if __name__ == "__main__":
    main()
