"""`robust-iqa evaluate`: attack trained models and report robustness scores."""

import argparse

DEFAULT_EPS = "2/255,4/255,8/255"


def add_parser(subparsers):
    from keras_robust_iqa.evaluation.frontier import DEFAULT_ATTACK as DEFAULT_FRONTIER_ATTACK
    from keras_robust_iqa.training.options import fraction

    p = subparsers.add_parser(
        "evaluate",
        help="attack the models of run folders and report gains, robustness scores and certified bounds",
        description="Score the test split of each run's dataset, clean and under each attack at each "
        "budget. Writes report.json, report.md, gain_vs_eps.png (one panel per attack), "
        "clean_vs_attacked.png and attack_examples.png into --out, and where the frontier's attack and "
        "budget are evaluated (default I-FGSM at 4/255) the accuracy-robustness frontier: a table in "
        "report.md, report.json's `frontier` and frontier.png.",
    )
    p.add_argument("--run", action="append", required=True, metavar="RUN",
                   help="a run folder from `robust-iqa train` (model.keras, config.json); repeat to compare models")
    p.add_argument("--attacks", type=comma_list,
                   help="comma-separated attacks: fgsm, ifgsm, mifgsm, amifgsm, pgd_l2, korhonen, uap, "
                   "cumulative_uap, generative_uap, facpa, square, transfer (default: all; transfer only "
                   "with two runs or more, or --transfer-source)")
    p.add_argument("--eps", type=lambda text: budget_list(text, fraction), default=budget_list(DEFAULT_EPS, fraction),
                   help=f"comma-separated L-inf budgets in [0, 1] pixel units, fractions such as 4/255 "
                   f"accepted (default: {DEFAULT_EPS})")
    p.add_argument("--l2-eps", type=lambda text: budget_list(text, fraction), default=[1.0],
                   help="comma-separated L2 radii of the whole-image perturbation for pgd_l2 (default: 1.0)")
    p.add_argument("--images", type=int,
                   help="attack only N test images, evenly spaced over the split (default: the whole test split)")
    p.add_argument("--train-images", type=int, default=64,
                   help="training-split images the UAP variants and FACPA learn on (default: 64)")
    p.add_argument("--transfer-source", metavar="RUN",
                   help="run folder whose model crafts the transfer attack's perturbations "
                   "(default: the first other --run)")
    p.add_argument("--label-gain", action="store_true",
                   help="also attack the built-in dataset's labels themselves (MS-SSIM against each image's "
                   "pristine crop) with fgsm, ifgsm, mifgsm, amifgsm, pgd_l2, korhonen and square at the same "
                   "budgets, on the same test images: how much a genuine improvement gains, next to each "
                   "model's gain (report.json's `labels`, a table in report.md)")
    p.add_argument("--frontier-attack", metavar="ATTACK",
                   help="attack of the accuracy-robustness frontier: each model's clean test SROCC (its "
                   "run's metrics.json) against its mean gain on the MOS 0..1 scale, runs named NAME-sN "
                   "or NAME-seedN grouped as one model with error bars over the seeds, the labels' gain "
                   "as a line and each model's gain over it with --label-gain, certified bounds beside "
                   f"the points (default: {DEFAULT_FRONTIER_ATTACK}, when it is among --attacks; one "
                   "asked for must be)")
    p.add_argument("--frontier-eps", type=lambda text: one_budget(text, fraction), metavar="EPS",
                   help="budget of the frontier's attack, one of --eps (or of --l2-eps for pgd_l2) "
                   "(default: 4/255; 1.0 for pgd_l2)")
    p.add_argument("--no-frontier", action="store_true", help="write no frontier")
    p.add_argument("--strength", type=comma_list, default=[], metavar="ATTACKS",
                   help="comma-separated attacks (or `all`) to check for strength: each also runs much longer "
                   "(learned attacks 8x the epochs and patience at 10x the learning rate; gradient attacks 4x the "
                   "steps, the best of 3 random restarts where they have one; FGSM against I-FGSM) and "
                   "report.json / report.md give its gain over the longer run's (strength_ratio), with a "
                   "warning below 0.85 (not converged). Costs about as much again as those attacks x 8 for "
                   "the learned ones (default: none)")
    p.add_argument("--learn-seconds", type=float, metavar="S",
                   help="time budget of each learned attack's training (UAPs, FACPA), in seconds; it also "
                   "stops when its objective stops rising (default: none)")
    p.add_argument("--no-examples", action="store_true",
                   help="draw no attack_examples.png (a few test images, clean and attacked, and the "
                   "perturbation magnified, on the first model and the first certified one)")
    p.add_argument("--batch-size", type=int, default=8, help="images per attack batch (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random attacks (default: 0)")
    p.add_argument("--out", required=True, help="folder to write the report into")
    p.set_defaults(func=run)


def comma_list(text):
    """`"a, b,"` -> `["a", "b"]`."""
    return [name.strip() for name in text.split(",") if name.strip()]


def budget_list(text, fraction):
    """Comma-separated budgets in (0, 1], fractions such as 4/255 accepted (`fraction` parses one)."""
    values = [fraction(item) for item in comma_list(text)]
    if not values or any(not 0 < value <= 1 for value in values):
        raise argparse.ArgumentTypeError(f"budgets must be numbers in (0, 1], got {text!r}")
    return values


def one_budget(text, fraction):
    """One budget, as `budget_list` reads it."""
    values = budget_list(text, fraction)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"expected one budget, got {text!r}")
    return values[0]


def frontier_choice(args):
    """`evaluate_runs`' `frontier` from the flags: False, None (the default) or `(attack, eps)`."""
    if args.no_frontier:
        if args.frontier_attack or args.frontier_eps:
            raise ValueError("--no-frontier contradicts --frontier-attack / --frontier-eps.")
        return False
    if args.frontier_attack is None and args.frontier_eps is None:
        return None
    from keras_robust_iqa.evaluation.frontier import DEFAULT_ATTACK

    return args.frontier_attack or DEFAULT_ATTACK, args.frontier_eps


def run(args):
    from keras_robust_iqa.evaluation.runs import evaluate_runs

    evaluate_runs(
        args.run, args.out, attacks=args.attacks, eps=args.eps, l2_eps=args.l2_eps, images=args.images,
        train_images=args.train_images, transfer_source=args.transfer_source, label_gain=args.label_gain,
        frontier=frontier_choice(args), strength=strength_choice(args), batch_size=args.batch_size,
        learn_options=None if args.learn_seconds is None else {"seconds": args.learn_seconds},
        examples=not args.no_examples, seed=args.seed,
    )


def strength_choice(args):
    """`evaluate_runs`' `strength` from `--strength`: True for `all`, else the names."""
    return True if args.strength == ["all"] else args.strength
