"""How far can an attack inflate the labels themselves?

The built-in dataset's labels are a function of the image: MS-SSIM against the pristine
crop it was made from, mapped to 0..100 (`keras_robust_iqa.data.builtin`). Attacking that
function with the attacks the models face measures how much of a budget a *genuine*
improvement can buy: a perturbation that moves a distorted image towards its reference
raises its true quality. A model that scored every image as the labels do, on and off the
data, would gain at least this much under the same attack, so it is the floor of what a
target on a model's gain can ask for while the model keeps up with the labels.
"""

import collections
import math

import keras
import numpy as np
import tensorflow as tf

from keras_robust_iqa import attacks as iqa_attacks
from keras_robust_iqa.data import builtin
from keras_robust_iqa.data.pipeline import load_images
from keras_robust_iqa.evaluation.evaluate import evenly_spaced

# The attacks that need nothing but the model and the images (no training images to learn
# a perturbation on, no second model).
LABEL_ATTACKS = ("fgsm", "ifgsm", "mifgsm", "amifgsm", "pgd_l2", "korhonen", "square")
# Stored labels have 4 decimals on 0..100, and TensorFlow's float32 MS-SSIM rounds: a
# larger difference means the table's labels are not this function of its images.
LABEL_TOLERANCE = 1e-3


class _ReferenceLabel(keras.layers.Layer):
    """The built-in label on the [0, 1] scale: `msssim_to_mos(MS-SSIM(x, reference)) / 100`."""

    def __init__(self, reference, power_factors, **kwargs):
        super().__init__(**kwargs)
        self.reference = tf.constant(reference[None], tf.float32)
        self.power_factors = tuple(power_factors)

    def call(self, images):
        ms = tf.image.ssim_multiscale(images, self.reference, max_val=1.0, power_factors=self.power_factors)
        distance = 1.0 - tf.clip_by_value(ms, 0.0, 1.0)
        mos01 = 1.0 - tf.math.log1p(distance / builtin.MOS_D0) / math.log1p(1.0 / builtin.MOS_D0)
        return mos01[:, None]


def label_model(reference):
    """A Keras model scoring images of `reference`'s size as the built-in labels do."""
    height, width, channels = reference.shape
    inputs = keras.Input((height, width, channels))
    layer = _ReferenceLabel(reference, builtin.msssim_weights(height, width), name="ms_ssim_label")
    return keras.Model(inputs, layer(inputs), name="builtin_label")


def label_gain(table, split="test", *, attack="ifgsm", eps=4 / 255, images=None, verbose=0, **attack_kwargs):
    """The gain an attack gets on the built-in labels themselves.

    Each image is attacked through the label function of its own pristine crop (with the
    package's attack, as a model would be); the gain is the attacked label minus the
    clean one, on the normalised [0, 1] MOS scale, as in `robust-iqa evaluate`.

    Args:
        table: the built-in dataset (`data.load_table("builtin")`).
        split: the split to attack.
        attack: one of `LABEL_ATTACKS`.
        eps: the budget, as for the attack (L-inf, or L2 for `pgd_l2`).
        images: attack this many evenly spaced images of the split (as `robust-iqa
            evaluate --images` picks them; `None`: all).
        **attack_kwargs: passed to the attack (`steps`, `step_size`, ...).

    Returns:
        A dict: `attack`, `eps`, `images`, `abs_gain` (mean), `median`, `max`, `gains`
        (per image, in the split's row order), `by_distortion` (per type: `abs_gain`,
        `max`, `images`), `label_error` (largest difference between the function's clean
        label and the table's, normalised).

    Raises:
        ValueError: for an unknown attack, an image whose pristine crop is not in the
            table, or a table whose labels are not this function of its images (naming
            the row).
    """
    if attack not in LABEL_ATTACKS:
        raise ValueError(f"Argument `attack`={attack!r}: choose from {LABEL_ATTACKS} "
                         f"(the others learn on training images or need a second model).")
    subset = table.subset(split)
    if len(subset) == 0:
        raise ValueError(f"{table.name}: split {split!r} has no images.")
    rows = np.arange(len(subset)) if images is None else evenly_spaced(len(subset), min(int(images), len(subset)))
    row_of = {str(path): i for i, path in enumerate(table.paths)}
    groups = collections.defaultdict(list)
    for row in rows:
        reference = builtin.pristine_path(str(subset.paths[row]))
        if reference not in row_of:
            raise ValueError(f"{table.name}: row {row} of split {split!r} ({subset.paths[row]}): its pristine "
                             f"crop {reference} is not in the table; label_gain needs the built-in dataset.")
        groups[row_of[reference]].append(row)

    mos = subset.normalize(subset.mos)
    clean, attacked, error = {}, {}, 0.0
    for reference_row, members in groups.items():
        model = label_model(load_images(table, [reference_row])[0])
        x = np.stack(load_images(subset, members))
        # Check the labels before spending the attack's time on them.
        for row, label in zip(members, _labels(model, x)):
            if abs(label - mos[row]) > LABEL_TOLERANCE:
                raise ValueError(
                    f"{table.name}: row {row} of split {split!r} ({subset.paths[row]}) is labelled "
                    f"{mos[row]:.4f} (normalised) but MS-SSIM against its pristine crop gives "
                    f"{label:.4f}: its labels are not the built-in metric.")
            clean[row], error = label, max(error, abs(label - mos[row]))
        x_adv = iqa_attacks.ATTACKS[attack](model, x, eps=eps, verbose=verbose, **attack_kwargs)
        for row, label in zip(members, _labels(model, x_adv)):
            attacked[row] = label

    gains = np.array([attacked[row] - clean[row] for row in rows])
    result = {
        "attack": attack, "eps": float(eps), "images": len(rows),
        "abs_gain": float(gains.mean()), "median": float(np.median(gains)), "max": float(gains.max()),
        "gains": gains.tolist(), "label_error": float(error),
    }
    if subset.distortions is not None:
        kinds = subset.distortions[rows]
        result["by_distortion"] = {
            str(kind): {"abs_gain": float(gains[kinds == kind].mean()), "max": float(gains[kinds == kind].max()),
                        "images": int((kinds == kind).sum())}
            for kind in sorted(set(kinds))}
    return result


def _labels(model, images):
    return np.asarray(model(tf.constant(images, tf.float32)), "float64")[:, 0]
