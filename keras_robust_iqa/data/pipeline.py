"""tf.data pipelines over an `IQATable`, and the package's image decoder.

Images are decoded by `decode_image` to RGB float32 in [0, 1], as `data.images`
describes: JPEG, PNG and GIF by tf.io (JPEGs with the accurate IDCT), every other format
Pillow reads (WebP, TIFF, BMP...) by Pillow; 16-bit images keep their precision (65535 ->
1.0), EXIF orientation is applied, alpha is dropped (not composited, as Pillow's
`convert("RGB")`), grayscale is repeated to 3 channels, palette images are expanded.
Readers with `check_images=True` have already refused files that cannot be decoded.

Eval batches of full images need one image size per batch: with `crop_size=None` and
`batch_size > 1` a split whose images differ in size raises a ValueError (pass
`crop_size=` or `batch_size=1`) rather than failing inside TensorFlow.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tensorflow as tf
from PIL import Image

from .errors import DataError
from .images import GIF_MAGIC, JPEG_MAGIC, PNG_MAGIC, decoded_by_tf, image_size, orientation_of_bytes, pillow_decode
from .table import IQATable


def decode_image(contents: tf.Tensor) -> tf.Tensor:
    """Encoded image bytes -> `(h, w, 3)` float32 in [0, 1], upright (see `data.images`).

    JPEGs use libjpeg's accurate integer IDCT: `tf.io.decode_image` uses the fast one,
    which is off by up to ~14/255 on high-quality photos (quality 95) and would add its own
    artefacts to a quality dataset. With it, pixels equal Pillow's decode exactly. Formats
    tf.io does not read correctly (WebP, TIFF, BMP...) go through Pillow
    (`images.pillow_decode`), which also applies their EXIF orientation.
    """
    by_tf = tf.reduce_any([tf.equal(tf.strings.substr(contents, 0, len(magic)), magic)
                           for magic in (JPEG_MAGIC, PNG_MAGIC, GIF_MAGIC)])

    def jpeg():
        img = tf.io.decode_jpeg(contents, channels=3, dct_method="INTEGER_ACCURATE")
        return _orient(tf.image.convert_image_dtype(img, tf.float32), contents)

    def png_gif():
        img = tf.io.decode_image(contents, channels=3, dtype=tf.float32, expand_animations=False)
        return _orient(img, contents)

    def pillow():
        return tf.numpy_function(pillow_decode, [contents], tf.float32, stateful=False)

    img = tf.cond(by_tf, lambda: tf.cond(tf.io.is_jpeg(contents), jpeg, png_gif), pillow)
    img.set_shape([None, None, 3])
    return img


def _orient(img, contents):
    """`img` turned upright by the EXIF orientation of `contents` (Pillow's exif_transpose)."""
    orientation = tf.numpy_function(orientation_of_bytes, [contents], tf.int32, stateful=False)
    transposed = tf.transpose(img, [1, 0, 2])
    branches = [
        lambda: img,  # 1 (and anything unknown)
        lambda: tf.reverse(img, [1]),  # 2: mirrored
        lambda: tf.image.rot90(img, 2),  # 3: upside down
        lambda: tf.reverse(img, [0]),  # 4: flipped
        lambda: transposed,  # 5
        lambda: tf.image.rot90(img, 3),  # 6: turned 90 degrees clockwise to be upright
        lambda: tf.image.rot90(transposed, 2),  # 7
        lambda: tf.image.rot90(img, 1),  # 8
    ]
    return tf.switch_case(tf.clip_by_value(orientation - 1, 0, 7), branches)


_decode_eager = tf.function(decode_image, input_signature=[tf.TensorSpec([], tf.string)])


def _hw(value, name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        hw = (int(value), int(value))
    else:
        try:
            hw = tuple(int(v) for v in value)
        except TypeError:
            raise ValueError(f"{name} must be an int or (height, width), got {value!r}") from None
        if len(hw) != 2:
            raise ValueError(f"{name} must be an int or (height, width), got {value!r}")
    if min(hw) < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return hw


def _header_size(path: str) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return image_size(im)
    except FileNotFoundError:
        raise DataError(path, None, "image not found") from None
    except Exception as e:  # any Pillow failure means an unreadable image
        raise DataError(path, None, f"cannot read the image header ({type(e).__name__}: {e})") \
            from None


def image_sizes(table: IQATable) -> np.ndarray:
    """`(N, 2)` image (height, width): from the table when known, else image headers."""
    if table.sizes is not None:
        return np.asarray(table.sizes)
    with ThreadPoolExecutor(min(16, 2 * (os.cpu_count() or 1))) as ex:
        sizes = list(ex.map(_header_size, table.absolute_paths()))
    return np.array(sizes, dtype=np.int64).reshape(-1, 2)


def _check_min(table: IQATable, sizes: np.ndarray, hw: tuple[int, int], what: str) -> None:
    small = np.flatnonzero((sizes[:, 0] < hw[0]) | (sizes[:, 1] < hw[1]))
    if len(small):
        i = small[0]
        raise ValueError(
            f"{len(small)} image(s) are smaller than the {what} {hw[1]}x{hw[0]} (width x "
            f"height), e.g. {table.absolute_path(i)} is {sizes[i, 1]}x{sizes[i, 0]}; read the "
            f"table with min_size={max(hw)} to skip them")


def make_dataset(table: IQATable, split: str | None, *, patch_size=64, batch_size: int = 16,
                 training: bool, patches_per_image: int = 1, crop_size=None, seed: int = 0,
                 augment: str | None = None, shuffle: bool | None = None,
                 cache: bool | str = True, fresh_distortions: bool = False) -> tf.data.Dataset:
    """Batches of `(images (B, h, w, 3) float32 in [0, 1], mos01 (B,) float32)`.

    Args:
        table: the dataset; `split` picks `"train"`/`"val"`/`"test"` rows (`None`:
            all rows). MOS is mapped to [0, 1] by `table.normalize`; map predictions back
            with `table.denormalize`.
        training: `True`: `patches_per_image` random `patch_size` crops per image and
            epoch, shuffled; each epoch differs but the sequence is fixed by `seed` (and
            TensorFlow's global seed, if one is set). `False`: deterministic; a centre
            crop of `crop_size` when given, else the full image.
        augment: training patches only. `"flip"`: a random horizontal flip;
            `"dihedral"`: one of the 8 symmetries of the square (flips, and transposes
            when the patch is square), for distortions that have no orientation (synthetic
            sets, the built-in one: its MS-SSIM labels do not change under them).
            `None`: as cropped.
        shuffle: defaults to `training`. Eval data can be shuffled (seeded) too.
        cache: `True` keeps the encoded files in memory after the first epoch (decoding
            still runs per epoch: decoded KonIQ would not fit in memory); a string is a
            file prefix for an on-disk cache; `False` re-reads the files every epoch.
        fresh_distortions: training on the built-in dataset only. Instead of its stored
            images, each epoch draws as many new ones from the split's pristine crops: a
            distortion and a continuous level per image, labelled by its MS-SSIM like the
            stored set (`builtin.draw_distortion`), so no image is seen twice. The draws
            are fixed by `seed` and differ each epoch. Validation and test keep the
            stored images.
    """
    if split is not None:
        table = table.subset(split)
    if len(table) == 0:
        raise ValueError(f"{table.name}: split {split!r} has no images")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(patches_per_image, (int, np.integer)) or patches_per_image < 1:
        raise ValueError(f"patches_per_image must be a positive int, got {patches_per_image!r}")
    if augment not in AUGMENTATIONS:
        raise ValueError(f"Argument `augment`={augment!r} must be one of {AUGMENTATIONS}")
    shuffle = training if shuffle is None else bool(shuffle)
    sizes = image_sizes(table)
    out_shape: list = [None, None]
    if training:
        patch = _hw(patch_size, "patch_size")
        _check_min(table, sizes, patch, "patch_size")
        out_shape = list(patch)
    elif crop_size is not None:
        crop = _hw(crop_size, "crop_size")
        _check_min(table, sizes, crop, "crop_size")
        out_shape = list(crop)
    else:
        distinct = np.unique(sizes, axis=0)
        if len(distinct) == 1:
            out_shape = [int(distinct[0, 0]), int(distinct[0, 1])]
        elif batch_size > 1:
            i = int(np.flatnonzero(np.any(sizes != sizes[0], axis=1))[0])
            raise ValueError(
                f"{table.name}: images of split {split!r} differ in size ({len(distinct)} "
                f"sizes, e.g. {table.absolute_path(0)} is {sizes[0, 1]}x{sizes[0, 0]} and "
                f"{table.absolute_path(i)} is {sizes[i, 1]}x{sizes[i, 0]}), so full images "
                f"cannot be batched: pass crop_size=... or batch_size=1")

    n = len(table)
    auto = tf.data.AUTOTUNE
    if fresh_distortions:
        if not training:
            raise ValueError("fresh_distortions=True draws training images: it needs training=True "
                             "(validation and test keep the stored images).")
        ds = _fresh_distortions(table, seed).take(n)
    else:
        paths = tf.constant(table.absolute_paths())
        mos01 = tf.constant(table.normalize(table.mos).astype(np.float32))
        ds = tf.data.Dataset.from_tensor_slices((paths, mos01))

    def read(path, y):
        return tf.io.read_file(path), y

    if fresh_distortions:
        pass  # drawn in a new random order each epoch: nothing to read, cache or shuffle
    elif cache:
        # Cache the file bytes in file order, then shuffle them: each epoch a new order.
        ds = ds.map(read, num_parallel_calls=auto, deterministic=True)
        ds = ds.cache() if cache is True else ds.cache(str(cache))
        if shuffle:
            ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=training)
    else:
        # Shuffle the paths, not the bytes: the buffer then holds no image data.
        if shuffle:
            ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=training)
        ds = ds.map(read, num_parallel_calls=auto, deterministic=True)

    if training:
        k = int(patches_per_image)
        ph, pw = out_shape
        # One stateless seed per image and epoch: crops do not depend on thread timing.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

        def crops(item, crop_seed):
            image_or_contents, y = item
            img = image_or_contents if fresh_distortions else decode_image(image_or_contents)
            sub_seeds = tf.random.experimental.stateless_split(crop_seed, k)
            patches = tf.stack([tf.image.stateless_random_crop(img, [ph, pw, 3], sub_seeds[j])
                                for j in range(k)])
            if augment:
                # Seeds of their own: the crop's would give coins correlated with its offsets.
                flip_seed = tf.random.experimental.stateless_fold_in(crop_seed, 1)
                patches = _augment(patches, augment, flip_seed)
            return patches, tf.fill([k], y)

        ds = tf.data.Dataset.zip((ds, seeds)).map(crops, num_parallel_calls=auto,
                                                   deterministic=True)
        ds = ds.unbatch()
        if k > 1 and shuffle:
            # Patches of one image arrive together; mix them across batches.
            ds = ds.shuffle(min(n * k, max(1024, 8 * k)), seed=seed + 1,
                            reshuffle_each_iteration=True)
    else:
        crop = out_shape if crop_size is not None else None

        def load(contents, y):
            img = decode_image(contents)
            if crop is not None:
                h, w = tf.shape(img)[0], tf.shape(img)[1]
                img = tf.image.crop_to_bounding_box(img, (h - crop[0]) // 2,
                                                    (w - crop[1]) // 2, crop[0], crop[1])
            img = tf.ensure_shape(img, [out_shape[0], out_shape[1], 3])
            return img, y

        ds = ds.map(load, num_parallel_calls=auto, deterministic=True)
    ds = ds.batch(int(batch_size))
    return ds.prefetch(auto)


AUGMENTATIONS = (None, "flip", "dihedral")


def _fresh_distortions(table: IQATable, seed: int) -> tf.data.Dataset:
    """An endless dataset of `(image, mos01)` drawn by `builtin.draw_distortion`.

    Each element gets its own seed from a seeded stream that differs each epoch, so the
    draws do not depend on thread timing; the NumPy / SciPy / Pillow work runs in parallel
    calls (it releases the GIL for most of its time).
    """
    from .builtin import draw_distortion, msssim_weights, pristine_crops

    crops, colour = pristine_crops(table)
    weights = msssim_weights(*crops.shape[1:3])

    def draw(element_seed):
        rng = np.random.default_rng(np.asarray(element_seed).astype(np.uint64).tolist())
        k = int(rng.integers(len(crops)))
        image, mos, _ = draw_distortion(crops[k], bool(colour[k]), rng, weights)
        return image, np.float32(table.normalize(mos))

    def sample(element_seed):
        image, y = tf.numpy_function(draw, [element_seed], (tf.float32, tf.float32), stateful=False)
        return tf.ensure_shape(image, crops.shape[1:]), tf.ensure_shape(y, [])

    seeds = tf.data.Dataset.random(seed=seed + 2, rerandomize_each_iteration=True).batch(2)
    return seeds.map(sample, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _augment(patches, augment, seed):
    """Flip (and, for `"dihedral"`, transpose) each of the `(k, h, w, 3)` patches at random."""
    coins = tf.random.stateless_uniform([tf.shape(patches)[0], 3], seed, maxval=2, dtype=tf.int32)
    flip = tf.cast(coins[:, :1, None, None], tf.bool)
    patches = tf.where(flip, tf.reverse(patches, axis=[2]), patches)
    if augment == "dihedral":
        flip = tf.cast(coins[:, 1:2, None, None], tf.bool)
        patches = tf.where(flip, tf.reverse(patches, axis=[1]), patches)
        if patches.shape[1] == patches.shape[2]:
            turn = tf.cast(coins[:, 2:3, None, None], tf.bool)
            patches = tf.where(turn, tf.transpose(patches, [0, 2, 1, 3]), patches)
    return patches


def iter_images(table: IQATable, indices=None):
    """Yield the images of `load_images` one at a time.

    A whole split at full size can be large (KonIQ's 2015 test images are ~19 GB as
    float32), so evaluation code that scores images one by one should iterate instead.
    """
    idx = range(len(table)) if indices is None else [int(i) for i in np.asarray(indices).ravel()]
    for i in idx:
        yield read_image(table.absolute_path(i), f"table row {i}")


def read_image(path, where: str | None = None) -> np.ndarray:
    """One image file -> `(h, w, 3)` float32 RGB in [0, 1], decoded as `make_dataset` does.

    Raises:
        DataError: naming the file when it is missing, unreadable or cannot be decoded
            (`where`, e.g. `"table row 3"`, is added to the reason).
    """
    path = str(path)
    note = f" ({where})" if where else ""
    if not os.path.isfile(path):
        what = "a folder, not an image file" if os.path.isdir(path) else "image not found"
        raise DataError(path, None, f"{what}{note}")
    with open(path, "rb") as f:
        contents = f.read()
    if not contents:
        raise DataError(path, None, f"empty file (0 bytes){note}")
    if not decoded_by_tf(contents):
        try:  # the decoder's Pillow branch, called directly: its errors without TensorFlow's trace
            return pillow_decode(contents)
        except ValueError as e:
            raise DataError(path, None, f"cannot decode the image{note}: {e}") from None
    try:
        return _decode_eager(tf.constant(contents)).numpy()
    except tf.errors.OpError as e:
        raise DataError(path, None, f"cannot decode the image{note}: {_op_reason(e)}") from None


def _op_reason(error) -> str:
    """The reason in a TensorFlow op error, without the graph trace around it."""
    trace = ("[[", "File ", "Detected at node", "Graph execution error")
    lines = [line.strip() for line in (error.message or "").splitlines()]
    reasons = [line for line in lines if line and not line.startswith(trace)]
    return reasons[-1] if reasons else type(error).__name__


def load_images(table: IQATable, indices=None) -> list[np.ndarray]:
    """Decode images of `table` (all, or the rows in `indices`) as float32 RGB in [0, 1].

    Uses the same decoder as `make_dataset`, so evaluation code sees identical pixels.
    See `iter_images` to avoid holding a large split in memory.
    """
    return list(iter_images(table, indices))
