"""A tensor derived from a layer's weights, recomputed only when they change."""

import tensorflow as tf


class DerivedWeightCache:
    """Caches `compute()` of some weights until any of them changes.

    For inference: the orthogonal layers turn their free weights into the
    operator they apply (Cayley transforms, kernel products), which depends on
    the weights only. `get(compute)` compares the weights with the copy seen
    at the last refresh (a few thousand flops) and recomputes on any change,
    so an `assign`, `set_weights` or optimizer step is always followed, inside
    or outside a `tf.function`.

    The cache lives in plain `tf.Variable`s, not Keras weights: it is derived,
    so it must not be saved to `.keras` files or trained.

    Args:
        weights: the variables the value is computed from.
        shape, dtype: of the computed value.
        name: prefix of the cache variables.
    """

    def __init__(self, weights, shape, dtype, name):
        sync = dict(
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
        self._weights = list(weights)
        self._value = tf.Variable(tf.zeros(shape, dtype), name=f"{name}_cache", **sync)
        # NaN never equals anything, so the first call always fills the cache.
        self._seen = [
            tf.Variable(tf.fill(w.shape, float("nan")), name=f"{name}_seen_{i}", **sync)
            for i, w in enumerate(self._weights)
        ]

    def get(self, compute):
        """The cached value, refreshed with `compute(*weights)` when the weights changed."""
        current = [tf.cast(tf.convert_to_tensor(w), tf.float32) for w in self._weights]
        fresh = tf.reduce_all(
            tf.stack([tf.reduce_all(tf.equal(seen, w)) for seen, w in zip(self._seen, current)])
        )

        def reuse():
            return tf.identity(self._value)

        def refresh():
            value = compute(*current)
            updates = [self._value.assign(value)]
            updates += [seen.assign(w) for seen, w in zip(self._seen, current)]
            with tf.control_dependencies(updates):
                return tf.identity(value)

        return tf.cond(fresh, reuse, refresh)
