"""Transfer attack: perturbations made on one model, applied to another.

A defense that only hides its gradients (gradient masking) still falls to
perturbations crafted on an unprotected model; one robust by construction does not.
"""


def transfer(model, images, eps=10 / 255, *, source, attack="ifgsm", **options):
    """Adversarial images crafted on `source` by `attack`, to be scored by `model`.

    Args:
        model: the target model; it never sees the attack (checked only to
            score the images: they must hold one of its patches).
        images: the images to attack, in [0, 1].
        eps: budget passed to `attack`.
        source: the Keras model the perturbations are made on.
        attack: the name of an attack of this package (see `ATTACKS`) or a
            function `attack(model, images, eps, **options)`.
        options: passed to `attack`.
    """
    from keras_robust_iqa.attacks import ATTACKS
    from keras_robust_iqa.models.patches import model_patch_size

    if callable(attack):
        craft = attack
    elif attack in ATTACKS and attack != "transfer":
        craft = ATTACKS[attack]
    else:
        raise ValueError(f"Argument `attack` must be a function or one of {sorted(set(ATTACKS) - {'transfer'})}, "
                         f"got {attack!r}.")
    model_patch_size(model)
    return craft(source, images, eps, **options)
