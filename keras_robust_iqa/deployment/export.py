"""Export a run folder (`export_run`) or a model in memory (`export_model`) to SavedModel
(TF Serving), TFLite (float32, int8) and ONNX.

One path for every format: the run's Keras model -> `deployment_model` (frozen,
builtin ops, verified) -> one serving function that cuts whole images into
the centred grid of patches, averages the patch scores and maps them to the
dataset's MOS scale -> SavedModel, and from there TFLite and ONNX.

Layout under `out`:
    savedmodel/NAME/VERSION/    the SavedModel (signatures below)
    savedmodel/models.config    a TF Serving model config listing every model there
    tflite/NAME.float32.tflite  builtin ops only, input float32 in [0, 1]
    tflite/NAME.int8.tflite     dynamic-range int8 weights, same input (unless int8=False)
    onnx/NAME.onnx              input float32 in [0, 1]
    NAME.export.json / .md      what was written and how each file matched the Keras model

Signatures (every format; SavedModel also has `serving_uint8`):
    `serving_default`: `images`, float32 `(batch, height, width, 3)` RGB in
        [0, 1], any `height, width >= patch size` (one size per batch) ->
        `mos`, float32 `(batch,)` on the dataset's MOS scale.
    `serving_uint8`: the same with `images` uint8 in [0, 255].

Every file is written into a temporary folder beside its target, checked,
and renamed into place: an interrupted export never leaves a half-written
model where a valid one was.
"""

import json
import os
import pathlib
import shutil
import tempfile

import numpy as np

from keras_robust_iqa import run_folder

FORMATS = ("savedmodel", "tflite", "onnx")
ONNX_OPSET = 17
# Float exports must match the Keras model this closely on the [0, 1] scale.
PARITY_ATOL = 1e-4


def resolve_formats(formats):
    """`"all"`, one name or a list of names -> the tuple of formats, validated."""
    names = [formats] if isinstance(formats, str) else list(formats)
    if "all" in names:
        return FORMATS
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise ValueError(f"Argument `format` must be 'all' or one of {FORMATS}, got {formats!r}.")
    return tuple(n for n in FORMATS if n in names)


def read_run_facts(run):
    """`(name, patch_size, mos_range)` of a run folder, from its config.json (`run_folder.facts`)."""
    return run_folder.facts(run)


def serving_function(deploy, patch_size, mos_range):
    """`images (B, H, W, 3)` float in [0, 1] or uint8 -> `{"mos": (B,)}`, all in the graph.

    `patch_size=None`: each whole image in one pass of `deploy` (a model that takes any
    size), its outputs averaged.
    """
    import tensorflow as tf

    from keras_robust_iqa.models.patches import patch_grid

    lo, hi = mos_range

    def serve(images):
        if images.dtype == tf.uint8:
            images = tf.cast(images, tf.float32) / 255.0
        if patch_size is None:
            scores = tf.reshape(deploy(images, training=False), (tf.shape(images)[0], -1))
            return {"mos": lo + (hi - lo) * tf.reduce_mean(scores, axis=1)}
        grid = patch_grid(images, patch_size)
        patches = tf.reshape(grid, (-1, patch_size, patch_size, 3))
        scores = tf.reshape(deploy(patches, training=False), tf.shape(grid)[:2])
        return {"mos": lo + (hi - lo) * tf.reduce_mean(scores, axis=1)}

    return serve


def image_spec(dtype="float32"):
    import tensorflow as tf

    return tf.TensorSpec((None, None, None, 3), dtype, name="images")


def export_run(run, out, formats="all", *, version=1, name=None, verbose=True):
    """Export the model of a run folder; returns the report written beside the files.

    Args:
        run: a run folder (`model.keras` + `config.json`), base, robust or pruned.
        out: the export folder (layout in the module docstring).
        formats: `"all"`, or any of `"savedmodel"`, `"tflite"`, `"onnx"`.
        version: the SavedModel version folder (TF Serving serves the highest).
        name: the model's name in the layout (default: the run folder's name).
    """
    formats = resolve_formats(formats)
    run_name, _, mos_range = read_run_facts(run)
    return export_model(run_folder.load_model(run), out, formats, mos_range=mos_range, name=name or run_name,
                        version=version, verbose=verbose, run=run)


def export_model(model, out, formats="all", *, patch_size=None, whole_images=False, mos_range=(0.0, 1.0),
                 name="model", version=1, int8=True, verbose=True, run=None):
    """Export a Keras model in memory (patch-scoring, outputs on the [0, 1] MOS scale).

    Writes the same files as `robust-iqa export` (layout in the module docstring), each
    checked against the Keras model (`score_images`) on two odd-sized random images:
    a float file that differs by more than `PARITY_ATOL` raises, and nothing is written.

    Args:
        model: any functional or Sequential Keras model, base, robust or pruned; it
            scores square patches (or, `whole_images=True`, whole images).
        out, formats, version: as in `export_run`.
        patch_size: the side of the patches the exported files cut images into.
            Default: the model's own input size; needed for a model that takes any
            input size (e.g. `BlockOrthoConv2D` layers on `(None, None, 3)`).
        whole_images: the exported files score each whole image in one pass, no
            patches (a model that takes any input size).
        mos_range: `(lo, hi)` of the dataset's MOS scale the exported files answer on
            (`table.mos_range`); default: the model's own [0, 1] scale.
        name: the model's name in the layout.
        int8: with `"tflite"`, also write the dynamic-range int8 file (its
            scores are reported, not held to `PARITY_ATOL`).
        run: the run folder the model came from, for the report (or None).
    """
    formats = resolve_formats(formats)
    if not (isinstance(version, int) and version >= 1):
        raise ValueError(f"Argument `version` must be a positive integer, got {version!r}.")
    lo, hi = (float(value) for value in mos_range)
    if not hi > lo:
        raise ValueError(f"Argument `mos_range` must be (lo, hi) with lo < hi, got {mos_range!r}.")
    mos_range = (lo, hi)

    from keras_robust_iqa.deployment.lowering import deployment_model
    from keras_robust_iqa.deployment.runtimes import load_runtime
    from keras_robust_iqa.models.graph import check_graph_model
    from keras_robust_iqa.models.patches import model_patch_size, score_images, takes_any_size

    check_graph_model(model, "export_model")
    if whole_images:
        if patch_size is not None:
            raise ValueError("Give `patch_size` or `whole_images=True`, not both.")
        if not takes_any_size(model):
            raise ValueError(
                f"whole_images=True needs a model that takes any input size; '{model.name}' takes "
                f"{tuple(model.inputs[0].shape)}: export patches (whole_images=False)."
            )
        patch_size = None
        probe_side = 32
    else:
        patch_size = model_patch_size(model, patch_size)
        probe_side = patch_size
    deploy = deployment_model(model, patch_size=probe_side)
    serve = serving_function(deploy, patch_size, mos_range)

    # Two odd-sized images: the grid is cropped from the centre of both axes.
    probe = np.random.default_rng(0).uniform(size=(2, 2 * probe_side + 3, probe_side + 5, 3)).astype("float32")
    reference = score_images(model, probe, patch_size=patch_size, whole_images=whole_images)

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    targets = {
        "savedmodel": pathlib.Path("savedmodel", name, str(version)),
        "tflite": pathlib.Path("tflite", f"{name}.float32.tflite"),
        "tflite_int8": pathlib.Path("tflite", f"{name}.int8.tflite"),
        "onnx": pathlib.Path("onnx", f"{name}.onnx"),
    }
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        # The SavedModel is written even when not asked for: TFLite converts from it.
        savedmodel = staging / "savedmodel"
        write_savedmodel(deploy, serve, savedmodel)
        written = {"savedmodel": savedmodel} if "savedmodel" in formats else {}
        if "tflite" in formats:
            for key, quantize in (("tflite", False), ("tflite_int8", True))[: 2 if int8 else 1]:
                written[key] = staging / targets[key].name
                written[key].write_bytes(convert_tflite(savedmodel, quantize=quantize))
        if "onnx" in formats:
            written["onnx"] = staging / targets["onnx"].name
            written["onnx"].write_bytes(convert_onnx(serve))

        files = {}
        for key, path in written.items():
            predicted = (load_runtime(key.split("_")[0], path)(probe) - lo) / (hi - lo)
            gap = float(np.max(np.abs(predicted - reference)))
            if key != "tflite_int8" and not gap <= PARITY_ATOL:
                raise RuntimeError(
                    f"The {key} export of {run or name} differs from the Keras model by {gap:.3g} "
                    f"(> {PARITY_ATOL:g} on the [0, 1] scale); nothing was written."
                )
            files[key] = {"path": str(targets[key]), "max_abs_diff_normalized": gap, "bytes": _size(path)}
            if key.startswith("tflite"):
                files[key]["operators"] = tflite_operators(path.read_bytes())
        for key, path in written.items():
            _replace(path, out / targets[key], staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    if "savedmodel" in formats:
        write_models_config(out / "savedmodel")
    report = {
        "run": None if run is None else str(run),
        "name": name,
        "model": model.name,
        "patch_size": patch_size,
        "whole_images": bool(whole_images),
        "mos_range": list(mos_range),
        "inputs": {
            "serving_default": "images: float32 (batch, height, width, 3), RGB in [0, 1]",
            "serving_uint8": "images: uint8 (batch, height, width, 3), RGB in [0, 255] (SavedModel only)",
            "sizes": ("any height, width, one size per batch (each image scored whole)" if whole_images
                      else f"any height, width >= {patch_size}, one size per batch"),
        },
        "outputs": {"mos": f"float32 (batch,), quality on the dataset's scale {list(mos_range)}"},
        "probe": f"{len(probe)} random images {probe.shape[1]}x{probe.shape[2]}",
        "files": files,
    }
    _write_atomic(out / f"{name}.export.json", json.dumps(report, indent=2))
    _write_atomic(out / f"{name}.export.md", report_markdown(report))
    if verbose:
        print(report_markdown(report))
    return report


def write_savedmodel(deploy, serve, path):
    """A SavedModel whose signatures need only TensorFlow: no Keras, no custom objects."""
    import tensorflow as tf

    module = tf.Module()
    # The plain tf.Variables under the Keras ones, tracked once (Keras's
    # ExportArchive tracks both and writes every weight twice).
    module.weights = [v.value for v in deploy.variables]
    module.serving_default = tf.function(serve, input_signature=[image_spec("float32")])
    module.serving_uint8 = tf.function(serve, input_signature=[image_spec("uint8")])
    tf.saved_model.save(
        module, str(path),
        signatures={"serving_default": module.serving_default, "serving_uint8": module.serving_uint8},
    )


def convert_tflite(savedmodel, quantize=False):
    """TFLite flatbuffer of the `serving_default` signature, builtin ops only.

    `quantize`: dynamic-range quantization (int8 weights, float activations).
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(savedmodel), signature_keys=["serving_default"])
    # Builtin ops only: a Flex or custom op would fail the conversion here.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = False
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    content = converter.convert()
    foreign = [op for op in tflite_operators(content) if not op.isupper()]
    if foreign:
        raise RuntimeError(f"TFLite conversion produced non-builtin operators: {foreign}.")
    return content


def tflite_operators(content):
    """Sorted operator names of a TFLite flatbuffer: builtin ones upper case
    (`FULLY_CONNECTED`), custom ones (Flex included) by their custom code."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(content, 0)
    builtin_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    names = set()
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        op = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if op == schema.BuiltinOperator.CUSTOM:
            names.add(code.CustomCode().decode())
        else:
            names.add(builtin_names[op])
    return sorted(names)


def convert_onnx(serve):
    """ONNX model (bytes) of the float signature, through tf2onnx.

    tf2onnx deep-copies the whole graph, weights included, before each of its ~25
    optimizer passes so that a failing pass can be skipped; that copying is most of
    the conversion time of a large model. The passes run in place first, and only if
    one fails does the conversion run again the careful way.
    """
    import tensorflow as tf
    import tf2onnx
    from tf2onnx import constants

    spec = (image_spec("float32"),)

    def convert():
        proto, _ = tf2onnx.convert.from_function(tf.function(serve, input_signature=spec), input_signature=spec,
                                                 opset=ONNX_OPSET,
                                                 custom_op_handlers={"Erfc": (_erfc_as_one_minus_erf, [])})
        return proto.SerializeToString()

    # tf2onnx 1.17 reads any value of the variable as "do not catch" (it compares the
    # variable's name, not its value, with "TRUE"): unset is the only way back to catching.
    saved = os.environ.get(constants.ENV_TF2ONNX_CATCH_ERRORS)
    os.environ[constants.ENV_TF2ONNX_CATCH_ERRORS] = "FALSE"
    try:
        return convert()
    except Exception:  # an optimizer pass failed in place: skip failing passes, copying the graph
        os.environ.pop(constants.ENV_TF2ONNX_CATCH_ERRORS, None)
        return convert()
    finally:
        if saved is None:
            os.environ.pop(constants.ENV_TF2ONNX_CATCH_ERRORS, None)
        else:
            os.environ[constants.ENV_TF2ONNX_CATCH_ERRORS] = saved


def _erfc_as_one_minus_erf(ctx, node, name, args):
    """tf2onnx handler of TensorFlow's Erfc, which ONNX lacks: `1 - Erf(x)`. TensorFlow's exact
    GELU (`keras.activations.gelu`, as in ConvNeXt) computes it with erfc."""
    from tf2onnx import utils

    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    erf = ctx.make_node("Erf", [node.input[0]])
    one = ctx.make_const(utils.make_name(f"{name}_one"), np.array(1, dtype=dtype))
    node.type = "Sub"
    ctx.replace_inputs(node, [one.output[0], erf.output[0]])


def write_models_config(folder):
    """A TF Serving `models.config` listing every model exported into `folder`."""
    folder = pathlib.Path(folder)
    entries = []
    for model_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        entries.append(
            "  config {\n"
            f"    name: \"{model_dir.name}\"\n"
            f"    base_path: \"/models/{model_dir.name}\"\n"
            "    model_platform: \"tensorflow\"\n"
            "  }\n"
        )
    _write_atomic(folder / "models.config", "model_config_list {\n" + "".join(entries) + "}\n")


def report_markdown(report):
    lines = [
        f"# Export of {report['name']}",
        "",
        (f"Run `{report['run']}`" if report["run"] else "A model in memory")
        + f" ({report['model']}), "
        + ("whole images" if report.get("whole_images") else f"patch {report['patch_size']}") + ", "
        f"MOS scale {report['mos_range']}.",
        "",
        "Inputs: " + "; ".join(f"`{k}`: {v}" for k, v in report["inputs"].items()) + ".",
        "Output: " + "; ".join(f"`{k}`: {v}" for k, v in report["outputs"].items()) + ".",
        "",
        f"| file | bytes | max abs diff vs Keras ([0, 1] scale, {report['probe']}) |",
        "|---|---|---|",
    ]
    for info in report["files"].values():
        lines.append(f"| `{info['path']}` | {info['bytes']:,} | {info['max_abs_diff_normalized']:.2e} |")
    return "\n".join(lines) + "\n"


def _size(path):
    path = pathlib.Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _replace(source, target, staging):
    """Move `source` to `target` by renames: a file in one step; a folder
    after moving the old one aside (into `staging`, deleted afterwards)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir() and target.exists():
        os.replace(target, staging / f"old-{target.name}")
    os.replace(source, target)


def _write_atomic(path, text):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
