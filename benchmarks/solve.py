"""OrthoConv2D's per-frequency solve: inverse and products (used) against LU and triangular solves.

A training step of OrthoConv2D solves `m z = x` for every frequency and, in the backward
pass, the adjoint system `m^H w = g`. `keras_robust_iqa.layers.linalg.solve` inverts `m`
once and multiplies; the alternatives factorise once (`tf.linalg.lu`) and run triangular
solves, or call `tf.linalg.solve` (whose gradient factorises again). All are timed side by side
on the systems of the layers benchmark (64x64 input,
3x3 kernel, same padding: 66 x 34 = 2,244 frequencies, 32 channels, batch 16), compiled,
interleaved, best of three rounds; their results are checked against each other first.
The factorisation alone is timed too: the part no exact solve avoids.

    python benchmarks/solve.py [--repeats 15] [--frequencies 2244] [--channels 32] [--batch 16]
"""

import argparse
import time

import numpy as np


def systems(frequencies, channels, batch, seed=0):
    """`I + A` with `A` skew-Hermitian (the Cayley systems), right-hand sides, upstream gradients."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)

    def complex_normal(*shape):
        return rng.normal(size=shape) + 1j * rng.normal(size=shape)

    a = complex_normal(frequencies, channels, channels)
    a = 0.1 * (a - np.conj(np.swapaxes(a, 1, 2)))
    m = tf.constant(np.eye(channels) + a, tf.complex64)
    x = tf.constant(complex_normal(frequencies, channels, batch), tf.complex64)
    g = tf.constant(complex_normal(frequencies, channels, batch), tf.complex64)
    return m, x, g


def solvers():
    """Each returns `(z, grad_m, grad_x)` of `z = m^-1 x` for the upstream gradient `g`."""
    import tensorflow as tf

    @tf.function
    def inverse_and_products(m, x, g):
        m_inv = tf.linalg.inv(m)
        z = tf.matmul(m_inv, x)
        w = tf.matmul(m_inv, g, adjoint_a=True)
        return z, -tf.matmul(w, z, adjoint_b=True), w

    @tf.function
    def lu_and_triangular_solves(m, x, g):
        lu, perm = tf.linalg.lu(m)
        z = tf.linalg.lu_solve(lu, perm, x)
        # m = P^T L U, so m^H w = g is U^H (L^H (P w)) = g.
        unit_lower = (tf.linalg.band_part(lu, -1, 0) - tf.linalg.diag(tf.linalg.diag_part(lu))
                      + tf.eye(m.shape[-1], dtype=m.dtype))
        y = tf.linalg.triangular_solve(tf.linalg.band_part(lu, 0, -1), g, lower=False, adjoint=True)
        p_w = tf.linalg.triangular_solve(unit_lower, y, lower=True, adjoint=True)
        w = tf.gather(p_w, tf.argsort(perm, axis=-1), batch_dims=1)
        return z, -tf.matmul(w, z, adjoint_b=True), w

    @tf.function
    def linalg_solve(m, x, g):
        with tf.GradientTape() as tape:
            tape.watch([m, x])
            z = tf.linalg.solve(m, x)
        grad_m, grad_x = tape.gradient(z, [m, x], output_gradients=g)
        return z, grad_m, grad_x

    return {"inverse + products (used)": inverse_and_products,
            "LU + triangular solves": lu_and_triangular_solves,
            "tf.linalg.solve + gradient": linalg_solve}


def factorisation():
    """The LU factorisation alone: what every exact solve starts with (the layers benchmark's floor)."""
    import tensorflow as tf

    @tf.function
    def lu_only(m, x, g):
        return (tf.linalg.lu(m)[0],)

    return {"LU factorisation alone": lu_only}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per round (default: 15)")
    parser.add_argument("--frequencies", type=int, default=2244, help="systems (default: 2244)")
    parser.add_argument("--channels", type=int, default=32, help="unknowns per system (default: 32)")
    parser.add_argument("--batch", type=int, default=16, help="right-hand sides (default: 16)")
    args = parser.parse_args(argv)

    m, x, g = systems(args.frequencies, args.channels, args.batch)
    candidates = solvers()
    results = {name: fn(m, x, g) for name, fn in candidates.items()}  # traces, and checks
    reference = results["inverse + products (used)"]
    for name, result in results.items():
        error = max(float(np.max(np.abs(a.numpy() - b.numpy()))) for a, b in zip(result, reference))
        if error > 1e-3:
            raise SystemExit(f"{name} disagrees with the inverse by {error:.2e}")
    candidates |= factorisation()  # timed, not checked: it computes no solution
    rounds = {name: [] for name in candidates}
    for _ in range(3):
        for name, fn in candidates.items():
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                _ = [t.numpy() for t in fn(m, x, g)]
                times.append(time.perf_counter() - start)
            rounds[name].append(float(np.median(times)))
    base = min(rounds["inverse + products (used)"])
    for name, times in rounds.items():
        print(f"{name:28s} {1000 * min(times):7.1f} ms   {min(times) / base:.2f}x")


if __name__ == "__main__":
    main()
