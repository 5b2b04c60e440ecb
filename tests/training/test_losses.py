"""IQA losses: values against NumPy references, gradients, training, Keras plumbing."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import scipy.stats as ss
import tensorflow as tf

from keras_robust_iqa.training import losses

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def plcc_loss_ref(y, p, eps=1e-8):
    y, p = np.ravel(y).astype(np.float64), np.ravel(p).astype(np.float64)
    pc, yc = p - p.mean(), y - y.mean()
    r = np.mean(pc * yc) / np.sqrt((np.mean(pc**2) + eps) * (np.mean(yc**2) + eps))
    return (1 - r) / 2


def rank_loss_ref(y, p, kind="logistic", margin=0.0):
    y, p = np.ravel(y).astype(np.float64), np.ravel(p).astype(np.float64)
    terms = []
    for i in range(y.size):
        for j in range(y.size):
            if y[i] > y[j]:
                gap = margin - (p[i] - p[j])
                terms.append(np.logaddexp(0.0, gap) if kind == "logistic" else max(0.0, gap))
    return float(np.mean(terms)) if terms else 0.0


def batch(seed, n=24):
    rng = np.random.default_rng(seed)
    y = rng.integers(1, 6, n).astype(np.float32)  # tied MOS grid
    p = (0.3 * y + rng.normal(size=n)).astype(np.float32)
    return y, p


LOSSES = {
    "plcc": lambda: losses.PLCCLoss(),
    "rank_logistic": lambda: losses.PairwiseRankLoss(),
    "rank_hinge": lambda: losses.PairwiseRankLoss(kind="hinge", margin=0.25),
}


def reference(name, y, p):
    if name == "plcc":
        return plcc_loss_ref(y, p)
    if name == "rank_logistic":
        return rank_loss_ref(y, p)
    return rank_loss_ref(y, p, kind="hinge", margin=0.25)


def test_mse_and_mae_are_keras_own():
    assert losses.MeanSquaredError is keras.losses.MeanSquaredError
    assert losses.MeanAbsoluteError is keras.losses.MeanAbsoluteError


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_value_matches_numpy_reference(name):
    for seed in range(3):
        y, p = batch(seed)
        loss = LOSSES[name]()
        expected = reference(name, y, p)
        assert float(loss(y, p)) == pytest.approx(expected, rel=1e-5, abs=1e-6)
        # (B, 1) model outputs and labels give the same value.
        assert float(loss(y[:, None], p[:, None])) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_plcc_loss_is_half_one_minus_pearson():
    y, p = batch(7)
    expected = (1 - ss.pearsonr(p.astype(np.float64), y).statistic) / 2
    assert float(losses.PLCCLoss()(y, p)) == pytest.approx(expected, abs=1e-6)
    # Invariant to scale and offset of the predictions.
    assert float(losses.PLCCLoss()(y, 3.0 * p + 10.0)) == pytest.approx(expected, abs=1e-6)
    assert float(losses.PLCCLoss()(y, y)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.PLCCLoss()(y, -y)) == pytest.approx(1.0, abs=1e-6)


def test_rank_loss_pair_selection():
    y = np.array([1.0, 2.0, 2.0, 3.0])
    # Perfectly ordered with gaps >= 1: hinge with margin 1 is exactly zero.
    assert float(losses.PairwiseRankLoss("hinge", margin=1.0)(y, 2 * y)) == 0.0
    # Tied labels (the two 2.0s) form no pair even if predicted far apart:
    # pairs are (1,0),(2,0),(3,0),(3,1),(3,2) = 5 pairs, all satisfied.
    p = np.array([0.0, 2.0, 10.0, 20.0])
    assert float(losses.PairwiseRankLoss("hinge", margin=1.0)(y, p)) == 0.0
    # No pair with different labels, or a single sample: zero, not nan.
    assert float(losses.PairwiseRankLoss()(np.ones(5), np.arange(5.0))) == 0.0
    assert float(losses.PairwiseRankLoss()(np.ones(1), np.ones(1))) == 0.0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_finite_for_constant_predictions(name):
    y, _ = batch(11)
    p = tf.Variable(tf.fill([y.size, 1], 2.5))
    with tf.GradientTape() as tape:
        value = LOSSES[name]()(y[:, None], p)
    grad = tape.gradient(value, p).numpy().ravel()
    assert np.isfinite(float(value)) and np.all(np.isfinite(grad))
    # The gradient is not zero: it pushes predictions towards the label order,
    # i.e. descent direction -grad is positively correlated with the labels.
    assert np.linalg.norm(grad) > 0
    assert ss.pearsonr(-grad, y).statistic > 0.9
    if name == "plcc":
        assert float(value) == pytest.approx(0.5)


def test_plcc_loss_constant_labels_and_tiny_batches_are_finite():
    for y, p in [(np.full(6, 3.0), np.arange(6.0)), (np.ones(1), np.ones(1))]:
        pv = tf.Variable(p.astype(np.float32))
        with tf.GradientTape() as tape:
            value = losses.PLCCLoss()(y, pv)
        grad = tape.gradient(value, pv)
        assert float(value) == pytest.approx(0.5)
        assert np.all(np.isfinite(grad.numpy()))


def test_sample_weight_and_reduction_semantics():
    y, p = batch(5, n=8)
    w = np.linspace(0.0, 2.0, 8)
    for make in LOSSES.values():
        base = float(make()(y, p))
        # Batch value repeated per sample: weights scale it by their mean ...
        assert float(make()(y, p, sample_weight=w)) == pytest.approx(base * w.mean(), rel=1e-5)
        # ... and reduction="none" exposes the per-sample view.
        cfg = make().get_config()
        per_sample = type(make())(**{**cfg, "reduction": "none"})(y, p).numpy()
        np.testing.assert_allclose(per_sample, np.full(8, base), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_decreases_when_training_from_constant_predictions(name):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = np.round(x @ np.array([1.0, -0.7, 0.4]) + 0.3 * rng.normal(size=64), 1).astype("float32")
    keras.utils.set_random_seed(0)
    # Zero-initialised head: every prediction is identical at step 0.
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, kernel_initializer="zeros")])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=LOSSES[name]())
    before = model.evaluate(x, y, batch_size=64, verbose=0)
    history = model.fit(x, y, batch_size=64, epochs=15, verbose=0)
    after = model.evaluate(x, y, batch_size=64, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert after < 0.75 * before, (before, after)
    # And it learned what the loss is about: ordering the samples.
    pred = model.predict(x, verbose=0).ravel()
    assert ss.spearmanr(pred, y).statistic > 0.8


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_config_round_trip(name):
    loss = LOSSES[name]()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    y, p = batch(2)
    assert float(restored(y, p)) == pytest.approx(float(loss(y, p)), rel=1e-6)


def test_invalid_arguments_and_shapes():
    with pytest.raises(ValueError, match="kind"):
        losses.PairwiseRankLoss(kind="softmax")
    with pytest.raises(ValueError, match="epsilon"):
        losses.PLCCLoss(epsilon=0.0)
    with pytest.raises(ValueError, match="one score per sample"):
        losses.PLCCLoss()(np.zeros((4, 2)), np.zeros((4, 2)))


_MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    from keras_robust_iqa.training import losses

    rng = np.random.default_rng(0)
    # (batch, 1) as in model.fit (Keras' MSE reduces 1-D inputs to a scalar itself).
    y = rng.integers(1, 6, (8, 1)).astype("float32")
    p = rng.normal(size=(8, 1)).astype("float32")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {}
    for name, make in [("mse", losses.MeanSquaredError), ("plcc", losses.PLCCLoss),
                       ("rank", losses.PairwiseRankLoss)]:
        loss = make()
        plain = float(loss(y, p))
        # As in Keras' compiled step: strategy.run inside a tf.function.
        per_replica = tf.function(lambda: strategy.run(lambda: loss(y, p)))()
        out[name] = [plain, [float(v) for v in strategy.experimental_local_results(per_replica)]]
    print("RESULT" + json.dumps(out))
    """
)


@pytest.mark.slow
def test_losses_scaled_per_replica_like_keras_losses():
    # Keras divides each replica's loss by the number of replicas (gradients
    # are summed across replicas); batch-level losses must get the same.
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", _MIRRORED_SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    for name, (plain, replicas) in out.items():
        np.testing.assert_allclose(replicas, [plain / 2, plain / 2], rtol=1e-6, err_msg=name)
