"""Scoring images of any size with a model that takes fixed-size patches.

The image is cut into the largest centred grid of non-overlapping
`patch_size x patch_size` patches (the border beyond the last full patch is
left out) and the patch scores are averaged. Orthogonal layers are built for
one input size, so robust models work on fixed patches; averaging over
disjoint patches also keeps a Lipschitz bound: it divides it by
`sqrt(number of patches)`, since a perturbation of norm `d` splits into
per-patch parts whose norms `d_k` satisfy `sum d_k <= sqrt(K) d`.
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


def model_patch_size(model):
    shape = model.inputs[0].shape
    if shape[1] is None or shape[1] != shape[2]:
        raise ValueError(f"Model input must be square patches of static size, got {tuple(shape)}.")
    return int(shape[1])


def score_images(model, images, batch_size=64, chunk=64):
    """Average patch score of each image, as a float numpy array `(N,)`.

    Args:
        model: a Keras model taking `(patch, patch, 3)` patches.
        images: an array `(N, H, W, 3)` or any iterable of `(H_i, W_i, 3)`
            arrays (a generator keeps memory flat on large datasets), each at
            least one patch large, values in [0, 1].
        batch_size: patches per forward pass.
        chunk: images held in memory at once.
    """
    patch = model_patch_size(model)
    scores = []
    pending = []

    def flush():
        # One forward pass per group of equally sized images.
        by_shape = {}
        for i, image in enumerate(pending):
            by_shape.setdefault(image.shape, []).append(i)
        out = np.zeros(len(pending))
        for indices in by_shape.values():
            grid = patch_grid(np.stack([pending[i] for i in indices]), patch)
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
