"""Transfer attack: perturbations made on one model, applied to another.

A defense that only hides its gradients (gradient masking) still falls to
perturbations crafted on an unprotected model; one robust by construction does not.
"""

from keras_robust_iqa.attacks.facpa import facpa
from keras_robust_iqa.attacks.gradient import amifgsm, fgsm, ifgsm, korhonen, mifgsm, pgd_l2
from keras_robust_iqa.attacks.gradient_free import square
from keras_robust_iqa.attacks.universal import cumulative_uap, generative_uap, uap

# The attacks a transfer attack crafts with, by name: every attack of the package but itself
# (`attacks.ATTACKS` adds it). Kept here, not in the package's `__init__`, so that this module
# does not import the package that imports it.
CRAFTING_ATTACKS = {
    "fgsm": fgsm,
    "ifgsm": ifgsm,
    "mifgsm": mifgsm,
    "amifgsm": amifgsm,
    "pgd_l2": pgd_l2,
    "korhonen": korhonen,
    "uap": uap,
    "cumulative_uap": cumulative_uap,
    "generative_uap": generative_uap,
    "facpa": facpa,
    "square": square,
}


def transfer(model, images, eps=10 / 255, *, source, attack="ifgsm", **options):
    """Adversarial images crafted on `source` by `attack`, to be scored by `model`.

    Args:
        model: the target model; it never sees the attack (checked only to
            score the images: they must hold one of its patches).
        images: the images to attack, in [0, 1].
        eps: budget passed to `attack`.
        source: the Keras model the perturbations are made on.
        attack: the name of an attack of this package (`CRAFTING_ATTACKS`) or a
            function `attack(model, images, eps, **options)`.
        options: passed to `attack`.
    """
    from keras_robust_iqa.models.patches import model_patch_size

    if callable(attack):
        craft = attack
    elif attack in CRAFTING_ATTACKS:
        craft = CRAFTING_ATTACKS[attack]
    else:
        raise ValueError(f"Argument `attack` must be a function or one of {sorted(CRAFTING_ATTACKS)}, got {attack!r}.")
    model_patch_size(model)
    return craft(source, images, eps, **options)
