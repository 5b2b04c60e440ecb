"""`run_layer_test`: the checks every layer of `keras_robust_iqa.layers` passes (keras-hub style).

One call builds a layer, runs it and checks what the layer contract promises: its output
shape, a training step in `model.fit`, its config and `.keras` round trips (safe mode), its
dtype under mixed precision, and its Lipschitz constant measured by power iteration on the
Jacobian at random inputs (`layers.linalg.jacobian_spectral_norm`), never above what
`lipschitz_constant()` states. A new layer's test calls it; see docs/layers.md.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_robust_iqa.layers.keras_rules import contract_of
from keras_robust_iqa.layers.linalg import jacobian_spectral_norm

# Relative slack of the measured Lipschitz constant over the stated one (float32 round-off).
LIPSCHITZ_RTOL = 1e-4


def run_layer_test(layer_cls, init_kwargs, input_shape, tmp_path, *, expected_output_shape=None, train=True,
                   atol=1e-6, mixed_precision_dtype="float32", lipschitz_samples=3, lipschitz_iterations=20,
                   seed=0, weights=None):
    """Build `layer_cls(**init_kwargs)` on `input_shape` (no batch axis) and check it.

    `input_shape` is one shape, or a list of shapes for a layer that merges several inputs.

    Checks, in order:
    - config round trip: `from_config(get_config())` has the same config and, given the
      same weights, computes the same;
    - output shape: the model's, `compute_output_shape`'s and `expected_output_shape`
      (without the batch axis; default: not checked beyond the first two agreeing);
    - a `.keras` file reloaded in safe mode and a `clone_model` compute the same;
    - under the `mixed_float16` policy the layer's output dtype is
      `mixed_precision_dtype` (None: not checked) and, if float32, it computes as in
      float32 (the orthogonal layers keep float32 to stay exact);
    - with `lipschitz_samples > 0`: the largest singular value of the Jacobian at that
      many random inputs (power iteration, `lipschitz_iterations` steps) is at most
      `lipschitz_constant(input_shape) * (1 + LIPSCHITZ_RTOL)`, both before and after
      the training step; for a merge of `n` inputs, of `x -> layer([x, 2 x, ..., n x])`
      against `merged_lipschitz([1, 2, ..., n])`;
    - with `train`: `model.fit` runs (one epoch of two steps), the loss stays finite and,
      for a layer with trainable weights, the outputs change.

    Args:
        tmp_path: a folder for the `.keras` file (pytest's `tmp_path`).
        atol: absolute tolerance of the round-trip comparisons.
        weights: the layer's weights, set once it is built (None: its initializers'), e.g.
            the frozen weights of a lowered layer.

    Returns:
        The functional model built around the layer (trained if `train`).
    """
    rng = np.random.default_rng(seed)
    merge = isinstance(input_shape, list)
    shapes = input_shape if merge else [input_shape]
    xs = [rng.uniform(-1.0, 1.0, size=(4, *shape)).astype("float32") for shape in shapes]
    x = xs if merge else xs[0]

    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    restored = layer_cls.from_config(config)
    assert restored.get_config() == config, "from_config(get_config()) changed the config"

    inputs = [keras.Input(shape) for shape in shapes]
    inputs = inputs if merge else inputs[0]
    model = keras.Model(inputs, layer(inputs))
    if weights is not None:
        layer.set_weights(weights)
    expected = np.asarray(model(x, training=False))
    assert np.all(np.isfinite(expected)), "non-finite outputs"
    _check_shapes(layer, [(None, *shape) for shape in shapes] if merge else (None, *input_shape), expected.shape,
                  expected_output_shape)

    restored(x)
    restored.set_weights(layer.get_weights())
    np.testing.assert_allclose(np.asarray(restored(x, training=False)), expected, atol=atol,
                               err_msg="the layer from its config computes differently")

    path = tmp_path / f"{layer_cls.__name__}.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(np.asarray(reloaded(x, training=False)), expected, atol=atol,
                               err_msg="the reloaded .keras file computes differently")
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(np.asarray(clone(x, training=False)), expected, atol=atol,
                               err_msg="clone_model computes differently")

    if mixed_precision_dtype is not None:
        _check_mixed_precision(layer_cls, init_kwargs, layer, x, expected, mixed_precision_dtype)

    def lipschitz(seed):
        if merge:
            check_merged_lipschitz(layer, (1, *shapes[0]), len(shapes), samples=lipschitz_samples,
                                   iterations=lipschitz_iterations, seed=seed)
        else:
            check_lipschitz(layer, (1, *input_shape), samples=lipschitz_samples, iterations=lipschitz_iterations,
                            seed=seed)

    if lipschitz_samples:
        lipschitz(seed)

    if train:
        target = rng.normal(size=expected.shape).astype("float32")
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
        history = model.fit(x, target, batch_size=2, epochs=1, verbose=0)
        assert np.all(np.isfinite(history.history["loss"])), "fit gave a non-finite loss"
        if layer.trainable_weights:
            after = np.asarray(model(x, training=False))
            assert not np.allclose(after, expected), "fit did not change the outputs"
        if lipschitz_samples:
            lipschitz(seed + 1)
    return model


def check_lipschitz(layer, input_shape, *, samples=3, iterations=20, seed=0, rtol=LIPSCHITZ_RTOL):
    """The Jacobian's largest singular value at random inputs never exceeds the stated constant.

    `input_shape`: with a batch axis of 1. Returns the largest value measured. Raises an
    `AssertionError` naming both numbers otherwise; a layer that states no constant fails.
    """
    stated = contract_of(layer)
    bound = None if stated is None else stated.lipschitz_constant(input_shape)
    return _check_bound(layer, lambda t: layer(t, training=False), bound, input_shape, samples, iterations, seed,
                        rtol)


def check_merged_lipschitz(layer, input_shape, inputs, *, samples=3, iterations=20, seed=0, rtol=LIPSCHITZ_RTOL):
    """As `check_lipschitz`, for a layer merging `inputs` branches: `x -> layer([x, 2 x, ..., n x])`.

    Branch `k` is then `k`-Lipschitz, so the merge is at most `merged_lipschitz([1, ..., n])`.
    """
    stated = contract_of(layer)
    scales = [float(k) for k in range(1, inputs + 1)]
    bound = None if stated is None else stated.merged_lipschitz(scales)
    return _check_bound(layer, lambda t: layer([k * t for k in scales], training=False), bound, input_shape,
                        samples, iterations, seed, rtol)


def _check_bound(layer, fn, bound, input_shape, samples, iterations, seed, rtol):
    assert bound is not None, f"{type(layer).__name__} states no Lipschitz constant"
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, *input_shape[1:])).astype("float32")
    measured = float(np.max(jacobian_spectral_norm(fn, tf.constant(x), iterations=iterations, seed=seed)))
    assert measured <= bound * (1 + rtol), (
        f"{type(layer).__name__}: the Jacobian's largest singular value {measured:.6g} exceeds the "
        f"stated Lipschitz constant {bound:.6g}"
    )
    return measured


def _check_shapes(layer, batched_input_shape, produced, expected_output_shape):
    computed = tuple(layer.compute_output_shape(batched_input_shape))[1:]
    assert computed == tuple(produced[1:]), f"compute_output_shape gives {computed}, the layer {produced[1:]}"
    if expected_output_shape is not None:
        assert tuple(produced[1:]) == tuple(expected_output_shape), (
            f"output shape {produced[1:]}, expected {tuple(expected_output_shape)}"
        )


def _check_mixed_precision(layer_cls, init_kwargs, layer, x, expected, dtype):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        mixed = layer_cls(**init_kwargs)
        y = mixed(x)
    finally:
        keras.config.set_dtype_policy(previous)
    produced = keras.backend.standardize_dtype(y.dtype)
    assert produced == dtype, f"under mixed_float16 the output is {produced}, expected {dtype}"
    if dtype == "float32":
        mixed.set_weights(layer.get_weights())
        np.testing.assert_allclose(np.asarray(mixed(x, training=False)), expected, atol=1e-5,
                                   err_msg="under mixed_float16 the layer computes differently")
