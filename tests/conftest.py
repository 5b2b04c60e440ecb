import os

# Quiet TensorFlow's C++ start-up banner in test logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # after the environment is set for TensorFlow
import tensorflow as tf
from helpers import BUILTIN_SIZE  # tests/ is on the path: pyproject's [tool.pytest.ini_options] pythonpath

# Grappler's graph rewrites pay off on long runs, not on the suite's thousands of functions
# traced once for a tiny model: without them a tiny training run costs 10 to 25 % less, with
# the same results. Only the test processes: the subprocesses some tests start keep them.
tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


@pytest.fixture(scope="session")
def builtin_cache(tmp_path_factory):
    """One small build of the built-in dataset, shared by every test of the session."""
    from keras_robust_iqa.data.builtin import ensure_builtin

    cache = tmp_path_factory.mktemp("builtin-cache")
    ensure_builtin(cache, seed=0, size=BUILTIN_SIZE)
    return cache
