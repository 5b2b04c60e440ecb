"""A small synthetic-distortion IQA dataset built offline from scikit-image's photographs.

Every command of the package must run with no download, so this dataset is made locally:

- Sources: the real photographs shipped inside the scikit-image wheel (`SOURCES`; no
  pooch download). Grayscale photographs are repeated to 3 channels. Synthetic images
  (checkerboard, colorwheel, logo, horse, phantom, blobs) and already-degraded ones
  (`clock` is motion-blurred) are left out, and `cat` is the same photo as `chelsea`.
  So are `cell` (an out-of-focus microscope image) and `hubble_deep_field` (a dark,
  noisy sky): a no-reference model cannot tell their pristine version from a blurred or
  noisy one, while MS-SSIM labels it 100. Public IQA sets pick sharp, clean references for
  the same reason.
- Crops: each photograph is rescaled by `size / 256` (very large ones first brought to
  768 px on the long side), so a crop shows the same scene content at every `size`; then
  the most detailed non-overlapping `size x size` crops are kept (2, or 1 for the
  small `chelsea` and `coins`).
- Distortions (`DISTORTIONS`), five levels each, chosen so the labels spread over the
  scale: Gaussian blur, white Gaussian noise, JPEG and JPEG 2000 through Pillow's codecs,
  contrast reduction, pixelation, salt and pepper, gamma (darkening) and colour
  over-saturation (colour sources only). The pristine crops are included too.
- Labels: MS-SSIM of the stored (8-bit) distorted image against its pristine crop, exactly
  as defined by `tf.image.ssim_multiscale(max_val=1.0)` (11x11 Gaussian window, sigma 1.5,
  K1 0.01, K2 0.03, 2x2 average pooling, the weights of Wang et al. 2003, mean over RGB).
  It is evaluated by `ms_ssim`, a NumPy/SciPy transcription of that function using
  the separable form of its Gaussian window; TensorFlow's depthwise 11x11 convolution is
  ~10x slower on CPU. `tests/data/test_data_builtin.py` checks the two agree. For
  `size < 176` the coarsest scales would be smaller than the window, so only the scales
  that fit are used, with their weights renormalised to sum to 1.
- MOS mapping (monotone, 100 for a pristine image, 0 for MS-SSIM 0):
  `mos = 100 * (1 - ln(1 + d / 0.05) / ln(1 + 1 / 0.05))` with `d = 1 - MS-SSIM`.
  The log spreads the many small distances: MS-SSIM 0.99 -> 94, 0.95 -> 77, 0.9 -> 64,
  0.8 -> 47, 0.6 -> 28.
- Split by source photograph, from the seed: ~70/10/20 of the sources with at least two
  in val and in test, so no photograph (nor any crop of it) is in two splits.

Cache: `$ROBUST_IQA_CACHE` or `~/.cache/keras_robust_iqa`, folder
`builtin-{VERSION}-s{size}-seed{seed}` with `images/`, `mos.csv` (`path, mos, split, ref,
distortion, level`; `ref` is the source photograph) and `manifest.json`. It is built in
a temporary sibling folder and renamed into place, so an interrupted build leaves no
half-built dataset, and later calls reuse it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from .csv_reader import read_csv
from .splits import split_groups
from .table import IQATable

VERSION = "v3"  # v2: split stratified by colour / grayscale; v3: no cell/hubble, 2 crops of big gray photos
MOS_RANGE = (0.0, 100.0)
REFERENCE_SIZE = 256  # crop size the distortion levels and scene scale were chosen at
MAX_SOURCE_SIDE = 768  # at REFERENCE_SIZE; bigger photos are shrunk first
MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # tf.image.ssim_multiscale's
MOS_D0 = 0.05
STALE_TMP_SECONDS = 3600  # a build takes well under a minute; older temp folders are dead

# name, skimage.data function (and index for the stereo pair), crops kept
SOURCES = (
    ("astronaut", "astronaut", 2),
    ("brick", "brick", 2),
    ("camera", "camera", 2),
    ("chelsea", "chelsea", 1),  # 300 px high: no room for two separate crops
    ("coffee", "coffee", 2),
    ("coins", "coins", 1),
    ("grass", "grass", 2),
    ("gravel", "gravel", 2),
    ("ihc", "immunohistochemistry", 2),
    ("moon", "moon", 2),
    ("motorcycle", "stereo_motorcycle", 2),
    ("retina", "retina", 2),
    ("rocket", "rocket", 2),
)


# Grayscale photographs: the split draws val and test from both kinds, so a test set
# made only of gray (or only of colour) images cannot happen by chance of the seed.
GRAYSCALE = frozenset({"brick", "camera", "coins", "grass", "gravel", "moon"})


def builtin_split(seed: int = 0) -> dict[str, str]:
    """Source photograph -> split, stratified by colour vs grayscale (about 70/10/20 each)."""
    names = [name for name, _, _ in SOURCES]
    colour = [n for n in names if n not in GRAYSCALE]
    gray = [n for n in names if n in GRAYSCALE]
    return {**split_groups(colour, seed, min_val=1, min_test=2),
            **split_groups(gray, seed, min_val=1, min_test=1)}


# --------------------------------------------------------------------------- distortions


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _codec(x: np.ndarray, fmt: str, **kwargs) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(_u8(x)).save(buf, fmt, **kwargs)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0


def _luma(x: np.ndarray) -> np.ndarray:
    return (x @ np.array([0.299, 0.587, 0.114]))[..., None]


def _blur(x, sigma, rng):
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x, sigma=(sigma, sigma, 0), mode="reflect")


def _noise(x, std, rng):
    return x + rng.normal(0.0, std, size=x.shape)


def _jpeg(x, quality, rng):
    return _codec(x, "JPEG", quality=int(quality))


def _jpeg2000(x, ratio, rng):
    return _codec(x, "JPEG2000", quality_mode="rates", quality_layers=[float(ratio)],
                  irreversible=True)


def _contrast(x, factor, rng):
    m = x.mean()
    return m + factor * (x - m)


def _pixelate(x, factor, rng):
    h, w = x.shape[:2]
    small = Image.fromarray(_u8(x)).resize((max(1, w // factor), max(1, h // factor)),
                                           Image.Resampling.BOX)
    return np.asarray(small.resize((w, h), Image.Resampling.NEAREST), np.float64) / 255.0


def _salt_pepper(x, density, rng):
    hit = rng.random(x.shape[:2]) < density
    value = (rng.random(x.shape[:2]) < 0.5).astype(np.float64)
    return np.where(hit[..., None], value[..., None], x)


def _gamma(x, g, rng):
    return x ** g


def _saturation(x, factor, rng):
    y = _luma(x)
    return y + factor * (x - y)


# name -> (function, five levels from mild to strong, colour sources only)
DISTORTIONS = {
    "blur": (_blur, (0.7, 1.2, 2.0, 3.2, 5.0), False),
    "noise": (_noise, (0.02, 0.04, 0.07, 0.12, 0.2), False),
    "jpeg": (_jpeg, (45, 20, 10, 6, 3), False),
    "jpeg2000": (_jpeg2000, (16, 32, 64, 128, 256), False),
    "contrast": (_contrast, (0.85, 0.7, 0.5, 0.35, 0.2), False),
    "pixelate": (_pixelate, (2, 3, 4, 6, 9), False),
    "saltpepper": (_salt_pepper, (0.002, 0.006, 0.015, 0.04, 0.1), False),
    "gamma": (_gamma, (1.25, 1.6, 2.1, 2.8, 3.8), False),
    "saturation": (_saturation, (1.5, 2.0, 2.8, 3.8, 5.5), True),
}


def draw_distortion(pristine: np.ndarray, colour: bool, rng: np.random.Generator,
                    weights=None) -> tuple[np.ndarray, float, str]:
    """A new distorted version of a pristine crop at a continuous level, labelled like the set.

    The distortion is drawn uniformly from `DISTORTIONS` (`saturation` for colour crops
    only), or the crop is left pristine with the share pristine crops have in the stored set
    (one in `1 + 5 * len(distortions)`). The level `u` is uniform in [0, 4] on the
    index of the five stored levels, interpolated geometrically between neighbours
    (`l[i] ** (1 - f) * l[i + 1] ** f`), so the stored levels are the points `u = 0..4`
    and every strength between them is drawn as often; the pixelation factor is rounded.

    Args:
        pristine: `(h, w, 3)` uint8, a pristine crop as stored.
        colour: whether the crop has colour (gray crops get no `saturation`).
        rng: the only randomness: the draw, and the noise of `noise` / `saltpepper`.
        weights: MS-SSIM power factors (default: those that fit the crop's size).

    Returns:
        `(image, mos, distortion)`: the distorted crop as its stored 8-bit pixels in
        float32 [0, 1], its MOS (`msssim_to_mos` of the MS-SSIM to the crop, 100 when
        pristine) and the distortion's name (`"pristine"` when none).
    """
    names = [name for name, (_, _, colour_only) in DISTORTIONS.items() if colour or not colour_only]
    choice = int(rng.integers(1 + 5 * len(names)))
    if choice >= len(names) * 5:
        return (pristine.astype(np.float32) / np.float32(255.0), 100.0, "pristine")
    name = names[choice // 5]
    levels = DISTORTIONS[name][1]
    u = rng.uniform(0.0, len(levels) - 1)
    i = min(int(u), len(levels) - 2)
    level = levels[i] ** (1.0 - (u - i)) * levels[i + 1] ** (u - i)
    if name == "pixelate":
        level = max(2, int(round(level)))
    return (*distort(pristine, name, level, rng, weights), name)


def distort(pristine: np.ndarray, name: str, level, rng: np.random.Generator, weights=None) -> tuple[np.ndarray, float]:
    """`pristine` (uint8) under distortion `name` at `level`: its stored 8-bit pixels in
    float32 [0, 1] and its MOS, computed as the stored set's (`_build_source`) are."""
    fn = DISTORTIONS[name][0]
    ref01 = pristine.astype(np.float64) / 255.0
    stored = _u8(np.clip(fn(ref01, level, rng), 0.0, 1.0)).astype(np.float32) / np.float32(255.0)
    if weights is None:
        weights = msssim_weights(*pristine.shape[:2])
    mos = float(msssim_to_mos(ms_ssim(stored[None], ref01.astype(np.float32), weights))[0])
    return stored, mos


def pristine_crops(table: IQATable) -> tuple[np.ndarray, np.ndarray]:
    """The pristine crops of a built-in table, `(N, h, w, 3)` uint8, and whether each has colour.

    Raises:
        ValueError: naming the table, when it has no distortion column or no pristine row.
    """
    if table.distortions is None or not np.any(table.distortions == "pristine"):
        raise ValueError(f"{table.name}: fresh distortions need the built-in dataset's pristine crops "
                         f"(rows whose distortion is 'pristine'); this table has none.")
    crops = []
    for i in np.flatnonzero(table.distortions == "pristine"):
        with Image.open(table.absolute_path(int(i))) as im:
            crops.append(np.asarray(im.convert("RGB")))
    crops = np.stack(crops)
    colour = np.any(crops[..., 0] != crops[..., 1], axis=(1, 2)) | np.any(crops[..., 1] != crops[..., 2], axis=(1, 2))
    return crops, colour


# --------------------------------------------------------------------------- MS-SSIM


def _gauss1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    # tf's _fspecial_gauss is a softmax over -(i^2 + j^2) / (2 sigma^2), i.e. the outer
    # product of this normalised 1-D window with itself.
    c = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-0.5 * c ** 2 / sigma ** 2)
    return (g / g.sum()).astype(np.float32)


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'VALID' filtering over the last two axes (height, width)."""
    from scipy.ndimage import correlate1d

    r = len(g) // 2
    y = correlate1d(x, g, axis=-2, mode="constant")[..., r:x.shape[-2] - r, :]
    return correlate1d(y, g, axis=-1, mode="constant")[..., r:y.shape[-1] - r]


def msssim_scales(height: int, width: int, filter_size: int = 11) -> int:
    """How many of the 5 MS-SSIM scales fit: each must be at least `filter_size`."""
    n, h, w = 0, height, width
    while n < len(MSSSIM_WEIGHTS) and min(h, w) >= filter_size:
        n += 1
        h, w = (h + 1) // 2, (w + 1) // 2
    return n


def msssim_weights(height: int, width: int) -> tuple[float, ...]:
    n = msssim_scales(height, width)
    if n == 0:
        raise ValueError(f"images of {height}x{width} are smaller than the 11x11 SSIM window")
    w = np.array(MSSSIM_WEIGHTS[:n])
    return tuple(w / w.sum()) if n < len(MSSSIM_WEIGHTS) else MSSSIM_WEIGHTS


def ms_ssim(x: np.ndarray, ref: np.ndarray, power_factors=None) -> np.ndarray:
    """`tf.image.ssim_multiscale(x, ref, max_val=1.0, power_factors)` in NumPy.

    `x`: `(N, H, W, C)` in [0, 1]; `ref`: `(H, W, C)` (shared by the batch: its
    local statistics are computed once) or `(N, H, W, C)`. Returns `(N,)` float64.
    Computed in float32 like TensorFlow, in NCHW layout so every reduction is contiguous.
    """
    x = np.asarray(x, dtype=np.float32)
    ref = np.asarray(ref, dtype=np.float32)
    if ref.ndim == 3:
        ref = ref[None]
    if x.ndim != 4 or ref.shape[1:] != x.shape[1:] or len(ref) not in (1, len(x)):
        raise ValueError(f"incompatible shapes {x.shape} and {ref.shape}")
    if power_factors is None:
        power_factors = msssim_weights(*x.shape[1:3])
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    ref = np.ascontiguousarray(ref.transpose(0, 3, 1, 2))
    g = _gauss1d()
    c1, c2 = np.float32(0.01 ** 2), np.float32(0.03 ** 2)
    mcs = []
    for k in range(len(power_factors)):
        if k > 0:
            x, ref = _downsample(x), _downsample(ref)
        mu_x, mu_y = _filter_valid(x, g), _filter_valid(ref, g)
        num0 = 2.0 * mu_x * mu_y
        den0 = mu_x ** 2 + mu_y ** 2
        num1 = 2.0 * _filter_valid(x * ref, g)
        den1 = _filter_valid(x * x, g) + _filter_valid(ref * ref, g)
        cs = (num1 - num0 + c2) / (den1 - den0 + c2)
        if k < len(power_factors) - 1:
            mcs.append(np.maximum(cs.mean(axis=(-2, -1), dtype=np.float64), 0.0))
        else:  # the luminance term only enters at the coarsest scale
            luminance = (num0 + c1) / (den0 + c1)
            ssim = (luminance * cs).mean(axis=(-2, -1), dtype=np.float64)
            mcs.append(np.maximum(ssim, 0.0))
    stack = np.stack(mcs, axis=-1)  # (N, C, scales)
    return np.prod(stack ** np.asarray(power_factors), axis=-1).mean(axis=-1)


def _downsample(x: np.ndarray) -> np.ndarray:
    """2x2 average pooling of NCHW; odd sizes padded at the end in SYMMETRIC mode (as tf)."""
    h, w = x.shape[-2:]
    if h % 2 or w % 2:
        x = np.pad(x, ((0, 0), (0, 0), (0, h % 2), (0, w % 2)), mode="symmetric")
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5), dtype=np.float32)


def msssim_to_mos(ms) -> np.ndarray:
    """The documented monotone map from MS-SSIM in [0, 1] to a 0..100 MOS-like score."""
    d = 1.0 - np.clip(np.asarray(ms, dtype=np.float64), 0.0, 1.0)
    return 100.0 * (1.0 - np.log1p(d / MOS_D0) / math.log1p(1.0 / MOS_D0))


def pristine_path(path: str) -> str:
    """The pristine crop a built-in image was made from: `images/<source>_c<k>_pristine_0.png`."""
    match = re.fullmatch(r"(.+_c\d+)_[a-z0-9]+_\d+\.png", str(path))  # distortion names have no "_"
    if match is None:
        raise ValueError(f"{path}: not a built-in image name (images/<source>_c<k>_<distortion>_<level>.png).")
    return f"{match.group(1)}_pristine_0.png"


# --------------------------------------------------------------------------- sources


def _load_source(func: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, func)()
    if func == "stereo_motorcycle":
        img = img[0]  # the left view; the right one is nearly the same scene
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


def _rescale(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    scale = size / REFERENCE_SIZE * min(1.0, MAX_SOURCE_SIDE / max(h, w))
    if abs(scale - 1.0) < 1e-9:
        return img
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    return np.asarray(Image.fromarray(img).resize(new, Image.Resampling.LANCZOS))


def _best_crops(img: np.ndarray, size: int, count: int) -> list[tuple[int, int]]:
    """Top-left corners of up to `count` (1 or 2) non-overlapping, most detailed crops.

    Detail is the mean absolute luma gradient (the standard deviation would favour the edge
    of the black border around the retina). For two crops the best non-overlapping pair is
    searched exhaustively (greedy could block the second crop with a central first one).
    """
    h, w = img.shape[:2]
    step = max(1, size // 8)
    ys = sorted(set(list(range(0, h - size + 1, step)) + [h - size]))
    xs = sorted(set(list(range(0, w - size + 1, step)) + [w - size]))
    luma = img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    grad = np.zeros_like(luma)
    grad[:, :-1] += np.abs(np.diff(luma, axis=1))
    grad[:-1] += np.abs(np.diff(luma, axis=0))
    cands = [(float(grad[y:y + size, x:x + size].mean()), y, x) for y in ys for x in xs]
    best = max(cands)
    if count == 1:
        return [best[1:]]
    pairs = [(a[0] + b[0], a[1:], b[1:]) for i, a in enumerate(cands) for b in cands[i + 1:]
             if abs(a[1] - b[1]) >= size or abs(a[2] - b[2]) >= size]
    if not pairs:
        return [best[1:]]  # the photograph is too small for two separate crops
    _, first, second = max(pairs)
    return sorted([first, second])


# --------------------------------------------------------------------------- build


def default_cache_dir() -> Path:
    env = os.environ.get("ROBUST_IQA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "keras_robust_iqa"


def builtin_folder(cache_dir=None, *, seed: int = 0, size: int = 256) -> Path:
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return base.absolute() / f"builtin-{VERSION}-s{size}-seed{seed}"


def _write_png(path: Path, img: np.ndarray) -> None:
    Image.fromarray(img).save(path, "PNG", compress_level=1)  # fast; lossless either way


def _build_source(folder: Path, si: int, name: str, func: str, n_crops: int, *, seed: int,
                  size: int, split: str, weights) -> list[tuple]:
    """Write the pristine and distorted crops of one source photograph; their csv rows."""
    src = _load_source(func)
    img = _rescale(src, size)
    colour = bool(np.any(src[..., 0] != src[..., 1]) or np.any(src[..., 1] != src[..., 2]))
    rows = []
    for ci, (y, x) in enumerate(_best_crops(img, size, n_crops)):
        pristine = img[y:y + size, x:x + size]
        ref01 = pristine.astype(np.float64) / 255.0
        out = [("pristine", 0, pristine)]
        for di, (dname, (fn, levels, colour_only)) in enumerate(DISTORTIONS.items()):
            if colour_only and not colour:
                continue  # saturation does nothing to a gray image
            for li, level in enumerate(levels, start=1):
                rng = np.random.default_rng([seed, si, ci, di, li])
                out.append((dname, li, _u8(np.clip(fn(ref01, level, rng), 0.0, 1.0))))
        # Labels are computed on the stored 8-bit pixels, exactly what a reader will decode.
        stored = np.stack([o[2] for o in out]).astype(np.float32) / np.float32(255.0)
        mos = msssim_to_mos(ms_ssim(stored, stored[0], weights))
        mos[0] = 100.0  # pristine: MS-SSIM is 1 (up to float rounding)
        for (dname, level, pixels), score in zip(out, mos):
            rel = f"images/{name}_c{ci}_{dname}_{level}.png"
            _write_png(folder / rel, pixels)
            rows.append((rel, f"{score:.4f}", split, name, dname, level))
    return rows


def _build_into(folder: Path, *, seed: int, size: int) -> dict:
    """Generate every image and `mos.csv` into `folder` (a fresh temp folder)."""
    import skimage

    t0 = time.perf_counter()
    (folder / "images").mkdir()
    assign = builtin_split(seed)
    weights = msssim_weights(size, size)
    # Sources are independent: two threads overlap the parts that release the GIL (SciPy
    # filtering, NumPy arithmetic, Pillow codecs). Rows are gathered in SOURCES order.
    with ThreadPoolExecutor(2) as ex:  # more threads would mostly add memory
        futures = [ex.submit(_build_source, folder, si, name, func, crops, seed=seed,
                             size=size, split=assign[name], weights=weights)
                   for si, (name, func, crops) in enumerate(SOURCES)]
        try:
            rows = [row for fut in futures for row in fut.result()]
        except BaseException:
            for fut in futures:
                fut.cancel()  # on Ctrl-C or an error, start no further source
            raise
    with open(folder / "mos.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("path", "mos", "split", "ref", "distortion", "level"))
        writer.writerows(rows)
    manifest = {
        "version": VERSION, "size": size, "seed": seed, "images": len(rows),
        "sources": {n: {"function": fn, "crops": c, "split": assign[n]} for n, fn, c in SOURCES},
        "distortions": {k: list(v[1]) for k, v in DISTORTIONS.items()},
        "label": "mos = 100 * (1 - ln(1 + (1 - MS-SSIM) / 0.05) / ln(21)); MS-SSIM as "
                 "tf.image.ssim_multiscale(max_val=1.0)",
        "msssim_power_factors": list(weights),
        "scikit_image": skimage.__version__,
        "build_seconds": round(time.perf_counter() - t0, 2),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def _remove_stale_tmp(base: Path) -> None:
    now = time.time()
    for p in base.glob(".builtin-*.tmp-*"):
        try:
            if p.is_dir() and now - p.stat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def ensure_builtin(cache_dir=None, *, seed: int = 0, size: int = 256) -> Path:
    """The cache folder of the built-in dataset, building it first if needed."""
    if not isinstance(size, (int, np.integer)) or not 32 <= size <= 1024:
        raise ValueError(f"size must be an int in [32, 1024], got {size!r}")
    final = builtin_folder(cache_dir, seed=seed, size=int(size))
    if (final / "mos.csv").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        _build_into(tmp, seed=seed, size=int(size))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            os.rename(tmp, final)  # atomic: readers see all of it or nothing
        except OSError:
            if not (final / "mos.csv").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_builtin(cache_dir=None, *, on_error: str = "raise", seed: int = 0, min_size=None,
                 check_images: bool = True, size: int = 256) -> IQATable:
    """The built-in dataset as a table (built into the cache on first use)."""
    folder = ensure_builtin(cache_dir, seed=seed, size=size)
    return read_csv(folder / "mos.csv", on_error=on_error, seed=seed, min_size=min_size,
                    check_images=check_images, mos_range=MOS_RANGE, name="builtin")


def build_builtin(cache_dir=None, *, seed: int = 0, size: int = 256) -> IQATable:
    """Build (or reuse) the built-in dataset and return its table."""
    return read_builtin(cache_dir, seed=seed, size=size)
