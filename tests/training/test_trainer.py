"""The training path end to end: `train(config, out)` on a tiny built-in dataset.

The built-in dataset is built once per session at 64 px (a few seconds) in a temporary
cache. `train` reads the built-in set at its default size (256 px, about a minute to build
and 16x more patches to score), so these tests point its reader at the 64-px build
(`small_builtin`). Runs use the `small` model on 32-px patches, one patch per image
and 1-4 epochs. The runs under tf.distribute strategies are in test_distributed.py.
"""

import dataclasses
import functools
import json
import re
import shutil

import keras
import numpy as np
import pytest
import scipy.stats
import tensorflow as tf
from helpers import BUILTIN_SIZE
from run_checks import all_layers, assert_run_folder, history_rows

from keras_robust_iqa import data as iqa_data
from keras_robust_iqa import layers as robust_layers
from keras_robust_iqa import models as iqa_models
from keras_robust_iqa.data.builtin import builtin_folder
from keras_robust_iqa.models import lipschitz_bound
from keras_robust_iqa.training.distillation import distillation_targets
from keras_robust_iqa.training.trainer import TrainConfig, build, compile_model, evaluate_images, load_run_model, train

SIZE = BUILTIN_SIZE  # side of the built-in images in these tests (`builtin_cache`)
PATCH = 32


@pytest.fixture(scope="module", autouse=True)
def small_builtin(builtin_cache):
    """`load_table("builtin", cache)` reads the 64-px build instead of building 256 px."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(iqa_data, "read_builtin", functools.partial(iqa_data.read_builtin, size=SIZE))
        mp.delenv("TF_CONFIG", raising=False)  # strategy="auto": no multi-worker here
        yield builtin_cache
    # Nothing else was built into the cache: the patch was in effect for every run.
    assert [p.name for p in builtin_cache.iterdir()] == [builtin_folder(size=SIZE).name]


def tiny(cache, **overrides):
    settings = dict(
        dataset="builtin", data_dir=str(cache), model="small", epochs=1, batch_size=32,
        patch_size=PATCH, patches_per_image=1, patience=10, seed=0,
    )
    return TrainConfig(**(settings | overrides))


class Interrupted(Exception):
    pass


def copy_weights(model):
    return [np.array(w) for w in model.get_weights()]


class Script(keras.callbacks.Callback):
    """Records the epochs and weights it sees; interrupts after an epoch; can pin weights.

    `pin`: weights set back after every training batch, so the epoch ends (and is
    validated) with exactly these weights.
    """

    def __init__(self, interrupt_after=None, pin=None):
        super().__init__()
        self.interrupt_after, self.pin = interrupt_after, pin
        self.epochs, self.weights = [], {}

    def on_train_begin(self, logs=None):
        self.start = copy_weights(self.model)  # after BackupAndRestore restored its state

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)

    def on_train_batch_end(self, batch, logs=None):
        if self.pin is not None:
            self.model.set_weights(self.pin)

    def on_epoch_end(self, epoch, logs=None):
        self.weights[epoch] = copy_weights(self.model)
        if epoch == self.interrupt_after:
            raise Interrupted(f"stopped after epoch {epoch}")


def assert_same_weights(a, b):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def base_run(small_builtin, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "base"
    metrics = train(tiny(small_builtin, epochs=2), run, verbose=0)
    return run, metrics


# ----------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------


def test_base_run_writes_the_run_folder(base_run, small_builtin):
    run, metrics = base_run
    model = assert_run_folder(run, metrics)
    assert metrics["lipschitz_bound"] is None  # a plain CNN has no certified bound
    assert not any(isinstance(layer, (robust_layers.OrthoConv2D, robust_layers.BlockOrthoConv2D))
                   for layer in all_layers(model))
    config = json.loads((run / "config.json").read_text())
    assert config == dataclasses.asdict(tiny(small_builtin, epochs=2)) | {
        "mos_range": [0.0, 100.0], "dataset_name": "builtin", "model_name": "small_iqa_cnn",
        "replicas": 1,
    }
    # The test split holds whole images, scored by averaging the (64/32)^2 patches.
    table = iqa_data.load_table("builtin", config["data_dir"])
    assert metrics["test"]["images"] == len(table.subset("test"))
    # Within each distortion type, the correlations of that type's images alone (the
    # pristine crops, all at MOS 100, have none).
    test = table.subset("test")
    by_type = metrics["test"]["by_distortion"]
    assert set(by_type) == set(test.distortions.tolist()) - {"pristine"}
    scores = iqa_models.score_images(model, iqa_data.iter_images(test))
    rows = test.distortions == "jpeg"
    assert by_type["jpeg"]["images"] == rows.sum()
    assert by_type["jpeg"]["srocc"] == pytest.approx(
        scipy.stats.spearmanr(scores[rows], test.mos[rows])[0], abs=1e-6)


def test_init_from_loads_the_run_model(base_run):
    run, _ = base_run
    saved = load_run_model(run)
    started = build(TrainConfig(init_from=str(run), patch_size=PATCH))
    assert_same_weights(started.get_weights(), saved.get_weights())
    # Robustified on top: the layers of the run keep their trained weights.
    robust = build(TrainConfig(init_from=str(run), robust="insert", patch_size=PATCH))
    by_name = {layer.name: layer for layer in all_layers(robust)}
    for layer in all_layers(saved):
        assert_same_weights(by_name[layer.name].get_weights(), layer.get_weights())
    with pytest.raises(FileNotFoundError, match="no model.keras"):
        build(TrainConfig(init_from=str(run / "missing")))


def test_robust_insert_run_from_a_trained_run(base_run, small_builtin, tmp_path):
    run, _ = base_run
    # Written over a copy of a finished run: a fresh run replaces what is there.
    out = tmp_path / "run"
    shutil.copytree(run, out)
    seen = Script()
    config = tiny(small_builtin, robust="insert", init_from=str(run))
    metrics = train(config, out, verbose=0, callbacks=[seen])
    model = assert_run_folder(out, metrics)  # history.csv: only this run's epoch
    assert seen.epochs == [0]
    assert_same_weights(model.get_weights(), seen.weights[0])
    assert any(isinstance(layer, robust_layers.RobustBlock) for layer in all_layers(model))
    assert metrics["lipschitz_bound"] is None  # the backbone's own layers stay unbounded
    assert json.loads((out / "config.json").read_text())["init_from"] == str(run)


def test_distillation_targets_mix_the_mos_and_the_teacher_score():
    # A teacher that scores a patch by its mean pixel value.
    teacher = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D(),
                                keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(1 / 3))])
    patches = np.random.default_rng(0).uniform(size=(6, 8, 8, 3)).astype("float32")
    mos = np.linspace(0.1, 0.9, 6).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((patches, mos)).batch(4)
    for weight in (0.0, 0.3, 1.0):
        mixed = distillation_targets(dataset, teacher, weight)
        got_patches = np.concatenate([x for x, _ in mixed.as_numpy_iterator()])
        targets = np.concatenate([y for _, y in mixed.as_numpy_iterator()])
        np.testing.assert_array_equal(got_patches, patches)
        np.testing.assert_allclose(targets, (1 - weight) * mos + weight * patches.mean(axis=(1, 2, 3)), atol=1e-6)
    with pytest.raises(ValueError, match=r"^--distill-weight must be in \[0, 1\], got 1.5"):
        distillation_targets(dataset, teacher, 1.5)


def test_distilled_run_learns_from_the_teacher_run(base_run, small_builtin, tmp_path, monkeypatch):
    from keras_robust_iqa.training import trainer

    run, _ = base_run
    seen = []

    def spy(dataset, teacher, weight):
        seen.append((teacher, weight))
        return distillation_targets(dataset, teacher, weight)

    monkeypatch.setattr(trainer, "distillation_targets", spy)
    out = tmp_path / "distilled"
    metrics = train(tiny(small_builtin, distill_from=str(run), distill_weight=0.25), out, verbose=0)
    assert_run_folder(out, metrics)
    ((teacher, weight),) = seen
    assert weight == 0.25 and not teacher.trainable
    assert_same_weights(teacher.get_weights(), load_run_model(run).get_weights())
    config = json.loads((out / "config.json").read_text())
    assert (config["distill_from"], config["distill_weight"]) == (str(run), 0.25)


def test_distillation_refuses_a_teacher_on_another_scale(base_run, small_builtin, tmp_path):
    run, _ = base_run

    def teacher_with(name, edit):
        teacher = tmp_path / name
        shutil.copytree(run, teacher)
        path = teacher / edit[0]
        path.write_text(json.dumps(json.loads(path.read_text()) | edit[1]))
        return teacher

    cases = [
        (teacher_with("koniq", ("config.json", {"dataset_name": "koniq10k", "mos_range": [1.0, 5.0]})),
         {}, "trained on 'koniq10k' with MOS range \\[1.0, 5.0\\], this run reads 'builtin'"),
        (teacher_with("uncalibrated", ("config.json", {"loss": "plcc"})),
         {}, "plcc loss and has no mos_calibration"),
        (run, {"patch_size": PATCH // 2}, f"teacher scores {PATCH}x{PATCH} patches, this run trains on 16x16"),
    ]
    for teacher, overrides, message in cases:
        out = tmp_path / f"student-{teacher.name}"
        with pytest.raises(ValueError, match=f"^--distill-from {re.escape(str(teacher))}: .*{message}"):
            train(tiny(small_builtin, distill_from=str(teacher), **overrides), out, verbose=0)
        assert not out.exists()  # refused before anything was written
    no_config = tmp_path / "no-config"
    shutil.copytree(run, no_config)
    (no_config / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=f"^--distill-from {re.escape(str(no_config))}: .* no config.json"):
        train(tiny(small_builtin, distill_from=str(no_config)), tmp_path / "student", verbose=0)


def test_correlation_loss_run_is_saved_on_the_mos_scale(small_builtin, tmp_path):
    from keras_robust_iqa.models import score_images
    from keras_robust_iqa.training.calibration import calibrate_to_mos

    out = tmp_path / "plcc"
    metrics = train(tiny(small_builtin, loss="plcc", epochs=2), out, verbose=0)
    model = assert_run_folder(out, metrics)
    fit = metrics["mos_calibration"]
    assert fit["split"] == "val" and fit["scale"] > 0
    last = model.layers[-1]
    assert last.name == "mos_calibration" and isinstance(last, keras.layers.Rescaling)
    assert (float(last.scale), float(last.offset)) == pytest.approx((fit["scale"], fit["offset"]))
    # The saved model's validation scores are the least-squares fit to normalised MOS:
    # on average they are the MOS (the MSE-trained runs predict on that scale too).
    table = iqa_data.load_table("builtin", str(small_builtin))
    val = table.subset("val")
    scores = score_images(model, iqa_data.iter_images(val))
    target = val.normalize(val.mos)
    assert fit["images"] == len(val)
    assert np.mean(scores) == pytest.approx(np.mean(target), abs=1e-4)
    slope, _ = np.polyfit(scores, target, 1)
    assert slope == pytest.approx(1.0, abs=1e-3)
    # Calibrating again folds into the one layer instead of stacking a second.
    again, refit = calibrate_to_mos(model, table)
    assert [layer.name for layer in again.layers].count("mos_calibration") == 1
    assert refit["scale"] == pytest.approx(fit["scale"], rel=1e-3)
    # The map is affine with a positive scale: the correlations are the uncalibrated ones.
    raw = keras.Model(model.inputs, last.input)
    test = table.subset("test")
    np.testing.assert_allclose(
        score_images(model, iqa_data.iter_images(test)),
        fit["scale"] * score_images(raw, iqa_data.iter_images(test)) + fit["offset"], atol=1e-5)


def test_calibration_scales_the_certified_bound_and_never_flips_the_ranking(small_builtin):
    from keras_robust_iqa.models import robustify, score_images, small_iqa_cnn
    from keras_robust_iqa.training.calibration import calibrate_to_mos

    table = iqa_data.load_table("builtin", str(small_builtin))
    val = table.subset("val")
    keras.utils.set_random_seed(0)
    model = robustify(small_iqa_cnn(PATCH), "replace")
    # Orient the untrained model so its scores rise with MOS, then calibrate it.
    rho = np.corrcoef(score_images(model, iqa_data.iter_images(val)), val.mos)[0, 1]
    model.get_layer("output_scale").scale.assign(np.sign(rho))
    calibrated, fit = calibrate_to_mos(model, table)
    assert fit is not None
    assert lipschitz_bound(calibrated) == pytest.approx(fit["scale"] * lipschitz_bound(model), rel=1e-6)
    # Scores that fall with MOS are left alone: a negative scale would reverse the ranking.
    model.get_layer("output_scale").scale.assign(-np.sign(rho))
    unchanged, none = calibrate_to_mos(model, table)
    assert none is None and unchanged is model


def test_fit_output_scale_matches_the_labels_mean_and_spread():
    from keras_robust_iqa.training.calibration import fit_output_scale

    model = iqa_models.sll_iqa_net(16, widths=(4,), depth=1, head_units=4)
    x = np.random.default_rng(0).uniform(size=(64, 16, 16, 3)).astype("float32")
    y = np.linspace(0.1, 0.9, 64, dtype="float32")
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    fit = fit_output_scale(model, dataset, batches=4, trainable=True)
    scores = np.asarray(model(x)).ravel()
    assert fit["patches"] == 64 and model.layers[-1].trainable
    assert (scores.mean(), scores.std()) == pytest.approx((y.mean(), y.std()), rel=1e-4)
    with pytest.raises(ValueError, match="ends with Dense 'quality'.*output_scale='learned'"):
        fit_output_scale(iqa_models.small_iqa_cnn(16), dataset)


@pytest.mark.parametrize("overrides, message", [
    (dict(model="sll", robust="replace"), "^--model sll is 1-Lipschitz already"),
    (dict(robust_bottleneck=16), "^--robust-bottleneck needs --robust insert .* --robust None"),
    (dict(robust="insert", robust_bottleneck=15), "^--robust-bottleneck must be an even number .* 15"),
    (dict(output_scale="labels"), "^--output-scale labels needs a model that ends with an OutputScale"),
    (dict(output_scale="ones"), "^--output-scale must be one of"),
    (dict(robust="replace", model_activation="silu"), "^--model-activation silu swaps the ReLUs .* --robust replace"),
    (dict(model="sll", model_activation="gelu"), "^--model-activation gelu .* --model sll"),
    (dict(model_activation="tanh"), "^--model-activation must be one of"),
])
def test_new_options_refuse_what_they_cannot_do(overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        train(TrainConfig(**overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_insert_bottleneck_config_builds_narrow_blocks():
    model = build(TrainConfig(robust="insert", robust_bottleneck=8, patch_size=32))
    blocks = [layer for layer in all_layers(model) if isinstance(layer, robust_layers.RobustBlock)]
    assert blocks and {block.bottleneck for block in blocks} == {8}


def test_model_activation_swaps_the_relus_before_insert():
    model = build(TrainConfig(robust="insert", robust_bottleneck=8, model_activation="elu", patch_size=32))
    layers = list(all_layers(model))
    assert any(isinstance(layer, robust_layers.RobustBlock) for layer in layers)
    activations = {layer.name: layer.get_config().get("activation") for layer in layers}
    assert activations["relu1"] == activations["fc1"] == "elu"
    assert "relu" not in activations.values()


# ----------------------------------------------------------------------------
# Resuming after an interruption
# ----------------------------------------------------------------------------


def test_resume_after_interruption_loses_no_epoch(small_builtin, tmp_path):
    config = tiny(small_builtin, epochs=4)
    first = Script(interrupt_after=1)  # raises at the end of epoch 2 of 4
    with pytest.raises(Interrupted):
        train(config, tmp_path, verbose=0, callbacks=[first])
    assert first.epochs == [0, 1]
    assert (tmp_path / "backup").is_dir()
    assert not (tmp_path / "metrics.json").exists()
    rows = history_rows(tmp_path)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    val = [float(r["val_srocc"]) for r in rows]
    best, worse = (0, 1) if val[0] >= val[1] else (1, 0)  # a tie keeps the first

    # Rerun the same call. The resumed epochs are pinned to the worse epoch's weights, so
    # they validate below the best one: model.keras must stay the best epoch's model.
    second = Script(pin=first.weights[worse])
    metrics = train(config, tmp_path, verbose=0, callbacks=[second])
    assert second.epochs == [2, 3]  # starts after the last finished epoch
    assert_same_weights(second.start, first.weights[1])  # ...from where it stopped
    rows = history_rows(tmp_path)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]  # none repeated, none lost
    assert [float(r["val_srocc"]) for r in rows] == pytest.approx(val + [val[worse]] * 2, abs=1e-6)
    assert not (tmp_path / "backup").exists()  # removed after success
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert_same_weights(load_run_model(tmp_path).get_weights(), first.weights[best])


# ----------------------------------------------------------------------------
# Bad settings
# ----------------------------------------------------------------------------


def test_cosine_schedule_decays_over_all_epochs_and_constant_does_not():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    config = TrainConfig(epochs=3, learning_rate=1e-2)
    optimizer = compile_model(model, config, steps_per_epoch=10).optimizer
    schedule = optimizer._learning_rate
    assert float(schedule(0)) == pytest.approx(1e-2)
    assert float(schedule(15)) == pytest.approx(1e-2 * (0.05 + 0.95 * 0.5), rel=1e-5)  # halfway
    assert float(schedule(30)) == pytest.approx(1e-2 * 0.05, rel=1e-5)
    constant = compile_model(model, dataclasses.replace(config, lr_schedule="constant"), 10).optimizer
    assert float(constant.learning_rate) == pytest.approx(1e-2)
    assert float(compile_model(model, config).optimizer.learning_rate) == pytest.approx(1e-2)  # no steps known


def test_ema_run_validates_and_saves_the_averaged_weights(small_builtin, tmp_path):
    ends, begins = [], []

    def weights(variables):
        return [np.array(v) for v in variables]

    class Record(keras.callbacks.Callback):
        """Runs after train's own callbacks: sees the weights they validated and saved."""

        def on_epoch_begin(self, epoch, logs=None):
            # Training resumes on the raw weights; the averages are optimizer state.
            begins.append({"raw": weights(self.model.trainable_variables),
                           # (built with the optimizer, at the first step)
                           "average": weights(getattr(self.model.optimizer, "_model_variables_moving_average", []))})

        def on_epoch_end(self, epoch, logs=None):
            ends.append({"model": weights(self.model.trainable_variables), "val_srocc": logs["val_srocc"]})

    config = tiny(small_builtin, epochs=3, ema=0.5, patches_per_image=2)
    train(config, tmp_path / "run", verbose=0, callbacks=[Record()])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["ema"] == 0.5
    # At the end of epoch 1 the model held the averages (validated, checkpointed), not the raw weights.
    for at_end, average, raw in zip(ends[0]["model"], begins[1]["average"], begins[1]["raw"]):
        np.testing.assert_array_equal(at_end, average)
    assert any(not np.allclose(a, r) for a, r in zip(begins[1]["average"], begins[1]["raw"]))
    best = max(ends, key=lambda entry: entry["val_srocc"])
    saved = load_run_model(tmp_path / "run")
    for variable, averaged in zip(saved.trainable_variables, best["model"]):
        np.testing.assert_array_equal(np.array(variable), averaged)
    # The validation score logged is the saved model's, scored as the test scores it.
    assert best["val_srocc"] == pytest.approx(
        evaluate_images(saved, iqa_data.load_table("builtin", small_builtin, min_size=PATCH), "val")["srocc"],
        abs=1e-6)


@pytest.mark.parametrize(
    "option, value, flag",
    [
        ("epochs", 0, "--epochs"),
        ("batch_size", -4, "--batch-size"),
        ("patch_size", 0, "--patch-size"),
        ("patches_per_image", 0, "--patches-per-image"),
        ("model", "vgg16", "--model"),
        ("robust", "partly", "--robust"),
        ("robust_activation", "tanh", "--robust-activation"),
        ("robust_pooling", "average", "--robust-pooling"),
        ("loss", "huber", "--loss"),
        ("lr_schedule", "step", "--lr-schedule"),
        ("augment", "rotate", "--augment"),
        ("strategy", "tpu", "--strategy"),
        ("learning_rate", -1e-3, "--learning-rate"),
        ("learning_rate", 0.0, "--learning-rate"),
        ("learning_rate", float("nan"), "--learning-rate"),
        ("ema", 1.0, "--ema"),
        ("ema", 0.0, "--ema"),
        ("robust_conv", "cayley", "--robust-conv"),
        ("width", 0.0, "--width"),
        ("width", "2", "--width"),
        ("distill_weight", 1.5, "--distill-weight"),
        ("distill_weight", -0.1, "--distill-weight"),
    ],
)
def test_bad_config_values_name_the_option(option, value, flag, tmp_path):
    config = dataclasses.replace(TrainConfig(), **{option: value})
    with pytest.raises(ValueError, match=f"^{flag} ") as info:
        train(config, tmp_path / "run")
    assert repr(value) in str(info.value)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_fresh_distortions_need_the_builtin_dataset(tmp_path):
    with pytest.raises(ValueError, match="^--fresh-distortions draws from the built-in .* --dataset koniq10k"):
        train(TrainConfig(dataset="koniq10k", fresh_distortions=True), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_width_needs_the_small_model(tmp_path):
    with pytest.raises(ValueError, match="^--width 2 needs --model small .* --model resnet50"):
        train(TrainConfig(model="resnet50", width=2), tmp_path / "run")
    wide = build(TrainConfig(robust="replace", robust_conv="block", width=2, patch_size=32))
    narrow = build(TrainConfig(robust="replace", robust_conv="block", patch_size=32))
    assert wide.count_params() > 3 * narrow.count_params()


@pytest.mark.parametrize("option, value, layer, count", [
    ("robust_activation", "relu", keras.layers.ReLU, 5),  # relu1..4 and fc1's
    ("robust_pooling", "invertible", robust_layers.InvertibleDownsampling, 3),
    ("robust_channel_gains", True, robust_layers.ChannelGain, 5),
])
def test_replace_options_need_replace(option, value, layer, count, tmp_path):
    flag = "--" + option.replace("_", "-")
    for robust in (None, "insert"):
        config = TrainConfig(robust=robust, **{option: value})
        shown = flag if value is True else f"{flag} {value}"
        with pytest.raises(ValueError, match=f"^{shown} needs --robust replace .* --robust {robust}"):
            train(config, tmp_path / "run")
    model = build(TrainConfig(robust="replace", patch_size=32, **{option: value}))
    assert sum(isinstance(found, layer) for found in all_layers(model)) == count
    assert lipschitz_bound(model) > 0
