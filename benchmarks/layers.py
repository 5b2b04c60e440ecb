"""OrthoConv2D and BlockOrthoConv2D against keras.layers.Conv2D (and deel-lip), side by side.

Shape: 64x64 input, 32 -> 32 channels, 3x3 kernel, batch 16. BlockOrthoConv2D's
step includes merging its orthogonal factors into the kernel (weights change every step). Times one training
step (forward, backward, SGD update) and inference, each as a compiled
tf.function, interleaving the layers so machine noise hits them alike, and
prints times and ratios to Conv2D.

It also times the floor of the Fourier-domain algorithm: the ops no implementation of it can
skip, with nothing else (no layout changes, no per-frequency products). Inference: the rfft2d
and irfft2d of the input at the layer's FFT size. Training step: that pair, its gradient, and
one batched LU factorisation of the layer's per-frequency Cayley systems (the weights change
every step; factorising is the cheapest exact start of a solve TensorFlow has, cheaper than
an inverse or `tf.linalg.solve`). A floor ratio above a target means the target is out of
reach for this algorithm with tf.signal and tf.linalg on this machine.

    python benchmarks/layers.py [--repeats 20] [--batch 16] [--size 64] [--channels 32]
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

FLOOR = "floor of OrthoConv2D(same)"


def build_layers(channels):
    import keras

    from keras_robust_iqa.layers import BlockOrthoConv2D, OrthoConv2D

    return {
        "Conv2D": keras.layers.Conv2D(channels, 3, padding="same"),
        "OrthoConv2D(same)": OrthoConv2D(channels, 3, padding="same"),
        "OrthoConv2D(circular)": OrthoConv2D(channels, 3, padding="circular"),
        "BlockOrthoConv2D(same)": BlockOrthoConv2D(channels, 3, padding="same"),
        "BlockOrthoConv2D(circular)": BlockOrthoConv2D(channels, 3, padding="circular"),
    }


def step_functions(layer, x):
    import keras
    import tensorflow as tf

    layer(x)  # build
    optimizer = keras.optimizers.SGD(1e-3)
    optimizer.build(layer.trainable_variables)

    @tf.function(jit_compile=False)
    def train_step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(layer(x, training=True)))
        grads = tape.gradient(loss, layer.trainable_variables)
        optimizer.apply(grads, layer.trainable_variables)
        return loss

    @tf.function(jit_compile=False)
    def infer(x):
        return layer(x, training=False)

    return train_step, infer


def floor_functions(layer, x):
    """The unavoidable ops of `OrthoConv2D(padding="same")`, as (train_step, infer)."""
    import tensorflow as tf

    from keras_robust_iqa.layers import linalg

    layer(x)  # build: FFT size and kernel
    fft = tuple(layer.fft_size)
    basis = linalg.DFTBasis.of(layer.kernel, *fft)
    systems = basis.cayley_system(linalg.kernel_taps(layer.kernel))  # (F, n, n) complex

    def fft_pair(x_nchw):
        return tf.signal.irfft2d(tf.signal.rfft2d(x_nchw, fft_length=fft), fft_length=fft)

    # The channels-first input and the systems are arguments, not captured
    # constants, so that graph optimisation cannot fold them away.
    @tf.function(jit_compile=False)
    def train_step(x_nchw, systems):
        with tf.GradientTape() as tape:
            tape.watch(x_nchw)
            loss = tf.reduce_mean(tf.square(fft_pair(x_nchw)))
        grad = tape.gradient(loss, x_nchw)
        factors, _ = tf.linalg.lu(systems)
        return tf.reduce_sum(grad) + tf.math.real(tf.reduce_sum(factors))

    @tf.function(jit_compile=False)
    def infer(x_nchw):
        return fft_pair(x_nchw)

    x_nchw = tf.transpose(x, (0, 3, 1, 2))
    return (lambda _: train_step(x_nchw, systems)), (lambda _: infer(x_nchw))


def time_calls(fn, x, repeats):
    fn(x)  # trace
    fn(x)  # warm caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn(x)
        np.asarray(out)  # wait for the result
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run_keras(args):
    import tensorflow as tf

    from keras_robust_iqa.layers import OrthoConv2D

    x = tf.random.uniform((args.batch, args.size, args.size, args.channels))
    layers = build_layers(args.channels)
    fns = {name: step_functions(layer, x) for name, layer in layers.items()}
    fns[FLOOR] = floor_functions(OrthoConv2D(args.channels, 3, padding="same"), x)
    results = {name: {"train_step_s": [], "inference_s": []} for name in fns}
    # Interleave rounds so slow drift of the machine affects every layer alike.
    for _ in range(3):
        for name, (train, infer) in fns.items():
            results[name]["train_step_s"].append(time_calls(train, x, args.repeats))
            results[name]["inference_s"].append(time_calls(infer, x, args.repeats))
    return {n: {k: min(v) for k, v in r.items()} for n, r in results.items()}


DEEL_LIP_SCRIPT = r"""
import json, sys, time, numpy as np
import tensorflow as tf
from deel.lip.layers import SpectralConv2D
batch, size, channels, repeats = map(int, sys.argv[1:5])
layer = SpectralConv2D(channels, 3, padding="same")
x = tf.random.uniform((batch, size, size, channels))
layer(x)
opt = tf.keras.optimizers.SGD(1e-3)
@tf.function
def train(x):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(layer(x, training=True)))
    g = tape.gradient(loss, layer.trainable_variables)
    opt.apply_gradients(zip(g, layer.trainable_variables))
    return loss
@tf.function
def infer(x):
    return layer(x, training=False)
def t(fn):
    fn(x); fn(x); ts = []
    for _ in range(repeats):
        t0 = time.perf_counter(); np.asarray(fn(x)); ts.append(time.perf_counter() - t0)
    return float(np.median(ts))
print(json.dumps({"train_step_s": t(train), "inference_s": t(infer)}))
"""


def run_deel_lip(args):
    """deel-lip needs Keras 2 (tf_keras), so it runs in its own process."""
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, "-c", DEEL_LIP_SCRIPT, str(args.batch), str(args.size),
           str(args.channels), str(args.repeats)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        print(f"deel-lip SpectralConv2D skipped: {last}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per round")
    parser.add_argument("--batch", type=int, default=16, help="batch size")
    parser.add_argument("--size", type=int, default=64, help="input height and width")
    parser.add_argument("--channels", type=int, default=32, help="input and output channels")
    parser.add_argument("--no-deel-lip", action="store_true", help="skip the deel-lip peer")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    results = run_keras(args)
    if not args.no_deel_lip:
        deel = run_deel_lip(args)
        if deel is not None:
            results["deel-lip SpectralConv2D"] = deel

    base = results["Conv2D"]
    print(f"\n{args.size}x{args.size}, {args.channels}->{args.channels} channels, "
          f"batch {args.batch}, {os.cpu_count()} CPU cores")
    print(f"{'layer':32s} {'train step':>12s} {'ratio':>7s} {'inference':>12s} {'ratio':>7s}")
    for name, r in results.items():
        r["train_ratio"] = r["train_step_s"] / base["train_step_s"]
        r["inference_ratio"] = r["inference_s"] / base["inference_s"]
        print(f"{name:32s} {r['train_step_s'] * 1e3:10.2f}ms {r['train_ratio']:6.2f}x "
              f"{r['inference_s'] * 1e3:10.2f}ms {r['inference_ratio']:6.2f}x")
    floor = results[FLOOR]
    print(f"\nOrthoConv2D targets: training step within 3x of Conv2D, inference within 2x; the floor "
          f"of the Fourier algorithm here: {floor['train_ratio']:.2f}x and {floor['inference_ratio']:.2f}x")
    block = results["BlockOrthoConv2D(same)"]
    print(f"BlockOrthoConv2D targets: training step within 1.5x of Conv2D, inference within 1.1x; "
          f"measured: {block['train_ratio']:.2f}x and {block['inference_ratio']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
