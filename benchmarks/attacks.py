"""Attack throughput in images per second, base model against robust ("replace") model, side by side.

Each attack runs once to compile (traced by tf.function), then is timed over the
same images; base and robust calls alternate so machine noise hits both alike.
Throughput does not depend on the weights, so untrained models are used unless
run folders are given.

    python benchmarks/attacks.py [--images 8] [--size 128] [--patch-size 64] [--repeats 2]
        [--attacks fgsm,ifgsm,...] [--base-run runs/A --robust-run runs/B]
"""

import argparse
import time

import numpy as np

# The learned attacks are timed at attack time (one application of a learned
# perturbation or generator), which is what a deployed FACPA costs.
DEFAULT_ATTACKS = "fgsm,ifgsm,mifgsm,pgd_l2,korhonen,square,uap,facpa"


def attack_call(name, model, images):
    """A zero-argument call running attack `name` on `images` with the benchmark's settings."""
    from keras_robust_iqa import attacks

    if name == "uap":
        perturbation = np.random.default_rng(0).uniform(-1, 1, size=images.shape[1:]).astype("float32")
        return lambda: attacks.uap(model, images, perturbation=perturbation, verbose=0)
    if name == "facpa":
        generator = attacks.unet_generator()
        return lambda: attacks.facpa(model, images, generator=generator, verbose=0)
    return lambda: attacks.ATTACKS[name](model, images, verbose=0)


def best_time(call, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="images per timed call")
    parser.add_argument("--size", type=int, default=128, help="image side (scored as a grid of patches)")
    parser.add_argument("--patch-size", type=int, default=64, help="model patch side (untrained models)")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per attack; the best is kept")
    parser.add_argument("--attacks", default=DEFAULT_ATTACKS, help="comma-separated attack names")
    parser.add_argument("--base-run", help="run folder of the base model (default: untrained small CNN)")
    parser.add_argument("--robust-run", help="run folder of the robust model (default: the base, replaced)")
    args = parser.parse_args(argv)

    import keras

    from keras_robust_iqa.models import build_model, robustify
    from keras_robust_iqa.training.trainer import load_run_model

    keras.utils.set_random_seed(0)
    base = load_run_model(args.base_run) if args.base_run else build_model("small", args.patch_size)
    robust = load_run_model(args.robust_run) if args.robust_run else robustify(base, mode="replace")
    images = np.random.default_rng(0).uniform(0, 1, size=(args.images, args.size, args.size, 3)).astype("float32")
    print(f"{args.images} images of {args.size}x{args.size}, MSU default settings; images per second (best of "
          f"{args.repeats})")
    print("| attack | base | robust | robust / base |\n|---|---|---|---|")
    for name in args.attacks.split(","):
        calls = {label: attack_call(name, model, images) for label, model in (("base", base), ("robust", robust))}
        for call in calls.values():
            call()  # compile
        times = {label: [] for label in calls}
        for _ in range(args.repeats):  # interleaved
            for label, call in calls.items():
                times[label].append(best_time(call, 1))
        rates = {label: args.images / min(seconds) for label, seconds in times.items()}
        print(f"| {name} | {rates['base']:.2f} | {rates['robust']:.2f} | {rates['robust'] / rates['base']:.2f}x |",
              flush=True)


if __name__ == "__main__":
    main()
