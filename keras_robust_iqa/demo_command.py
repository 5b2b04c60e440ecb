"""`robust-iqa demo`: the whole pipeline end to end, on the built-in data by default."""


def add_parser(subparsers):
    from keras_robust_iqa.demo import DemoSettings
    from keras_robust_iqa.training.options import add_arguments
    from keras_robust_iqa.training.trainer import TrainConfig

    d = DemoSettings()
    p = subparsers.add_parser(
        "demo",
        help="run the whole pipeline end to end (train, robustify, defend, prune, attack, export, report)",
        description="Train the base model, its RobustBlock versions (insert, replace) and the NT and "
        "adversarial-training baselines, prune and fine-tune the robust model, attack every model, "
        "export the pruned robust model, and write report.json, report.md and plots into --out. "
        "Finished stages are reused on a re-run and an interrupted training resumes.",
    )
    p.add_argument("--out", default="runs/demo", help="folder for every stage's outputs (default: runs/demo)")
    # The options the demo shares with `robust-iqa train`, declared on TrainConfig; the
    # demo's settings give their defaults (--patches-per-image unset: --quick picks its own).
    add_arguments(p, TrainConfig, ("dataset", "data_dir", "model", "weights", "patch_size", "patches_per_image",
                                   "seed"), d, unset=("patches_per_image",))
    p.add_argument("--epochs", type=int,
                   help=f"epochs of the base model; the NT and adversarial baselines get half, about the "
                   f"same training time (default: {d.epochs})")
    p.add_argument("--robust-epochs", type=int,
                   help=f"epochs of the replace model; insert, fine-tuned from the base, gets a third "
                   f"(default: {d.robust_epochs})")
    p.add_argument("--replace-width", type=float,
                   help="channel multiplier of the replace model, for the small model only (default: "
                   f"{d.replace_width:g}: twice the base's channels; backbones keep their widths)")
    p.add_argument("--finetune-epochs", type=int,
                   help=f"fine-tuning epochs after pruning (default: {d.finetune_epochs})")
    p.add_argument("--eval-images", type=int, help=f"test images attacked per model (default: {d.eval_images})")
    p.add_argument("--attacks",
                   help=f"comma-separated attacks for the evaluate stage (default: {','.join(d.attacks)}; "
                   "all: every attack of robust-iqa evaluate)")
    p.add_argument("--strength", metavar="ATTACKS",
                   help="comma-separated attacks (among --attacks, or all) also run much longer in the evaluate "
                   "stage, their gain's ratio to it reported (robust-iqa evaluate --strength); the learned "
                   "attacks' check adds minutes per model (default: none)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke test: one short epoch per model, 4 images, 2 attacks (the other flags still apply)")
    p.set_defaults(func=run)


def run(args):
    from keras_robust_iqa import demo

    given = {"epochs": args.epochs, "robust_epochs": args.robust_epochs,
             "patches_per_image": args.patches_per_image, "finetune_epochs": args.finetune_epochs,
             "eval_images": args.eval_images, "patch_size": args.patch_size}
    for name, value in given.items():
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}.")
    overrides = {k: v for k, v in given.items() if v is not None}
    if args.replace_width is not None:
        if not args.replace_width > 0:
            raise ValueError(f"--replace-width must be a positive multiplier, got {args.replace_width}.")
        overrides["replace_width"] = args.replace_width
    if args.attacks:
        overrides["attacks"] = demo.parse_attacks(args.attacks)
    if args.strength:
        attacks = overrides.get("attacks", (demo.DemoSettings.quick() if args.quick else demo.DemoSettings()).attacks)
        overrides["strength"] = demo.parse_attacks(args.strength, "--strength", among=attacks)
    overrides |= {"dataset": args.dataset, "data_dir": args.data_dir, "model": args.model, "seed": args.seed,
                  "weights": args.weights}
    settings = demo.DemoSettings.quick(**overrides) if args.quick else demo.DemoSettings(**overrides)
    demo.run(args.out, settings)
    return 0
