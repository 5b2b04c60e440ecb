"""Shared test helpers: operator checks (the layer-test helper is `keras_robust_iqa.testing`)."""

import numpy as np
import tensorflow as tf

# Side of the built-in dataset the tests build (`builtin_cache`): seconds, all MS-SSIM scales that fit.
BUILTIN_SIZE = 64


def operator_matrix(fn, input_shape):
    """The matrix of a linear map on `input_shape` (no batch), by impulse responses.

    Row `i` is the flattened response to the `i`-th one-hot input, so the
    result is the transpose of the operator's matrix: same singular values.
    Independent of how `fn` computes.
    """
    n = int(np.prod(input_shape))
    basis = tf.reshape(tf.eye(n), (n, *input_shape))
    return np.asarray(fn(basis)).reshape(n, -1).astype(np.float64)


def singular_values(fn, input_shape):
    return np.linalg.svd(operator_matrix(fn, input_shape), compute_uv=False)


def jacobian_spectral_norms(fn, x):
    """Largest singular value of the Jacobian of `fn` at each sample of `x`."""
    x = tf.convert_to_tensor(x, tf.float32)
    norms = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        with tf.GradientTape() as tape:
            tape.watch(xi)
            y = fn(xi)
        jac = tape.jacobian(y, xi)
        m = np.asarray(jac).reshape(int(np.prod(y.shape)), -1)
        norms.append(np.linalg.norm(m, 2))
    return np.array(norms)
