"""Per-image latency of one IQA model in Keras and in each export format, side by side.

For a base model and its robust versions ("replace", "insert", each with the Fourier
convolution and with the compact-kernel one, "-block"): the Keras model (as trained), and
the exported SavedModel,
TFLite float32, TFLite dynamic-range int8 and ONNX files, each on its own runtime.
Every runtime scores the same whole images (patch grid and averaging included),
one image per call; rounds are interleaved so machine noise hits them alike, and
the median of each runtime's best round is printed.

    python benchmarks/export.py [--patch-size 64] [--image-size 256] [--repeats 20]
        [--base-run runs/base --replace-run runs/replace --replace-block-run runs/replace-block ...]

Without run folders, freshly built (untrained) small models are used: latency
does not depend on the weights' values.
"""

import argparse
import json
import os
import pathlib
import tempfile
import time

import numpy as np

FORMATS = ("keras", "savedmodel", "tflite", "tflite_int8", "onnx")
KINDS = ("base", "replace", "insert", "replace-block", "insert-block")


def make_runs(args, folder):
    import keras

    from keras_robust_iqa import models

    runs = {}
    base = None
    for kind in args.kinds.split(","):
        if kind not in KINDS:
            raise SystemExit(f"--kinds: unknown model {kind!r}; choose from {KINDS}")
        given = getattr(args, f"{kind.replace('-', '_')}_run")
        if given:
            runs[kind] = pathlib.Path(given)
            continue
        if base is None:
            keras.utils.set_random_seed(0)
            base = models.build_model("small", patch_size=args.patch_size)
        mode, _, conv = kind.partition("-")
        options = dict(activation=args.activation) if mode == "replace" else {}
        model = base if kind == "base" else models.robustify(base, mode=mode, conv=conv or "fourier", **options)
        run = folder / "runs" / kind
        run.mkdir(parents=True)
        model.save(run / "model.keras")
        (run / "config.json").write_text(json.dumps({"patch_size": args.patch_size, "mos_range": [0.0, 100.0]}))
        runs[kind] = run
    return runs


def predictors(run, out, name, threads):
    """`{format: predict(images) -> mos}` for one exported run."""
    import tensorflow as tf

    from keras_robust_iqa.deployment.export import image_spec, read_run_facts, serving_function
    from keras_robust_iqa.deployment.runtimes import load_runtime
    from keras_robust_iqa.training.trainer import load_run_model

    _, patch_size, mos_range = read_run_facts(run)
    # Keras: the trained model itself in the same serving graph, compiled.
    keras_fn = tf.function(serving_function(load_run_model(run), patch_size, mos_range),
                           input_signature=[image_spec("float32")])
    return {
        "keras": lambda x: keras_fn(tf.constant(x))["mos"].numpy(),
        "savedmodel": load_runtime("savedmodel", out / "savedmodel" / name / "1"),
        "tflite": load_runtime("tflite", out / "tflite" / f"{name}.float32.tflite", num_threads=threads),
        "tflite_int8": load_runtime("tflite", out / "tflite" / f"{name}.int8.tflite", num_threads=threads),
        "onnx": load_runtime("onnx", out / "onnx" / f"{name}.onnx"),
    }


def time_all(fns, image, repeats, rounds=3):
    for fn in fns.values():  # trace, plan memory, warm caches
        fn(image)
        fn(image)
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn(image)
                times.append(time.perf_counter() - start)
            best[key] = min(best[key], float(np.median(times)))
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch-size", type=int, default=64, help="patch size of the built models (default: 64)")
    parser.add_argument("--image-size", type=int, default=256, help="side of the square test images (default: 256)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per round (default: 20)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="TFLite interpreter threads (default: all cores, like TF and onnxruntime)")
    for kind in KINDS:
        parser.add_argument(f"--{kind}-run", help=f"run folder of the {kind} model (default: build one)")
    parser.add_argument("--activation", default="groupsort", choices=("groupsort", "relu"),
                        help="activation of the built replace models (default: groupsort)")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"comma-separated models to build and time (default: {','.join(KINDS)})")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    if "base" not in args.kinds.split(","):
        raise SystemExit("--kinds must include base: every latency is compared with the base model's")
    from keras_robust_iqa.deployment.export import export_run

    rng = np.random.default_rng(0)
    # One real photograph-like image would do as well: the cost depends on the size only.
    image = rng.uniform(size=(1, args.image_size, args.image_size, 3)).astype("float32")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for kind, run in make_runs(args, tmp).items():
            report = export_run(run, tmp / "out", "all", name=kind, verbose=False)
            fns = predictors(run, tmp / "out", kind, args.threads)
            scores = {k: float(fn(image)[0]) for k, fn in fns.items()}
            results[kind] = {"ms_per_image": {k: 1e3 * v for k, v in time_all(fns, image, args.repeats).items()},
                             "mos": scores,
                             "bytes": {"keras": (run / "model.keras").stat().st_size}
                             | {k: v["bytes"] for k, v in report["files"].items()}}
    patches = (args.image_size // args.patch_size) ** 2
    print(f"\nLatency per {args.image_size}x{args.image_size} image ({patches} patches of {args.patch_size}), "
          f"ms, batch 1, {os.cpu_count()} CPU cores\n")
    print("| model | " + " | ".join(FORMATS) + " |")
    print("|---|" + "---|" * len(FORMATS))
    for kind, r in results.items():
        ms = r["ms_per_image"]
        print(f"| {kind} | " + " | ".join(f"{ms[k]:.1f} ({ms[k] / ms['keras']:.2f}x)" for k in FORMATS) + " |")
    print("\nTFLite float32 latency against the base model's (target for the -block models: within 1.1x)\n")
    for kind, r in results.items():
        print(f"- {kind}: {r['ms_per_image']['tflite'] / results['base']['ms_per_image']['tflite']:.2f}x")
    print("\nFile sizes, MB (.keras: the run's model file)\n")
    files = ("keras", "savedmodel", "tflite", "tflite_int8", "onnx")
    print("| model | " + " | ".join(files) + " |")
    print("|---|" + "---|" * len(files))
    for kind, r in results.items():
        print(f"| {kind} | " + " | ".join(f"{r['bytes'][k] / 1e6:.2f}" for k in files) + " |")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
