"""The `robust-iqa` command line: one subcommand per stage of the pipeline."""

import argparse
import importlib
import sys

# One module per stage, in pipeline order; each has add_parser(subparsers), which sets
# `func`. The modules import their heavy parts inside `func`; the package itself imports
# TensorFlow (its layers register for `.keras` loading), which is most of --help's time.
COMMANDS = (
    "keras_robust_iqa.training.command",
    "keras_robust_iqa.pruning.command",
    "keras_robust_iqa.evaluation.command",
    "keras_robust_iqa.evaluation.score_command",
    "keras_robust_iqa.models.presets_command",
    "keras_robust_iqa.deployment.command",
    "keras_robust_iqa.demo_command",
)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="robust-iqa",
        description="No-reference image quality models that withstand adversarial "
        "perturbations by construction (orthogonal RobustBlocks).",
    )
    from keras_robust_iqa import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS:
        importlib.import_module(module_name).add_parser(subparsers)
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
