"""The `robust-iqa` command line: one subcommand per stage of the pipeline."""

import argparse
import sys


def _add_demo(subparsers):
    p = subparsers.add_parser(
        "demo",
        help="run the whole pipeline end to end on the built-in data",
        description="Run every stage that exists end to end on data that ships with the "
        "package, and print what it measured.",
    )
    p.add_argument("--out", default="runs/demo", help="folder for the demo's outputs (default: runs/demo)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.set_defaults(func=_run_demo)


def _run_demo(args):
    from keras_robust_iqa import demo

    return demo.run(out=args.out, seed=args.seed)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="robust-iqa",
        description="No-reference image quality models that withstand adversarial "
        "perturbations by construction (orthogonal RobustBlocks).",
    )
    from keras_robust_iqa import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo(subparsers)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError) as e:
        # Bad input: one clear line, no traceback.
        print(f"robust-iqa {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
