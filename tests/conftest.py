import os
import sys

# Quiet TensorFlow's C++ start-up banner in test logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Shared helpers (helpers.py) live next to this file.
sys.path.insert(0, os.path.dirname(__file__))


import pytest  # after the environment is set for TensorFlow
from helpers import BUILTIN_SIZE


@pytest.fixture(scope="session")
def builtin_cache(tmp_path_factory):
    """One small build of the built-in dataset, shared by every test of the session."""
    from keras_robust_iqa.data.builtin import ensure_builtin

    cache = tmp_path_factory.mktemp("builtin-cache")
    ensure_builtin(cache, seed=0, size=BUILTIN_SIZE)
    return cache
