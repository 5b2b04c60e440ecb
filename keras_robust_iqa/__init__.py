"""keras-robust-iqa: no-reference IQA models robust to adversarial perturbations by construction."""

__version__ = "0.1.0"
