"""Scoring images of any size with a model that takes fixed-size patches (or whole images).

The image is cut into the largest centred grid of non-overlapping
`patch_size x patch_size` patches (the border beyond the last full patch is
left out) and the patch scores are averaged. The Fourier `OrthoConv2D` is
built for one input size, so its models work on fixed patches; averaging over
disjoint patches also keeps a Lipschitz bound: it divides it by
`sqrt(number of patches)`, since a perturbation of norm `d` splits into
per-patch parts whose norms `d_k` satisfy `sum d_k <= sqrt(K) d`.

A model whose input has no static size (e.g. `BlockOrthoConv2D` layers rebuilt
on `(None, None, 3)`) scores a grid of patches of the `patch_size` given, or
whole images in one pass (`whole_images=True`).
"""

import numpy as np
import tensorflow as tf


def patch_grid(images, patch_size):
    """`(B, H, W, C)` -> `(B, K, patch, patch, C)`: the centred grid of disjoint patches."""
    images = tf.convert_to_tensor(images)
    height, width = images.shape[1], images.shape[2]
    if height is None or width is None:
        # Traced for any image size (an export signature): sizes known at run time.
        height, width = tf.shape(images)[1], tf.shape(images)[2]
    rows, cols = height // patch_size, width // patch_size
    if isinstance(rows, int) and (rows == 0 or cols == 0):
        raise ValueError(
            f"Image of size {height}x{width} is smaller than the patch size {patch_size}."
        )
    top = (height - rows * patch_size) // 2
    left = (width - cols * patch_size) // 2
    x = images[:, top : top + rows * patch_size, left : left + cols * patch_size, :]
    x = tf.reshape(x, (-1, rows, patch_size, cols, patch_size, images.shape[3]))
    x = tf.transpose(x, (0, 1, 3, 2, 4, 5))
    return tf.reshape(x, (-1, rows * cols, patch_size, patch_size, images.shape[3]))


def patches_per_image(height, width, patch_size):
    return (height // patch_size) * (width // patch_size)


def model_patch_size(model, patch_size=None):
    """The side of the square patches `model` scores.

    Args:
        model: a Keras model on `(batch, H, W, C)` inputs.
        patch_size: the side to use. Needed where the input has no static size (a
            model that takes any size, e.g. built on `(None, None, 3)`); elsewhere it
            must equal the model's own.

    Raises:
        ValueError: naming the model's input shape and the patch size.
    """
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4:
        raise ValueError(f"Model input must be (batch, height, width, channels), got {shape}.")
    static = shape[1:3]
    if patch_size is not None:
        if isinstance(patch_size, bool) or not isinstance(patch_size, (int, np.integer)) or patch_size < 1:
            raise ValueError(f"Argument `patch_size` must be a positive integer, got patch_size={patch_size!r}.")
        patch_size = int(patch_size)
        if any(n is not None and n != patch_size for n in static):
            raise ValueError(
                f"Argument `patch_size`={patch_size} does not fit the model's input shape {shape}: "
                f"it scores {static[0]}x{static[1]} patches."
            )
        return patch_size
    if None in static:
        raise ValueError(
            f"Model input shape {shape} has no static patch size: give `patch_size=` (a grid of "
            "patches), or score whole images (`whole_images=True`)."
        )
    if static[0] != static[1]:
        raise ValueError(f"Model input must be square patches, got {shape}.")
    return int(static[0])


def takes_any_size(model):
    """Whether `model`'s input has no static height and width (it scores images of any size)."""
    shape = tuple(model.inputs[0].shape)
    return len(shape) == 4 and shape[1] is None and shape[2] is None


def score_images(model, images, batch_size=64, chunk=64, *, patch_size=None, whole_images=False):
    """Average patch score of each image, as a float numpy array `(N,)`.

    Args:
        model: a Keras model taking `(patch, patch, 3)` patches.
        images: an array `(N, H, W, 3)` or any iterable of `(H_i, W_i, 3)`
            arrays (a generator keeps memory flat on large datasets), each at
            least one patch large, values in [0, 1].
        batch_size: patches per forward pass.
        chunk: images held in memory at once.
        patch_size: the patch side, for a model that takes any input size
            (default: the model's own).
        whole_images: score each image in one forward pass, no patches (a
            model whose input has no static size, or images of its exact size).
    """
    if whole_images:
        if patch_size is not None:
            raise ValueError("Give `patch_size` or `whole_images=True`, not both.")
        patch = None
    else:
        patch = model_patch_size(model, patch_size)
    scores = []
    pending = []

    def flush():
        # One forward pass per group of equally sized images.
        by_shape = {}
        for i, image in enumerate(pending):
            by_shape.setdefault(image.shape, []).append(i)
        out = np.zeros(len(pending))
        for indices in by_shape.values():
            batch = np.stack([pending[i] for i in indices])
            if patch is None:
                _check_whole(model, batch.shape)
                pred = model.predict(batch, batch_size=batch_size, verbose=0)
                out[indices] = np.asarray(pred, "float64").reshape(len(indices), -1).mean(axis=1)
                continue
            grid = patch_grid(batch, patch)
            k = grid.shape[1]
            flat = tf.reshape(grid, (-1, patch, patch, grid.shape[-1]))
            pred = model.predict(flat, batch_size=batch_size, verbose=0)
            out[indices] = np.asarray(pred, "float64").reshape(len(indices), k).mean(axis=1)
        scores.extend(out)
        pending.clear()

    for image in images:
        pending.append(np.asarray(image, "float32"))
        if len(pending) == chunk:
            flush()
    if pending:
        flush()
    return np.asarray(scores)


def _check_whole(model, shape):
    expected = tuple(model.inputs[0].shape)[1:3]
    if any(n is not None and n != m for n, m in zip(expected, shape[1:3])):
        raise ValueError(
            f"whole_images=True: model '{model.name}' takes {expected[0]}x{expected[1]} inputs, "
            f"not {shape[1]}x{shape[2]} images; score patches instead (whole_images=False)."
        )
