"""`robust-iqa train`: train a base or robust IQA model into a run folder."""

import argparse


def add_parser(subparsers):
    from keras_robust_iqa.data import AUGMENTATIONS
    from keras_robust_iqa.training.trainer import (
        DEFENSES,
        LOSSES,
        LR_SCHEDULES,
        OUTPUT_SCALES,
        ROBUST_ACTIVATIONS,
        ROBUST_CONVOLUTIONS,
        ROBUST_MODES,
        ROBUST_POOLINGS,
        STRATEGIES,
        TrainConfig,
    )

    d = TrainConfig()
    p = subparsers.add_parser(
        "train",
        help="train a base or robust IQA model with model.fit into a run folder",
        description="Train an IQA model with model.fit. Writes model.keras (best by validation "
        "SROCC), config.json, metrics.json (test SROCC/PLCC/KRCC on whole images) and "
        "history.csv into --out. Re-running an interrupted command resumes where it stopped.",
    )
    p.add_argument("--dataset", default=d.dataset,
                   choices=("builtin", "koniq10k", "kadid10k", "livec", "tid2013", "spaq", "csv"),
                   help="dataset format to read (default: builtin, made from scikit-image's photographs)")
    p.add_argument("--data-dir", help="dataset folder (for csv: the CSV file or a folder with mos.csv); "
                   "for builtin: an optional cache folder")
    p.add_argument("--model", default=d.model, choices=("small", "sll", "resnet50", "mobilenetv3", "efficientnetv2b0"),
                   help="model: small (a CNN that trains on a CPU in minutes), sll (a network 1-Lipschitz by "
                   "construction, residual SLL layers, certified without --robust) or a keras.applications "
                   f"backbone (default: {d.model})")
    p.add_argument("--width", type=float, default=d.width,
                   help="multiply the small model's channels and head units by this factor, e.g. 2 for "
                   f"twice as wide (default: {d.width:g}; the backbones keep their own widths)")
    p.add_argument("--robust", choices=ROBUST_MODES,
                   help="apply RobustBlocks: insert them after the backbone's stages, or replace every "
                   "layer by its 1-Lipschitz counterpart (default: none, the base model)")
    p.add_argument("--robust-conv", default=d.robust_conv, choices=ROBUST_CONVOLUTIONS,
                   help="1-Lipschitz convolution of --robust models: fourier (OrthoConv2D, the paper's "
                   "Cayley transform per frequency, for one patch size), block (BlockOrthoConv2D, a "
                   "compact orthogonal kernel run as a plain convolution), aol (AOLConv2D, a plain "
                   "convolution rescaled to be 1-Lipschitz, not orthogonal) or sll (replace only: the "
                   "residual SLLConv2D where a convolution keeps its channels, AOL elsewhere) "
                   f"(default: {d.robust_conv})")
    p.add_argument("--robust-activation", default=d.robust_activation, choices=ROBUST_ACTIVATIONS,
                   help="activation of --robust replace models: groupsort (MaxMin, gradient-norm "
                   "preserving) or relu (also 1-Lipschitz, not gradient-norm preserving: the score can "
                   f"stay flat where it does not matter; see docs/experiments.md) (default: {d.robust_activation})")
    p.add_argument("--robust-pooling", default=d.robust_pooling, choices=ROBUST_POOLINGS,
                   help="what stands in for the pooling layers of --robust replace models: l2norm "
                   "(the L2 norm of each window) or invertible (space-to-depth: keeps every value, "
                   "the next layer reads 4x the channels and costs more; see docs/experiments.md) "
                   f"(default: {d.robust_pooling})")
    p.add_argument("--robust-channel-gains", action="store_true",
                   help="follow each orthogonal layer of --robust replace models by learnable "
                   "per-channel gains in [-1, 1] (still 1-Lipschitz; orthogonal layers alone cannot "
                   "weigh their channels; see docs/experiments.md) (default: off)")
    p.add_argument("--robust-bottleneck", type=int, metavar="N",
                   help="--robust insert only: each RobustBlock narrows to N channels (an even number) by a "
                   "1x1 convolution, applies its --robust-conv convolution at N channels and widens back by "
                   "a 1x1 one, all 1-Lipschitz, as the paper's block narrows to 200: far fewer parameters "
                   "than a full-width block on wide stages (default: full width)")
    p.add_argument("--output-scale", default=d.output_scale, choices=OUTPUT_SCALES,
                   help="the OutputScale ending --model sll and --robust replace models (the certificate "
                   "reads it): learned (starts at 1), labels (starts so that the outputs match the "
                   "training labels' mean and spread, then learned) or fixed (set so, then frozen) "
                   f"(default: {d.output_scale})")
    p.add_argument("--weights", help="backbone weights: 'imagenet' or a weights file (backbones only)")
    p.add_argument("--init-from", metavar="RUN", help="start from the model of this run folder")
    p.add_argument("--distill-from", metavar="RUN",
                   help="distillation: mix the patch scores of this run's model (the teacher, e.g. a "
                   "trained base run of the same dataset and patch size) into the training targets; "
                   "validation and test read the real MOS (default: off)")
    p.add_argument("--distill-weight", type=float, default=d.distill_weight, metavar="W",
                   help="with --distill-from, each training patch's target is (1 - W) * MOS + W * "
                   f"teacher score (default: {d.distill_weight})")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"maximum epochs (default: {d.epochs})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"patches per batch (default: {d.batch_size})")
    p.add_argument("--patch-size", type=int, default=d.patch_size,
                   help=f"side of the square training patches; images are scored by averaging "
                   f"patch scores (default: {d.patch_size})")
    p.add_argument("--patches-per-image", type=int, default=d.patches_per_image,
                   help=f"random patches per training image and epoch (default: {d.patches_per_image})")
    p.add_argument("--augment", default=d.augment or "none", choices=("none", *AUGMENTATIONS[1:]),
                   help="random symmetries of the training patches: flip (left-right), dihedral "
                   "(flips and transposes: the 8 symmetries of a square, for distortions with no "
                   f"orientation, as in the built-in set) (default: {d.augment or 'none'})")
    p.add_argument("--fresh-distortions", action="store_true",
                   help="built-in dataset only: each epoch, train on as many new images drawn from the "
                   "training photographs' pristine crops (a random distortion at a continuous level, "
                   "labelled by its MS-SSIM like the stored set) instead of the stored ones; validation "
                   "and test keep the stored images (default: off)")
    p.add_argument("--learning-rate", type=float, default=d.learning_rate,
                   help=f"Adam learning rate (default: {d.learning_rate})")
    p.add_argument("--lr-schedule", default=d.lr_schedule, choices=LR_SCHEDULES,
                   help=f"learning-rate schedule: cosine decays it to 5%% over all epochs, constant keeps it "
                   f"(default: {d.lr_schedule})")
    p.add_argument("--ema", type=float, default=d.ema, metavar="MOMENTUM",
                   help="keep an exponential moving average of the weights with this momentum (e.g. 0.99); "
                   "validation, checkpoints and the saved model use the averaged weights (default: off)")
    p.add_argument("--loss", default=d.loss, choices=tuple(LOSSES), help=f"training loss (default: {d.loss})")
    p.add_argument("--patience", type=int, default=d.patience,
                   help=f"early stopping: epochs without a better validation SROCC (default: {d.patience})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default: {d.seed})")
    p.add_argument("--strategy", default=d.strategy, choices=STRATEGIES,
                   help="tf.distribute strategy; auto uses MultiWorkerMirroredStrategy when TF_CONFIG is set "
                   "(default: auto)")
    p.add_argument("--defense", choices=DEFENSES,
                   help="train with a data-driven defense baseline: nt (gradient-norm regularisation, "
                   "Liu et al. 2024; pair it with --loss l1 as they do) or adversarial (FGSM adversarial "
                   "training with SSIM-lowered labels, Chistyakova et al. 2024); model.keras stays the "
                   "plain model (default: none)")
    p.add_argument("--defense-eps", type=fraction, default=d.defense_eps,
                   help="L-inf budget of the adversarial-training FGSM step, in [0, 1] pixel units; "
                   "a fraction such as 4/255 is accepted. NT with --loss plcc or rank penalises the "
                   "gain at this budget relative to the batch's score spread (default: 4/255)")
    p.add_argument("--nt-lambda", type=float, default=d.nt_lambda,
                   help=f"weight of NT's gradient-norm penalty; with --loss plcc or rank the penalty is "
                   f"scale-free (the gain at --defense-eps over the score spread) and needs its own "
                   f"weight (default: {d.nt_lambda})")
    p.add_argument("--nt-h", type=float, default=d.nt_h,
                   help=f"NT's finite-difference step in [0, 1] pixel units (default: {d.nt_h})")
    p.add_argument("--out", required=True, help="run folder to write, e.g. runs/NAME")
    p.set_defaults(func=run)


def fraction(text):
    """A number or a fraction of two numbers ("4/255"), for budgets in [0, 1] pixel units."""
    numerator, slash, denominator = text.partition("/")
    try:
        return float(numerator) / float(denominator) if slash else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number or a fraction such as 4/255, got {text!r}") from None


def run(args):
    import json

    from keras_robust_iqa.training.trainer import TrainConfig, train

    config = TrainConfig(
        dataset=args.dataset, data_dir=args.data_dir, model=args.model, width=args.width, robust=args.robust,
        robust_conv=args.robust_conv, robust_activation=args.robust_activation, robust_pooling=args.robust_pooling,
        robust_channel_gains=args.robust_channel_gains, robust_bottleneck=args.robust_bottleneck,
        output_scale=args.output_scale, weights=args.weights, init_from=args.init_from,
        distill_from=args.distill_from, distill_weight=args.distill_weight, epochs=args.epochs,
        batch_size=args.batch_size, patch_size=args.patch_size,
        patches_per_image=args.patches_per_image,
        augment=None if args.augment == "none" else args.augment, fresh_distortions=args.fresh_distortions,
        learning_rate=args.learning_rate,
        lr_schedule=args.lr_schedule, ema=args.ema,
        loss=args.loss, patience=args.patience, seed=args.seed, strategy=args.strategy,
        defense=args.defense, defense_eps=args.defense_eps, nt_lambda=args.nt_lambda, nt_h=args.nt_h,
    )
    metrics = train(config, args.out)
    print(json.dumps(metrics, indent=2))
    return 0
