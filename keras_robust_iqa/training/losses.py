"""Losses for training IQA regressors with `model.fit`.

- `MeanSquaredError`, `MeanAbsoluteError`: Keras' own classes,
  re-exported so that all IQA losses can be imported from one place.
- `PLCCLoss`: `(1 - PLCC) / 2` of the batch; in [0, 1], invariant to
  the scale and offset of the predictions.
- `PairwiseRankLoss`: logistic (RankNet) or hinge (margin ranking) loss
  over all ordered pairs of the batch whose labels differ.

The two correlation-style losses are *batch-level* quantities. `call()`
returns the batch value repeated once per sample rather than a bare scalar, so
that Keras' reduction treats them like any per-sample loss: the default
`"sum_over_batch_size"` gives back the batch value, `sample_weight` scales
it by the mean weight, and -- the reason for not returning a scalar, which
Keras passes through unreduced -- the loss is divided by the number of replicas
under a distribution strategy like every other Keras loss, keeping summed
replica gradients correct. The correlation or the pair set itself is not
weighted. Under a distribution strategy each replica computes the loss on its
own share of the global batch, so keep per-replica batches large enough for a
correlation to mean something (say >= 8).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_robust_iqa.training.metrics import check_score_shape

__all__ = [
    "MeanSquaredError",
    "MeanAbsoluteError",
    "PLCCLoss",
    "PairwiseRankLoss",
]

# Keras' implementations, not reimplemented here.
MeanSquaredError = keras.losses.MeanSquaredError
MeanAbsoluteError = keras.losses.MeanAbsoluteError


def _scores(t, dtype, what):
    """Flatten `(B,)`/`(B, 1)` scores; compute in at least float32."""
    t = check_score_shape(t, what)
    # float16/bfloat16 (mixed precision) is too coarse for centred products.
    dtype = tf.as_dtype(dtype)
    if dtype.size < 4:
        dtype = tf.float32
    return tf.reshape(tf.cast(t, dtype), [-1])


def _per_sample(batch_value, like, dtype):
    # See the module docstring: a scalar would skip Keras' reduction and its
    # 1 / num_replicas scaling under tf.distribute.
    return tf.cast(tf.broadcast_to(batch_value, tf.shape(like)), dtype)


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class PLCCLoss(keras.losses.Loss):
    """`(1 - r) / 2` where `r` is the Pearson correlation of the batch.

    `r = cov(p, y) / sqrt((var(p) + epsilon) * (var(y) + epsilon))` with
    population (co)variances. `epsilon` keeps the loss and its gradient
    finite when predictions (or labels) are constant within the batch, e.g.
    a freshly initialised head: there the loss is 0.5 and the gradient points
    along the centred labels. Because `r` is scale invariant its gradient
    grows like `1 / std(p)` as predictions collapse; `epsilon` caps it at
    about `1 / sqrt(epsilon)` per unit label spread, so pair this loss with an
    adaptive optimiser (Adam) or a scale-fixing term such as MSE.

    Args:
        epsilon: variance floor, in squared units of the scores.
        reduction, name, dtype: as for any `keras.losses.Loss` (see the
            module docstring for how reductions apply to batch-level values).
    """

    def __init__(
        self,
        epsilon=1e-8,
        reduction="sum_over_batch_size",
        name="plcc_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}.")
        self.epsilon = float(epsilon)

    def call(self, y_true, y_pred):
        p = _scores(y_pred, self.dtype, "y_pred")
        y = _scores(y_true, p.dtype, "y_true")
        pc = p - tf.reduce_mean(p)
        yc = y - tf.reduce_mean(y)
        cov = tf.reduce_mean(pc * yc)
        var_p = tf.reduce_mean(tf.square(pc))
        var_y = tf.reduce_mean(tf.square(yc))
        r = cov / tf.sqrt((var_p + self.epsilon) * (var_y + self.epsilon))
        return _per_sample((1.0 - r) / 2.0, p, self.dtype)

    def get_config(self):
        return {**super().get_config(), "dtype": self.dtype, "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class PairwiseRankLoss(keras.losses.Loss):
    """Mean pairwise ranking loss over the batch.

    For every ordered pair `(i, j)` with `y_i > y_j` (pairs with equal
    labels are skipped) let `d = p_i - p_j`; the per-pair loss is

    - `kind="logistic"` (default, RankNet): `softplus(margin - d)`
      `= log(1 + exp(margin - d))`. Smooth and never exactly zero; each pair
      pulls with `sigmoid(margin - d)` (1/2 for tied predictions and
      `margin=0`), so it also trains a model whose predictions are constant.
    - `kind="hinge"` (margin ranking): `max(0, margin - d)`. Zero once every
      pair is ordered with a gap of at least `margin`; use `margin > 0`
      (on the scale of the predictions), with `margin=0` exactly tied
      predictions receive no gradient.

    The result is the mean over those pairs, 0 for a batch without any pair
    of different labels (or of size < 2). Memory is O(batch**2).

    Args:
        kind: `"logistic"` or `"hinge"`.
        margin: required score gap for a pair (see above).
        reduction, name, dtype: as for any `keras.losses.Loss`.
    """

    _KINDS = ("logistic", "hinge")

    def __init__(
        self,
        kind="logistic",
        margin=0.0,
        reduction="sum_over_batch_size",
        name="pairwise_rank_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if kind not in self._KINDS:
            raise ValueError(f"kind must be one of {self._KINDS}, got {kind!r}.")
        self.kind = kind
        self.margin = float(margin)

    def call(self, y_true, y_pred):
        p = _scores(y_pred, self.dtype, "y_pred")
        y = _scores(y_true, p.dtype, "y_true")
        should_be_higher = tf.cast(y[:, None] > y[None, :], p.dtype)
        gap = self.margin - (p[:, None] - p[None, :])
        if self.kind == "logistic":
            per_pair = tf.math.softplus(gap)
        else:
            per_pair = tf.nn.relu(gap)
        n_pairs = tf.reduce_sum(should_be_higher)
        loss = tf.reduce_sum(should_be_higher * per_pair) / tf.maximum(n_pairs, 1.0)
        return _per_sample(loss, p, self.dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "dtype": self.dtype,
            "kind": self.kind,
            "margin": self.margin,
        }
