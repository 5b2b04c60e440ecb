"""Score image files with a preset, a run's model or an exported file, with certified intervals.

`score_files(paths, run=..., model_file=..., preset=...)` takes files, folders (searched
recursively for image files) and glob patterns, decodes each image as the training pipeline
does (`data.read_image`), scores it on the dataset's MOS scale and, for a model whose
`lipschitz_bound` certifies, puts each score's certified interval `[score - b, score + b]`
for the budget around it (`evaluation.certified_interval`). With no model named, the bundled
preset (`models.presets.DEFAULT_PRESET`) scores. Images stream in chunks of bounded memory,
so a folder of any size and images of any size (at least one patch) are scored. A file that
cannot be read is reported and the others are still scored; a file a folder scan skips
(not an image type, by its suffix) is reported too.

`format_results(result, "table" | "json" | "csv")` renders what `score_files` returned.
"""

import contextlib
import csv
import glob
import io
import json
import math
import pathlib
import sys

import numpy as np

from keras_robust_iqa.data.images import IMAGE_SUFFIXES
from keras_robust_iqa.evaluation.certified import NORMS, certified_bounds, certified_interval
from keras_robust_iqa.evaluation.evaluate import eps_label

DEFAULT_EPS = {"linf": 4 / 255, "l2": 1.0}
FORMATS = ("table", "json", "csv")
# A chunk of decoded images holds at most this many pixels (float32 RGB: 12 bytes each,
# about 400 MB) or this many images.
CHUNK_PIXELS = 2**25
CHUNK_IMAGES = 64
COLUMNS = ("path", "height", "width", "score", "lower", "upper", "bound", "error")


def expand_paths(paths):
    """`(files, problems, skipped)`: the image files that `paths` name, in order, each once; a
    `{"path", "error"}` entry for each argument that names none; and one for each file a
    folder scan left out because its suffix is not an image type (`IMAGE_SUFFIXES`)."""
    files, problems, skipped, seen, seen_skipped = [], [], [], set(), set()

    def add(path):
        key = str(path)
        if key not in seen:
            seen.add(key)
            files.append(key)

    def add_folder(folder):
        found = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                found.append(path)
                add(path)
            elif str(path) not in seen_skipped:
                seen_skipped.add(str(path))
                skipped.append({"path": str(path), "error": f"skipped by the folder scan: {path.suffix or 'no suffix'} "
                                "is not an image type (name the file to try to decode it)"})
        return bool(found)

    for arg in paths:
        path = pathlib.Path(arg)
        if path.is_file():
            add(path)
        elif path.is_dir():
            if not add_folder(path):
                problems.append({"path": str(arg), "error": f"no image files ({', '.join(IMAGE_SUFFIXES)}) "
                                 "in this folder or below"})
        elif glob.has_magic(str(arg)):
            matches = sorted(glob.glob(str(arg), recursive=True))
            found = False
            for match in map(pathlib.Path, matches):
                if match.is_file():
                    add(match)
                    found = True
                elif match.is_dir():
                    found = add_folder(match) or found
            if not found:
                problems.append({"path": str(arg), "error": "no file matches this pattern"})
        else:
            problems.append({"path": str(arg), "error": "no such file or folder"})
    return files, problems, skipped


def file_format(path):
    """The exported format of `path`: a SavedModel folder, a `.tflite` or an `.onnx` file."""
    path = pathlib.Path(path)
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return "savedmodel"
    if path.is_file() and path.suffix.lower() in (".tflite", ".onnx"):
        return path.suffix.lower()[1:]
    if not path.exists():
        raise FileNotFoundError(f"Model file {path} does not exist.")
    raise ValueError(f"Model file {path} is not an exported model: give a SavedModel folder (holding "
                     "saved_model.pb), a .tflite or an .onnx file (written by `robust-iqa export`).")


def export_facts(model_file):
    """`(patch_size, mos_range)` from the export report (`NAME.export.json`, written by
    `robust-iqa export` above the file) that lists `model_file`, or `(None, None)`."""
    target = pathlib.Path(model_file).resolve()
    for folder in list(target.parents)[:3]:
        for report_path in sorted(folder.glob("*.export.json")):
            try:
                report = json.loads(report_path.read_text())
                listed = [(folder / entry["path"]).resolve() for entry in report["files"].values()]
                if target in listed:
                    return int(report["patch_size"]), tuple(float(v) for v in report["mos_range"])
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue  # not a report this package wrote: look further
    return None, None


def _quantised_tflite(path):
    from ai_edge_litert.interpreter import Interpreter

    return any(detail["dtype"] == np.int8 for detail in Interpreter(model_path=str(path)).get_tensor_details())


class Scorer:
    """Scores on the MOS scale, from a preset, a run's model or an exported file.

    With a preset (a name, or a preset folder: `models.load_preset`) or a run, the patch size
    and `mos_range` come from its card or `config.json`, and the certificate from its model
    (`lipschitz_bound`); with none of the three, the bundled preset `DEFAULT_PRESET`. An
    exported file alone gives scores only (its patch size and scale from the export report
    beside it, when there is one). With a file and a run, the file scores and the run
    certifies: a float export computes the run's model (checked at export within 1e-4 on
    the [0, 1] scale); an int8 TFLite file computes another function, so it gets no interval.
    """

    def __init__(self, run=None, model_file=None, preset=None):
        from keras_robust_iqa.models import presets

        if preset is not None and (run is not None or model_file is not None):
            raise ValueError("Give a preset (--preset), or a run and/or an exported model (--run, --model), "
                             "not both.")
        if run is None and model_file is None and preset is None:
            preset = presets.DEFAULT_PRESET
        self.run, self.model_file, self.preset = run, model_file, None
        self.model = self.predict = None
        self.patch_size = self.mos_range = self.lipschitz = None
        self.not_certified = None
        if run is not None or preset is not None:
            from keras_robust_iqa.models.lipschitz import lipschitz_bound

            loaded = presets.load_run(run) if run is not None else presets.load_preset(preset)
            self.preset = None if run is not None else loaded.name
            self.model, self.patch_size = loaded.model, loaded.card["patch_size"]
            self.mos_range = tuple(float(v) for v in loaded.card["mos_range"])
            try:
                self.lipschitz = lipschitz_bound(self.model)
            except ValueError as error:
                self.not_certified = f"the model of {run or preset} has no certified bound: {error}"
        if model_file is not None:
            from keras_robust_iqa.deployment.runtimes import load_runtime

            self.format = file_format(model_file)
            self.predict = load_runtime(self.format, model_file)
            if run is None:
                self.patch_size, self.mos_range = export_facts(model_file)
                self.not_certified = "an exported file carries no certificate (add --run with the run it came from)"
            elif self.lipschitz is not None and self.format == "tflite" and _quantised_tflite(model_file):
                self.lipschitz = None
                self.not_certified = (f"{model_file} has int8 weights: it does not compute the model of {run}, "
                                      "whose certificate therefore does not apply")
        else:
            self.format = "keras"
    @property
    def certified(self):
        return self.lipschitz is not None

    def too_small(self, image):
        """Why `image` cannot be scored, or None."""
        if self.patch_size is not None and min(image.shape[:2]) < self.patch_size:
            return (f"the image is {image.shape[1]}x{image.shape[0]} (width x height), smaller than the "
                    f"model's {self.patch_size}x{self.patch_size} patches")
        return None

    def score(self, images, eps, norm, batch_size=64):
        """`(scores, bounds or None)` of a list of images, both on the MOS scale."""
        if self.predict is None:
            if self.certified:
                interval = certified_interval(self.model, images, eps, norm, mos_range=self.mos_range,
                                              batch_size=batch_size)
                return interval.score, interval.bound
            from keras_robust_iqa.models.patches import score_images

            lo, hi = self.mos_range
            return lo + (hi - lo) * score_images(self.model, images, batch_size=batch_size), None
        scores = np.zeros(len(images))
        by_shape = {}
        for i, image in enumerate(images):
            by_shape.setdefault(image.shape, []).append(i)
        for indices in by_shape.values():  # an exported signature takes one size per batch
            for start in range(0, len(indices), 16):
                part = indices[start : start + 16]
                scores[part] = np.asarray(self.predict(np.stack([images[i] for i in part])), "float64").reshape(-1)
        bounds = None
        if self.certified:
            lo, hi = self.mos_range
            bounds = (hi - lo) * certified_bounds(self.model, [image.shape for image in images], eps, norm)
        return scores, bounds


def score_files(paths, *, run=None, model_file=None, preset=None, eps=None, norm="linf", batch_size=64,
                progress=True, warn=None):
    """Score image files; return the rows, the files that could not be scored, and the settings.

    Args:
        paths: image files, folders (searched recursively for files with the suffixes of
            `data.images.IMAGE_SUFFIXES`: JPEG, PNG, GIF, BMP, WebP, TIFF) and glob patterns
            (`**` included).
        run: a run folder (`model.keras`, `config.json`): its model scores and certifies.
        model_file: an exported SavedModel folder, `.tflite` or `.onnx` file: it scores
            instead of the run's Keras model (see `Scorer`).
        preset: a preset name or folder (`models.load_preset`) scores and certifies. With
            none of `run`, `model_file` and `preset`: the bundled preset.
        eps: the budget of the certified interval, in [0, 1] pixel units: an L-inf
            radius, or for `norm="l2"` an L2 radius over the whole image. Default:
            4/255 (L-inf), 1.0 (L2).
        norm: `"linf"` or `"l2"`.
        batch_size: patches per forward pass of a Keras model.
        progress: show a `keras.utils.Progbar` (on stderr, so stdout stays the output).
        warn: called with each `{"path", "error"}` entry as it is found.

    Returns:
        `{"scorer", "budget", "certified", "not_certified", "lipschitz_bound", "images",
        "errors", "skipped"}`: `images` one row per scored file (`path`, `height`, `width`,
        `score`, and `lower`, `upper`, `bound` for a certified model, else None), in the
        order of `paths`; `errors` the arguments and files that gave no score, with why;
        `skipped` the files a folder scan left out (not an image type), with why.
    """
    if norm not in NORMS:
        raise ValueError(f"Argument `norm` must be one of {NORMS}, got {norm!r}.")
    eps = DEFAULT_EPS[norm] if eps is None else eps
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"Argument `eps` must be a finite number >= 0, got {eps!r}.")
    if norm == "linf" and eps > 1:
        raise ValueError(f"Argument `eps`: an L-inf budget is in [0, 1] pixel units, got {eps!r}.")
    paths = [str(path) for path in paths]
    if not paths:
        raise ValueError("Give at least one image file, folder or pattern to score.")
    scorer = Scorer(run, model_file, preset)
    files, errors, skipped = expand_paths(paths)
    report = warn or (lambda entry: None)
    for entry in errors + skipped:
        report(entry)

    from keras_robust_iqa.data import DataError, read_image

    bar = _progress_bar(len(files)) if progress and files else None
    rows, chunk, pixels, done = [], [], 0, 0

    def fail(path, reason):
        entry = {"path": path, "error": reason}
        errors.append(entry)
        report(entry)

    def flush():
        nonlocal pixels, done
        if chunk:
            try:
                scores, bounds = scorer.score([image for _, image in chunk], eps, norm, batch_size)
            except Exception:  # one image failing the runtime must not lose the others
                scores, bounds = _one_by_one(scorer, chunk, eps, norm, batch_size, fail)
            for i, (path, image) in enumerate(chunk):
                if scores[i] is None:
                    continue
                if not np.isfinite(scores[i]):
                    fail(path, "the model returned no finite score (an image smaller than its patches gives "
                         "none)")
                    continue
                row = {"path": path, "height": int(image.shape[0]), "width": int(image.shape[1]),
                       "score": float(scores[i]), "lower": None, "upper": None, "bound": None}
                if bounds is not None:
                    b = float(bounds[i])
                    row.update(lower=row["score"] - b, upper=row["score"] + b, bound=b)
                rows.append(row)
        done += len(chunk)
        chunk.clear()
        pixels = 0
        if bar is not None:
            with contextlib.redirect_stdout(sys.stderr):
                bar.update(done)

    for path in files:
        try:
            image = read_image(path)
        except DataError as error:
            fail(path, error.reason)
            done += 1
            continue
        reason = scorer.too_small(image)
        if reason:
            fail(path, reason)
            done += 1
            continue
        chunk.append((path, image))
        pixels += image.shape[0] * image.shape[1]
        if pixels >= CHUNK_PIXELS or len(chunk) >= CHUNK_IMAGES:
            flush()
    flush()
    rows_order = {path: i for i, path in enumerate(files)}
    errors.sort(key=lambda entry: rows_order.get(entry["path"], -1))
    return {
        "scorer": {"preset": scorer.preset, "run": None if run is None else str(run),
                   "model": None if model_file is None else str(model_file), "format": scorer.format,
                   "patch_size": scorer.patch_size,
                   "mos_range": None if scorer.mos_range is None else list(scorer.mos_range)},
        "budget": {"eps": float(eps), "norm": norm, "label": eps_label(eps, norm)},
        "certified": scorer.certified,
        "not_certified": scorer.not_certified,
        "lipschitz_bound": scorer.lipschitz,
        "images": rows,
        "errors": errors,
        "skipped": skipped,
    }


def _one_by_one(scorer, chunk, eps, norm, batch_size, fail):
    """Score a chunk image by image, naming each one the model cannot score."""
    scores, bounds = [None] * len(chunk), [None] * len(chunk)
    for i, (path, image) in enumerate(chunk):
        try:
            score, bound = scorer.score([image], eps, norm, batch_size)
        except Exception as error:  # named and counted, the others go on
            fail(path, f"the model cannot score it ({type(error).__name__}: {str(error).strip().splitlines()[-1]})")
            continue
        scores[i] = float(score[0])
        bounds[i] = None if bound is None else float(bound[0])
    return scores, (None if not scorer.certified else bounds)


def _progress_bar(total):
    import keras

    with contextlib.redirect_stdout(sys.stderr):  # Progbar reads stdout's terminal at creation
        return keras.utils.Progbar(total, unit_name="image")


def format_results(result, fmt="table"):
    """The text of `score_files`' result as a table, JSON or CSV."""
    if fmt not in FORMATS:
        raise ValueError(f"Argument `format` must be one of {FORMATS}, got {fmt!r}.")
    if fmt == "json":
        return json.dumps(result, indent=2) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in result["images"]:
            writer.writerow({key: ("" if row.get(key) is None else row[key]) for key in COLUMNS})
        for entry in _not_scored(result):
            writer.writerow({"path": entry["path"], "error": entry["error"]})
        return out.getvalue()
    return _table(result)


def _table(result):
    scorer, budget = result["scorer"], result["budget"]
    source = scorer["model"] or scorer["run"] or f"preset {scorer['preset']}"
    scale = scorer["mos_range"]
    lines = [f"# {len(result['images'])} image(s) scored by {source} ({scorer['format']})"
             + (f", MOS scale {scale[0]:g}..{scale[1]:g}" if scale else "")]
    if result["certified"]:
        norm = "L-inf" if budget["norm"] == "linf" else "L2"
        lines.append(f"# certified interval: no {norm} perturbation of at most {budget['label']} can move the "
                     "score outside [lower, upper]")
    header = ["path", "score"] + (["lower", "upper", "+-bound"] if result["certified"] else [])
    body = []
    for row in result["images"]:
        cells = [row["path"], f"{row['score']:.3f}"]
        if result["certified"]:
            cells += [f"{row['lower']:.3f}", f"{row['upper']:.3f}", f"{row['bound']:.3f}"]
        body.append(cells)
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    for cells in [header, *body]:
        lines.append("  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i])
                               for i, cell in enumerate(cells)).rstrip())
    not_scored = _not_scored(result)
    if not_scored:
        skipped = len(result.get("skipped", []))
        lines.append(f"# {len(result['errors'])} path(s) not scored"
                     + (f", {skipped} file(s) skipped by the folder scan" if skipped else "") + ":")
        lines += [f"#   {entry['path']}: {entry['error']}" for entry in not_scored]
    return "\n".join(lines) + "\n"


def _not_scored(result):
    """The unreadable paths, then the files the folder scan skipped."""
    return result["errors"] + result.get("skipped", [])
