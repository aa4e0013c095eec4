"""evaluate.py on a .tflite that is not one of our exports: --labels and --input_range.

The model stands in for e.g. the `fer` package's: float32 input in [-1, 1], no
labels.txt beside it. It classifies an image by its mean value m (the class
whose centre in CENTERS is nearest), so the CSV's grey levels are all right
when pixels are mapped to [-1, 1] and land on known wrong classes when they
are mapped to [0, 1]. An int8-input conversion of the same model must ignore
--input_range. The evaluate.py runs start together in one module fixture (each
pays TensorFlow's start-up; in parallel they share it).
"""

import json
import os

import numpy as np
import pytest
from conftest import run_scripts_in_parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 48
NAMES = ["angry", "disgust", "fear"]  # FER2013 codes 0, 1, 2
CENTERS = np.array([-0.6, 0.0, 0.6], np.float32)
# Grey levels per class: in [-1, 1] (p / 127.5 - 1) each is nearest its own centre; in [0, 1]
# (p / 255) angry's fall nearest disgust and disgust's nearest fear, fear's stay fear.
LEVELS = {0: (30, 51, 70), 1: (110, 128, 145), 2: (185, 204, 230)}


def write_model(root):
    """Writes float32- and int8-input .tflite files of the nearest-centre model; no labels.txt."""
    import keras
    import tensorflow as tf

    # -(m - c)^2 up to the term -m^2 shared by every class: a Dense layer on the mean.
    model = keras.Sequential([keras.Input((SIZE, SIZE, 1)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(len(NAMES))])  # fmt: skip
    model.layers[-1].set_weights([(2 * CENTERS)[None], -(CENTERS**2)])
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("lite", model.call, [tf.TensorSpec([1, SIZE, SIZE, 1], tf.float32, name="x")])
    saved = os.path.join(root, "saved_model")
    archive.write_out(saved, verbose=False)
    # The representative set spans [-1, 1], so the int8 input means (q + 128) / 127.5 - 1.
    levels = np.linspace(-1.0, 1.0, 9, dtype=np.float32)
    paths = {}
    for variant in ("float32", "int8"):
        converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=["lite"])
        if variant == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
            converter.representative_dataset = lambda: (
                {"x": np.full((1, SIZE, SIZE, 1), v, np.float32)} for v in levels
            )
        paths[variant] = os.path.join(root, variant, "model.tflite")
        os.makedirs(os.path.dirname(paths[variant]))
        with open(paths[variant], "wb") as f:
            f.write(converter.convert())
    return paths


def write_csv(path):
    """Three grey images per class, plus a happy row (a class the model lacks)."""
    rows = [(code, level) for code, levels in LEVELS.items() for level in levels] + [(3, 128)]
    with open(path, "w") as f:
        f.write("emotion,pixels,Usage\n")
        for code, level in rows:
            f.write(f"{code},{' '.join([str(level)] * SIZE * SIZE)},PublicTest\n")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("foreign"))
    models = write_model(root)
    csv = os.path.join(root, "faces.csv")
    write_csv(csv)
    labels_file = os.path.join(root, "names.txt")
    with open(labels_file, "w") as f:
        f.write("Anger\nDisgust\n\nfear\n")  # aliases, capitals and a blank line
    float_model, data = f"--model={models['float32']}", f"--data={csv}"
    commands = {
        "right": [float_model, data, "--labels=angry,disgust,fear", "--input_range=-1,1"],
        "wrong": [float_model, data, f"--labels={labels_file}"],
        "int8": [f"--model={models['int8']}", data, "--labels=angry,disgust,fear", "--input_range=0,1"],
        "count": [float_model, data, "--labels=angry,disgust,fear,happy"],
        "no_labels": [float_model, data, "--input_range=-1,1"],
    }
    for i, bad in enumerate(["1,-1", "-1", "a,b", "0,nan"]):
        commands[f"range{i}"] = [float_model, data, "--labels=angry,disgust,fear", f"--input_range={bad}"]
    commands["one_label"] = [float_model, data, "--labels=angry"]
    return {"models": models, "results": run_scripts_in_parallel("evaluate.py", commands)}


def parsed(runs, name):
    code, stdout, stderr = runs["results"][name]
    assert code == 0, stderr
    return json.loads(stdout), stderr


def test_right_input_range_classifies_every_image(runs):
    result, stderr = parsed(runs, "right")
    assert result["n"] == 9 and result["accuracy"] == 1.0 and result["macro_f1"] == 1.0
    assert result["class_names"] == NAMES
    assert result["confusion_matrix"] == [[3, 0, 0], [0, 3, 0], [0, 0, 3]]
    assert {name: v["recall"] for name, v in result["per_class"].items()} == dict.fromkeys(NAMES, 1.0)
    assert "excluded 1 rows of classes the model lacks: {'happy': 1}" in stderr


def test_default_input_range_moves_angry_and_disgust_up_one_class(runs):
    result, _ = parsed(runs, "wrong")  # labels from a file, names made canonical
    assert result["class_names"] == NAMES
    assert result["confusion_matrix"] == [[0, 3, 0], [0, 0, 3], [0, 0, 3]]
    assert result["accuracy"] == pytest.approx(1 / 3)
    assert result["balanced_accuracy"] == pytest.approx(1 / 3)
    assert result["per_class"]["fear"]["precision"] == pytest.approx(0.5)


def test_int8_input_keeps_its_quantization_and_ignores_input_range(runs):
    result, _ = parsed(runs, "int8")
    assert result["accuracy"] == 1.0
    assert result["confusion_matrix"] == [[3, 0, 0], [0, 3, 0], [0, 0, 3]]


def test_predictor_maps_pixels_onto_the_input_range(runs):
    from fer_tf import predict

    images = np.stack([np.full((SIZE, SIZE, 1), level, np.uint8) for level in (0, 64, 255)])
    for input_range, means in (
        ((-1.0, 1.0), [-1.0, 64 / 127.5 - 1, 1.0]),
        ((0.0, 1.0), [0.0, 64 / 255, 1.0]),
    ):
        predictor = predict.load_exported(
            runs["models"]["float32"], class_names=NAMES, input_range=input_range
        )
        logits = 2 * CENTERS * np.array(means, np.float32)[:, None] - CENTERS**2
        softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        np.testing.assert_allclose(predictor(images), softmax, atol=1e-5)
    with pytest.raises(ValueError, match="low < high"):
        predict.load_exported(runs["models"]["float32"], class_names=NAMES, input_range=(1.0, 1.0))


@pytest.mark.parametrize(
    "name, message",
    [
        ("count", "model.tflite has 3 outputs but 4 class names"),
        ("no_labels", "no labels.txt or metadata.json beside"),
        ("range0", "--input_range must be finite with low < high, got '1,-1'"),
        ("range1", "--input_range must be two numbers low,high (e.g. -1,1), got '-1'"),
        ("range2", "--input_range must be two numbers low,high (e.g. -1,1), got 'a,b'"),
        ("range3", "--input_range must be finite with low < high, got '0,nan'"),
        ("one_label", "--labels angry is neither a file nor comma-separated class names"),
    ],
)
def test_bad_labels_or_input_range_is_a_one_line_error(runs, name, message):
    code, stdout, stderr = runs["results"][name]
    assert code == 2 and stdout == "" and "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    if not name.startswith(("count", "no_labels")):  # these fail after TensorFlow's start-up logs
        assert len(lines) == 1, stderr
    assert lines[-1].startswith("error: ") and message in lines[-1], stderr
