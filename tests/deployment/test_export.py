"""Export to SavedModel, TFLite and ONNX: parity with Keras on real images, builtin ops only,
a SavedModel that loads without the package, atomic writes, clear errors."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import scipy.stats
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from keras_robust_iqa import cli, data, deployment, models
from keras_robust_iqa.deployment import LoweredOrthoConv2D, deployment_model
from keras_robust_iqa.deployment import export as export_module
from keras_robust_iqa.deployment.export import PARITY_ATOL, export_model, export_run, tflite_operators
from keras_robust_iqa.deployment.runtimes import load_runtime
from keras_robust_iqa.layers import BlockOrthoConv2D, GroupSort, MaxMin, OrthoConv2D, OrthoDense, RobustBlock
from keras_robust_iqa.layers.lowered_conv2d import CircularPadding2D
from keras_robust_iqa.layers.lowered_max_min import LoweredMaxMin
from keras_robust_iqa.models.graph import flat_layers

PATCH = 32
# A robust kind is `robustify`'s mode, with "-block" for the compact-kernel convolution.
KINDS = ("base", "replace", "insert", "replace-block")


@pytest.fixture(scope="module")
def builtin():
    """32 test images spread over the split for parity (centre crops of 96x128: a 3x4 grid of
    patches, kept small for time), 32 training images for a short fit."""
    table = data.load_table("builtin")
    test, train = table.subset("test"), table.subset("train")

    def pick(t):
        return np.linspace(0, len(t.paths) - 1, 32).astype(int)

    train_idx = pick(train)
    train_images = np.stack(data.load_images(train, train_idx))
    patches = models.patch_grid(train_images, PATCH)
    labels = np.repeat(train.normalize(train.mos[train_idx]), patches.shape[1])
    patches = np.asarray(tf.reshape(patches, (-1, PATCH, PATCH, 3)))
    return {
        "images": np.stack(data.load_images(test, pick(test)))[:, 80:176, 64:192],
        "fit": (patches[::4], labels[::4]),  # 512 patches, every image represented
        "mos_range": table.mos_range,
    }


def trained_base(fit):
    """The small CNN after a few steps of real training, so that its scores follow the images."""
    keras.utils.set_random_seed(0)
    model = models.build_model("small", patch_size=PATCH)
    model.compile(keras.optimizers.Adam(3e-3), "mse")
    model.fit(*fit, batch_size=64, epochs=1, verbose=0)
    return model


def fine_tuned(model, fit):
    """A robust model after one epoch on the base's data: an exported run is a trained one (a
    freshly converted model's scores barely spread, so int8 rounding reorders them)."""
    keras.utils.set_random_seed(0)
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    model.fit(*fit, batch_size=64, epochs=1, verbose=0)
    return model


def save_run(model, folder, mos_range):
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    (folder / "config.json").write_text(json.dumps({"patch_size": PATCH, "mos_range": list(mos_range)}))
    return folder


@pytest.fixture(scope="module")
def exported(builtin, tmp_path_factory):
    """The base run and its two robust versions (weights carried over from the base, then one
    epoch of fine-tuning, as a run does), each exported once; the base through the CLI."""
    root = tmp_path_factory.mktemp("export")
    out = root / "out"
    fit = builtin["fit"]
    base = trained_base(fit)
    runs = {}
    for kind in KINDS:
        mode, _, conv = kind.partition("-")
        model = base if kind == "base" else fine_tuned(
            models.robustify(base, mode=mode, conv="block" if conv else "fourier"), fit)
        runs[kind] = save_run(model, root / "runs" / kind, builtin["mos_range"])
        if kind == "base":
            assert cli.main(["export", "--run", str(runs[kind]), "--format", "all", "--out", str(out)]) == 0
        else:
            export_run(runs[kind], out, "all", verbose=False)
    return {"root": root, "out": out, "runs": runs}


def keras_scores(run, images):
    model = keras.saving.load_model(run / "model.keras", safe_mode=True)
    return models.score_images(model, images)


# The lowering itself ------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, cin, cout, kernel, strides, padding",
    [
        ((8, 8), 3, 4, 3, 1, "same"),
        ((6, 10), 4, 4, 3, 2, "same"),
        ((7, 5), 2, 6, 3, 1, "circular"),
        ((9, 9), 5, 3, 5, 1, "same"),
        ((8, 6), 2, 2, 2, 2, "circular"),
    ],
)
def test_lowered_conv_is_the_same_operator(size, cin, cout, kernel, strides, padding):
    rng = np.random.default_rng(0)
    layer = OrthoConv2D(cout, kernel, strides=strides, padding=padding)
    layer.build((None, *size, cin))
    layer.kernel.assign(rng.normal(size=layer.kernel.shape).astype("float32"))
    layer.bias.assign(rng.normal(size=cout).astype("float32"))
    lowered = LoweredOrthoConv2D.from_ortho_conv(layer)
    # Same operator: compared on impulses (every input pixel and channel), so the whole
    # matrix matches, bias included, and on a photograph-like smooth input.
    n = size[0] * size[1] * cin
    impulses = np.eye(n, dtype="float32").reshape(n, *size, cin)
    want = keras.ops.convert_to_numpy(layer(impulses, training=False))
    got = keras.ops.convert_to_numpy(lowered(impulses))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=2e-6)
    # The lowered operator keeps the layer's contraction: singular values <= 1.
    linear = (got - keras.ops.convert_to_numpy(layer.bias)).reshape(n, -1)
    assert np.linalg.svd(linear, compute_uv=False).max() <= 1 + 1e-4
    assert all(v.dtype == "float32" and not v.trainable for v in lowered.weights)


@pytest.mark.parametrize(
    "size, cin, cout, kernel, strides, padding",
    [((8, 8), 3, 4, 3, 1, "same"), ((7, 9), 4, 8, 3, 2, "same"), ((8, 6), 2, 6, 5, 1, "circular"),
     ((8, 8), 3, 12, 3, 2, "circular")],
)
def test_lowered_block_conv_is_a_plain_conv2d_of_the_same_operator(size, cin, cout, kernel, strides, padding):
    from keras_robust_iqa.deployment.lowering import _lowered

    layer = BlockOrthoConv2D(cout, kernel, strides=strides, padding=padding)
    layer.build((None, *size, cin))
    for i, w in enumerate(layer.weights):
        w.assign(tf.random.stateless_normal(w.shape, seed=(i, 4)))
    lowered = _lowered(layer)
    parts = lowered.layers if isinstance(lowered, keras.Sequential) else [lowered]
    assert {type(part) for part in parts} == ({keras.layers.Conv2D, CircularPadding2D} if padding == "circular"
                                              else {keras.layers.Conv2D})
    n = size[0] * size[1] * cin
    impulses = np.eye(n, dtype="float32").reshape(n, *size, cin)
    want = keras.ops.convert_to_numpy(layer(impulses, training=False))
    got = keras.ops.convert_to_numpy(lowered(impulses))
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert all(not v.trainable for v in lowered.weights)


@pytest.mark.parametrize("shape", [(2, 5, 7, 8), (3, 6)])
def test_lowered_max_min_is_max_min(shape):
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    x[..., 3] = x[..., 2]  # a tie
    x[..., 0] = -x[..., 1]
    got = keras.ops.convert_to_numpy(LoweredMaxMin()(x))
    np.testing.assert_allclose(got, keras.ops.convert_to_numpy(MaxMin()(x)), atol=1e-6)
    np.testing.assert_allclose(got[..., 0::2], np.maximum(x[..., 0::2], x[..., 1::2]), atol=1e-6)
    with pytest.raises(ValueError, match="even channel count"):
        LoweredMaxMin()(x[..., :3])


def test_deployment_model_is_plain_and_frozen(builtin):
    keras.utils.set_random_seed(2)
    model = models.robustify(models.build_model("small", patch_size=PATCH), "insert", conv="fourier")
    model.get_layer("relu2_robust_block").residual_logit.assign(-0.4)
    deploy = deployment_model(model)
    kinds = {type(layer) for layer in flat_layers(deploy)}
    assert not kinds & {OrthoConv2D, OrthoDense, RobustBlock, GroupSort, MaxMin}
    assert LoweredOrthoConv2D in kinds and LoweredMaxMin in kinds
    assert not any(v.dtype.startswith("complex") for v in deploy.weights)
    x = builtin["images"][:2, :PATCH, :PATCH]
    want = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(deploy(x)), want, atol=1e-5)


def test_deployment_model_refuses_a_wrong_lowering(monkeypatch):
    model = models.robustify(models.build_model("small", patch_size=PATCH), "replace", conv="fourier")
    lower = LoweredOrthoConv2D.from_ortho_conv.__func__

    def off_by_a_bit(cls, layer):
        lowered = lower(cls, layer)
        lowered.frequency_matrices.assign(lowered.frequency_matrices * 1.01)
        return lowered

    monkeypatch.setattr(LoweredOrthoConv2D, "from_ortho_conv", classmethod(off_by_a_bit))
    with pytest.raises(RuntimeError, match="changed its outputs"):
        deployment_model(model)


# Parity on 32 real images ------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_exports_match_keras_on_builtin_images(exported, builtin, kind):
    run, out, images = exported["runs"][kind], exported["out"], builtin["images"]
    lo, hi = builtin["mos_range"]
    reference = keras_scores(run, images)
    assert np.std(reference) > 1e-3  # the model tells the images apart
    paths = {
        "savedmodel": out / "savedmodel" / kind / "1",
        "tflite": out / "tflite" / f"{kind}.float32.tflite",
        "onnx": out / "onnx" / f"{kind}.onnx",
    }
    for fmt, path in paths.items():
        normalized = (load_runtime(fmt, path)(images) - lo) / (hi - lo)
        assert np.max(np.abs(normalized - reference)) <= 1e-4, fmt
    float_tflite = load_runtime("tflite", paths["tflite"])(images)
    int8 = load_runtime("tflite", out / "tflite" / f"{kind}.int8.tflite")(images)
    assert scipy.stats.spearmanr(int8, float_tflite)[0] >= 0.99
    # Dynamic-range int8 really changed the weights (the file is smaller, outputs move a little).
    assert (out / "tflite" / f"{kind}.int8.tflite").stat().st_size < 0.5 * paths["tflite"].stat().st_size
    assert np.max(np.abs(int8 - float_tflite)) > 0
    report = json.loads((out / f"{kind}.export.json").read_text())
    assert report["mos_range"] == [lo, hi] and report["patch_size"] == PATCH
    assert set(report["files"]) == {"savedmodel", "tflite", "tflite_int8", "onnx"}


@pytest.mark.parametrize("kind", ("replace", "insert"))
def test_tflite_has_builtin_ops_only(exported, kind):
    for variant in ("float32", "int8"):
        path = exported["out"] / "tflite" / f"{kind}.{variant}.tflite"
        from_flatbuffer = tflite_operators(path.read_bytes())
        interpreter = Interpreter(model_path=str(path))
        from_interpreter = {op["op_name"] for op in interpreter._get_ops_details()}
        assert from_interpreter == set(from_flatbuffer)
        assert not [op for op in from_flatbuffer if op.startswith("Flex") or op == "CUSTOM" or not op.isupper()]
        # The orthogonal convolution became real matrix products: no FFT, no complex op.
        assert "BATCH_MATMUL" in from_flatbuffer and "FULLY_CONNECTED" in from_flatbuffer
        assert not [op for op in from_flatbuffer if "FFT" in op or "COMPLEX" in op]


def test_block_convolutions_export_as_plain_convolutions(exported):
    """A BlockOrthoConv2D model exports as CONV_2D / ONNX Conv: no DFT matrix, about the base's size."""
    import onnx

    out = exported["out"]
    sizes = {}
    for kind in ("base", "replace-block"):
        path = out / "tflite" / f"{kind}.float32.tflite"
        sizes[kind] = path.stat().st_size
        ops = tflite_operators(path.read_bytes())
        assert "CONV_2D" in ops
        assert not [op for op in ops if "MATMUL" in op or "FFT" in op or "COMPLEX" in op], ops
        # MaxMin is 1x1 convolutions and a ReLU, not a compare-and-swap (slow in TFLite).
        assert not {"GREATER_EQUAL", "SELECT_V2", "SELECT"} & set(ops), ops
    assert sizes["replace-block"] < 1.5 * sizes["base"]
    assert sizes["replace-block"] < 0.2 * (out / "tflite" / "replace.float32.tflite").stat().st_size
    graphs = {kind: onnx.load(str(out / "onnx" / f"{kind}.onnx")).graph for kind in ("base", "replace-block")}
    ops = {node.op_type for node in graphs["replace-block"].node}
    assert "Conv" in ops and not [op for op in ops if "DFT" in op or "FFT" in op]
    # Its largest weight is a kernel of the base's shape: no per-frequency or DFT matrix.
    largest = {kind: max(np.prod(init.dims) for init in g.initializer) for kind, g in graphs.items()}
    assert largest["replace-block"] <= largest["base"]


# SavedModel without the package ----------------------------------------------------------

LOADER = """
import json, sys
import numpy as np
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
images = np.load(sys.argv[2])
mos = loaded.signatures["serving_default"](images=tf.constant(images))["mos"].numpy()
uint8 = (images * 255).round().astype("uint8")
mos_uint8 = loaded.signatures["serving_uint8"](images=tf.constant(uint8))["mos"].numpy()
mos_requant = loaded.signatures["serving_default"](images=tf.constant(uint8 / np.float32(255)))["mos"].numpy()
print(json.dumps({
    "mos": mos.tolist(), "mos_uint8": mos_uint8.tolist(), "mos_requant": mos_requant.tolist(),
    "package_imported": any(m.split(".")[0] == "keras_robust_iqa" for m in sys.modules),
    "variable_dtypes": sorted({v.dtype.name for v in loaded.signatures["serving_default"].variables}),
    "variable_names": [v.name for v in loaded.signatures["serving_default"].variables],
}))
"""


def test_savedmodel_serves_without_the_package(exported, builtin, tmp_path):
    images = builtin["images"][:4, :, :70]  # 3x2 patches, borders left out on both sides
    np.save(tmp_path / "images.npy", images)
    env = dict(os.environ, PYTHONPATH="", TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", LOADER, str(exported["out"] / "savedmodel" / "replace" / "1"),
         str(tmp_path / "images.npy")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["package_imported"] is False
    assert got["variable_dtypes"] == ["float32"]  # no complex inference cache
    assert not [n for n in got["variable_names"] if "cache" in n or "seen" in n]
    lo, hi = builtin["mos_range"]
    reference = keras_scores(exported["runs"]["replace"], images)
    np.testing.assert_allclose((np.array(got["mos"]) - lo) / (hi - lo), reference, atol=1e-4)
    np.testing.assert_allclose(got["mos_uint8"], got["mos_requant"], atol=1e-4)


def test_sample_rest_request_runs_on_the_signature_it_names(exported):
    request = json.loads((pathlib.Path(__file__).parents[2] / "export" / "request.json").read_text())
    images = np.array(request["instances"], dtype="uint8")
    assert images.ndim == 4 and images.shape[-1] == 3
    loaded = tf.saved_model.load(str(exported["out"] / "savedmodel" / "base" / "1"))
    mos = loaded.signatures[request["signature_name"]](images=tf.constant(images))["mos"].numpy()
    want = keras_scores(exported["runs"]["base"], images.astype("float32") / 255)
    np.testing.assert_allclose(mos / 100.0, want, atol=1e-4)  # the built-in scale is 0..100


def test_models_config_lists_every_exported_model(exported):
    text = (exported["out"] / "savedmodel" / "models.config").read_text()
    for kind in KINDS:
        assert f'name: "{kind}"' in text and f'base_path: "/models/{kind}"' in text


# Reliability ----------------------------------------------------------------------------


def test_interrupted_export_leaves_the_previous_model(exported, monkeypatch, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(exported["out"] / "savedmodel" / "base", out / "savedmodel" / "base")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # after the new SavedModel was written to the staging folder

    monkeypatch.setattr(export_module, "convert_tflite", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_run(exported["runs"]["base"], out, "all", verbose=False)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the valid model untouched, nothing half-written, staging removed
    assert not [p for p in out.iterdir() if p.name.startswith(".export-")]


def test_clear_errors(exported, tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_run(tmp_path / "nope", tmp_path / "out")
    empty = tmp_path / "empty-run"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no model.keras"):
        export_run(empty, tmp_path / "out")
    with pytest.raises(ValueError, match="Argument `format`.*'coreml'"):
        export_run(exported["runs"]["base"], tmp_path / "out", "coreml")
    assert cli.main(["export", "--run", str(empty), "--out", str(tmp_path / "out")]) == 2
    assert "holds no model.keras" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["export", "--run", str(empty), "--format", "coreml", "--out", str(tmp_path)])
    assert "invalid choice: 'coreml'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_export_model_from_memory(builtin, tmp_path):
    """A model in memory exports as a run does: the files answer on the `mos_range` given."""
    keras.utils.set_random_seed(3)
    model = models.build_model("small", patch_size=PATCH)
    report = deployment.export_model(model, tmp_path, "tflite", mos_range=builtin["mos_range"], name="mine",
                                     verbose=False)
    assert report["run"] is None and report["patch_size"] == PATCH and set(report["files"]) == {"tflite", "tflite_int8"}
    assert "A model in memory" in (tmp_path / "mine.export.md").read_text()
    lo, hi = builtin["mos_range"]
    images = builtin["images"][:4]
    predicted = load_runtime("tflite", tmp_path / "tflite" / "mine.float32.tflite")(images)
    np.testing.assert_allclose(predicted, lo + (hi - lo) * models.score_images(model, images), atol=(hi - lo) * 1e-4)
    with pytest.raises(ValueError, match="`mos_range`"):
        deployment.export_model(model, tmp_path, "tflite", mos_range=(1, 0))


def test_gelu_exports_to_onnx_as_erf(tmp_path):
    """TensorFlow's exact GELU (ConvNeXt's; `--model-activation gelu`) computes erfc, which ONNX
    lacks: the export writes it as 1 - Erf and keeps parity with the Keras model."""
    import onnx

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, activation="gelu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(8)(x)
    x = keras.layers.Activation("gelu")(x)
    model = keras.Model(inputs, keras.layers.Dense(1)(x))
    report = export_model(model, tmp_path, ["onnx"], verbose=False)
    assert report["files"]["onnx"]["max_abs_diff_normalized"] <= PARITY_ATOL
    ops = {node.op_type for node in onnx.load(tmp_path / report["files"]["onnx"]["path"]).graph.node}
    assert "Erf" in ops and "Erfc" not in ops
