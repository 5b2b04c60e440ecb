"""Attacks: the analytic optimum on a linear model, soundness against certified bounds, no side effects."""

import keras
import numpy as np
import pytest

from keras_robust_iqa import attacks
from keras_robust_iqa.attacks.universal import tile
from keras_robust_iqa.evaluation import certified_bounds
from keras_robust_iqa.models import build_model, robustify, score_images

EPS = 4 / 255


@pytest.fixture(scope="module")
def linear():
    """`f(x) = w.x + b` on 8x8x3 patches, and `w`."""
    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(1)])
    w = rng.normal(size=(192, 1)).astype("float32")
    model.layers[-1].set_weights([w, np.array([0.25], "float32")])
    return model, w.ravel()


def mid_images(shape, seed=1):
    # Values in [0.3, 0.7]: a 4/255 step never meets the [0, 1] clipping.
    return np.random.default_rng(seed).uniform(0.3, 0.7, size=shape).astype("float32")


def gains(model, images, adversarial):
    return score_images(model, adversarial) - score_images(model, images)


@pytest.mark.parametrize("name", ["fgsm", "ifgsm", "mifgsm", "amifgsm", "korhonen"])
@pytest.mark.parametrize("size", [8, 16])  # one patch, and the mean over a 2x2 grid of patches
def test_linf_attacks_reach_the_linear_optimum(linear, name, size):
    model, w = linear
    images = mid_images((3, size, size, 3))
    adversarial = attacks.ATTACKS[name](model, images, EPS, verbose=0)
    optimum = EPS * np.abs(w).sum()  # sup of w.d over ||d||_inf <= eps, the same for the patch mean
    assert np.all(gains(model, images, adversarial) >= 0.99 * optimum)
    assert np.all(gains(model, images, adversarial) <= optimum * (1 + 1e-4))
    assert 0 < adversarial.min() and adversarial.max() < 1  # no clipping was active


def test_ifgsm_random_start_reaches_the_optimum(linear):
    model, w = linear
    images = mid_images((2, 8, 8, 3))
    adversarial = attacks.ifgsm(model, images, EPS, random_start=True, seed=3, verbose=0)
    assert np.all(gains(model, images, adversarial) >= 0.99 * EPS * np.abs(w).sum())
    # One tiny step: what is left is the start, a seeded uniform point of the ball.
    starts = [attacks.ifgsm(model, images, EPS, steps=1, step_size=1e-9, random_start=True, seed=seed, verbose=0)
              - images for seed in (3, 4)]
    assert not np.allclose(starts[0], starts[1])
    for start in starts:
        assert np.abs(start).max() <= EPS + 1e-6 and np.abs(start).mean() > EPS / 4


@pytest.mark.parametrize("size", [8, 16])
def test_pgd_l2_reaches_the_linear_optimum(linear, size):
    model, w = linear
    images = mid_images((3, size, size, 3))
    eps = 0.5
    adversarial = attacks.pgd_l2(model, images, eps, verbose=0)
    # The image score's gradient is w / K on each of K patches: its L2 norm is ||w|| / sqrt(K).
    optimum = eps * np.linalg.norm(w) / np.sqrt((size // 8) ** 2)
    assert np.all(gains(model, images, adversarial) >= 0.99 * optimum)
    assert np.all(gains(model, images, adversarial) <= optimum * (1 + 1e-4))
    norms = np.sqrt(((adversarial - images) ** 2).sum(axis=(1, 2, 3)))
    np.testing.assert_array_less(norms, eps * (1 + 1e-5))


def test_square_improves_without_gradients(linear):
    model, w = linear
    images = mid_images((2, 16, 16, 3))
    adversarial = attacks.square(model, images, EPS, steps=60, verbose=0)
    gain = gains(model, images, adversarial)
    assert np.all(gain > 0.05 * EPS * np.abs(w).sum()) and np.all(gain <= EPS * np.abs(w).sum() * (1 + 1e-4))
    assert np.abs(adversarial - images).max() <= EPS + 1e-6


def test_images_of_several_sizes_keep_their_form(linear):
    model, _ = linear
    images = [mid_images((16, 24, 3), 5), mid_images((8, 8, 3), 6), mid_images((16, 24, 3), 7)]
    adversarial = attacks.ifgsm(model, images, EPS, batch_size=1, verbose=0)
    assert isinstance(adversarial, list) and [a.shape for a in adversarial] == [i.shape for i in images]
    alone = attacks.ifgsm(model, images[1][None], EPS, verbose=0)
    np.testing.assert_allclose(adversarial[1], alone[0], atol=1e-7)


def test_korhonen_changes_only_edges(linear):
    model, _ = linear
    image = np.full((1, 16, 16, 3), 0.5, "float32")
    image[:, :, 8:] = 0.6  # one vertical edge between columns 7 and 8
    changed = np.abs(attacks.korhonen(model, image, EPS, verbose=0) - image).max(axis=(0, 1, 3)) > 0
    # Sobel responds at columns 7-8, the 3x3 dilation widens it by one column each side.
    np.testing.assert_array_equal(np.flatnonzero(changed), [6, 7, 8, 9])


def test_tile_repeats_from_the_top_left():
    perturbation = np.arange(2 * 3 * 1, dtype="float32").reshape(2, 3, 1)
    tiled = tile(perturbation, 5, 4).numpy()
    rows, cols = np.meshgrid(np.arange(5), np.arange(4), indexing="ij")
    np.testing.assert_array_equal(tiled[..., 0], perturbation[rows % 2, cols % 3, 0])


@pytest.fixture(scope="module")
def certified():
    """A "replace" model, its source as the transfer source, images of two sizes, trained attack parts."""
    keras.utils.set_random_seed(0)
    base = build_model("small", patch_size=32)
    model = robustify(base, mode="replace")
    images = [mid_images((64, 64, 3), 8), mid_images((64, 64, 3), 9)]  # one batch: one trace
    train = np.random.default_rng(11).uniform(0, 1, size=(4, 32, 32, 3)).astype("float32")
    return model, base, images, train


# Few steps keep the test fast; soundness holds for any number.
SOUNDNESS_SETTINGS = {
    "uap": {"size": 32, "epochs": 1},
    "cumulative_uap": {"size": 32, "epochs": 1},
    "generative_uap": {"size": 32, "epochs": 1, "filters": 4},
    "facpa": {"filters": 4, "epochs": 1},
    "square": {"steps": 10},
    "transfer": {"steps": 2},
    **{name: {"steps": 3} for name in ("ifgsm", "mifgsm", "amifgsm", "pgd_l2", "korhonen")},
}


@pytest.mark.parametrize("name", sorted(attacks.ATTACKS))
def test_no_attack_beats_the_certified_bound(certified, name):
    model, base, images, train = certified
    weights = [w.copy() for w in model.get_weights()]
    originals = [i.copy() for i in images]
    settings = dict(SOUNDNESS_SETTINGS.get(name, {}), verbose=0)
    if name in ("uap", "cumulative_uap", "generative_uap", "facpa"):
        settings["train_images"] = train
    if name == "transfer":
        settings["source"] = base
    eps, norm = (2.0, "l2") if name == "pgd_l2" else (8 / 255, "linf")
    adversarial = attacks.ATTACKS[name](model, images, eps, **settings)
    gain = gains(model, images, adversarial)
    bound = certified_bounds(model, [i.shape for i in images], eps, norm)
    assert np.all(np.abs(gain) <= bound * (1 + 1e-5))
    if name == "ifgsm":  # the white-box attack does move the robust model
        assert np.all(gain > 0)
    for a, i in zip(adversarial, images):
        assert a.shape == i.shape and 0 <= a.min() and a.max() <= 1
        if norm == "linf":
            assert np.abs(a - i).max() <= eps + 1e-6
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)
    for before, after in zip(originals, images):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, x: attacks.ifgsm(m, x, -0.1), "eps"),
        (lambda m, x: attacks.ifgsm(m, x, EPS, steps=0), "steps"),
        (lambda m, x: attacks.ifgsm(m, x * 2, EPS), "images"),
        (lambda m, x: attacks.ifgsm(m, x[0], EPS), "images"),
        (lambda m, x: attacks.uap(m, x, EPS), "train_images"),
        (lambda m, x: attacks.facpa(m, x, EPS), "train_images"),
        (lambda m, x: attacks.train_uap(m, x, variant="nope"), "variant"),
        (lambda m, x: attacks.transfer(m, x, EPS, source=m, attack="nope"), "attack"),
        (lambda m, x: attacks.square(m, x, EPS, p_init=0), "p_init"),
    ],
)
def test_bad_arguments_are_named(linear, call, message):
    model, _ = linear
    with pytest.raises(ValueError, match=message):
        call(model, mid_images((1, 8, 8, 3)))


def test_compiled_once_per_model_and_settings():
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(1)])
    images = mid_images((1, 8, 8, 3))
    attacks.ifgsm(model, images, EPS, verbose=0)
    (function,) = model.__dict__["_keras_robust_iqa_attacks"].values()
    attacks.ifgsm(model, images, EPS, verbose=0)
    assert function.experimental_get_tracing_count() == 1
    attacks.ifgsm(model, images, 2 * EPS, verbose=0)
    assert len(model.__dict__["_keras_robust_iqa_attacks"]) == 2


@pytest.fixture(scope="module")
def tiny_relu():
    """A Sequential conv-ReLU scorer of 8x8 patches (default layer names) and 16x16 training images."""
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1)])
    return model, mid_images((16, 16, 16, 3), 12)


@pytest.mark.parametrize("variant", attacks.UAP_VARIANTS)
def test_uap_uses_its_budget_at_its_defaults(tiny_relu, variant):
    model, train = tiny_relu
    perturbation = attacks.train_uap(model, train, variant=variant, size=8, clip=EPS, verbose=0)
    # Applied at the budget it was learned at, it moves a pixel by most of the budget on average
    # (mid_images: the [0, 1] clip never binds).
    adversarial = attacks.uap(model, train, EPS, perturbation=perturbation, verbose=0)
    assert np.abs(adversarial - train).mean() >= 0.5 * EPS
    assert np.mean(gains(model, train, adversarial)) > 0
    if variant == "plain":  # the benchmark's 5 epochs of Adam at 1e-3 in pixel units stay far inside
        short = attacks.train_uap(model, train, variant=variant, size=8, verbose=0,
                                  **attacks.UAP_MSU_SETTINGS[variant])
        assert np.abs(short).mean() < 0.5


def test_learning_stops_when_the_objective_stops_rising():
    from keras_robust_iqa.attacks.loop import train_perturbation

    flat = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
                             keras.layers.Dense(1, kernel_initializer="zeros")])
    history = train_perturbation(flat, mid_images((4, 8, 8, 3)), lambda x: x, lambda loss, tape: None, epochs=20,
                                 patience=2, verbose=0)
    assert len(history) == 3 and np.allclose(history, 0.0)  # the first epoch, then 2 without a rise
    assert len(train_perturbation(flat, mid_images((4, 8, 8, 3)), lambda x: x, lambda loss, tape: None,
                                  epochs=4, patience=None, verbose=0)) == 4
    with pytest.raises(ValueError, match="seconds"):
        train_perturbation(flat, mid_images((4, 8, 8, 3)), lambda x: x, lambda loss, tape: None, seconds=0)
