"""Run an exported file the way a deployer would: each format on its own runtime.

`load_runtime(format, path)` returns `predict(images) -> mos`, `images` float32
`(B, H, W, 3)` in [0, 1], `mos` a float64 array `(B,)` on the dataset's scale.
"""

import numpy as np


def load_runtime(format, path, num_threads=None):
    """`num_threads`: TFLite interpreter threads (default: the runtime's own choice)."""
    loaders = {"savedmodel": _savedmodel, "tflite": _tflite, "onnx": _onnx}
    if format not in loaders:
        raise ValueError(f"Argument `format` must be one of {tuple(loaders)}, got {format!r}.")
    if format == "tflite":
        return _tflite(str(path), num_threads)
    return loaders[format](str(path))


def _savedmodel(path):
    import tensorflow as tf

    signature = tf.saved_model.load(path).signatures["serving_default"]

    def predict(images):
        return signature(images=tf.constant(images, tf.float32))["mos"].numpy().astype("float64")

    return predict


def _tflite(path, num_threads=None):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=num_threads)
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()
    shape = None

    def predict(images):
        nonlocal shape
        images = np.asarray(images, "float32")
        if images.shape != shape:  # the signature takes any size: resize, then plan memory
            interpreter.resize_tensor_input(inp["index"], images.shape, strict=True)
            interpreter.allocate_tensors()
            shape = images.shape
        interpreter.set_tensor(inp["index"], images)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"]).astype("float64")

    return predict


def _onnx(path):
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def predict(images):
        return session.run(None, {name: np.asarray(images, "float32")})[0].astype("float64")

    return predict
