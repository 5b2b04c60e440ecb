"""Distillation: a trained run's patch scores as part of each training patch's target.

A training patch is labelled with the MOS of its whole image, although a flat patch of a
JPEG-compressed photograph shows none of the damage. A teacher that has learned the task
scores each patch by what the patch shows; mixing its score into the label gives the
student a target per patch (Hinton et al., 2015, for regression). The student is the model
being trained, of any architecture: the use it was made for is a 1-Lipschitz `replace`
model taught by a trained base model, whose per-patch scores tell it which patches show the
damage (the distilled runs are in docs/experiments.md).

Only the training targets change: validation, the checkpoint and the test read the real
MOS. The teacher runs inside the input pipeline and is not part of the saved model. Input
pipelines run on the host's CPU: cheap for the small base model (the distilled runs' times
are in docs/experiments.md), slow for a large backbone teacher on a GPU machine, where the
teacher's scores would better be computed once and stored with the data, or inside the
training step.
"""

import pathlib

import tensorflow as tf

from keras_robust_iqa import run_folder
from keras_robust_iqa.training.calibration import CORRELATION_LOSSES


def load_teacher(run, table, patch_size):
    """The model of run folder `run`, checked to score `patch_size` patches of `table`'s
    dataset on its normalised MOS scale. Errors name the run and what differs."""
    run = pathlib.Path(run)
    try:
        teacher = run_folder.load_model(run)
        config = run_folder.read_config(run)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"--distill-from {run}: {error} Without it the teacher's MOS scale is unknown.") \
            from None
    if (config.get("dataset_name"), config.get("mos_range")) != (table.name, list(table.mos_range)):
        raise ValueError(
            f"--distill-from {run}: the teacher was trained on {config.get('dataset_name')!r} with MOS range "
            f"{config.get('mos_range')}, this run reads {table.name!r} with {list(table.mos_range)}: its "
            f"scores are on another scale.")
    if config.get("loss") in CORRELATION_LOSSES:
        metrics = run_folder.read_metrics(run)
        calibrated = metrics is not None and metrics.get("mos_calibration")
        if not calibrated:
            raise ValueError(
                f"--distill-from {run}: the teacher was trained with the {config['loss']} loss and has no "
                f"mos_calibration in its metrics.json, so its scores are not on the MOS scale.")
    height, width = teacher.input_shape[1:3]
    if height not in (None, patch_size) or width not in (None, patch_size):
        raise ValueError(
            f"--distill-from {run}: the teacher scores {height}x{width} patches, this run trains on "
            f"{patch_size}x{patch_size} (--patch-size).")
    teacher.trainable = False
    return teacher


def distillation_targets(dataset, teacher, weight):
    """`dataset` of `(patches, mos)` batches with each target replaced by
    `(1 - weight) * mos + weight * teacher(patches)`."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"--distill-weight must be in [0, 1], got {weight!r}.")

    def mix(patches, mos):
        scores = tf.cast(tf.reshape(teacher(patches, training=False), tf.shape(mos)), mos.dtype)
        return patches, (1.0 - weight) * mos + weight * scores

    return dataset.map(mix, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


__all__ = ["load_teacher", "distillation_targets"]
