"""KADID-10k: 81 references x 25 synthetic distortions x 5 levels (10,125 images at
512x384), MOS 1..5, split by reference. ResNet50 from ImageNet weights on 224-px patches:
wants a GPU.

    python training/kadid10k.py --data-dir /data/kadid10k
"""

import sys

from keras_robust_iqa.training.recipe import run_recipe
from keras_robust_iqa.training.trainer import TrainConfig

CONFIG = TrainConfig(
    dataset="kadid10k", model="resnet50", weights="imagenet", patch_size=224,
    patches_per_image=2, batch_size=32, epochs=30, learning_rate=1e-4,
)

if __name__ == "__main__":
    sys.exit(run_recipe(CONFIG, description=__doc__))
