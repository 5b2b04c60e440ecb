"""Callbacks for IQA training with `model.fit`."""

import keras

from keras_robust_iqa import models as iqa_models
from keras_robust_iqa.data import IQATable, iter_images
from keras_robust_iqa.training.correlation import correlations


class WholeImageValidation(keras.callbacks.Callback):
    """Adds `val_srocc`, `val_plcc` and `val_krcc` of whole images to the epoch logs.

    Training sees random patches, and a validation crop is one patch: its SROCC is
    noisy and is not what the test measures. This callback scores every validation
    image as the test does (patch-averaged over the whole image, see
    `keras_robust_iqa.models.score_images`), so that checkpoint selection and early
    stopping follow the test metric. Place it before the callbacks that read those
    keys (ModelCheckpoint, EarlyStopping, CSVLogger): Keras hands the same logs
    dictionary to each callback in turn.

    Args:
        images: an `IQATable` (its images are read again each epoch, so memory stays
            flat on large sets) or a list of `(H, W, 3)` arrays in [0, 1], each at
            least one patch large.
        mos01: their MOS on the [0, 1] scale; for a table, its normalised MOS.
        model: the model to score (default: the model being fit, or its `inner`
            IQA model when a defense wraps it for training).
    """

    def __init__(self, images, mos01=None, model=None):
        super().__init__()
        if isinstance(images, IQATable):
            mos01 = images.normalize(images.mos) if mos01 is None else mos01
        elif mos01 is None:
            raise ValueError("Argument `mos01` is required when `images` is not an IQATable.")
        if len(images) != len(mos01):
            raise ValueError(f"{len(images)} images but {len(mos01)} MOS values.")
        if len(images) < 3:
            raise ValueError(f"Whole-image validation needs at least 3 images, got {len(images)}.")
        self.images = images
        self.mos01 = mos01
        self.scored_model = model

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        model = self.scored_model if self.scored_model is not None else getattr(self.model, "inner", self.model)
        images = iter_images(self.images) if isinstance(self.images, IQATable) else self.images
        scores = iqa_models.score_images(model, images, batch_size=256)
        for key, value in correlations(scores, self.mos01).items():
            logs[f"val_{key}"] = value
