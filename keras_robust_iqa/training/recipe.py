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

from keras_robust_iqa.models import BACKBONES, MODEL_NAMES
from keras_robust_iqa.training.trainer import (
    ROBUST_ACTIVATIONS,
    ROBUST_CONVOLUTIONS,
    ROBUST_MODES,
    ROBUST_POOLINGS,
    train,
)


def recipe_parser(config, description=None):
    """The parser of a recipe whose settings are `config` (a `TrainConfig`)."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"settings: {_settings(config)}",
    )
    needs_dir = config.dataset != "builtin"
    parser.add_argument(
        "--data-dir", default=config.data_dir, required=needs_dir and config.data_dir is None,
        help=f"the {config.dataset} folder" if needs_dir
        else "cache folder of the built-in dataset (default: $ROBUST_IQA_CACHE or ~/.cache)")
    parser.add_argument("--out", help="run folder to write (default: runs/DATASET-MODEL[-ROBUST])")
    parser.add_argument("--model", default=config.model, choices=MODEL_NAMES,
                        help=f"base model (default: {config.model})")
    parser.add_argument("--robust", default=config.robust or "none",
                        choices=("none", *ROBUST_MODES),
                        help=f"RobustBlocks: insert after each stage, or replace every layer "
                        f"(default: {config.robust or 'none'})")
    parser.add_argument("--robust-conv", default=config.robust_conv, choices=ROBUST_CONVOLUTIONS,
                        help=f"orthogonal convolution of robust models: fourier (OrthoConv2D) or block "
                        f"(BlockOrthoConv2D) (default: {config.robust_conv})")
    parser.add_argument("--robust-activation", default=config.robust_activation,
                        choices=ROBUST_ACTIVATIONS,
                        help=f"activation of replace models (default: {config.robust_activation})")
    parser.add_argument("--robust-pooling", default=config.robust_pooling, choices=ROBUST_POOLINGS,
                        help=f"what stands in for the pooling of replace models: the L2 norm of "
                        f"each window, or space-to-depth (default: {config.robust_pooling})")
    parser.add_argument("--robust-channel-gains", action="store_true", default=config.robust_channel_gains,
                        help="per-channel gains in [-1, 1] after each orthogonal layer of replace models")
    parser.add_argument("--init-from", metavar="RUN", default=config.init_from,
                        help="start from the model of this run folder (e.g. robustify a "
                        "trained base model)")
    parser.add_argument("--distill-from", metavar="RUN", default=config.distill_from,
                        help=f"mix the patch scores of this run's model into the training targets "
                        f"(weight {config.distill_weight}; e.g. a trained base run teaching a replace model)")
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
    robust = None if args.robust == "none" else args.robust
    # Pretrained weights are the backbones'; the small and sll models always start from scratch.
    weights = config.weights if args.model in BACKBONES else None
    config = dataclasses.replace(config, data_dir=args.data_dir, model=args.model, robust=robust,
                                 robust_conv=args.robust_conv, robust_activation=args.robust_activation,
                                 robust_pooling=args.robust_pooling,
                                 robust_channel_gains=args.robust_channel_gains, weights=weights,
                                 init_from=args.init_from, distill_from=args.distill_from)
    out = args.out or f"runs/{config.dataset}-{config.model}" + (f"-{robust}" if robust else "")
    return config, out


def _settings(config):
    keep = ("model", "weights", "patch_size", "patches_per_image", "batch_size", "epochs",
            "learning_rate", "loss", "patience")
    return ", ".join(f"{k}={getattr(config, k)}" for k in keep)


__all__ = ["recipe_config", "recipe_parser", "run_recipe"]
