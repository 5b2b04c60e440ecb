"""LIVE In the Wild Challenge: 1,162 photos at 500x500, MOS 0..100, seeded split. A small
set: more patches per image and more epochs. ResNet50 from ImageNet weights on 224-px
patches: wants a GPU.

    python training/livec.py --data-dir /data/livec
"""

import sys

from keras_robust_iqa.training.recipe import run_recipe
from keras_robust_iqa.training.trainer import TrainConfig

CONFIG = TrainConfig(
    dataset="livec", model="resnet50", weights="imagenet", patch_size=224,
    patches_per_image=8, batch_size=16, epochs=50, learning_rate=1e-4, patience=10,
)

if __name__ == "__main__":
    sys.exit(run_recipe(CONFIG, description=__doc__))
