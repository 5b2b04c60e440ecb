"""The compatibility matrix's models and checks, shared by tests/models/test_compatibility_*.py.

Each model is built once per test file (a module-scoped `Matrix`), robustified once per
mode, and every check of a cell runs on that one model: build, forward pass, the
certified bound against measured input-gradient norms (replace), one `fit` step,
`prune(fraction=0.3)` and a forward pass of the result, and `export_model` to
SavedModel, TFLite and ONNX (which checks each file against Keras itself, within
`PARITY_ATOL`, and fails the export otherwise).

The full matrix takes longer than the suite's budget; `FULL_MATRIX=1` runs every cell,
otherwise the cells in each file's `REDUCED` set are skipped with a reason that says so
(docs/models.md, "Compatibility", has the matrix as measured in full).
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_robust_iqa.deployment import export_model
from keras_robust_iqa.deployment.export import PARITY_ATOL
from keras_robust_iqa.models import lipschitz_bound, robustify
from keras_robust_iqa.pruning import prune

PATCH = 32
FULL = os.environ.get("FULL_MATRIX", "") not in ("", "0")
CHECKS = ("forward", "bound", "fit", "prune", "export")


def patches(n=2, size=PATCH, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, size, size, 3)).astype("float32")


class Matrix:
    """Lazily built base models and their robustified versions, one of each per file."""

    def __init__(self, builders, conv="block"):
        self.builders = builders
        self.conv = conv
        self._base = {}
        self._robust = {}

    def base(self, name):
        if name not in self._base:
            keras.utils.set_random_seed(0)
            self._base[name] = self.builders[name]()
        return self._base[name]

    def robust(self, name, mode):
        """The robustified model, or the ValueError robustify raised."""
        key = (name, mode)
        if key not in self._robust:
            conv = self.conv(name) if callable(self.conv) else self.conv
            # insert keeps the base's weights (its blocks start near the identity); replace would
            # fit BlockOrthoConv2D factors to random kernels (the bases have weights=None), minutes
            # of CPU for nothing to keep: keep_weights is tested on a small model (test_models).
            try:
                self._robust[key] = robustify(self.base(name), mode, conv=conv, keep_weights=mode == "insert")
            except ValueError as error:
                self._robust[key] = error
        return self._robust[key]

    def get(self, name, mode):
        model = self.robust(name, mode)
        if isinstance(model, ValueError):
            pytest.fail(f"robustify({name}, {mode!r}) refused: {model}")
        return model


def skip_unless_full(cell, reduced):
    if not FULL and cell not in reduced:
        pytest.skip("full matrix only (FULL_MATRIX=1): outside the suite's time budget; measured in "
                    "docs/models.md")


def check_forward(model, x):
    y = np.asarray(model(x, training=False))
    assert y.shape == (len(x), 1)
    assert np.all(np.isfinite(y))
    return y


def check_bound(model, x):
    """The certified bound is at least the largest measured input-gradient norm, which is > 0."""
    bound = lipschitz_bound(model)
    measured = input_gradient_norms(model, x)
    assert measured.max() > 0
    assert measured.max() <= bound * (1 + 1e-4), (measured, bound)
    return bound, measured


def input_gradient_norms(model, x):
    """`||grad_x f(x_i)||_2` per sample: the Jacobian's spectral norm for a scalar score.

    (`keras_robust_iqa.layers.linalg.jacobian_spectral_norm` gives the same for any output
    by power iteration, at several forward and backward passes per iteration.)
    """
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(model(x, training=False))  # the samples do not mix at inference
    grad = tape.gradient(total, x)
    return np.sqrt(np.sum(np.square(np.asarray(grad, "float64")), axis=(1, 2, 3)))


def check_fit(model, x):
    """One `fit` step trains: a finite loss, and the trainable weights move.

    Eagerly: for one step, tracing the training graph costs several times the step itself
    (the graph-mode training loop is tested in tests/training).
    """
    # A small, clipped step: the later cells (prune, export) run on the same model, and a
    # BatchNormalization over a batch of 2 on 1x1 maps (ResNet50 at 32x32) has huge gradients.
    model.compile(optimizer=keras.optimizers.SGD(1e-3, global_clipnorm=1.0), loss="mse", run_eagerly=True)
    before = [np.array(w) for w in model.trainable_weights]
    history = model.fit(x, np.full((len(x), 1), 0.7, "float32"), batch_size=len(x), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = [np.array(w) for w in model.trainable_weights]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    check_forward(model, x)


def check_prune(model, x):
    """`prune(fraction=0.3)` removes channels, and the smaller model runs."""
    pruned = prune(model, fraction=0.3)
    assert pruned.count_params() < model.count_params()
    check_forward(pruned, x)
    return pruned


def check_export(model, out):
    """SavedModel, TFLite (builtin ops only) and ONNX, each within PARITY_ATOL of Keras.

    `export_model` compares every file with the Keras model on two odd-sized images and
    raises where a float file is further off; the TFLite conversion allows builtin ops only.
    The int8 TFLite file (a second conversion, no parity bound) is left out.
    """
    report = export_model(model, out, "all", int8=False, verbose=False)
    for key in ("savedmodel", "tflite", "onnx"):
        assert report["files"][key]["max_abs_diff_normalized"] <= PARITY_ATOL
    assert all(op.isupper() for op in report["files"]["tflite"]["operators"])
    return report


def run_check(matrix, name, mode, check, tmp_path):
    model = matrix.get(name, mode)
    x = patches()
    if check == "forward":
        check_forward(model, x)
    elif check == "bound":
        check_bound(model, x)
    elif check == "fit":
        check_fit(model, x)
    elif check == "prune":
        check_prune(model, x)
    elif check == "export":
        check_export(model, tmp_path)
    else:
        raise AssertionError(check)


def cells(names, modes=("insert", "replace"), checks=CHECKS):
    """`(name, mode, check)` for every cell; the bound only for replace (insert has none)."""
    return [(n, m, c) for n in names for m in modes for c in checks if not (c == "bound" and m == "insert")]


def cell_id(cell):
    return "-".join(cell)


def matrix_tests(models, reduced, conv="block"):
    """`(fixture, test)` for a test file: the module's `Matrix`, and one test per cell."""

    @pytest.fixture(scope="module")
    def matrix():
        return Matrix(models, conv=conv)

    @pytest.mark.parametrize("cell", cells(models), ids=cell_id)
    def test_cell(matrix, cell, tmp_path):
        skip_unless_full(cell, reduced)
        run_check(matrix, *cell, tmp_path)

    return matrix, test_cell
