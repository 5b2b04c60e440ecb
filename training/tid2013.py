"""TID2013: 25 references x 24 distortions x 5 levels (3,000 images at 512x384), MOS 0..9,
split by reference. A small set: more epochs, smaller batches. ResNet50 from ImageNet
weights on 224-px patches: wants a GPU.

    python training/tid2013.py --data-dir /data/tid2013
"""

import sys

from keras_robust_iqa.training.recipe import run_recipe
from keras_robust_iqa.training.trainer import TrainConfig

CONFIG = TrainConfig(
    dataset="tid2013", model="resnet50", weights="imagenet", patch_size=224,
    patches_per_image=4, batch_size=16, epochs=50, learning_rate=1e-4, patience=10,
)

if __name__ == "__main__":
    sys.exit(run_recipe(CONFIG, description=__doc__))
