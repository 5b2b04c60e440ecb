"""`robust-iqa demo`: what exists of the pipeline, end to end, on built-in data.

Stage 1 (layers): a plain Conv2D + ReLU stack against a RobustBlock stack of
the same shape, on patches of the real photographs that scikit-image ships.
For each patch it measures the worst-case amplification of a perturbation
(the spectral norm of the input Jacobian, by power iteration) and the norm
ratio ||f(x)|| / ||x||. An orthogonal stack cannot amplify: at most 1.
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


def run(out="runs/demo", seed=0):
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    x = photo_patches(seed=seed)
    print(f"[1/1] layers: {len(x)} patches of {x.shape[1]}x{x.shape[2]} from {len(PHOTOS)} photographs")
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
    (out / "layers.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'layers.json'}")
    return 0
