import os
import sys

# Quiet TensorFlow's C++ start-up banner in test logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Shared helpers (helpers.py) live next to this file.
sys.path.insert(0, os.path.dirname(__file__))
