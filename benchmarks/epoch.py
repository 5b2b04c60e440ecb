"""One `model.fit` epoch of the base model and its `replace` versions, side by side.

The small CNN at patch 64, its `replace` model with the Fourier convolution
(`OrthoConv2D`) and with the compact-kernel one (`BlockOrthoConv2D`), each
trained with Adam on the same random patches (time does not depend on the
values). Epochs are interleaved, so machine noise hits the models alike; the
best of each model's timed epochs is printed, with its ratio to the base's.
Target: a `replace` epoch with `BlockOrthoConv2D` within 1.5x of the base's.

    python benchmarks/epoch.py [--patches 1024] [--batch 32] [--patch-size 64] [--rounds 3]
"""

import argparse
import json
import os
import pathlib
import time

import numpy as np


def build_models(patch_size):
    import keras

    from keras_robust_iqa import models

    keras.utils.set_random_seed(0)
    base = models.build_model("small", patch_size=patch_size)
    built = {
        "base": base,
        "replace (fourier)": models.robustify(base, "replace", conv="fourier", activation="relu"),
        "replace (block)": models.robustify(base, "replace", conv="block", activation="relu"),
    }
    for model in built.values():
        model.compile(keras.optimizers.Adam(1e-3), "mse")
    return built


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=1024, help="training patches per epoch (default: 1024)")
    parser.add_argument("--batch", type=int, default=32, help="patches per step (default: 32)")
    parser.add_argument("--patch-size", type=int, default=64, help="patch side (default: 64)")
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs per model (default: 3)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(args.patches, args.patch_size, args.patch_size, 3)).astype("float32")
    y = rng.uniform(size=(args.patches, 1)).astype("float32")
    built = build_models(args.patch_size)
    for model in built.values():  # trace and warm up
        model.fit(x[: 2 * args.batch], y[: 2 * args.batch], batch_size=args.batch, epochs=1, verbose=0)
    seconds = {name: [] for name in built}
    for _ in range(args.rounds):
        for name, model in built.items():
            start = time.perf_counter()
            model.fit(x, y, batch_size=args.batch, epochs=1, verbose=0)
            seconds[name].append(time.perf_counter() - start)
    best = {name: min(times) for name, times in seconds.items()}
    print(f"\nOne epoch of {args.patches} patches of {args.patch_size}, batch {args.batch}, "
          f"{os.cpu_count()} CPU cores\n")
    print("| model | epoch | ratio to base |")
    print("|---|---:|---:|")
    for name, value in best.items():
        print(f"| {name} | {value:.2f} s | {value / best['base']:.2f}x |")
    print("\ntarget: replace (block) within 1.5x of the base")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"args": vars(args), "seconds": seconds}, indent=2))


if __name__ == "__main__":
    main()
