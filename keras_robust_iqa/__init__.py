"""keras-robust-iqa: no-reference IQA models robust to adversarial perturbations by construction."""

__version__ = "0.1.0"

import os as _os
import sys as _sys

# TensorFlow's C++ INFO lines at start-up (oneDNN, CUDA probing) bury the progress output
# of every command; they can only be silenced before TensorFlow is first imported, and a
# TF_CPP_MIN_LOG_LEVEL the user set wins.
if "tensorflow" not in _sys.modules:
    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

# Importing the package registers every serializable class (layers, metrics,
# losses), so `keras.saving.load_model(path, safe_mode=True)` finds them.
from keras_robust_iqa import layers  # noqa: F401
from keras_robust_iqa.models import backbones as _backbones  # noqa: F401
from keras_robust_iqa.training import losses as _losses  # noqa: F401
from keras_robust_iqa.training import metrics as _metrics  # noqa: F401
