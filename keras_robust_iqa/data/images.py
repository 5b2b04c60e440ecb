"""What an image file becomes: the rules every decoder of the package follows.

The decoder (`data.decode_image`, `data.read_image`) is shared by training, evaluation and
`robust-iqa score`. It gives `(h, w, 3)` float32 RGB in [0, 1]:

- JPEG (and MPO), PNG and GIF are decoded by tf.io: JPEGs with libjpeg's accurate integer
  IDCT (the pixels Pillow gives), 16-bit PNGs at full precision (65535 -> 1.0), GIFs'
  first frame. Every other format Pillow reads (WebP, TIFF, BMP, ...) is decoded by Pillow
  (`pillow_decode`): tf.io reads no TIFF, fails on WebP ("WebP only supports uint8 for
  dtype") and ignores BMP palettes and RLE.
- Bit depth: 8-bit images are divided by 255, 16-bit ones (PNG, grayscale TIFF) by 65535;
  Pillow's 32-bit integer images (its mode for some 16-bit files) are clipped to
  [0, 65535] and divided by 65535, float images clipped to [0, 1]. Pillow reads 16-bit
  RGB TIFFs at 8 bits (the top byte of each value).
- EXIF orientation (tag 274) is applied, so the image is upright as viewers show it;
  `image_size` gives the size after it.
- Alpha is dropped, not composited: a transparent pixel keeps its stored colour (as
  Pillow's `convert("RGB")`). Grayscale is repeated to 3 channels, palettes expanded,
  CMYK converted by Pillow.
- Animations (GIF, WebP, multi-page TIFF): the first frame.

This module needs Pillow only, so metadata readers can use it without TensorFlow.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

# What a folder scan (`robust-iqa score FOLDER`) takes for an image file; a file named on
# its own is decoded whatever its name.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
# Formats tf.io decodes; every other one Pillow does (MPO is the multi-picture JPEG some
# cameras write; tf.io decodes its first picture like a plain JPEG).
TF_FORMATS = ("JPEG", "MPO", "PNG", "GIF")
# How the decoder tells them apart: the files' first bytes, whatever their names.
JPEG_MAGIC, PNG_MAGIC, GIF_MAGIC = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF8"
ORIENTATION_TAG = 274
# EXIF orientation -> the transpose that makes the image upright (Pillow's exif_transpose).
TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
             4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
             6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation (1-8) of an opened image; 1 when it records none or an invalid one.

    Reads the header only: a PNG's eXIf chunk counts when it comes before the image data.
    """
    if im.format == "PNG" and "exif" not in im.info:
        return 1  # Pillow's getexif would decode the whole PNG to look after the image data
    try:
        # No `warnings.catch_warnings` here: it swaps process-wide state and this runs in the
        # validation's worker threads, where it can leave other threads' filters changed.
        value = im.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # a malformed EXIF block does not make the image unreadable
        return 1
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def orientation_of_bytes(contents: bytes) -> np.int32:
    """`exif_orientation` of encoded image bytes (1 when Pillow cannot open them)."""
    try:
        with Image.open(io.BytesIO(contents)) as im:
            return np.int32(exif_orientation(im))
    except Exception:  # the decoder itself reports unreadable files
        return np.int32(1)


def image_size(im: Image.Image) -> tuple[int, int]:
    """`(height, width)` of an opened image after its EXIF orientation, from the header."""
    w, h = im.size
    return (w, h) if exif_orientation(im) >= 5 else (h, w)


def decoded_by_tf(contents: bytes) -> bool:
    """Whether tf.io decodes these bytes (JPEG, PNG, GIF), else Pillow."""
    return contents.startswith((JPEG_MAGIC, PNG_MAGIC, GIF_MAGIC))


def pillow_decode(contents: bytes) -> np.ndarray:
    """Encoded bytes of a format tf.io does not read -> `(h, w, 3)` float32 in [0, 1].

    Raises ValueError with Pillow's reason when the bytes cannot be decoded.
    """
    try:
        with Image.open(io.BytesIO(contents)) as im:
            orientation = exif_orientation(im)
            im.load()
            if orientation in TRANSPOSE:
                im = im.transpose(TRANSPOSE[orientation])
            return _rgb01(im)
    except UnidentifiedImageError:
        raise ValueError("not an image format Pillow or tf.io reads (unknown type, or corrupt)") from None
    except Exception as error:  # every Pillow failure is an unreadable image
        raise ValueError(f"Pillow: {type(error).__name__}: {error}") from None


def _rgb01(im: Image.Image) -> np.ndarray:
    if im.mode.startswith("I;16"):
        x = np.asarray(im, dtype=np.float32) / 65535.0
    elif im.mode == "I":
        x = np.clip(np.asarray(im, dtype=np.float32), 0, 65535) / 65535.0
    elif im.mode == "F":
        x = np.clip(np.asarray(im, dtype=np.float32), 0, 1)
    else:
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")  # what Pillow asks for (it warns otherwise); the alpha is dropped next
        x = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=-1)
    return np.ascontiguousarray(x, dtype=np.float32)


__all__ = ["IMAGE_SUFFIXES", "TF_FORMATS", "decoded_by_tf", "exif_orientation", "image_size", "orientation_of_bytes",
           "pillow_decode"]
