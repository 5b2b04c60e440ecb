"""Built-in dataset (made from scikit-image's photographs, no download): the small CNN on a
CPU in minutes. The dataset is built into the cache on first use (about 30 s).

    python training/builtin.py                       # base model -> runs/builtin-small
    python training/builtin.py --robust replace      # certified 1-Lipschitz model
"""

import sys

from keras_robust_iqa.training.recipe import run_recipe
from keras_robust_iqa.training.trainer import TrainConfig

CONFIG = TrainConfig(
    dataset="builtin", model="small", patch_size=64, patches_per_image=4, batch_size=32,
    epochs=30, learning_rate=1e-3,
)

if __name__ == "__main__":
    sys.exit(run_recipe(CONFIG, description=__doc__))
