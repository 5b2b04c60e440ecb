"""Epoch-level correlation metrics (SROCC, PLCC, KRCC) for Keras 3 on TensorFlow.

Correlations are not decomposable: the SROCC of an epoch is *not* the mean of
per-batch SROCCs. These metrics therefore keep every (prediction, label) pair
seen since the last `reset_state()` and compute the statistic on all of them
in `result()`. The statistics equal `scipy.stats` (see
`keras_robust_iqa.training.correlation`): average ranks for ties in SROCC,
tau-b for KRCC, computed in float64.

Design of the state, and why:
On the TensorFlow backend Keras 3 resolves `compile(jit_compile="auto")` to
XLA whenever a GPU is visible (and the model has no distribution strategy),
and it calls `metric.update_state` *and*
`metric.result()` inside the compiled train/test step. XLA needs static
shapes and rejects `tf.numpy_function`, and a variable cannot change shape
inside an XLA cluster ("Shape of resource ... cannot be changed"), so the
usual "grow a `[None]` variable by concatenation + `numpy_function(scipy)`"
design would crash the default GPU training path. Instead:

- State is a fixed-capacity buffer: two float64 `tf.Variable`s of shape
  `[capacity + 1]` plus an int64 count. `update_state` writes a batch with
  one `tensor_scatter_nd_update` at offset `count`; the extra last slot
  absorbs writes past the end and samples with zero weight, so shapes never
  change. Memory: `16 * capacity` bytes per metric (and per replica), 1 MiB
  for the default `capacity=65536`.
- `result()` is pure TensorFlow (sorts, cumulative sums, segment sums), runs
  eagerly, in `tf.function` and under XLA, and works on masked buffers, so it
  is O(n log n) including Kendall's tau (Knight's algorithm, with the merge
  sort replaced by a radix partition over the bits of the dense ranks).
  Outside XLA the valid entries are compacted first, so cost follows the
  number of samples seen; under XLA every call processes the whole capacity
  (static shapes), so choose `capacity` close to the epoch size there.
- If more than `capacity` samples arrive between resets the result is
  `nan` (never a silently truncated statistic) and an eager `result()`
  warns. Raise `capacity` for larger epochs.
- The buffers are plain `tf.Variable`s rather than Keras variables: they
  need `aggregation=NONE` with direct access to every replica's copy, and as
  scratch state they should never end up in checkpoints. Consequently the
  metrics are TensorFlow-backend only (so is this package) and their state is
  not saved; metrics are not part of exported inference graphs anyway.

Distribution: create the metric inside `strategy.scope()` (as with any Keras
metric). Each replica then appends to its own `ON_READ` copy of the
buffers; `result()` gathers all replicas (`all_gather` inside
`strategy.run`, the per-replica copies otherwise), so the value equals the
statistic on the full global batch stream. This covers single-host
strategies (`MirroredStrategy`, `OneDeviceStrategy`); with
`MultiWorkerMirroredStrategy` the value Keras records at epoch end (an eager
`result()`) only sees the local worker's replicas.

`sample_weight` is treated as a mask: samples with weight 0 (e.g. Keras
padding masks) are ignored, any other weight includes the sample unweighted --
rank correlations have no standard weighted form.

Cost note: Keras evaluates `result()` after every step to feed the progress
bar, i.e. the statistic over everything accumulated so far, O(n log n) per
step. On a CPU (10k samples, batch 32, tiny Dense model) that averaged about
5 ms/step for SROCC, 1 ms for PLCC and 18 ms for KRCC; with a real backbone on
an accelerator it is a small fraction of a step. If KRCC is too slow during
training, compute it after the fact with `correlation.krcc`.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import tensorflow as tf

try:  # Used only to skip work outside XLA; see _in_xla_context.
    from tensorflow.python.ops import control_flow_util as _cfu
except ImportError:  # pragma: no cover - depends on TF internals
    _cfu = None

__all__ = ["SROCC", "PLCC", "KRCC", "DEFAULT_CAPACITY"]

DEFAULT_CAPACITY = 65536
# Lexicographic sort keys are rank_x * n + rank_y in float64, exact below 2**53:
# with this per-replica cap that holds for up to 64 replicas.
_MAX_CAPACITY = 2**20

_F64 = tf.float64
_INF = float("inf")


# --------------------------------------------------------------------------
# Statistics on masked float64 vectors. Invalid entries are replaced by +inf so
# that they sort after every valid (finite) value and are excluded from every
# count; all shapes stay static, so the same code runs under XLA.
# --------------------------------------------------------------------------


def _in_xla_context() -> bool:
    if tf.executing_eagerly():
        return False
    if _cfu is None:  # pragma: no cover
        # Conservative: the masked static-shape path is correct everywhere.
        return True
    try:
        return bool(_cfu.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))
    except Exception:  # pragma: no cover - TF internals changed
        return True


def _group_starts(sorted_values):
    """True where a sorted vector starts a new run of equal values."""
    pos = tf.range(tf.shape(sorted_values)[0])
    prev = tf.roll(sorted_values, shift=1, axis=0)
    return tf.logical_or(tf.not_equal(sorted_values, prev), tf.equal(pos, 0))


def _dense_ranks(values):
    """0-based dense ranks (equal values share a rank), int32.

    Derived from run boundaries of the sorted values, so it does not depend on
    the sort being stable (XLA's is not).
    """
    n = tf.shape(values)[0]
    order = tf.argsort(values)
    runs = tf.cumsum(tf.cast(_group_starts(tf.gather(values, order)), tf.int32)) - 1
    return tf.scatter_nd(order[:, None], runs, [n])


def _average_ranks(values, valid):
    """1-based ranks, ties get the mean of the ranks they span (scipy 'average')."""
    n = tf.shape(values)[0]
    dense = _dense_ranks(tf.where(valid, values, _INF))
    sizes = tf.math.unsorted_segment_sum(tf.cast(valid, tf.int32), dense, n)
    below = tf.cumsum(sizes, exclusive=True)
    return tf.cast(tf.gather(below, dense), _F64) + (
        tf.cast(tf.gather(sizes, dense), _F64) + 1.0
    ) / 2.0


def _is_constant(values, valid):
    lo = tf.reduce_min(tf.where(valid, values, _INF))
    hi = tf.reduce_max(tf.where(valid, values, -_INF))
    return tf.equal(lo, hi)


def _masked_pearson(x, y, valid):
    n = tf.reduce_sum(tf.cast(valid, _F64))
    zero = tf.zeros_like(x)
    # Two-pass (centre first) for accuracy; where() instead of multiplying by
    # the mask so garbage in invalid slots cannot produce 0 * inf = nan.
    mx = tf.reduce_sum(tf.where(valid, x, zero)) / n
    my = tf.reduce_sum(tf.where(valid, y, zero)) / n
    xc = tf.where(valid, x - mx, zero)
    yc = tf.where(valid, y - my, zero)
    r = tf.reduce_sum(xc * yc) / tf.sqrt(tf.reduce_sum(xc * xc) * tf.reduce_sum(yc * yc))
    # Explicit constant test like scipy: the centred sums of a constant vector
    # need not be exactly 0 after rounding.
    defined = (n >= 2.0) & ~_is_constant(x, valid) & ~_is_constant(y, valid)
    return tf.where(defined, tf.clip_by_value(r, -1.0, 1.0), tf.constant(np.nan, _F64))


def _tf_plcc(x, y, valid):
    return _masked_pearson(x, y, valid)


def _tf_srocc(x, y, valid):
    return _masked_pearson(_average_ranks(x, valid), _average_ranks(y, valid), valid)


def _tie_pairs(group_ids, valid, n):
    sizes = tf.math.unsorted_segment_sum(tf.cast(valid, tf.int64), group_ids, n)
    return tf.reduce_sum(sizes * (sizes - 1) // 2)


def _inversions_at_bit(seq, bit_index):
    """One radix level of inversion counting.

    `seq` is grouped by the bits above `bit_index` (groups ascending,
    original order kept inside each group). Counts pairs i < j in the same
    group with bit 1 at i and 0 at j -- each inversion is counted exactly once,
    at the highest bit where the two values differ -- then stably partitions
    every group by this bit, which establishes the invariant for the next bit.
    """
    n = tf.shape(seq)[0]
    pos = tf.range(n)
    prefix = tf.bitwise.right_shift(seq, bit_index + 1)
    bit = tf.bitwise.bitwise_and(tf.bitwise.right_shift(seq, bit_index), 1)
    group = tf.cumsum(tf.cast(_group_starts(prefix), tf.int32)) - 1
    start = tf.gather(tf.math.unsorted_segment_min(pos, group, n), group)
    ones_seen = tf.cumsum(bit, exclusive=True)
    ones_before = ones_seen - tf.gather(ones_seen, start)
    zeros_before = (pos - start) - ones_before
    zeros_in_group = tf.gather(tf.math.unsorted_segment_sum(1 - bit, group, n), group)
    is_zero = tf.equal(bit, 0)
    count = tf.reduce_sum(tf.cast(tf.where(is_zero, ones_before, 0), tf.int64))
    new_pos = start + tf.where(is_zero, zeros_before, zeros_in_group + ones_before)
    return tf.scatter_nd(new_pos[:, None], seq, [n]), count


def _count_inversions(seq):
    """Number of pairs i < j with seq[i] > seq[j]; `seq` int32 in [0, len)."""
    static_n = seq.shape[0]
    if static_n is not None:
        n_bits = tf.constant(max(int(static_n - 1).bit_length(), 1))
    else:
        n = tf.shape(seq)[0]
        n_bits = tf.while_loop(
            lambda k: tf.bitwise.left_shift(1, k) < n, lambda k: (k + 1,), (tf.constant(1),)
        )[0]

    def body(b, s, acc):
        s, count = _inversions_at_bit(s, b)
        return b - 1, s, acc + count

    # A loop rather than unrolling: shapes do not depend on the bit index, so
    # XLA accepts it and compiles the body once.
    total = tf.constant(0, tf.int64)
    return tf.while_loop(lambda b, s, acc: b >= 0, body, (n_bits - 1, seq, total))[2]


def _tf_krcc(x, y, valid):
    """Kendall tau-b, same formula as `scipy.stats.kendalltau`."""
    n_slots = tf.shape(x)[0]
    rx = _dense_ranks(tf.where(valid, x, _INF))
    ry = _dense_ranks(tf.where(valid, y, _INF))
    # Lexicographic order by (x, y) from one sort of a unique-per-pair key.
    key = tf.cast(rx, _F64) * tf.cast(n_slots, _F64) + tf.cast(ry, _F64)
    order = tf.argsort(key)
    joint = tf.cumsum(tf.cast(_group_starts(tf.gather(key, order)), tf.int32)) - 1
    x_ties = _tie_pairs(rx, valid, n_slots)
    y_ties = _tie_pairs(ry, valid, n_slots)
    xy_ties = _tie_pairs(joint, tf.gather(valid, order), n_slots)
    # With (x, y) sorted, discordant pairs are exactly the inversions of y.
    discordant = _count_inversions(tf.gather(ry, order))
    n = tf.reduce_sum(tf.cast(valid, tf.int64))
    total = n * (n - 1) // 2
    con_minus_dis = tf.cast(total - x_ties - y_ties + xy_ties - 2 * discordant, _F64)
    tau = (
        con_minus_dis
        / tf.sqrt(tf.cast(total - x_ties, _F64))
        / tf.sqrt(tf.cast(total - y_ties, _F64))
    )
    defined = (total > x_ties) & (total > y_ties)
    return tf.where(defined, tf.clip_by_value(tau, -1.0, 1.0), tf.constant(np.nan, _F64))


# --------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------


def check_score_shape(t, what):
    """`t` as a tensor, after checking it holds one score per sample: `(B,)` or `(B, 1)`.

    Shared by the metrics and the losses.
    """
    t = tf.convert_to_tensor(t)
    shape = t.shape
    if shape.rank is not None and shape.rank >= 2:
        per_sample = shape[1:].num_elements()
        if per_sample is not None and per_sample != 1:
            raise ValueError(
                f"{what} must hold one score per sample, shape (batch,) or "
                f"(batch, 1); got shape {shape}."
            )
    return t


def _flatten_scores(t, what):
    return tf.reshape(tf.cast(check_score_shape(t, what), _F64), [-1])


def _is_distributed(var):
    return isinstance(var, tf.distribute.DistributedValues)


class _CorrelationMetric(keras.metrics.Metric):
    """Accumulates all (prediction, label) pairs; see the module docstring."""

    _statistic = None  # f(x, y, valid) -> float64 scalar, set by subclasses

    def __init__(self, name, dtype=None, capacity=DEFAULT_CAPACITY):
        if self._statistic is None:
            raise TypeError("Use SROCC, PLCC or KRCC.")
        super().__init__(name=name, dtype=dtype)
        capacity = int(capacity)
        if not 2 <= capacity <= _MAX_CAPACITY:
            raise ValueError(f"capacity must be in [2, {_MAX_CAPACITY}], got {capacity}.")
        self.capacity = capacity
        # Remembered so result()/reset_state() can reach every replica's copy
        # even when called outside the strategy scope (Keras does so eagerly).
        self._strategy = tf.distribute.get_strategy()
        state_kwargs = dict(
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ,
            # Replicas hold different samples: they are gathered, never summed.
            aggregation=tf.VariableAggregation.NONE,
        )
        with tf.init_scope():
            self._y_pred = tf.Variable(
                tf.zeros([capacity + 1], _F64), name=f"{self.name}_y_pred", **state_kwargs
            )
            self._y_true = tf.Variable(
                tf.zeros([capacity + 1], _F64), name=f"{self.name}_y_true", **state_kwargs
            )
            self._count = tf.Variable(
                tf.zeros([], tf.int64), name=f"{self.name}_count", **state_kwargs
            )

    # -- replica bookkeeping ------------------------------------------------

    def _in_own_replica_context(self):
        return (
            not tf.distribute.in_cross_replica_context()
            and tf.distribute.get_strategy() is self._strategy
        )

    def _writable(self, var):
        """The copy an update should write to."""
        if not _is_distributed(var):
            ctx = tf.distribute.get_replica_context()
            if ctx is not None and ctx.num_replicas_in_sync > 1:
                raise ValueError(
                    f"{type(self).__name__} was created outside the scope of the "
                    "distribution strategy it is used in; replicas would race on "
                    "its state. Create the metric inside `strategy.scope()`."
                )
            return var
        if self._in_own_replica_context():
            return var  # ON_READ: this replica's own copy
        # Cross-replica or outside the scope: one copy, else data is duplicated.
        return self._strategy.experimental_local_results(var)[0]

    def _all_copies(self, var):
        if _is_distributed(var) and not self._in_own_replica_context():
            return list(self._strategy.experimental_local_results(var))
        return [var]

    # -- Metric API -----------------------------------------------------------

    def update_state(self, y_true, y_pred, sample_weight=None):
        pred = _flatten_scores(y_pred, "y_pred")
        true = _flatten_scores(y_true, "y_true")
        if (
            pred.shape[0] is not None
            and true.shape[0] is not None
            and pred.shape[0] != true.shape[0]
        ):
            raise ValueError(
                f"y_true and y_pred hold {true.shape[0]} and {pred.shape[0]} scores."
            )
        n = tf.shape(pred)[0]
        if sample_weight is None:
            keep = tf.ones([n], tf.bool)
        else:
            sw = tf.cast(tf.convert_to_tensor(sample_weight), _F64)
            sw = tf.broadcast_to(tf.reshape(sw, [-1]) if sw.shape.rank else sw, [n])
            keep = tf.not_equal(sw, 0.0)

        y_pred_var = self._writable(self._y_pred)
        y_true_var = self._writable(self._y_true)
        count_var = self._writable(self._count)
        keep_i = tf.cast(keep, tf.int64)
        slot = tf.convert_to_tensor(count_var) + tf.cumsum(keep_i, exclusive=True)
        # Dropped and overflowing samples all go to the spare last slot; the
        # count still grows so result() can detect the overflow.
        slot = tf.where(keep & (slot < self.capacity), slot, self.capacity)
        slot = slot[:, None]
        y_pred_var.assign(tf.tensor_scatter_nd_update(tf.convert_to_tensor(y_pred_var), slot, pred))
        y_true_var.assign(tf.tensor_scatter_nd_update(tf.convert_to_tensor(y_true_var), slot, true))
        count_var.assign_add(tf.reduce_sum(keep_i))

    def _gathered_state(self):
        """Buffers `[replicas, capacity]` and counts `[replicas]`."""
        cap = self.capacity
        ctx = tf.distribute.get_replica_context()
        if (
            _is_distributed(self._count)
            and self._in_own_replica_context()
            and ctx.num_replicas_in_sync > 1
        ):
            # Inside strategy.run (the compiled Keras step): collect from all
            # replicas so every replica reports the global value.
            def gather(var):
                return ctx.all_gather(tf.convert_to_tensor(var)[None, :cap], axis=0)

            counts = ctx.all_gather(tf.convert_to_tensor(self._count)[None], axis=0)
            return gather(self._y_pred), gather(self._y_true), counts

        def stack(var):
            return tf.stack([tf.convert_to_tensor(v)[:cap] for v in self._all_copies(var)])

        counts = tf.stack([tf.convert_to_tensor(v) for v in self._all_copies(self._count)])
        return stack(self._y_pred), stack(self._y_true), counts

    def result(self):
        preds, trues, counts = self._gathered_state()
        overflow = tf.reduce_any(counts > self.capacity)
        if tf.executing_eagerly() and bool(overflow):
            warnings.warn(
                f"{self.name}: {int(tf.reduce_sum(counts))} samples since the last "
                f"reset exceed capacity={self.capacity} (per replica); result is "
                "nan. Create the metric with a larger `capacity`.",
                RuntimeWarning,
                stacklevel=2,
            )
        valid = tf.range(self.capacity)[None, :] < tf.cast(counts, tf.int32)[:, None]
        x = tf.reshape(preds, [-1])
        y = tf.reshape(trues, [-1])
        valid = tf.reshape(valid, [-1])
        if not _in_xla_context():
            # Dynamic shapes are fine here: only pay for what was seen.
            x = tf.boolean_mask(x, valid)
            y = tf.boolean_mask(y, valid)
            valid = tf.ones_like(x, dtype=tf.bool)
        value = type(self)._statistic(x, y, valid)
        zero = tf.zeros_like(x)
        finite = tf.reduce_all(tf.math.is_finite(tf.where(valid, x, zero))) & tf.reduce_all(
            tf.math.is_finite(tf.where(valid, y, zero))
        )
        value = tf.where(finite & ~overflow, value, tf.constant(np.nan, _F64))
        return tf.cast(value, self.dtype)

    def reset_state(self):
        for var in self._all_copies(self._count):
            var.assign(tf.zeros([], tf.int64))
        # Buffers need no clearing: everything past `count` is ignored.

    def get_config(self):
        return {**super().get_config(), "capacity": self.capacity}


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class SROCC(_CorrelationMetric):
    """Spearman rank-order correlation over all samples since the last reset.

    Ties get average ranks, exactly as `scipy.stats.spearmanr`.

    Args:
        name: metric name (Keras logs it as `srocc` / `val_srocc`).
        dtype: dtype of `result()`; the statistic is computed in float64.
        capacity: maximum number of samples (per replica) between resets; the
            result is `nan` beyond it. See the module docstring.
    """

    _statistic = staticmethod(_tf_srocc)

    def __init__(self, name="srocc", dtype=None, capacity=DEFAULT_CAPACITY):
        super().__init__(name=name, dtype=dtype, capacity=capacity)


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class PLCC(_CorrelationMetric):
    """Pearson linear correlation over all samples since the last reset.

    No logistic mapping is applied (that needs a non-linear fit; use
    `correlation.plcc(..., fit="logistic4")` for reports).

    Args: as `SROCC`.
    """

    _statistic = staticmethod(_tf_plcc)

    def __init__(self, name="plcc", dtype=None, capacity=DEFAULT_CAPACITY):
        super().__init__(name=name, dtype=dtype, capacity=capacity)


@keras.saving.register_keras_serializable(package="keras_robust_iqa")
class KRCC(_CorrelationMetric):
    """Kendall tau-b over all samples since the last reset.

    Same value as `scipy.stats.kendalltau` (tie-corrected tau-b), computed in
    O(n log n).

    Args: as `SROCC`.
    """

    _statistic = staticmethod(_tf_krcc)

    def __init__(self, name="krcc", dtype=None, capacity=DEFAULT_CAPACITY):
        super().__init__(name=name, dtype=dtype, capacity=capacity)
