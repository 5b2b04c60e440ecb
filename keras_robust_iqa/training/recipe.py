"""The command line shared by the recipes in `training/`: one `TrainConfig` per dataset.

A recipe holds the settings that suit one dataset and calls `run_recipe(CONFIG)`, which
lets the command line pick the data, the run folder, the model and the robust mode:

    python training/koniq10k.py --data-dir /data/koniq10k --out runs/koniq10k-resnet50

Everything else is the recipe's (use `robust-iqa train` to set any option).
"""

import argparse
import dataclasses
import json
import sys

from keras_robust_iqa.models import BACKBONES
from keras_robust_iqa.training.options import add_arguments, from_arguments
from keras_robust_iqa.training.trainer import TrainConfig, train

# The TrainConfig options a recipe's command line sets; the recipe holds the rest.
OPTIONS = ("data_dir", "model", "robust", "robust_conv", "robust_activation", "robust_pooling",
           "robust_channel_gains", "robust_bottleneck", "model_activation", "init_from", "distill_from")


def recipe_parser(config, description=None):
    """The parser of a recipe whose settings are `config` (a `TrainConfig`)."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"settings: {_settings(config)}",
    )
    needs_dir = config.dataset != "builtin" and config.data_dir is None
    add_arguments(parser, TrainConfig, OPTIONS, config, required=("data_dir",) if needs_dir else ())
    parser.add_argument("--out", help="run folder to write (default: runs/DATASET-MODEL[-ROBUST])")
    return parser


def recipe_config(config, argv=None, description=None):
    """`config` with the command line's choices applied, and the run folder."""
    return _apply(config, recipe_parser(config, description).parse_args(argv))


def run_recipe(config, argv=None, description=None):
    """Parse the recipe's command line, train, print the metrics; returns the exit status."""
    parser = recipe_parser(config, description)
    config, out = _apply(config, parser.parse_args(argv))
    try:
        metrics = train(config, out)
    except (ValueError, FileNotFoundError) as e:
        # Bad input: one clear line, no traceback (as `robust-iqa train`).
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, indent=2))
    return 0


def _apply(config, args):
    config = from_arguments(args, config, OPTIONS)
    # Pretrained weights are the backbones'; the small and sll models always start from scratch.
    if config.model not in BACKBONES:
        config = dataclasses.replace(config, weights=None)
    out = args.out or f"runs/{config.dataset}-{config.model}" + (f"-{config.robust}" if config.robust else "")
    return config, out


def _settings(config):
    keep = ("model", "weights", "patch_size", "patches_per_image", "batch_size", "epochs",
            "learning_rate", "loss", "patience", "distill_weight")
    return ", ".join(f"{k}={getattr(config, k)}" for k in keep)


__all__ = ["recipe_config", "recipe_parser", "run_recipe"]
