"""Inference cost of a model before and after `robust-iqa prune`, side by side.

Loads the two run folders' models (safe mode), counts parameters and FLOPs per
patch, and times one compiled inference call on a batch of patches, the two
models interleaved in three rounds so that machine noise hits both alike; the
best round of each is kept (median of `--repeats` calls within a round).

    python benchmarks/pruning.py --before runs/replace --after runs/replace-pruned [--batch 16] [--repeats 20]
"""

import argparse
import json
import pathlib


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="run folder of the unpruned model")
    parser.add_argument("--after", required=True, help="run folder written by `robust-iqa prune`")
    parser.add_argument("--batch", type=int, default=16, help="patches per inference call (default: 16)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per round (default: 20)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    from keras_robust_iqa.pruning.cost import count_flops, inference_latency
    from keras_robust_iqa.training.trainer import load_run_model

    models = {"before": load_run_model(args.before), "after": load_run_model(args.after)}
    rounds = {name: [] for name in models}
    for _ in range(3):
        for name, model in models.items():
            rounds[name].append(inference_latency(model, batch_size=args.batch, repeats=args.repeats))
    results = {
        name: {"params": int(model.count_params()), "flops": count_flops(model),
               "latency_ms": 1e3 * min(rounds[name])}
        for name, model in models.items()
    }
    print(f"batch of {args.batch} patches {tuple(models['before'].inputs[0].shape[1:])}")
    print(f"{'':8} {'params':>10} {'FLOPs/patch':>14} {'latency':>12}")
    for name, r in results.items():
        print(f"{name:8} {r['params']:>10,} {r['flops']:>14,} {r['latency_ms']:>9.2f} ms")
    b, a = results["before"], results["after"]
    print(f"{'after/before':8} {a['params'] / b['params']:>10.2f} {a['flops'] / b['flops']:>14.2f} "
          f"{a['latency_ms'] / b['latency_ms']:>12.2f}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
