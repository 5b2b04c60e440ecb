"""`robust-iqa export`: a run folder to SavedModel (TF Serving), TFLite and ONNX."""


def add_parser(subparsers):
    p = subparsers.add_parser(
        "export",
        help="export a run's model to SavedModel, TFLite (float32, int8) and ONNX",
        description="Export the model of a run folder (base, robust or pruned). Whole images go in "
        "(float32 RGB in [0, 1], or uint8 for the SavedModel's serving_uint8 signature; any size "
        "of at least one patch), the quality on the dataset's MOS scale comes out: the patch grid "
        "and the averaging are inside the graph. Orthogonal layers are frozen and lowered to "
        "builtin ops first. Every file is checked against the Keras model and renamed into place "
        "only then. Writes DIR/savedmodel/NAME/VERSION/, DIR/savedmodel/models.config, "
        "DIR/tflite/NAME.float32.tflite, DIR/tflite/NAME.int8.tflite, DIR/onnx/NAME.onnx and "
        "DIR/NAME.export.json / .md.",
    )
    p.add_argument("--run", required=True, help="run folder holding model.keras and config.json")
    p.add_argument("--format", default="all", choices=("all", "savedmodel", "tflite", "onnx"),
                   help="what to export: all (default), savedmodel, tflite (float32 and dynamic-range "
                   "int8) or onnx")
    p.add_argument("--out", required=True, metavar="DIR", help="export folder (created if missing)")
    p.add_argument("--name", help="model name in the export layout and in models.config "
                   "(default: the run folder's name)")
    p.add_argument("--version", type=int, default=1,
                   help="SavedModel version folder; TF Serving serves the highest (default: 1)")
    p.set_defaults(func=run)


def run(args):
    from keras_robust_iqa.deployment.export import export_run

    export_run(args.run, args.out, args.format, version=args.version, name=args.name)
    return 0
