"""KonIQ-10k: 10,073 in-the-wild photos at 1024x768, MOS 1..5, official split
(7058 / 1000 / 2015). ResNet50 from ImageNet weights on 224-px patches: wants a GPU.

    python training/koniq10k.py --data-dir /data/koniq10k
    python training/koniq10k.py --data-dir /data/koniq10k --robust insert \\
        --init-from runs/koniq10k-resnet50
"""

import sys

from keras_robust_iqa.training.recipe import run_recipe
from keras_robust_iqa.training.trainer import TrainConfig

CONFIG = TrainConfig(
    dataset="koniq10k", model="resnet50", weights="imagenet", patch_size=224,
    patches_per_image=4, batch_size=32, epochs=30, learning_rate=1e-4,
)

if __name__ == "__main__":
    sys.exit(run_recipe(CONFIG, description=__doc__))
