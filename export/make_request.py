"""Write a TF Serving REST request (JSON) that scores image files.

    python export/make_request.py photo.jpg [more.png ...] > request.json
    curl -d @request.json http://localhost:8501/v1/models/NAME:predict

Uses the `serving_uint8` signature (RGB uint8, as decoded, EXIF orientation applied). One request is one
batch, so all images must have the same size; pass `--crop H W` to cut a centred
H x W window from each. Needs only NumPy and Pillow.
"""

import argparse
import json
import sys

import numpy as np
from PIL import Image, ImageOps


def request(paths, crop=None):
    images = []
    for path in paths:
        with Image.open(path) as opened:  # upright and alpha dropped, as the package's decoder (docs/data.md)
            image = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))
        if crop:
            h, w = crop
            if image.shape[0] < h or image.shape[1] < w:
                raise ValueError(f"{path}: {image.shape[0]}x{image.shape[1]} is smaller than --crop {h} {w}.")
            top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
            image = image[top : top + h, left : left + w]
        images.append(image)
    if len({im.shape for im in images}) > 1:
        raise ValueError(f"Images differ in size {sorted({im.shape for im in images})}: pass --crop H W.")
    return {"signature_name": "serving_uint8", "instances": [im.tolist() for im in images]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", help="image files (any format Pillow reads)")
    parser.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"),
                        help="cut a centred H x W window from each image (at least one patch)")
    args = parser.parse_args()
    json.dump(request(args.images, args.crop), sys.stdout, separators=(",", ":"))


if __name__ == "__main__":
    main()
