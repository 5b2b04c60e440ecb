"""Put a correlation-trained model's scores back on the MOS scale.

A model trained with a correlation loss (`plcc`, `rank`) learns the order and
the linear shape of quality, not its scale: its outputs are an arbitrary
affine map of the normalised MOS, yet every later stage (export, attack gains
on the MOS scale) reads them as normalised MOS. `calibrate_to_mos` fits that
affine map on validation images by least squares and appends its inverse as a
fixed `Rescaling` layer named `mos_calibration`, so the model file itself
predicts on the [0, 1] MOS scale. A positive affine map changes no SROCC or
PLCC; it multiplies the certified Lipschitz bound by its scale, which the
bound then reports (`Rescaling` is certified by `lipschitz_bound`).
"""

import keras
import numpy as np

from keras_robust_iqa import data as iqa_data
from keras_robust_iqa import models as iqa_models

CORRELATION_LOSSES = ("plcc", "rank")
LAYER_NAME = "mos_calibration"


def calibrate_to_mos(model, table, split="val"):
    """`(model, fit)`: `model` with its outputs mapped onto the normalised MOS of `split`.

    Args:
        model: a single-output IQA model scoring `[0, 1]` patches.
        table: the dataset table (`keras_robust_iqa.data`) holding `split`.
        split: the images the map is fitted on (never the test split).

    Returns:
        The calibrated model (a new model sharing `model`'s layers; a model that
        already ends with `mos_calibration` gets one combined map, not a second
        layer) and `{"scale", "offset", "split", "images"}`, the map from the
        uncalibrated output to normalised MOS. When the scores fall
        with MOS on `split` (a model that learned nothing), the model is returned
        unchanged and `fit` is `None`: a negative scale would flip its ranking.
    """
    subset = table.subset(split)
    if len(subset) < 2:
        raise ValueError(f"calibrate_to_mos needs at least 2 images in split {split!r}, got {len(subset)}.")
    scores = iqa_models.score_images(model, iqa_data.iter_images(subset))
    target = subset.normalize(subset.mos)
    if np.ptp(scores) == 0:
        return model, None
    scale, offset = np.polyfit(scores, target, 1)
    if not scale > 0:
        return model, None
    last = model.layers[-1]
    if last.name == LAYER_NAME and isinstance(last, keras.layers.Rescaling):
        # y = s2 (s1 x + o1) + o2: fold both into one layer on the uncalibrated output.
        raw = last.input
        scale, offset = scale * float(last.scale), scale * float(last.offset) + offset
    else:
        (raw,) = model.outputs
    outputs = keras.layers.Rescaling(float(scale), offset=float(offset), name=LAYER_NAME)(raw)
    fit = {"scale": float(scale), "offset": float(offset), "split": split, "images": len(subset)}
    return keras.Model(model.inputs, outputs, name=model.name), fit


# How `train` sets a model's `OutputScale` (TrainConfig.output_scale): "learned" keeps its
# initial value and learns it; "labels" starts it from the labels and learns it; "fixed"
# starts it from the labels and freezes it, so the certificate's gain is the labels' choice.
OUTPUT_SCALES = ("learned", "labels", "fixed")


def fit_output_scale(model, dataset, batches=8, trainable=True):
    """Set the `OutputScale` that ends `model` so its outputs match the labels' mean and spread.

    On `batches` batches of `dataset` (`(patches, labels, ...)`), with the network below
    the scale as it is now (`f`): `scale = std(labels) / std(f)` and
    `offset = mean(labels) - scale * mean(f)`. A freshly initialised 1-Lipschitz network's
    outputs span a tiny range (its bound is far below the labels' spread per unit of input
    change), so a learned scale starting at 1 spends many steps growing first.

    Args:
        model: a model whose last layer is an `OutputScale` (`sll`, `robustify(mode="replace")`
            without a squashing output).
        dataset: batches of training patches and labels.
        batches: how many batches the statistics are taken over.
        trainable: False freezes the scale and offset at the fitted values.

    Returns:
        `{"scale", "offset", "patches"}`, the values set.
    """
    from keras_robust_iqa.layers import OutputScale

    last = model.layers[-1]
    if not isinstance(last, OutputScale):
        raise ValueError(f"fit_output_scale sets the OutputScale that ends the model, and model '{model.name}' "
                         f"ends with {type(last).__name__} '{last.name}': use output_scale='learned'.")
    last.scale.assign(1.0)
    last.offset.assign(0.0)
    features, labels = [], []
    for batch in dataset.take(batches):
        features.append(keras.ops.convert_to_numpy(model(batch[0], training=False)).ravel())
        labels.append(np.asarray(batch[1], np.float64).ravel())
    features, labels = np.concatenate(features).astype(np.float64), np.concatenate(labels)
    if not np.std(features) > 0:
        raise ValueError(f"fit_output_scale: model '{model.name}' gives the same output for all "
                         f"{features.size} patches; nothing to scale.")
    scale = float(np.std(labels) / np.std(features))
    offset = float(np.mean(labels) - scale * np.mean(features))
    last.scale.assign(scale)
    last.offset.assign(offset)
    last.trainable = bool(trainable)
    return {"scale": scale, "offset": offset, "patches": int(features.size)}
