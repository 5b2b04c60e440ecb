"""The demo's evaluate stage per model, its settings before 2026-12-06 against today's, interleaved.

For each run folder: `evaluate_model` with the old settings (FGSM, I-FGSM, the UAP at the MSU
benchmark's settings and transfer on 12 test images, UAP learned on 32 training images), then
with the demo's (`demo.EVAL_IMAGES`, `demo.UAP_TRAIN_IMAGES`, `demo.LEARN_EPOCHS`, FACPA too);
the transfer source is the attacked model itself. Then the labels' own gain, old (FGSM and
I-FGSM on 12 images) against new (`demo.LABEL_ATTACKS` on `demo.LABEL_IMAGES`). Prints each
total, each attack's seconds and gains.

    python benchmarks/demo_evaluate.py runs/demo/base runs/demo/replace
"""

import sys
import time

EPS = (4 / 255, 8 / 255)


def main(argv=None):
    runs = sys.argv[1:] if argv is None else argv
    if not runs:
        raise SystemExit(__doc__)
    from keras_robust_iqa import attacks, data, demo
    from keras_robust_iqa.evaluation.evaluate import evaluate_model
    from keras_robust_iqa.evaluation.label_gain import label_gain
    from keras_robust_iqa.evaluation.runs import _load_split
    from keras_robust_iqa.training.trainer import load_run_model

    old = dict(names=["fgsm", "ifgsm", "uap", "transfer"], images=12, train=32,
               learn=attacks.UAP_MSU_SETTINGS["plain"], labels=("fgsm", "ifgsm"), label_images=12)
    new = dict(names=["fgsm", "ifgsm", "uap", "facpa", "transfer"], images=demo.EVAL_IMAGES,
               train=demo.UAP_TRAIN_IMAGES, learn={"epochs": demo.LEARN_EPOCHS}, labels=demo.LABEL_ATTACKS,
               label_images=demo.LABEL_IMAGES)
    for run in runs:
        model, source = load_run_model(run), load_run_model(run)
        for label, s in (("old", old), ("new", new)):
            images, mos, kinds, train = _load_split("builtin", None, model.input_shape[1], s["images"], s["train"])
            start = time.perf_counter()
            entry, _ = evaluate_model(model, images, mos, attacks=s["names"], eps=EPS, train_images=train,
                                      transfer_source=source, distortions=kinds, learn_options=s["learn"], verbose=0)
            seconds = {k: v["seconds"] for k, v in entry["attacks"].items()}
            gains = {k: round(v["abs_gain_raw"], 4) for k, v in entry["attacks"].items()}
            print(f"{label} {run}: {time.perf_counter() - start:.1f} s; attack seconds {seconds}; gains {gains}",
                  flush=True)
    table = data.load_table("builtin")
    for label, s in (("old", old), ("new", new)):
        start = time.perf_counter()
        for attack in s["labels"]:
            for eps in EPS:
                label_gain(table, "test", attack=attack, eps=eps, images=s["label_images"])
        print(f"{label} labels: {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
