"""Training an IQA model with plain `model.fit`, into a run folder.

A run folder holds what the next stages read:
- `model.keras`: the best model by validation SROCC (load with safe_mode=True);
- `config.json`: the `TrainConfig` plus what it resolved to (MOS scale, patch size);
- `metrics.json`: SROCC / PLCC / KRCC on the test split (whole images, patch-averaged),
  parameters, the Lipschitz bound where one exists, training time, and for a correlation
  loss the affine map fitted on validation images that puts the scores back on the MOS
  scale (`mos_calibration`, appended to the saved model: `training.calibration`);
- `history.csv`: per-epoch logs (`val_srocc`/`val_plcc`/`val_krcc` on whole validation
  images, patch-averaged as the test is; `val_loss` on centre crops); `backup/`: BackupAndRestore state
  while training runs.
"""

import csv
import dataclasses
import math
import os
import pathlib
import time

import keras
import tensorflow as tf

from keras_robust_iqa import data as iqa_data
from keras_robust_iqa import models as iqa_models
from keras_robust_iqa import run_folder
from keras_robust_iqa.training import losses as iqa_losses
from keras_robust_iqa.training.calibration import (
    CORRELATION_LOSSES,
    OUTPUT_SCALES,
    calibrate_to_mos,
    fit_output_scale,
)
from keras_robust_iqa.training.callbacks import WholeImageValidation
from keras_robust_iqa.training.correlation import correlations, correlations_by_distortion
from keras_robust_iqa.training.defenses import DEFENSES, InnerModelCheckpoint, defend
from keras_robust_iqa.training.distillation import distillation_targets, load_teacher
from keras_robust_iqa.training.metrics import PLCC, SROCC
from keras_robust_iqa.training.options import check_choices, fraction, option

LOSSES = {
    "mse": lambda: keras.losses.MeanSquaredError(),
    "l1": lambda: keras.losses.MeanAbsoluteError(),
    "plcc": lambda: iqa_losses.PLCCLoss(),
    "rank": lambda: iqa_losses.PairwiseRankLoss(),
}
ROBUST_MODES = iqa_models.ROBUST_MODES
ROBUST_ACTIVATIONS = iqa_models.ROBUST_ACTIVATIONS
ROBUST_POOLINGS = iqa_models.ROBUST_POOLINGS
ROBUST_CONVOLUTIONS = iqa_models.ROBUST_CONVOLUTIONS
STRATEGIES = ("auto", "none", "mirrored", "multiworker")
LR_SCHEDULES = ("cosine", "constant")


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on; written to `config.json`.

    Each field is one option of `robust-iqa train` (`training/options.py` makes the flags,
    their help and choices from these declarations; the recipes and the demo some of them).
    """

    dataset: str = option("builtin", "dataset format to read (default: {default}; builtin is made from "
                          "scikit-image's photographs, no download)", choices=iqa_data.READERS)
    data_dir: str | None = option(None, "dataset folder (for csv: the CSV file or a folder with mos.csv); "
                                  "for builtin: an optional cache folder (default: $ROBUST_IQA_CACHE or "
                                  "~/.cache/keras_robust_iqa)")
    model: str = option("small", "model (default: {default}): small (a CNN that trains on a CPU in minutes), "
                        "sll (a network 1-Lipschitz by construction, residual SLL layers, certified without "
                        "--robust) or a keras.applications backbone (they want a GPU)",
                        choices=iqa_models.MODEL_NAMES)
    width: float = option(1.0, "multiply the small model's channels and head units by this factor, e.g. 2 "
                          "for twice as wide (default: {default:g}; the backbones keep their own widths)")
    model_activation: str | None = option(
        None, "swap every ReLU of the model for this smooth activation before --robust insert, as the paper's "
        "code does (capped and leaky ReLUs stay; not with --robust replace, whose activations are "
        "1-Lipschitz ones, or --model sll) (default: {default}, the model's own)",
        choices=iqa_models.SMOOTH_ACTIVATIONS)
    robust: str | None = option(None, "apply RobustBlocks: insert them after the backbone's stages, replace "
                                "every layer by its 1-Lipschitz counterpart, or none (the base model) "
                                "(default: {default})", choices=ROBUST_MODES)
    robust_conv: str = option(
        "block", "1-Lipschitz convolution of --robust models: fourier (OrthoConv2D, the paper's Cayley "
        "transform per frequency, for one patch size), block (BlockOrthoConv2D, a compact orthogonal "
        "kernel run as a plain convolution), aol (AOLConv2D, a plain convolution rescaled to be "
        "1-Lipschitz, not orthogonal) or sll (replace only: the residual SLLConv2D where a convolution "
        "keeps its channels, AOL elsewhere) (default: {default})", choices=ROBUST_CONVOLUTIONS)
    robust_activation: str = option(
        "groupsort", "activation of --robust replace models: groupsort (MaxMin, gradient-norm preserving) "
        "or relu (also 1-Lipschitz, not gradient-norm preserving: the score can stay flat where it does "
        "not matter; see docs/experiments.md) (default: {default})", choices=ROBUST_ACTIVATIONS)
    robust_pooling: str = option(
        "l2norm", "what stands in for the pooling layers of --robust replace models: l2norm (the L2 norm "
        "of each window) or invertible (space-to-depth: keeps every value, the next layer reads 4x the "
        "channels and costs more; see docs/experiments.md) (default: {default})", choices=ROBUST_POOLINGS)
    robust_channel_gains: bool = option(
        False, "follow each orthogonal layer of --robust replace models by learnable per-channel gains in "
        "[-1, 1] (still 1-Lipschitz; orthogonal layers alone cannot weigh their channels; see "
        "docs/experiments.md) (default: {default})")
    robust_bottleneck: int | None = option(
        None, "--robust insert only: each RobustBlock narrows to N channels (an even number) by a 1x1 "
        "convolution, applies its --robust-conv convolution at N channels and widens back by a 1x1 one, all "
        "1-Lipschitz, as the paper's block narrows to 200: far fewer parameters than a full-width block on "
        "wide stages (default: full width)", type=int, metavar="N")
    output_scale: str = option(
        "learned", "the OutputScale ending --model sll and --robust replace models (the certificate reads "
        "it): learned (starts at 1), labels (starts so that the outputs match the training labels' mean and "
        "spread, then learned) or fixed (set so, then frozen) (default: {default})", choices=OUTPUT_SCALES)
    weights: str | None = option(None, "backbone weights: 'imagenet' or a .weights.h5 file (backbones only; "
                                 "default: none)")
    init_from: str | None = option(None, "start from the model of this run folder (e.g. robustify a trained "
                                   "base model)", metavar="RUN")
    distill_from: str | None = option(
        None, "distillation: mix the patch scores of this run's model (the teacher, e.g. a trained base run "
        "of the same dataset and patch size) into the training targets, with weight --distill-weight "
        "(training/distillation.py); validation and test read the real MOS (default: off)", metavar="RUN")
    distill_weight: float = option(0.5, "with --distill-from, each training patch's target is (1 - W) * MOS + "
                                   "W * teacher score (default: {default})", metavar="W")
    epochs: int = option(30, "maximum epochs (default: {default})")
    batch_size: int = option(32, "patches per batch (default: {default})")
    patch_size: int = option(64, "side of the square training patches; images are scored by averaging "
                             "patch scores (default: {default})")
    patches_per_image: int = option(4, "random patches per training image and epoch (default: {default})")
    augment: str | None = option(
        None, "random symmetries of the training patches: flip (left-right), dihedral (flips and "
        "transposes: the 8 symmetries of a square, for distortions with no orientation, as in the "
        "built-in set) (default: {default})", choices=iqa_data.AUGMENTATIONS[1:])
    fresh_distortions: bool = option(
        False, "built-in dataset only: each epoch, train on as many new images drawn from the training "
        "photographs' pristine crops (a random distortion at a continuous level, labelled by its MS-SSIM "
        "like the stored set) instead of the stored ones; validation and test keep the stored images "
        "(default: {default})")
    learning_rate: float = option(1e-3, "Adam learning rate (default: {default})")
    # The last epochs of the cosine schedule, at a small rate, settle the weights (and the
    # BatchNorm statistics) that the checkpoint keeps.
    lr_schedule: str = option("cosine", "learning-rate schedule: cosine decays it to 5%% over all epochs, "
                              "constant keeps it (default: {default})", choices=LR_SCHEDULES)
    ema: float | None = option(
        None, "keep an exponential moving average of the weights with this momentum (e.g. 0.99; Adam's "
        "use_ema); validation, checkpoints and the saved model use the averaged weights (default: off)",
        type=float, metavar="MOMENTUM")
    loss: str = option("mse", "training loss (default: {default})", choices=LOSSES)
    patience: int = option(8, "early stopping: epochs without a better validation SROCC (default: {default})")
    seed: int = option(0, "random seed (default: {default})")
    strategy: str = option("auto", "tf.distribute strategy; auto uses MultiWorkerMirroredStrategy when "
                           "TF_CONFIG is set (default: {default})", choices=STRATEGIES)
    defense: str | None = option(
        None, "train with a data-driven defense baseline (training/defenses.py, docs/training.md): nt "
        "(gradient-norm regularisation, Liu et al. 2024; pair it with --loss l1 as they do) or adversarial "
        "(FGSM adversarial training with SSIM-lowered labels, Chistyakova et al. 2024); model.keras stays "
        "the plain model (default: {default})", choices=DEFENSES)
    defense_eps: float = option(
        4 / 255, "L-inf budget of the adversarial-training FGSM step, in [0, 1] pixel units; a fraction "
        "such as 4/255 is accepted. NT with --loss plcc or rank penalises the gain at this budget relative "
        "to the batch's score spread (default: 4/255)", type=fraction)
    nt_lambda: float = option(1e-3, "weight of NT's gradient-norm penalty; with --loss plcc or rank the "
                              "penalty is scale-free (the gain at --defense-eps over the score spread) and "
                              "needs its own weight (default: {default})")
    nt_h: float = option(0.01, "NT's finite-difference step in [0, 1] pixel units (default: {default})")

    def validate(self):
        check_choices(self)
        if not (isinstance(self.width, (int, float)) and self.width > 0):
            raise ValueError(f"--width must be a positive multiplier, got {self.width!r}.")
        if self.width != 1 and self.model not in ("small", "sll"):
            raise ValueError(f"--width {self.width} needs --model small or sll (the backbones keep their "
                             f"published widths), got --model {self.model}.")
        if self.model == "sll" and self.robust:
            raise ValueError(f"--model sll is 1-Lipschitz already: leave out --robust, got --robust {self.robust}.")
        if self.model_activation is not None and (self.robust == "replace" or self.model == "sll"):
            raise ValueError(f"--model-activation {self.model_activation} swaps the ReLUs of a base or --robust "
                             f"insert model; --model {self.model} --robust {self.robust} has only 1-Lipschitz "
                             f"activations of its own.")
        if self.robust_activation != "groupsort" and self.robust != "replace":
            raise ValueError(f"--robust-activation {self.robust_activation} needs --robust replace "
                             f"(insert's RobustBlocks use GroupSort), got --robust {self.robust}.")
        if self.robust_pooling != "l2norm" and self.robust != "replace":
            raise ValueError(f"--robust-pooling {self.robust_pooling} needs --robust replace "
                             f"(insert keeps the model's pooling), got --robust {self.robust}.")
        if self.robust_channel_gains and self.robust != "replace":
            raise ValueError(f"--robust-channel-gains needs --robust replace (insert's blocks are "
                             f"orthogonal), got --robust {self.robust}.")
        if self.robust_bottleneck is not None:
            if not isinstance(self.robust_bottleneck, int) or self.robust_bottleneck < 2 or self.robust_bottleneck % 2:
                raise ValueError(f"--robust-bottleneck must be an even number of channels >= 2 (GroupSort pairs "
                                 f"them), got {self.robust_bottleneck!r}.")
            if self.robust != "insert":
                raise ValueError(f"--robust-bottleneck needs --robust insert (replace keeps the model's widths), "
                                 f"got --robust {self.robust}.")
        if self.output_scale != "learned" and not (self.model == "sll" or self.robust == "replace"):
            raise ValueError(f"--output-scale {self.output_scale} needs a model that ends with an OutputScale "
                             f"(--model sll or --robust replace), got --model {self.model} --robust {self.robust}.")
        if self.fresh_distortions and self.dataset != "builtin":
            raise ValueError(f"--fresh-distortions draws from the built-in dataset's pristine crops; "
                             f"--dataset {self.dataset} has none.")
        for name in ("epochs", "batch_size", "patch_size", "patches_per_image"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}.")
        if not self.learning_rate > 0:
            raise ValueError(f"--learning-rate must be positive, got {self.learning_rate!r}.")
        if not 0 <= self.distill_weight <= 1:
            raise ValueError(f"--distill-weight must be in [0, 1], got {self.distill_weight!r}.")
        if self.ema is not None and not 0 < self.ema < 1:
            raise ValueError(f"--ema must be a momentum in (0, 1), such as 0.99, got {self.ema!r}.")
        if not 0 < self.defense_eps <= 1:
            raise ValueError(f"--defense-eps must be in (0, 1] (images are in [0, 1]), got {self.defense_eps!r}.")
        if not 0 <= self.nt_lambda < math.inf:
            raise ValueError(f"--nt-lambda must be a finite number >= 0, got {self.nt_lambda!r}.")
        if not 0 < self.nt_h < math.inf:
            raise ValueError(f"--nt-h must be a positive finite step, got {self.nt_h!r}.")


_STRATEGIES = {}


def make_strategy(name="auto"):
    """`auto`: MultiWorkerMirroredStrategy when TF_CONFIG is set, else the default.

    One strategy of each kind per process, reused by later calls: the collective
    keys of a second MirroredStrategy restart where the first one's did, so a second
    model trained in the same process fails with "Shape mismatch in the collective
    instance" (tensorflow/tensorflow#62790).
    """
    if name == "auto":
        name = "multiworker" if os.environ.get("TF_CONFIG") else "none"
    if name not in ("mirrored", "multiworker"):
        return tf.distribute.get_strategy()
    if name not in _STRATEGIES:
        _STRATEGIES[name] = (
            tf.distribute.MirroredStrategy() if name == "mirrored"
            else tf.distribute.MultiWorkerMirroredStrategy()
        )
    return _STRATEGIES[name]


def load_run_model(run):
    """The model of a run folder, loaded in safe mode (`run_folder.load_model`)."""
    return run_folder.load_model(run)


def build(config):
    """The model a config describes (robustified, initialised from a run if asked)."""
    if config.init_from:
        model = load_run_model(config.init_from)
    else:
        model = iqa_models.build_model(config.model, config.patch_size, weights=config.weights, width=config.width)
    if config.model_activation:
        model = iqa_models.swap_activations(model, config.model_activation)
    if config.robust:
        # A fresh model's random kernels are no head start for `replace`, and fitting the
        # compact orthogonal kernels to them costs time: keep the weights of trained models
        # (and everything insert keeps around its blocks).
        trained = bool(config.init_from or config.weights)
        # validate() allows only the defaults of these three with insert.
        model = iqa_models.robustify(model, mode=config.robust, conv=config.robust_conv,
                                     activation=config.robust_activation, pooling=config.robust_pooling,
                                     channel_gains=config.robust_channel_gains,
                                     bottleneck=config.robust_bottleneck,
                                     keep_weights=trained or config.robust == "insert")
    return model


def compile_model(model, config, steps_per_epoch=None):
    """Compile with Adam, the config's loss and the SROCC/PLCC metrics.

    `steps_per_epoch`: needed by the cosine schedule (without it, a constant rate).
    """
    learning_rate = config.learning_rate
    if config.lr_schedule == "cosine" and steps_per_epoch:
        learning_rate = keras.optimizers.schedules.CosineDecay(
            config.learning_rate, decay_steps=config.epochs * steps_per_epoch, alpha=0.05)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate, use_ema=config.ema is not None,
                                        ema_momentum=config.ema or 0.99),
        loss=LOSSES[config.loss](),
        metrics=[SROCC(), PLCC()],
    )
    return model


def evaluate_images(model, table, split):
    """SROCC / PLCC / KRCC of patch-averaged scores on whole images of a split, and within
    each distortion type (`by_distortion`) when the dataset records them."""
    subset = table.subset(split)
    predictions = iqa_models.score_images(model, iqa_data.iter_images(subset))
    mos = subset.normalize(subset.mos)
    result = correlations(predictions, mos)
    result["images"] = len(subset)
    if subset.distortions is not None:
        result["by_distortion"] = correlations_by_distortion(predictions, mos, subset.distortions)
    return result


def load_datasets(config):
    """The table of `config`'s dataset and its training and validation pipelines (the training
    targets mixed with the teacher's scores when `config.distill_from` names one)."""
    table = iqa_data.load_table(config.dataset, config.data_dir, min_size=config.patch_size)
    train_ds = iqa_data.make_dataset(
        table, "train", patch_size=config.patch_size, batch_size=config.batch_size,
        training=True, patches_per_image=config.patches_per_image, seed=config.seed,
        augment=config.augment, fresh_distortions=config.fresh_distortions,
    )
    val_ds = iqa_data.make_dataset(
        table, "val", patch_size=config.patch_size, batch_size=config.batch_size,
        training=False, crop_size=config.patch_size,
    )
    if config.distill_from:
        teacher = load_teacher(config.distill_from, table, config.patch_size)
        train_ds = distillation_targets(train_ds, teacher, config.distill_weight)
    return table, train_ds, val_ds


def train(config, out, *, verbose="auto", callbacks=()):
    """Train a model as `config` says, writing a run folder at `out`.

    Re-running the same command after an interruption resumes from the last
    finished epoch (`BackupAndRestore`); no epoch is lost.

    Returns:
        The metrics dictionary written to `metrics.json`.
    """
    config.validate()
    # First, before any TensorFlow op: MultiWorkerMirroredStrategy configures
    # collective ops, which TensorFlow only allows at program start-up.
    strategy = make_strategy(config.strategy)
    keras.utils.set_random_seed(config.seed)

    table, train_ds, val_ds = load_datasets(config)  # a bad teacher fails here, before any file is written
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)

    with strategy.scope():
        model = build(config)
        scale_fit = None
        if config.output_scale != "learned":
            scale_fit = fit_output_scale(model, train_ds, trainable=config.output_scale == "labels")
        model = defend(model, config.defense, eps=config.defense_eps,
                       nt_lambda=config.nt_lambda, nt_h=config.nt_h,
                       scale_free_loss=config.loss in CORRELATION_LOSSES)
        steps_per_epoch = math.ceil(
            int((table.splits == "train").sum()) * config.patches_per_image / config.batch_size)
        model = compile_model(model, config, steps_per_epoch)

    resolved = dataclasses.asdict(config) | {
        "mos_range": list(table.mos_range),
        "dataset_name": table.name,
        "model_name": model.name,
        "replicas": strategy.num_replicas_in_sync,
    }
    run_folder.write_config(out, resolved)

    # Resuming (a backup is left): keep the history and the best model unless a
    # later epoch beats it. Otherwise a fresh run: a fresh history.
    resuming = (out / "backup").is_dir()
    best_so_far = _best_logged(out / "history.csv", "val_srocc") if resuming else None
    if not resuming:
        (out / "history.csv").unlink(missing_ok=True)
    fit_callbacks = [
        # First: a backup keeps the raw weights (the averages are optimizer state).
        keras.callbacks.BackupAndRestore(str(out / "backup")),
        # The averaged weights in the model from the end of each epoch to the start of the
        # next: what the validation, the checkpoint and the end of training see.
        *([keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if config.ema is not None else []),
        # Before the callbacks that read val_srocc: whole images, scored as the test is.
        WholeImageValidation(table.subset("val")),
        InnerModelCheckpoint(  # a defended model saves its plain IQA model
            str(out / "model.keras"), monitor="val_srocc", mode="max", save_best_only=True,
            initial_value_threshold=best_so_far,
        ),
        keras.callbacks.EarlyStopping(monitor="val_srocc", mode="max", patience=config.patience),
        keras.callbacks.CSVLogger(str(out / "history.csv"), append=True),
        *callbacks,
    ]
    start = time.perf_counter()
    # shuffle=False: the pipeline shuffles; Keras would only warn that it ignores the flag.
    model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, callbacks=fit_callbacks, verbose=verbose,
              shuffle=False)
    seconds = time.perf_counter() - start

    best = load_run_model(out)
    calibration = None
    if config.loss in CORRELATION_LOSSES:
        # A correlation loss leaves the score's scale free: map it back onto MOS.
        best, calibration = calibrate_to_mos(best, table)
        if calibration is not None:
            # Write next to the file, then rename: an interruption keeps the best model.
            best.save(out / "model.calibrating.keras")
            os.replace(out / "model.calibrating.keras", out / "model.keras")
    metrics = {
        "test": evaluate_images(best, table, "test"),
        "val": evaluate_images(best, table, "val"),
        "params": int(best.count_params()),
        "lipschitz_bound": _bound_or_none(best),
        "train_seconds": round(seconds, 1),
        "mos_calibration": calibration,
        "output_scale_fit": scale_fit,
    }
    run_folder.write_metrics(out, metrics)
    return metrics


def _best_logged(path, key):
    """The largest finite value of column `key` in a CSVLogger file, or None."""
    try:
        with open(path, newline="") as f:
            values = [float(row[key]) for row in csv.DictReader(f) if row.get(key)]
    except (OSError, KeyError, ValueError):
        return None
    finite = [v for v in values if math.isfinite(v)]
    return max(finite) if finite else None


def _bound_or_none(model):
    try:
        return iqa_models.lipschitz_bound(model)
    except ValueError:
        return None


__all__ = [
    "TrainConfig", "build", "compile_model", "evaluate_images", "load_datasets", "load_run_model",
    "make_strategy", "train",
]
