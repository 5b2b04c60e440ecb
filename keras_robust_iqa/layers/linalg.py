"""Linear algebra shared by the orthogonal layers, pruning and certificates.

Everything here is pure TensorFlow on tensors, so that layers, tests, Lipschitz
certificates and channel surgery compute the same quantities the same way.

References:
    Trockman & Kolter, "Orthogonalizing Convolutional Layers with the Cayley
    Transform", ICLR 2021 (the per-frequency Cayley parameterisation).
    Sedghi, Gupta & Long, "The Singular Values of Convolutional Layers",
    ICLR 2019 (singular values of a circular convolution).
"""

import numpy as np
import tensorflow as tf


def cayley(w):
    """Orthonormal-column (or orthonormal-row) matrices from free matrices.

    Args:
        w: real or complex tensor of shape `(..., m, n)`.

    Returns:
        A tensor `q` of the same shape and dtype: for `m >= n`,
        `q^H q = I_n` (an isometry); for `m < n`, `q q^H = I_m` (a co-isometry).

    For `m >= n`, split `w` into `u` (top `n x n`) and `v` (the other rows);
    with the skew-Hermitian part plus a PSD term, `a = u - u^H + v^H v`, the
    columns `[(I + a)^-1 (I - a); -2 v (I + a)^-1]` are orthonormal. We use
    `(I + a)^-1 (I - a) = 2 (I + a)^-1 - I`, so one `n x n` inverse suffices.
    """
    m, n = w.shape[-2], w.shape[-1]
    if m < n:
        return tf.linalg.matrix_transpose(cayley(tf.linalg.matrix_transpose(w)))
    u, v = w[..., :n, :], w[..., n:, :]
    eye = tf.eye(n, dtype=w.dtype)
    a = u - tf.linalg.adjoint(u)
    if m > n:
        a = a + tf.linalg.matmul(v, v, adjoint_a=True)
    inv = tf.linalg.inv(eye + a)
    top = 2.0 * inv - eye
    if m == n:
        return top
    return tf.concat([top, -2.0 * tf.linalg.matmul(v, inv)], axis=-2)


def kernel_frequency_matrices(kernel, height, width):
    """Per-frequency matrices of a cross-correlation kernel on an `H x W` torus.

    Args:
        kernel: `(kh, kw, cin, cout)` real kernel, Keras layout.
        height, width: the (circular) spatial size of the input.

    Returns:
        complex64 tensor `(H * (W // 2 + 1), cout, cin)`: for each rfft2d
        frequency `(u, v)` in row-major order, the matrix that maps the input's
        DFT coefficients to the output's. The kernel is centred, so that for a
        plain (non-orthogonalised) kernel this is exactly `Conv2D(padding="same")`
        with circular boundary conditions.

    The kernel has only `kh * kw` taps, so its spectrum is one small real
    matmul with a DFT basis, far cheaper than an FFT of the padded kernel.
    """
    basis = DFTBasis.of(kernel, height, width)
    return basis.spectrum(kernel_taps(kernel))


def kernel_taps(kernel):
    """`(kh * kw, cout, cin)`: the matrix of each tap, mapping inputs to outputs."""
    kh, kw, cin, cout = kernel.shape
    return tf.reshape(tf.transpose(tf.cast(kernel, tf.float32), (0, 1, 3, 2)), (kh * kw, cout, cin))


class DFTBasis:
    """`B[f, tap]` such that `B @ taps` is the spectrum of a centred correlation kernel.

    A cross-correlation with tap `(a, b)` at offset `(a - su, b - sv)` from
    the centre multiplies frequency `(u, v)` by `exp(+2 pi i (u (a - su) / H
    + v (b - sv) / W))`: the conjugate of a convolution's phase. The real and
    imaginary parts are kept apart so that every product is a real matmul.
    """

    def __init__(self, kh, kw, height, width):
        if kh > height or kw > width:
            raise ValueError(
                f"kernel_size {(kh, kw)} is larger than the input size {(height, width)}."
            )
        su, sv = (kh - 1) // 2, (kw - 1) // 2
        u = np.arange(height)[:, None, None, None]
        v = np.arange(width // 2 + 1)[None, :, None, None]
        a = np.arange(kh)[None, None, :, None] - su
        b = np.arange(kw)[None, None, None, :] - sv
        phase = (2.0 * np.pi * (u * a / height + v * b / width)).reshape(-1, kh * kw)
        basis = np.exp(1j * phase)
        self.real = tf.constant(basis.real.astype(np.float32))
        self.imag = tf.constant(basis.imag.astype(np.float32))
        # ||B @ taps||_F^2 = sum over channel pairs of taps^T Re(B^H B) taps:
        # the spectrum's norm without forming the spectrum.
        self.gram = tf.constant((basis.conj().T @ basis).real.astype(np.float32))

    @classmethod
    def of(cls, kernel, height, width):
        return cls(kernel.shape[0], kernel.shape[1], height, width)

    def spectrum(self, taps):
        """`(T, cout, cin)` real taps -> `(F, cout, cin)` complex spectrum."""
        t, cout, cin = taps.shape
        flat = tf.reshape(taps, (t, cout * cin))
        k_hat = tf.complex(tf.matmul(self.real, flat), tf.matmul(self.imag, flat))
        return tf.reshape(k_hat, (-1, cout, cin))

    def spectrum_norm(self, taps):
        flat = tf.reshape(taps, (taps.shape[0], -1))
        return tf.sqrt(tf.reduce_sum(flat * tf.matmul(self.gram, flat)))

    def cayley_system(self, taps):
        """`I + W - W^H` for `W = B @ taps`, square taps, straight from the taps.

        `W^H` at frequency f is `conj(B[f]) @ taps^T`, so the skew-Hermitian
        part is `Re(B) @ (taps - taps^T) + i Im(B) @ (taps + taps^T)`: two
        small real matmuls instead of passes over the `(F, n, n)` spectrum.
        The identity rides along as one more tap with a constant basis of 1.
        """
        t, n, _ = taps.shape
        taps_t = tf.transpose(taps, (0, 2, 1))
        eye = tf.reshape(tf.eye(n), (1, n * n))
        diff = tf.concat([tf.reshape(taps - taps_t, (t, n * n)), eye], axis=0)
        total = tf.reshape(taps + taps_t, (t, n * n))
        ones = tf.ones((self.real.shape[0], 1))
        real = tf.matmul(tf.concat([self.real, ones], axis=1), diff)
        imag = tf.matmul(self.imag, total)
        return tf.reshape(tf.complex(real, imag), (-1, n, n))


def scaled_kernel_spectrum(kernel, alpha, height, width):
    """The kernel spectrum scaled to Frobenius norm `alpha`, `(F, cout, cin)`.

    The scale sets how far from the identity the orthogonal operator starts,
    and keeps the Cayley parameterisation well conditioned.
    """
    basis = DFTBasis.of(kernel, height, width)
    return basis.spectrum(_scaled_taps(basis, kernel, alpha))


def _scaled_taps(basis, kernel, alpha):
    taps = kernel_taps(kernel)
    scale = tf.cast(alpha, tf.float32) / tf.maximum(basis.spectrum_norm(taps), 1e-12)
    return taps * scale


def orthogonal_conv_apply(kernel, alpha, x_hat, height, width):
    """`orthogonal_frequency_matrices(kernel, alpha, H, W) @ x_hat`, the fast way.

    Args:
        x_hat: `(F, cin, B)` complex input spectrum.

    For a square kernel the Cayley system is built from the taps, then one
    solve per frequency; otherwise the generic `cayley_apply`.
    """
    basis = DFTBasis.of(kernel, height, width)
    taps = _scaled_taps(basis, kernel, alpha)
    if taps.shape[1] != taps.shape[2]:
        return cayley_apply(basis.spectrum(taps), x_hat)
    return 2.0 * solve(basis.cayley_system(taps), x_hat) - x_hat


def orthogonal_frequency_matrices(kernel, alpha, height, width):
    """The unitary per-frequency matrices of an `OrthoConv2D` kernel.

    Returns:
        complex64 `(H * (W // 2 + 1), cout, cin)` matrices, each unitary
        (cin == cout), an isometry (cout > cin) or a co-isometry (cout < cin).
    """
    return cayley(scaled_kernel_spectrum(kernel, alpha, height, width))


@tf.custom_gradient
def solve(m, x):
    """`m^-1 x` for batches of small matrices, with a cheap gradient.

    Batched LU inverses of small matrices beat `tf.linalg.solve` on a CPU,
    and the gradient reuses the inverse: with `z = m^-1 x` and upstream `g`,
    `w = m^-H g` is the gradient for `x` and `-w z^H` the one for `m` (two
    matrix products), where `tf.linalg.solve`'s gradient factorises `m` again.
    """
    m_inv = tf.linalg.inv(m)
    z = tf.matmul(m_inv, x)

    def grad(g):
        w = tf.matmul(m_inv, g, adjoint_a=True)
        return -tf.matmul(w, z, adjoint_b=True), w

    return z, grad


def cayley_apply(w, x):
    """`cayley(w) @ x` without forming `cayley(w)`: one linear solve.

    Args:
        w: `(..., m, n)` free matrices.
        x: `(..., n, k)` right-hand sides.

    With `k` smaller than `n` (a batch of images against the channel count),
    solving `(I + a) z = x` is cheaper than inverting `I + a`, and so is its
    gradient (one more solve instead of two products with the inverse).
    """
    m, n = w.shape[-2], w.shape[-1]
    if m >= n:
        u, v = w[..., :n, :], w[..., n:, :]
        a = u - tf.linalg.adjoint(u)
        if m > n:
            a = a + tf.linalg.matmul(v, v, adjoint_a=True)
        z = solve(tf.eye(n, dtype=w.dtype) + a, x)
        top = 2.0 * z - x
        if m == n:
            return top
        return tf.concat([top, -2.0 * tf.linalg.matmul(v, z)], axis=-2)
    # m < n: cayley(w) = cayley(w^T)^T = [2 M^-T - I, -2 M^-T w_r], where
    # M = I + w_l^T - conj(w_l) + conj(w_r) w_r^T is built from w^T.
    w_l, w_r = w[..., :, :m], w[..., :, m:]
    u = tf.linalg.matrix_transpose(w_l)
    v = tf.linalg.matrix_transpose(w_r)
    a = u - tf.linalg.adjoint(u) + tf.linalg.matmul(v, v, adjoint_a=True)
    x_top, x_bottom = x[..., :m, :], x[..., m:, :]
    rhs = x_top - tf.linalg.matmul(w_r, x_bottom)
    z = solve(tf.linalg.matrix_transpose(tf.eye(m, dtype=w.dtype) + a), rhs)
    return 2.0 * z - x_top


def frequency_spectral_norms(matrices):
    """Largest singular value of each per-frequency matrix, `(F,)` float32."""
    return tf.linalg.svd(matrices, compute_uv=False)[..., 0]


def jacobian_spectral_norm(fn, x, iterations=30, seed=0):
    """Largest singular value of the Jacobian of `fn` at each sample of `x`.

    Power iteration on `J^T J`. `J v` is taken by the double-VJP trick (the
    gradient of `<J^T u, v>` with respect to `u`), since TensorFlow's forward
    mode mishandles some complex-valued ops (FFTs). The Jacobian is never
    formed. This is the empirical Lipschitz constant at `x`: a lower bound on
    the true one.

    Args:
        fn: maps a batch `(B, ...)` to a batch `(B, ...)`, sample-wise.
        x: the batch of inputs.

    Returns:
        float32 `(B,)`.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    axes = list(range(1, len(x.shape)))
    v = tf.random.stateless_normal(tf.shape(x), seed=(seed, 0))
    v = v / tf.sqrt(tf.reduce_sum(v * v, axis=axes, keepdims=True))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    out_axes = list(range(1, len(y.shape)))
    u = tf.zeros_like(y)
    sigma = None
    for _ in range(iterations):
        with tf.GradientTape() as outer:
            outer.watch(u)
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = fn(x)
            jtu = inner.gradient(y, x, output_gradients=u)
            dot = tf.reduce_sum(jtu * v)
        jv = outer.gradient(dot, u)
        sigma = tf.sqrt(tf.reduce_sum(jv * jv, axis=out_axes))
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        jtjv = tape.gradient(y, x, output_gradients=jv)
        norm = tf.sqrt(tf.reduce_sum(jtjv * jtjv, axis=axes, keepdims=True))
        v = jtjv / tf.maximum(norm, 1e-30)
    return sigma
