"""The bundled preset `small_replace_x2_builtin`: the package's certified model on the built-in data.

    python training/preset_builtin.py   # trains (24 epochs of about 13 s on 2 CPU cores), evaluates, writes the preset

The model is the demo's `replace` recipe (docs/experiments.md, "The demo's replace recipe"):
the small CNN at twice the channels, every layer replaced by its 1-Lipschitz counterpart
(BlockOrthoConv2D, ReLU, L2-norm pooling), MSE at learning rate 3e-3, 4 random 64x64 patches
per image and epoch, seed 0; here 24 epochs. After training the recipe measures on the
built-in test split what the card reports, on the preset's own model:
- `test`: SROCC / PLCC / KRCC of the patch-averaged scores of the whole test images
  (`training.trainer.evaluate_images`, written by `train` to the run's metrics.json);
- `lipschitz_bound`: the certified per-patch bound (`models.lipschitz_bound`);
- `ifgsm_4_255`: I-FGSM at 4/255 on `--attack-images` evenly spaced test images
  (`evaluation.evaluate_model`): the mean gain on the [0, 1] MOS scale, the MinMax-scaled
  gain and the mean certified bound.
It then writes the preset folder (`models.save_to_preset`): by default into the package, so
that `robust-iqa score` and `models.from_preset` use it.
"""

import argparse
import dataclasses
import json
import sys

from keras_robust_iqa.models.presets import DEFAULT_PRESET, PRESETS_DIR, read_card, save_to_preset
from keras_robust_iqa.training.trainer import TrainConfig

CONFIG = TrainConfig(
    dataset="builtin", model="small", width=2.0, robust="replace", robust_conv="block",
    robust_activation="relu", loss="mse", learning_rate=3e-3, patch_size=64, patches_per_image=4,
    batch_size=32, epochs=24, patience=24, seed=0,
)
COMMAND = "python training/preset_builtin.py"
ATTACK_IMAGES = 32
ATTACK_EPS = 4 / 255

TRAINING_DATA = (
    "The built-in dataset (keras_robust_iqa.data.read_builtin, 256x256, seed 0): synthetic distortions "
    "(blur, noise, JPEG, JPEG 2000, contrast, pixelation, salt and pepper, gamma, saturation) of crops of "
    "scikit-image's photographs, each labelled by its MS-SSIM to the pristine crop; train / val / test split "
    "by source photograph.")
NOT_FOR = (
    "It is not a model of in-the-wild photo quality: it has seen synthetic distortions of a few photographs "
    "and scores how far an image is from a clean version of itself, not what people think of a photo. For "
    "real photographs train on KonIQ-10k (training/koniq10k.py).")
DESCRIPTION = (
    "Certified 1-Lipschitz IQA model: the small CNN at twice the channels with every layer replaced "
    "(BlockOrthoConv2D, ReLU, L2-norm pooling), trained with MSE; scores are the average over the centred "
    "grid of 64x64 patches, each with a certified interval.")


def build_preset(config=CONFIG, run_dir="runs/preset-builtin", out=PRESETS_DIR / DEFAULT_PRESET, *,
                 attack_images=ATTACK_IMAGES, command=COMMAND, verbose="auto"):
    """Train `config` into `run_dir`, measure the card's figures, write the preset `out`; returns the card."""
    import numpy as np

    from keras_robust_iqa import data as iqa_data
    from keras_robust_iqa.evaluation.evaluate import attack_key, evaluate_model, evenly_spaced
    from keras_robust_iqa.models import lipschitz_bound
    from keras_robust_iqa.training.trainer import load_run_model, train

    metrics = train(config, run_dir, verbose=verbose)
    model = load_run_model(run_dir)
    table = iqa_data.load_table(config.dataset, config.data_dir, min_size=config.patch_size)
    test = table.subset("test")
    rows = evenly_spaced(len(test), attack_images)
    entry, _ = evaluate_model(model, iqa_data.load_images(test, rows), test.normalize(test.mos[rows]),
                              attacks=["ifgsm"], eps=(ATTACK_EPS,), verbose=0)
    attack = entry["attacks"][attack_key("ifgsm", ATTACK_EPS)]
    counts = {split: int(np.sum(table.splits == split)) for split in ("train", "val", "test")}
    card = {
        "description": DESCRIPTION,
        "training_data": f"{TRAINING_DATA} Images: " + ", ".join(f"{n} {split}" for split, n in counts.items()) + ".",
        "not_for": NOT_FOR,
        "recipe_command": command,
        "training_config": dataclasses.asdict(config),
        "train_seconds": metrics["train_seconds"],
        "test": {key: metrics["test"][key] for key in ("srocc", "plcc", "krcc", "images")},
        "lipschitz_bound": lipschitz_bound(model),
        "ifgsm_4_255": {
            "images": len(rows),
            "gain_mos01": attack["abs_gain_raw"],
            "gain_scaled": attack["abs_gain"],
            "certified_bound_mos01": attack["certified_bound_raw"],
            "within_certified_bound": attack["within_certified_bound"],
        },
        "patch_size": config.patch_size,
        "mos_range": list(table.mos_range),
    }
    return read_card(save_to_preset(model, out, card))  # as written, with the name, date and versions


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="cache folder of the built-in dataset (default: $ROBUST_IQA_CACHE or "
                        "~/.cache/keras_robust_iqa)")
    parser.add_argument("--run-dir", default="runs/preset-builtin", help="run folder of the training "
                        "(default: runs/preset-builtin)")
    parser.add_argument("--out", default=str(PRESETS_DIR / DEFAULT_PRESET),
                        help="preset folder to write (default: the package's bundled preset)")
    parser.add_argument("--attack-images", type=int, default=ATTACK_IMAGES,
                        help=f"evenly spaced test images I-FGSM attacks (default: {ATTACK_IMAGES})")
    args = parser.parse_args(argv)
    config = dataclasses.replace(CONFIG, data_dir=args.data_dir)
    card = build_preset(config, args.run_dir, args.out, attack_images=args.attack_images)
    print(json.dumps(card, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
