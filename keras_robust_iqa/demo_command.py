"""`robust-iqa demo`: the whole pipeline end to end on the built-in data."""


def add_parser(subparsers):
    p = subparsers.add_parser(
        "demo",
        help="run the whole pipeline end to end on the built-in data",
        description="Run every stage that exists end to end on data that ships with the "
        "package, and print what it measured.",
    )
    p.add_argument("--out", default="runs/demo", help="folder for the demo's outputs (default: runs/demo)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs of each model (default: 10)")
    p.add_argument("--quick", action="store_true", help="a smoke test: 1 epoch per model")
    p.set_defaults(func=run)


def run(args):
    from keras_robust_iqa import demo

    return demo.run(out=args.out, seed=args.seed, epochs=1 if args.quick else args.epochs)
