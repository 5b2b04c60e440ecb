"""A picture of what an attack does: clean image, attacked image and perturbation, with scores."""

import numpy as np

from keras_robust_iqa import attacks as iqa_attacks
from keras_robust_iqa.evaluation.certified import certified_bounds_or_none
from keras_robust_iqa.evaluation.evaluate import LEARNED, attack_key, attack_norm, evenly_spaced
from keras_robust_iqa.models.patches import score_images

EXAMPLE_IMAGES = 3


def example_attack(attacks, eps, l2_eps, preferred="ifgsm"):
    """`(attack, budget)` the picture shows: `preferred` (else the first attack that needs
    neither training nor a source) at its largest budget; None when there is none."""
    usable = [name for name in attacks if name not in LEARNED and name != "transfer"]
    if not usable:
        return None
    name = preferred if preferred in usable else usable[0]
    return name, max(l2_eps if attack_norm(name) == "l2" else eps)


def attack_examples(models, images, attack, eps, *, count=EXAMPLE_IMAGES, batch_size=8):
    """Attack `count` evenly spaced `images` on each model of `models` (`{name: model}`).

    Returns:
        `{"attack", "eps", "key", "clean": the images (list), "models": {name: {"clean",
        "attacked": scores in the model's output units, "adversarial": images, "bound":
        the certified bound per image or None}}}`.
    """
    rows = evenly_spaced(len(images), min(count, len(images)))
    chosen = [np.asarray(images[i], "float32") for i in rows]
    norm = attack_norm(attack)
    result = {"attack": attack, "eps": float(eps), "key": attack_key(attack, eps, norm), "clean": chosen,
              "models": {}}
    for name, model in models.items():
        adversarial = iqa_attacks.ATTACKS[attack](model, chosen, eps, batch_size=batch_size, verbose=0)
        bounds = certified_bounds_or_none(model, [image.shape for image in chosen], eps, norm)
        result["models"][name] = {"clean": score_images(model, chosen), "attacked": score_images(model, adversarial),
                                  "adversarial": adversarial, "bound": None if bounds is None else np.asarray(bounds)}
    return result


def plot_attack_examples(examples, path):
    """One row per image: the clean image, then per model the attacked image and its perturbation
    magnified to the full grey range (`0.5 + delta / 2 eps`), titled with the scores and, for a
    certified model, the interval no perturbation within the budget can leave."""
    from keras_robust_iqa.evaluation.frontier import agg_pyplot

    plt = agg_pyplot()
    models = examples["models"]
    rows, columns = len(examples["clean"]), 1 + 2 * len(models)
    figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.9 * rows), squeeze=False,
                                layout="constrained")
    eps = examples["eps"]
    linf = attack_norm(examples["attack"]) == "linf"
    for row, image in enumerate(examples["clean"]):
        scores = ", ".join(f"{name} {m['clean'][row]:.3f}" for name, m in models.items())
        axes[row, 0].imshow(image)
        axes[row, 0].set_title(f"clean\n{scores}", fontsize=8)
        for k, (name, m) in enumerate(models.items()):
            delta = m["adversarial"][row] - image
            scale = eps if linf else max(float(np.abs(delta).max()), 1e-12)
            title = f"{name}: {m['clean'][row]:.3f} -> {m['attacked'][row]:.3f}"
            if m["bound"] is not None:
                bound = float(m["bound"][row])
                title += f"\ncertified [{m['clean'][row] - bound:.3f}, {m['clean'][row] + bound:.3f}]"
            axes[row, 1 + 2 * k].imshow(np.clip(m["adversarial"][row], 0, 1))
            axes[row, 1 + 2 * k].set_title(title, fontsize=8)
            axes[row, 2 + 2 * k].imshow(np.clip(0.5 + delta / (2 * scale), 0, 1))
            axes[row, 2 + 2 * k].set_title(f"{name}: perturbation x{0.5 / scale:.0f}", fontsize=8)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(f"{examples['key']}: scores on the MOS 0..1 scale", fontsize=9)
    figure.savefig(path, dpi=100)
    plt.close(figure)
