"""Built-in dataset (made from scikit-image's photographs, no download): the small CNN on a
CPU in minutes. The dataset is built into the cache on first use (about 20 s).

    python training/builtin.py                       # base model -> runs/builtin-small (~5 min)
    python training/builtin.py --robust replace      # certified 1-Lipschitz model (~25 min)

The settings of the accuracy runs in docs/experiments.md: 16 random patches per image and epoch, the PLCC
loss (the run is then calibrated to the MOS scale), 28 epochs of a cosine schedule.
"""

import sys

from keras_robust_iqa.training.recipe import run_recipe
from keras_robust_iqa.training.trainer import TrainConfig

CONFIG = TrainConfig(
    dataset="builtin", model="small", patch_size=64, patches_per_image=16, batch_size=32,
    epochs=28, learning_rate=1e-3, loss="plcc",
)

if __name__ == "__main__":
    sys.exit(run_recipe(CONFIG, description=__doc__))
