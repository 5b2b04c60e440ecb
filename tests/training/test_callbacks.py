import keras
import numpy as np
import pytest
from scipy import stats

from keras_robust_iqa import models as iqa_models
from keras_robust_iqa.training.callbacks import WholeImageValidation


def _tiny_model(patch=8):
    inputs = keras.Input((patch, patch, 3))
    x = keras.layers.Conv2D(2, 3, padding="same")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(1)(x))


def test_whole_image_scores_reach_the_callbacks_after_it(tmp_path):
    rng = np.random.default_rng(0)
    # Images of two sizes: each is scored over its own grid of 8x8 patches.
    images = [rng.random((16, 24, 3), dtype=np.float32) for _ in range(5)]
    images += [rng.random((8, 8, 3), dtype=np.float32) for _ in range(4)]
    mos01 = rng.random(len(images))
    model = _tiny_model()
    model.compile("adam", "mse")
    seen = {}

    class Spy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.update(logs)

    x = rng.random((16, 8, 8, 3), dtype=np.float32)
    model.fit(x, rng.random(16), epochs=1, verbose=0,
              callbacks=[WholeImageValidation(images, mos01), Spy(),
                         keras.callbacks.ModelCheckpoint(str(tmp_path / "m.keras"),
                                                         monitor="val_srocc", mode="max")])
    scores = iqa_models.score_images(model, images)
    assert seen["val_srocc"] == pytest.approx(stats.spearmanr(scores, mos01)[0], abs=1e-6)
    assert seen["val_plcc"] == pytest.approx(stats.pearsonr(scores, mos01)[0], abs=1e-6)
    assert seen["val_krcc"] == pytest.approx(stats.kendalltau(scores, mos01)[0], abs=1e-6)
    assert (tmp_path / "m.keras").is_file()  # the checkpoint found its monitor


def test_a_table_is_read_again_each_epoch(tmp_path):
    from keras_robust_iqa.data import load_table

    table = load_table("builtin").subset("val")
    model = keras.Sequential([keras.Input((64, 64, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(1)])
    callback = WholeImageValidation(table)
    callback.set_model(model)
    logs = {}
    callback.on_epoch_end(0, logs)
    first = dict(logs)
    callback.on_epoch_end(1, logs)  # a generator would be empty the second time
    assert logs == first
    assert set(logs) == {"val_srocc", "val_plcc", "val_krcc"}
    assert np.isfinite(list(logs.values())).all()


def test_bad_arguments_are_named():
    images = [np.zeros((8, 8, 3), np.float32)] * 3
    with pytest.raises(ValueError, match="3 images but 2 MOS"):
        WholeImageValidation(images, [0.1, 0.2])
    with pytest.raises(ValueError, match="at least 3 images"):
        WholeImageValidation(images[:2], [0.1, 0.2])
    with pytest.raises(ValueError, match="mos01"):
        WholeImageValidation(images)
