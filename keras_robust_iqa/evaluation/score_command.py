"""`robust-iqa score`: score image files, with each score's certified interval."""

import argparse
import os
import pathlib
import sys
import tempfile


def add_parser(subparsers):
    from keras_robust_iqa.data.images import IMAGE_SUFFIXES
    from keras_robust_iqa.evaluation.scoring import FORMATS
    from keras_robust_iqa.models.presets import DEFAULT_PRESET
    from keras_robust_iqa.training.options import fraction

    p = subparsers.add_parser(
        "score",
        help="score image files, folders and globs on the MOS scale, with certified intervals",
        description="Score images of any size (at least one patch) with a preset (by default the bundled "
        f"certified preset {DEFAULT_PRESET}, trained on the built-in synthetic distortions: `robust-iqa presets`), "
        "a run's model, or an exported SavedModel, TFLite or ONNX file: the average score of the centred "
        "grid of patches, on the dataset's MOS scale. For a model whose `lipschitz_bound` certifies, each "
        "score comes with its certified interval [score - b, score + b] for the budget: no perturbation "
        "within it can move the score outside. Images are decoded as in training (JPEG, PNG, GIF, BMP, "
        "WebP, TIFF; EXIF orientation applied, alpha dropped). A file that cannot be read is named on "
        "stderr and in the output, and the others are still scored; the exit code is then 1 (0 with "
        "--on-error skip). Files a folder scan skips (not an image type) are named the same way, without "
        "changing the exit code.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help=f"image files, folders (searched recursively for {', '.join(IMAGE_SUFFIXES)} files; "
                   "other files there are named as skipped) and glob patterns such as 'photos/**/*.jpg'")
    p.add_argument("--preset", metavar="NAME",
                   help=f"a preset name (`robust-iqa presets`) or preset folder scores and certifies "
                   f"(default, without --run and --model: {DEFAULT_PRESET})")
    p.add_argument("--run", metavar="RUN",
                   help="run folder (model.keras, config.json): its model scores the images and certifies "
                   "the intervals")
    p.add_argument("--model", metavar="FILE",
                   help="an exported model (SavedModel folder, .tflite or .onnx from `robust-iqa export`) "
                   "scores the images instead; with --run too, the run's certificate gives the intervals "
                   "(not for an int8 TFLite file, which computes another function)")
    p.add_argument("--eps", type=_budget(fraction), metavar="EPS",
                   help="budget of the interval in [0, 1] pixel units, fractions such as 4/255 accepted: "
                   "an L-inf radius, or with --norm l2 an L2 radius over the whole image "
                   "(default: 4/255 for linf, 1.0 for l2)")
    p.add_argument("--norm", default="linf", choices=("linf", "l2"), help="norm of the budget (default: linf)")
    p.add_argument("--format", choices=FORMATS,
                   help="table (default), json (with the settings and the unreadable files) or csv "
                   "(path, height, width, score, lower, upper, bound); default from --out's suffix "
                   "(.json, .csv), else table")
    p.add_argument("--out", metavar="FILE", help="write the results to FILE (default: stdout)")
    p.add_argument("--on-error", default="fail", choices=("fail", "skip"),
                   help="a file that cannot be read is named on stderr and left out either way; "
                   "fail (default) ends with exit code 1, skip with 0")
    p.add_argument("--batch-size", type=int, default=64, help="patches per forward pass (default: 64)")
    p.set_defaults(func=run)


def _budget(fraction):
    def parse(text):
        value = fraction(text)
        if not value >= 0:
            raise argparse.ArgumentTypeError(f"a budget must be a number >= 0, got {text!r}")
        return value

    return parse


def run(args):
    from keras_robust_iqa.evaluation.scoring import FORMATS, format_results, score_files

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {args.batch_size}.")
    fmt = args.format
    if fmt is None:
        suffix = pathlib.Path(args.out).suffix.lower()[1:] if args.out else ""
        fmt = suffix if suffix in FORMATS else "table"

    def warn(entry):
        print(f"robust-iqa score: cannot score {entry['path']}: {entry['error']}", file=sys.stderr)

    result = score_files(args.paths, run=args.run, model_file=args.model, preset=args.preset, eps=args.eps,
                         norm=args.norm, batch_size=args.batch_size, warn=warn)
    if result["scorer"]["preset"]:
        print(f"robust-iqa score: scored with the preset {result['scorer']['preset']} "
              f"({'bundled, the default' if args.preset is None else args.preset}; `robust-iqa presets` "
              "says what it was trained on)", file=sys.stderr)
    if result["not_certified"]:
        print(f"robust-iqa score: scores only, no certified interval: {result['not_certified']}", file=sys.stderr)
    text = format_results(result, fmt)
    if args.out:
        _write_atomic(pathlib.Path(args.out), text)
    else:
        sys.stdout.write(text)
    if result["skipped"]:
        print(f"robust-iqa score: {len(result['skipped'])} file(s) skipped by the folder scan (not an image type)",
              file=sys.stderr)
    if result["errors"]:
        print(f"robust-iqa score: {len(result['errors'])} path(s) not scored, {len(result['images'])} scored",
              file=sys.stderr)
        return 0 if args.on_error == "skip" else 1
    return 0


def _write_atomic(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
