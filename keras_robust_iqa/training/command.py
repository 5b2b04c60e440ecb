"""`robust-iqa train`: train a base or robust IQA model into a run folder."""


def add_parser(subparsers):
    from keras_robust_iqa.training.options import add_arguments
    from keras_robust_iqa.training.trainer import TrainConfig

    p = subparsers.add_parser(
        "train",
        help="train a base or robust IQA model with model.fit into a run folder",
        description="Train an IQA model with model.fit. Writes model.keras (best by validation "
        "SROCC), config.json, metrics.json (test SROCC/PLCC/KRCC on whole images) and "
        "history.csv into --out. Re-running an interrupted command resumes where it stopped.",
    )
    # One flag per TrainConfig field, declared there.
    add_arguments(p, TrainConfig)
    p.add_argument("--out", required=True, help="run folder to write, e.g. runs/NAME")
    p.set_defaults(func=run)


def run(args):
    import json

    from keras_robust_iqa.training.options import from_arguments
    from keras_robust_iqa.training.trainer import TrainConfig, train

    metrics = train(from_arguments(args, TrainConfig()), args.out)
    print(json.dumps(metrics, indent=2))
    return 0
