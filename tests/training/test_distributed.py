"""`train` under tf.distribute strategies, each in a fresh process.

Logical devices and collective ops must be configured before TensorFlow starts, so
these runs happen in subprocesses that print a JSON result. The `robust="replace"`
run is one of them (MirroredStrategy), this suite's check of a certified robust run.
They live apart from test_trainer.py so that the two pytest workers (`--dist
loadfile`) can run them beside the other training tests.
"""

import json
import math
import os
import socket
import subprocess
import sys
import textwrap

import pytest
from helpers import BUILTIN_SIZE
from run_checks import all_layers, assert_run_folder

from keras_robust_iqa import layers as robust_layers
from keras_robust_iqa.models import lipschitz_bound

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE = BUILTIN_SIZE  # side of the built-in images (`builtin_cache`)
PATCH = 32

# Runs `train` on the 64-px built-in dataset; the script after it sets CACHE and OUT.
PRELUDE = textwrap.dedent(
    f"""
    import functools, json, os, sys, time
    import keras_robust_iqa.data as iqa_data
    iqa_data.read_builtin = functools.partial(iqa_data.read_builtin, size={SIZE})
    CACHE, OUT = sys.argv[1], sys.argv[2]
    """
)

_MIRRORED_SCRIPT = PRELUDE + textwrap.dedent(
    """
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    from keras_robust_iqa.training.trainer import TrainConfig, load_run_model, make_strategy, train

    class Seen(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.strategy = type(self.model.distribute_strategy).__name__

    result = {}
    # Two models in one process: the second reuses the strategy (a second
    # MirroredStrategy would clash with the first one's collective ops).
    for robust in (None, "replace"):
        out = os.path.join(OUT, str(robust))
        start, seen = time.perf_counter(), Seen()
        config = TrainConfig(data_dir=CACHE, robust=robust, strategy="mirrored", epochs=1,
                             batch_size=32, patch_size=16, patches_per_image=1)
        metrics = train(config, out, verbose=0, callbacks=[seen])
        result[str(robust)] = dict(seconds=time.perf_counter() - start, metrics=metrics,
                                   strategy=seen.strategy)

    # The robust model (OrthoConv2D keeps per-replica inference caches) predicts and
    # evaluates inside the strategy, 11 patches split unevenly over the replicas, as it
    # computes outside it.
    x = np.random.default_rng(0).uniform(size=(11, 16, 16, 3)).astype("float32")
    y = np.linspace(0, 1, 11).astype("float32")
    strategy = make_strategy("mirrored")
    with strategy.scope():
        model = load_run_model(os.path.join(OUT, "replace"))
        model.compile(loss="mse")
    inside = model.predict(x, batch_size=4, verbose=0)
    inside_loss = model.evaluate(x, y, batch_size=4, verbose=0)
    plain = np.asarray(load_run_model(os.path.join(OUT, "replace"))(x, training=False))
    result["replace"].update(
        eval_replicas=strategy.num_replicas_in_sync,
        predict_diff=float(np.abs(inside - plain).max()),
        loss_diff=abs(inside_loss - float(np.mean((plain.ravel() - y) ** 2))),
    )
    print("RESULT" + json.dumps(result))
    """
)

_MULTIWORKER_SCRIPT = PRELUDE + textwrap.dedent(
    f"""
    import keras
    import tensorflow as tf
    from keras_robust_iqa.training.trainer import TrainConfig, train

    class Seen(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            strategy = self.model.distribute_strategy
            self.strategy = type(strategy).__name__
            self.multiworker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)

    seen = Seen()
    config = TrainConfig(data_dir=CACHE, strategy="auto", epochs=1, batch_size=32,
                         patch_size={PATCH}, patches_per_image=1)
    metrics = train(config, OUT, verbose=0, callbacks=[seen])
    with open(os.path.join(OUT, "config.json")) as f:
        replicas = json.load(f)["replicas"]
    print("RESULT" + json.dumps(dict(metrics=metrics, replicas=replicas, strategy=seen.strategy,
                                     multiworker=seen.multiworker)))
    """
)


def run_script(script, cache, out, tf_config=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    proc = subprocess.run([sys.executable, "-c", script, str(cache), str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.split("RESULT", 1)[1])


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mirrored_strategy_base_and_replace_runs(builtin_cache, tmp_path):
    """Two runs in one process under MirroredStrategy on two logical CPUs.

    The `replace` run is also this file's check of a certified robust run.
    """
    result = run_script(_MIRRORED_SCRIPT, builtin_cache, tmp_path)
    assert list(result) == ["None", "replace"]
    models = {}
    for robust, r in result.items():
        assert r["strategy"] == "MirroredStrategy", robust
        models[robust] = assert_run_folder(tmp_path / robust, r["metrics"], patch=16, replicas=2)
    assert result["None"]["metrics"]["lipschitz_bound"] is None
    r = result["replace"]
    assert r["eval_replicas"] == 2
    assert r["predict_diff"] < 1e-5 and r["loss_diff"] < 1e-5, r
    model = models["replace"]
    assert any(isinstance(layer, robust_layers.BlockOrthoConv2D) for layer in all_layers(model))  # the default
    bound = result["replace"]["metrics"]["lipschitz_bound"]
    assert isinstance(bound, float) and 0 < bound < math.inf
    assert bound == pytest.approx(lipschitz_bound(model), rel=1e-6)


@pytest.mark.slow
def test_multiworker_strategy_from_tf_config(builtin_cache, tmp_path):
    tf_config = {"cluster": {"worker": [f"localhost:{free_port()}"]},
                 "task": {"type": "worker", "index": 0}}
    result = run_script(_MULTIWORKER_SCRIPT, builtin_cache, tmp_path, tf_config=tf_config)
    assert result["multiworker"], result["strategy"]  # picked by strategy="auto"
    assert_run_folder(tmp_path, result["metrics"], replicas=1)  # one worker, one CPU
