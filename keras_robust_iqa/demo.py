"""`robust-iqa demo`: what exists of the pipeline, end to end, on built-in data.

1. layers: a plain Conv2D + ReLU stack against a RobustBlock stack of the same
   shape, on patches of the real photographs that scikit-image ships: the
   worst-case amplification of a perturbation (the spectral norm of the input
   Jacobian, by power iteration). An orthogonal stack cannot amplify: at most 1.
2. data: build (or reuse) the built-in dataset.
3. train the small base model, then its "replace" robust version, with
   model.fit; a finished run folder is reused, an interrupted one resumes.
4. summary: test SROCC / PLCC, parameters, certified Lipschitz bound and the
   largest Jacobian norm measured on test images, per model.
"""

import json
import pathlib

import keras
import numpy as np
import skimage.data

from keras_robust_iqa.layers import RobustBlock
from keras_robust_iqa.layers.linalg import jacobian_spectral_norm

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "brick")


def photo_patches(size=64, per_photo=2, seed=0):
    """Random `size x size` RGB patches in [0, 1] from scikit-image's photographs."""
    rng = np.random.default_rng(seed)
    patches = []
    for name in PHOTOS:
        img = getattr(skimage.data, name)()
        img = np.atleast_3d(img).astype("float32") / 255.0
        if img.shape[-1] == 1:
            img = np.repeat(img, 3, axis=-1)
        for _ in range(per_photo):
            i = rng.integers(0, img.shape[0] - size)
            j = rng.integers(0, img.shape[1] - size)
            patches.append(img[i : i + size, j : j + size, :3])
    return np.stack(patches)


def layer_stacks(width=16, depth=4, size=64, seed=0):
    keras.utils.set_random_seed(seed)
    plain = keras.Sequential(
        [keras.Input((size, size, 3))]
        + [keras.layers.Conv2D(width, 3, padding="same", activation="relu") for _ in range(depth)],
        name="conv_relu",
    )
    robust = keras.Sequential(
        [keras.Input((size, size, 3))] + [RobustBlock(width) for _ in range(depth)],
        name="robust_blocks",
    )
    return plain, robust


def run(out="runs/demo", seed=0, epochs=10):
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    layers_summary = check_layers(out, seed)
    print("[2/4] data: the built-in dataset")
    from keras_robust_iqa import data

    table = data.load_table("builtin")
    counts = {split: int((table.splits == split).sum()) for split in ("train", "val", "test")}
    print(f"      {len(table)} images, {counts}")
    runs = train_models(out, seed, epochs)
    summary = summarize(runs, table)
    (out / "summary.json").write_text(json.dumps({"layers": layers_summary, "models": summary}, indent=2))
    print(f"wrote {out / 'summary.json'}")
    return 0


def train_models(out, seed, epochs):
    from keras_robust_iqa.training.trainer import TrainConfig, train

    runs = {}
    for step, (name, robust) in enumerate((("base", None), ("replace", "replace")), start=1):
        run = out / name
        runs[name] = run
        if (run / "metrics.json").is_file():
            print(f"[3/4] train {name}: finished run reused ({run})")
            continue
        print(f"[3/4] train {name} ({step}/2): {epochs} epochs into {run}")
        train(TrainConfig(robust=robust, epochs=epochs, seed=seed, patience=epochs), run)
    return runs


def summarize(runs, table):
    from keras_robust_iqa import data
    from keras_robust_iqa.models import lipschitz_bound, patch_grid
    from keras_robust_iqa.training.trainer import load_run_model

    print("[4/4] summary on the test split")
    test = table.subset("test")
    images = np.stack(data.load_images(test, np.arange(8)))
    summary = {}
    for name, run in runs.items():
        metrics = json.loads((run / "metrics.json").read_text())
        model = load_run_model(run)
        patches = np.asarray(patch_grid(images, model.inputs[0].shape[1])).reshape(-1, *model.inputs[0].shape[1:])
        jac = np.asarray(jacobian_spectral_norm(lambda t: model(t, training=False), patches[:16], iterations=10))
        try:
            bound = lipschitz_bound(model)
        except ValueError:
            bound = None
        summary[name] = dict(metrics["test"], params=metrics["params"], lipschitz_bound=bound,
                             jacobian_norm_max=float(jac.max()))
    print(f"{'model':10s} {'params':>8s} {'SROCC':>7s} {'PLCC':>7s} {'bound':>8s} {'max ||J||':>10s}")
    for name, r in summary.items():
        bound = "-" if r["lipschitz_bound"] is None else f"{r['lipschitz_bound']:.3f}"
        print(f"{name:10s} {r['params']:8d} {r['srocc']:7.3f} {r['plcc']:7.3f} {bound:>8s} {r['jacobian_norm_max']:10.3f}")
    return summary


def check_layers(out, seed):
    x = photo_patches(seed=seed)
    print(f"[1/4] layers: {len(x)} patches of {x.shape[1]}x{x.shape[2]} from {len(PHOTOS)} photographs")
    results = {}
    for model in layer_stacks(seed=seed):
        lipschitz = np.asarray(jacobian_spectral_norm(lambda t: model(t, training=False), x))
        y = np.asarray(model(x, training=False))
        ratio = np.linalg.norm(y.reshape(len(x), -1), axis=1) / np.linalg.norm(x.reshape(len(x), -1), axis=1)
        results[model.name] = {
            "jacobian_norm_max": float(lipschitz.max()),
            "jacobian_norm_mean": float(lipschitz.mean()),
            "output_input_norm_ratio_mean": float(ratio.mean()),
            "params": int(model.count_params()),
        }
    print(f"{'stack':16s} {'params':>8s} {'max ||J||':>10s} {'mean ||J||':>11s}")
    for name, r in results.items():
        print(f"{name:16s} {r['params']:8d} {r['jacobian_norm_max']:10.3f} {r['jacobian_norm_mean']:11.3f}")
    return results
