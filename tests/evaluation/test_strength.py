"""The strength check (an attack against itself run longer), the transfer attack crafted once for
every model, and the picture of an attack."""

import keras
import numpy as np
import pytest
from PIL import Image

from keras_robust_iqa import attacks, evaluation
from keras_robust_iqa.evaluation import strength
from keras_robust_iqa.evaluation.examples import attack_examples, example_attack, plot_attack_examples
from keras_robust_iqa.evaluation.report import markdown_table
from keras_robust_iqa.evaluation.runs import not_converged
from keras_robust_iqa.models import robustify

EPS = 4 / 255


@pytest.fixture(scope="module")
def linear():
    """`f(x) = w.x + b` on 8x8x3 patches (Sequential, default layer names) and mid-grey images."""
    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(1)])
    model.layers[-1].set_weights([rng.normal(size=(192, 1)).astype("float32"), np.array([0.25], "float32")])
    images = rng.uniform(0.3, 0.7, size=(4, 16, 16, 3)).astype("float32")
    return model, images


def test_stronger_versions_run_longer_and_faster():
    uap = strength.stronger_training("uap")
    assert (uap["epochs"], uap["patience"], uap["learning_rate"]) == (8 * 40, 8 * 3, pytest.approx(1.0))
    assert strength.stronger_training("generative_uap")["learning_rate"] == pytest.approx(0.1)
    assert strength.stronger_training("cumulative_uap", {"step_size": 0.05})["step_size"] == pytest.approx(0.5)
    facpa = strength.stronger_training("facpa", {"epochs": 5, "patience": None, "seconds": 2.0})
    assert facpa == {"epochs": 40, "patience": None, "seconds": 16.0, "learning_rate": pytest.approx(0.1)}
    attack, settings, restarts = strength.stronger_attack("ifgsm", EPS)
    assert attack is attacks.ifgsm and settings["steps"] == 40 and settings["random_start"] and restarts == 3
    assert strength.stronger_attack("fgsm", EPS)[1]["step_size"] == pytest.approx(EPS / 10)
    assert strength.stronger_attack("transfer", EPS) is None
    assert strength.strength_ratio(0.1, 0.0) is None and strength.strength_ratio(0.05, 0.1) == pytest.approx(0.5)


def test_a_converged_attack_has_a_ratio_of_one(linear):
    # On a linear model one signed step of eps is the optimum: longer runs gain nothing more.
    model, images = linear
    entry, _ = evaluation.evaluate_model(model, images, np.linspace(0, 1, len(images)), attacks=["fgsm", "ifgsm"],
                                         eps=(EPS,), strength=True, verbose=0)
    for result in entry["attacks"].values():
        assert result["strength_ratio"] == pytest.approx(1.0, abs=1e-3) and result["converged"] is True
        assert result["stronger_gain_raw"] == pytest.approx(result["abs_gain_raw"], rel=1e-3)
    with pytest.raises(ValueError, match="strength.*square"):
        evaluation.evaluate_model(model, images, np.zeros(4), attacks=["fgsm"], strength=["square"], verbose=0)


def test_the_transfer_attack_is_crafted_once_per_source_and_budget(linear):
    source, images = linear
    other = keras.models.clone_model(source)
    other.set_weights([w * 0.5 for w in source.get_weights()])  # half the score, the same gradient direction
    crafted, gains = {}, []
    for model in (source, other):
        entry, _ = evaluation.evaluate_model(model, images, np.linspace(0, 1, len(images)), attacks=["transfer"],
                                             eps=(EPS, 2 * EPS), transfer_source=source, crafted=crafted, verbose=0)
        gains.append(entry["attacks"]["transfer@4/255"]["abs_gain_raw"])
    assert sorted(budget for _, budget in crafted) == [EPS, 2 * EPS]
    assert gains[1] == pytest.approx(gains[0] / 2, rel=1e-4)  # the same images, scored by half the model


def test_an_attack_short_of_its_longer_run_is_flagged():
    result = {"attack": "uap", "norm": "linf", "eps": EPS, "abs_gain_raw": 0.01}
    report = {"models": {"base": {"clean": {"srocc": 0.5, "plcc": 0.5, "krcc": 0.4}, "attacks": {
        "uap@4/255": dict(result, **strength.strength_entry(0.01, 0.04)),
        "facpa@4/255": dict(result, attack="facpa", **strength.strength_entry(0.038, 0.04))}}}}
    (warning,) = not_converged(report)
    assert warning.startswith("base uap@4/255: gain 0.01 is 0.25x") and "not converged" in warning
    table = markdown_table(report)
    assert "| **0.25** |" in table and "| 0.95 |" in table and "gain / longer run's" in table


def test_the_picture_shows_each_model_attacked_with_its_interval(linear, tmp_path):
    model, images = linear
    robust = robustify(keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.Flatten(),
                                         keras.layers.Dense(1)]), mode="replace")
    assert example_attack(["uap", "fgsm", "transfer"], [2 / 255, EPS], [1.0]) == ("fgsm", EPS)
    assert example_attack(["uap", "transfer"], [EPS], [1.0]) is None
    examples = attack_examples({"base": model, "robust": robust}, list(images), "ifgsm", EPS, count=2)
    assert examples["key"] == "ifgsm@4/255" and len(examples["clean"]) == 2
    base, certified = examples["models"]["base"], examples["models"]["robust"]
    assert np.all(base["attacked"] > base["clean"]) and base["bound"] is None
    assert np.all(np.abs(certified["attacked"] - certified["clean"]) <= certified["bound"] * (1 + 1e-5))
    for adversarial, clean in zip(base["adversarial"], examples["clean"]):
        assert np.abs(adversarial - clean).max() <= EPS + 1e-6
    plot_attack_examples(examples, tmp_path / "examples.png")
    width, height = Image.open(tmp_path / "examples.png").size
    assert width < 1600 and height < 800  # 2 rows of 1 + 2 x 2 panels, readable at a normal size
