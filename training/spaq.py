"""SPAQ: 11,125 smartphone photos at full resolution (about 4000x3000), MOS 0..100, seeded
split; the scores as a CSV export of the official xlsx. ResNet50 from ImageNet weights on
224-px patches: wants a GPU. Decoding the full-size JPEGs dominates each epoch, and test
images are scored over every 224-px patch (about 200 each). SPAQ's own baseline resizes the
photos to 512 px on the short side first: done offline, with a `path, mos` CSV, that trains
much faster through `robust-iqa train --dataset csv`.

    python training/spaq.py --data-dir /data/spaq
"""

import sys

from keras_robust_iqa.training.recipe import run_recipe
from keras_robust_iqa.training.trainer import TrainConfig

CONFIG = TrainConfig(
    dataset="spaq", model="resnet50", weights="imagenet", patch_size=224,
    patches_per_image=4, batch_size=32, epochs=30, learning_rate=1e-4,
)

if __name__ == "__main__":
    sys.exit(run_recipe(CONFIG, description=__doc__))
