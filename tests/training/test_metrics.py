"""Correlation statistics (NumPy reference) and the epoch-level Keras metrics.

Every metric value is compared with scipy.stats on the concatenation of all
batches, so a metric that averaged per-batch values, ranked without averaging
ties, or lost samples would fail.
"""

import json
import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest
import scipy.stats as ss
import tensorflow as tf

from keras_robust_iqa.training import correlation as corr
from keras_robust_iqa.training.metrics import KRCC, PLCC, SROCC, _count_inversions

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCIPY = {
    "srocc": lambda p, y: ss.spearmanr(p, y).statistic,
    "plcc": lambda p, y: ss.pearsonr(p, y).statistic,
    "krcc": lambda p, y: ss.kendalltau(p, y).statistic,
}
METRICS = {"srocc": SROCC, "plcc": PLCC, "krcc": KRCC}


def tied_batches(seed, sizes=(7, 1, 30, 13, 22)):
    """Uneven batches; labels on a 1..5 MOS grid and rounded predictions, so
    both sides have many ties (within and across batches)."""
    rng = np.random.default_rng(seed)
    ys, ps = [], []
    for n in sizes:
        y = rng.integers(1, 6, n).astype(np.float64)
        ps.append(np.round(0.5 * y + rng.normal(size=n), 1).astype(np.float32))
        ys.append(y)
    return ys, ps


def quiet_call(fn, *args, **kwargs):
    """Call with every warning turned into an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


# ----------------------------------------------------------------------------
# correlation.py
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["srocc", "plcc", "krcc"])
def test_correlation_matches_scipy_and_flattens(name):
    ys, ps = tied_batches(0)
    y, p = np.concatenate(ys), np.concatenate(ps)
    fn = getattr(corr, name)
    expected = SCIPY[name](p.astype(np.float64), y)
    assert fn(p, y) == pytest.approx(expected, abs=1e-12)
    assert fn(p[:, None], y) == pytest.approx(expected, abs=1e-12)
    assert corr.correlations(p, y)[name] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name", ["srocc", "plcc", "krcc"])
@pytest.mark.parametrize(
    "pred, mos",
    [
        ([3.0, 3.0, 3.0, 3.0], [1.0, 2.0, 3.0, 4.0]),  # constant prediction
        ([1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0]),  # constant MOS
        ([1.0], [2.0]),  # one sample
        ([], []),
        ([1.0, np.nan, 3.0], [1.0, 2.0, 3.0]),
        ([1.0, np.inf, 3.0], [1.0, 2.0, 3.0]),
    ],
)
def test_correlation_undefined_is_quiet_nan(name, pred, mos):
    assert np.isnan(quiet_call(getattr(corr, name), pred, mos))


def test_correlation_length_mismatch_raises():
    with pytest.raises(ValueError, match="same number"):
        corr.srocc([1, 2, 3], [1, 2])


def test_correlations_by_distortion_groups_like_scipy():
    rng = np.random.default_rng(3)
    kinds = np.array(["jpeg"] * 6 + ["blur"] * 5 + ["pristine"] * 4 + ["noise"] * 2 + [""] * 3)
    mos = rng.uniform(0, 1, kinds.size)
    mos[kinds == "pristine"] = 1.0  # every reference at the top: no ranking to score
    pred = mos + rng.normal(0, 0.3, kinds.size)
    result = corr.correlations_by_distortion(pred, mos, kinds)
    # "noise" has 2 images (< 3), "" names no type, "pristine" has constant MOS.
    assert list(result) == ["blur", "jpeg"]
    for kind in result:
        rows = kinds == kind
        assert result[kind]["images"] == rows.sum()
        assert result[kind]["srocc"] == pytest.approx(ss.spearmanr(pred[rows], mos[rows])[0], abs=1e-12)
        assert result[kind]["plcc"] == pytest.approx(ss.pearsonr(pred[rows], mos[rows])[0], abs=1e-12)
        assert result[kind]["krcc"] == pytest.approx(ss.kendalltau(pred[rows], mos[rows])[0], abs=1e-12)
    assert list(corr.correlations_by_distortion(pred, mos, kinds, min_images=2)) == ["blur", "jpeg", "noise"]
    with pytest.raises(ValueError, match="20, 20 and 19"):
        corr.correlations_by_distortion(pred, mos, kinds[:-1])


def test_plcc_logistic4_fit():
    rng = np.random.default_rng(3)
    pred = rng.uniform(-3, 3, 300)
    true_params = (80.0, 20.0, 0.5, 0.7)
    mos = corr.logistic4(pred, *true_params) + rng.normal(scale=2.0, size=pred.size)

    params = corr.fit_logistic4(pred, mos)
    np.testing.assert_allclose(params[:3], true_params[:3], atol=2.0)
    assert abs(params[3]) == pytest.approx(true_params[3], abs=0.15)

    fitted = corr.plcc(pred, mos, fit="logistic4")
    assert fitted == pytest.approx(
        ss.pearsonr(corr.logistic4(pred, *params), mos).statistic, abs=1e-12
    )
    # The sigmoid is clearly non-linear over this range: the fit must help.
    assert fitted > corr.plcc(pred, mos) + 0.02
    # Anti-correlated predictions (lower = better) are mapped just as well.
    assert corr.plcc(-pred, mos, fit="logistic4") == pytest.approx(fitted, abs=1e-4)


def test_plcc_logistic4_failure_falls_back_with_warning():
    pred, mos = [1.0, 2.0, 4.0, 3.0], [1.0, 3.0, 2.0, 5.0]  # too few to fit 4 params
    with pytest.warns(RuntimeWarning, match="logistic fit failed"):
        value = corr.plcc(pred, mos, fit="logistic4")
    assert value == pytest.approx(corr.plcc(pred, mos), abs=1e-12)
    with pytest.raises(ValueError, match="fit must be"):
        corr.plcc(pred, mos, fit="cubic")


# ----------------------------------------------------------------------------
# metrics.py: exact values
# ----------------------------------------------------------------------------


def _run_batches(metric, ys, ps, mode):
    if mode == "eager":
        update, result = metric.update_state, metric.result
    else:
        jit = mode == "xla"
        update = tf.function(metric.update_state, jit_compile=jit, reduce_retracing=True)
        result = tf.function(metric.result, jit_compile=jit)
    for y, p in zip(ys, ps):
        update(tf.constant(y[:, None]), tf.constant(p))
    return float(result())


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
@pytest.mark.parametrize("name", ["srocc", "plcc", "krcc"])
def test_metric_equals_scipy_on_all_batches(name, mode):
    ys, ps = tied_batches(1)
    metric = METRICS[name](capacity=128, dtype="float64")
    value = _run_batches(metric, ys, ps, mode)
    expected = SCIPY[name](np.concatenate(ps).astype(np.float64), np.concatenate(ys))
    assert value == pytest.approx(expected, abs=1e-12)
    # The eager read of the state written by compiled updates agrees too.
    assert float(metric.result()) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name", ["srocc", "plcc", "krcc"])
def test_default_float32_result_within_1e6(name):
    ys, ps = tied_batches(2, sizes=(64, 3, 100, 17))
    metric = METRICS[name]()
    value = _run_batches(metric, ys, ps, "function")
    assert metric.result().dtype == tf.float32
    expected = SCIPY[name](np.concatenate(ps).astype(np.float64), np.concatenate(ys))
    assert value == pytest.approx(expected, abs=1e-6)


def test_large_epoch_with_many_ties():
    # Several thousand samples: exercises many radix levels of the Kendall
    # inversion count and large tie groups.
    rng = np.random.default_rng(4)
    y = rng.integers(0, 50, 5000).astype(np.float64)
    p = (y + rng.integers(-20, 20, 5000)).astype(np.float64)
    for name in ("srocc", "krcc"):
        metric = METRICS[name](dtype="float64")
        for lo in range(0, 5000, 999):
            metric.update_state(y[lo : lo + 999], p[lo : lo + 999])
        assert float(metric.result()) == pytest.approx(SCIPY[name](p, y), abs=1e-12)


@pytest.mark.parametrize("name", ["srocc", "plcc", "krcc"])
def test_epoch_value_is_not_a_batch_average(name):
    ys, ps = tied_batches(5, sizes=(6, 9, 5, 8))
    epoch = _run_batches(METRICS[name](dtype="float64"), ys, ps, "eager")
    batch_mean = np.mean([SCIPY[name](p.astype(np.float64), y) for y, p in zip(ys, ps)])
    expected = SCIPY[name](np.concatenate(ps).astype(np.float64), np.concatenate(ys))
    assert epoch == pytest.approx(expected, abs=1e-12)
    assert abs(epoch - batch_mean) > 0.02


@pytest.mark.parametrize("name", ["srocc", "plcc", "krcc"])
def test_prediction_and_label_shapes(name):
    ys, ps = tied_batches(6, sizes=(20,))
    y, p = ys[0], ps[0]
    values = []
    for y_in, p_in in [(y, p), (y[:, None], p[:, None]), (y, p[:, None]), (y[:, None], p)]:
        metric = METRICS[name](dtype="float64")
        metric.update_state(y_in, p_in)
        values.append(float(metric.result()))
    np.testing.assert_allclose(values, SCIPY[name](p.astype(np.float64), y), atol=1e-12)
    with pytest.raises(ValueError, match="one score per sample"):
        METRICS[name]().update_state(np.zeros((4, 2)), np.zeros((4, 2)))


@pytest.mark.parametrize("name", ["srocc", "plcc", "krcc"])
def test_reset_state_clears(name):
    ys, ps = tied_batches(7, sizes=(10, 15, 12))
    metric = METRICS[name](dtype="float64")
    for y, p in zip(ys[:2], ps[:2]):
        metric.update_state(y, p)
    metric.reset_state()
    assert np.isnan(float(metric.result()))
    metric.update_state(ys[2], ps[2])
    assert float(metric.result()) == pytest.approx(
        SCIPY[name](ps[2].astype(np.float64), ys[2]), abs=1e-12
    )


@pytest.mark.parametrize("name", ["srocc", "plcc", "krcc"])
def test_undefined_state_is_quiet_nan(name):
    metric = METRICS[name]()
    assert np.isnan(quiet_call(lambda: float(metric.result())))  # nothing seen
    metric.update_state([1.0], [2.0])
    assert np.isnan(quiet_call(lambda: float(metric.result())))  # one sample
    metric.update_state([2.0, 3.0, 5.0], [2.0, 2.0, 2.0])
    assert np.isnan(quiet_call(lambda: float(metric.result())))  # constant predictions
    metric.reset_state()
    metric.update_state([1.0, 2.0, 3.0], [1.0, np.nan, 2.0])
    assert np.isnan(quiet_call(lambda: float(metric.result())))  # NaN prediction


@pytest.mark.parametrize("name", ["srocc", "krcc"])
def test_zero_sample_weight_excludes_samples(name):
    ys, ps = tied_batches(8, sizes=(25, 30))
    metric = METRICS[name](dtype="float64")
    keep = []
    rng = np.random.default_rng(8)
    for y, p in zip(ys, ps):
        w = rng.choice([0.0, 0.5, 2.0], size=y.size)
        metric.update_state(y, p, sample_weight=w[:, None])
        keep.append(w != 0)
    keep = np.concatenate(keep)
    y, p = np.concatenate(ys)[keep], np.concatenate(ps)[keep].astype(np.float64)
    assert float(metric.result()) == pytest.approx(SCIPY[name](p, y), abs=1e-12)


def test_overflow_is_nan_with_warning():
    metric = SROCC(capacity=16)
    metric.update_state(np.arange(10.0), np.arange(10.0))
    assert float(metric.result()) == pytest.approx(1.0)
    metric.update_state(np.arange(10.0), np.arange(10.0))
    with pytest.warns(RuntimeWarning, match="capacity=16"):
        assert np.isnan(float(metric.result()))
    metric.reset_state()
    metric.update_state(np.arange(5.0), -np.arange(5.0))
    assert float(metric.result()) == pytest.approx(-1.0)


def test_count_inversions_against_brute_force():
    rng = np.random.default_rng(9)
    dynamic = tf.function(_count_inversions, input_signature=[tf.TensorSpec([None], tf.int32)])
    xla = tf.function(_count_inversions, jit_compile=True)
    for n in (1, 2, 3, 17, 64, 100):
        seq = rng.integers(0, n, n).astype(np.int32)  # in [0, n) with repeats
        brute = sum(int(seq[i] > seq[j]) for i in range(n) for j in range(i + 1, n))
        assert int(_count_inversions(tf.constant(seq))) == brute
        assert int(dynamic(tf.constant(seq))) == brute
        if n in (17, 100):
            assert int(xla(tf.constant(seq))) == brute


def test_config_and_serialization_round_trip():
    metric = KRCC(name="val_krcc_custom", dtype="float64", capacity=1000)
    config = metric.get_config()
    assert config["capacity"] == 1000 and config["name"] == "val_krcc_custom"
    clone = KRCC.from_config(config)
    assert (clone.name, clone.capacity, clone.dtype) == ("val_krcc_custom", 1000, "float64")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
    assert isinstance(restored, KRCC) and restored.capacity == 1000
    with pytest.raises(ValueError, match="capacity"):
        SROCC(capacity=1)


# ----------------------------------------------------------------------------
# metrics.py: inside model.fit / evaluate
# ----------------------------------------------------------------------------


def _regression_data(seed, n):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = np.round(x @ np.array([1.0, -0.5, 0.3, 0.0]) + 0.5 * rng.normal(size=n), 1)
    return x, y.astype("float32")


class _RecordValidation(keras.callbacks.Callback):
    """Validation-set predictions at each epoch end (the weights that were
    just evaluated) and the logs of the last validation step."""

    def __init__(self, x_val):
        super().__init__()
        self.x_val = x_val
        self.preds = []
        self.last_test_batch_logs = None

    def on_test_batch_end(self, batch, logs=None):
        self.last_test_batch_logs = dict(logs)

    def on_epoch_end(self, epoch, logs=None):
        self.preds.append(self.model.predict(self.x_val, batch_size=64, verbose=0).ravel())


def _fit_and_check(jit_compile, epochs, capacity):
    x, y = _regression_data(10, 96)
    x_val, y_val = _regression_data(11, 45)  # 45 = 3 uneven batches of 16
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss="mse",
        metrics=[SROCC(capacity=capacity), PLCC(capacity=capacity), KRCC(capacity=capacity)],
        jit_compile=jit_compile,
    )
    rec = _RecordValidation(x_val)
    history = model.fit(
        x, y, batch_size=16, epochs=epochs, validation_data=(x_val, y_val), verbose=0, callbacks=[rec]
    )
    assert model.jit_compile is jit_compile
    for epoch in range(epochs):
        for name in ("srocc", "plcc", "krcc"):
            expected = SCIPY[name](rec.preds[epoch].astype(np.float64), y_val)
            assert history.history[f"val_{name}"][epoch] == pytest.approx(expected, abs=1e-5)
    # The in-step value Keras logs after the last validation batch (computed in
    # the compiled test step) is the same epoch statistic.
    for name in ("srocc", "plcc", "krcc"):
        assert rec.last_test_batch_logs[name] == pytest.approx(
            history.history[f"val_{name}"][-1], abs=1e-6
        )
    # Training metrics are exact too, but over changing weights; just defined.
    assert all(np.isfinite(history.history[name]).all() for name in ("srocc", "plcc", "krcc"))
    # Training changes the predictions between epochs, so values must differ.
    assert len(set(history.history["val_srocc"])) == epochs
    return model, x_val, y_val, rec


def test_model_fit_val_metrics_equal_scipy():
    model, x_val, y_val, rec = _fit_and_check(jit_compile=False, epochs=2, capacity=4096)
    logs = model.evaluate(x_val, y_val, batch_size=7, return_dict=True, verbose=0)
    assert logs["srocc"] == pytest.approx(SCIPY["srocc"](rec.preds[-1], y_val), abs=1e-5)


def test_compiled_model_save_and_load(tmp_path):
    # The metrics (and a package loss) are restored from the compile config of
    # a .keras file in safe mode and still compute the exact statistic.
    from keras_robust_iqa.training.losses import PLCCLoss

    x, y = _regression_data(12, 40)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("adam", PLCCLoss(), metrics=[SROCC(capacity=100), KRCC(capacity=100)])
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path, safe_mode=True)
    assert isinstance(restored.loss, PLCCLoss)
    logs = restored.evaluate(x, y, batch_size=16, return_dict=True, verbose=0)
    pred = restored.predict(x, verbose=0).ravel()
    for name in ("srocc", "krcc"):
        assert logs[name] == pytest.approx(SCIPY[name](pred, y), abs=1e-5)


@pytest.mark.slow
def test_model_fit_with_jit_compile():
    # Accumulation and result() are XLA-compilable (static shapes), so the
    # requested XLA compilation stays on and the values are still exact.
    _fit_and_check(jit_compile=True, epochs=1, capacity=128)


# ----------------------------------------------------------------------------
# metrics.py: MirroredStrategy over two logical CPUs (needs a fresh process)
# ----------------------------------------------------------------------------

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
    from keras_robust_iqa.training.metrics import KRCC, PLCC, SROCC

    rng = np.random.default_rng(0)
    def data(n):
        x = rng.normal(size=(n, 4)).astype("float32")
        y = np.round(x @ np.array([1.0, -0.5, 0.3, 0.0]) + 0.5 * rng.normal(size=n), 1)
        return x, y.astype("float32")
    x, y = data(64)
    x_val, y_val = data(45)

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                                  keras.layers.Dense(1)])
        srocc = SROCC(capacity=256)
        model.compile("adam", "mse", metrics=[srocc, PLCC(capacity=256), KRCC(capacity=256)])

    preds, last_step = [], {}
    class Record(keras.callbacks.Callback):
        def on_test_batch_end(self, batch, logs=None):
            last_step.update({k: float(v) for k, v in logs.items()})
        def on_epoch_end(self, epoch, logs=None):
            preds.append(self.model.predict(x_val, verbose=0).ravel().tolist())
    history = model.fit(x, y, batch_size=16, epochs=2, validation_data=(x_val, y_val),
                        verbose=0, callbacks=[Record()])
    per_replica_counts = [int(v) for v in strategy.experimental_local_results(srocc._count)]

    outside = SROCC(capacity=8)  # created outside the scope: must refuse to race
    try:
        strategy.run(tf.function(lambda: outside.update_state(tf.ones([2]), tf.ones([2]))))
        outside_error = None
    except ValueError as err:
        outside_error = str(err)

    print("RESULT" + json.dumps(dict(
        replicas=strategy.num_replicas_in_sync, history=history.history, preds=preds,
        y_val=y_val.tolist(), last_step=last_step, per_replica_counts=per_replica_counts,
        outside_error=outside_error)))
    """
)


@pytest.mark.slow
def test_mirrored_strategy_two_logical_cpus():
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", _MIRRORED_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert out["replicas"] == 2
    # The last validation pass (45 samples) really was split over both replicas...
    assert sorted(out["per_replica_counts"]) == [22, 23]
    # ...yet every value is the statistic over all of them.
    y_val = np.asarray(out["y_val"])
    for epoch, preds in enumerate(out["preds"]):
        preds = np.asarray(preds)
        for name in ("srocc", "plcc", "krcc"):
            expected = SCIPY[name](preds, y_val)
            assert out["history"][f"val_{name}"][epoch] == pytest.approx(expected, abs=1e-5)
    # In-step value (all_gather inside strategy.run) agrees with the epoch value.
    for name in ("srocc", "plcc", "krcc"):
        assert out["last_step"][name] == pytest.approx(out["history"][f"val_{name}"][-1], abs=1e-6)
    assert out["outside_error"] and "strategy.scope()" in out["outside_error"]
