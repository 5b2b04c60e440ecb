"""How Lipschitz must a model be to score a dataset exactly as labelled?

A model with L2 Lipschitz constant `L` cannot give two images `x`, `x'` scores further
apart than `L * ||x - x'||`. So any model that reproduces the labels `y` of a dataset
needs `L >= |y - y'| / ||x - x'||` for every pair, and the largest of these ratios is the
smallest constant with which the labels can be fitted at all (the McShane extension
attains it). Pairs of distorted versions of one reference image are the close ones; images
of different content are far apart in L2, so only same-reference pairs are compared.

Multiplied by an attack's L2 radius, that constant is the certified bound of the most
robust model that fits the labels: a certificate below it means a model that cannot order
some pairs of the dataset as labelled.
"""

import collections

import numpy as np

from keras_robust_iqa.data import iter_images


def label_lipschitz(table, split=None, top=5):
    """The smallest L2 Lipschitz constant that fits the labels of same-reference pairs.

    Args:
        table: an `IQATable` whose `refs` group distorted versions of one image
            (KADID-10k, TID2013, the built-in set); images of one reference must have
            one size.
        split: compare only the images of this split (`None`: all).
        top: how many of the hardest pairs to return.

    Returns:
        A dict: `lipschitz` (the largest ratio, in normalised MOS per unit of image L2
        distance, pixels in [0, 1]), `quantiles` of the ratios over all pairs, `pairs`,
        `image_shape`, and `hardest`, the `top` pairs that set it (`paths`, `mos_gap`,
        `distance`, `ratio`). Where the table records distortion types, `by_distortion`:
        for each type, the largest and the median ratio over the pairs of two images of
        that type (`lipschitz`, `p50`, `pairs`); types whose pairs all share one label
        put no constraint on a model and are left out.

    Raises:
        ValueError: when no two images share a reference, or the images of one
            reference differ in size (naming two of them).
    """
    if split is not None:
        table = table.subset(split)
    groups = collections.defaultdict(list)
    for i, ref in enumerate(table.refs):
        groups[ref].append(i)
    groups = {ref: rows for ref, rows in groups.items() if len(rows) > 1}
    if not groups:
        raise ValueError(
            f"{table.name}: no two images share a reference (column `refs`), so there are no "
            f"pairs of one content to compare")
    y = table.normalize(table.mos)
    first, second, gaps, distances, shapes = [], [], [], [], set()
    for rows in groups.values():
        rows = np.asarray(rows)
        images = list(iter_images(table, rows))
        sizes = {im.shape for im in images}
        if len(sizes) > 1:
            j = next(k for k, im in enumerate(images) if im.shape != images[0].shape)
            raise ValueError(
                f"{table.name}: images of reference {str(table.refs[rows[0]])!r} differ in size: "
                f"{table.absolute_path(rows[0])} is {images[0].shape[:2]}, "
                f"{table.absolute_path(rows[j])} is {images[j].shape[:2]}")
        shapes |= sizes
        flat = np.stack([im.reshape(-1) for im in images]).astype(np.float64)
        # Distances from the Gram matrix: one product for all pairs. It rounds (about 1e-6
        # here), so pairs that close get the direct difference.
        sq = np.sum(flat * flat, axis=1)
        a, b = np.triu_indices(len(rows), k=1)
        dist = np.sqrt(np.maximum(sq[a] + sq[b] - 2.0 * (flat @ flat.T)[a, b], 0.0))
        for k in np.flatnonzero(dist < 1e-3):
            dist[k] = np.linalg.norm(flat[a[k]] - flat[b[k]])
        gap = np.abs(y[rows[a]] - y[rows[b]])
        keep = dist > 0  # identical pixels: a contradiction only if the labels differ
        if np.any(~keep & (gap > 0)):
            k = int(np.flatnonzero(~keep & (gap > 0))[0])
            raise ValueError(
                f"{table.name}: {table.absolute_path(rows[a[k]])} and "
                f"{table.absolute_path(rows[b[k]])} have the same pixels and different MOS: "
                f"no model can fit both")
        first.append(rows[a[keep]])
        second.append(rows[b[keep]])
        gaps.append(gap[keep])
        distances.append(dist[keep])
    first, second, gaps, distances = map(np.concatenate, (first, second, gaps, distances))
    if not len(gaps):
        raise ValueError(f"{table.name}: every pair of one reference has identical pixels")
    ratios = gaps / distances
    order = np.argsort(-ratios)[:top]
    result = {
        "lipschitz": float(ratios[order[0]]),
        "quantiles": {f"p{q:g}": float(np.percentile(ratios, q)) for q in (50, 90, 99)},
        "pairs": int(len(ratios)),
        "image_shape": sorted(shapes)[0] if len(shapes) == 1 else None,
        "hardest": [
            {"paths": [table.paths[first[k]], table.paths[second[k]]],
             "mos_gap": float(gaps[k]), "distance": float(distances[k]),
             "ratio": float(ratios[k])}
            for k in order
        ],
    }
    if table.distortions is not None:
        kinds = table.distortions
        result["by_distortion"] = {}
        for kind in sorted(set(kinds.tolist()) - {""}):
            same = (kinds[first] == kind) & (kinds[second] == kind)
            if np.any(gaps[same] > 0):
                result["by_distortion"][kind] = {
                    "lipschitz": float(ratios[same].max()), "p50": float(np.median(ratios[same])),
                    "pairs": int(same.sum())}
    return result

