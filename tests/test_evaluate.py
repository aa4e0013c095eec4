"""Tests for evaluate.py (DESIGN.md contract 5) on a CSV, an image folder and a TFRecord dir.

The evaluate.py runs are started together in one module fixture (each pays
TensorFlow's start-up; in parallel they share it) and checked one per test
against a direct computation with `predict.load_exported`.
"""

import gzip
import json
import os

import cv2
import numpy as np
import pytest
from conftest import run_scripts_in_parallel
from test_export import CLASSES, SPLIT_SIZES, class_images, make_run

from fer_tf import export_lib, predict
from fer_tf.metrics import classification_report

CONTRACT_KEYS = {"n", "accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion_matrix"}


def fer2013_rows(rng, n, usage, mislabel_every=4):
    """CSV rows whose pixels show class i % 7 and whose label is wrong every `mislabel_every` rows."""
    shown = np.arange(n) % len(CLASSES)
    labels = np.where(np.arange(n) % mislabel_every == 1, (shown + 2) % len(CLASSES), shown)
    images = class_images(shown, rng)
    rows = [
        f"{label},{' '.join(map(str, image.ravel()))},{usage}"
        for label, image in zip(labels, images, strict=True)
    ]
    return rows, images, labels


def write_csv(path, rows):
    text = "emotion,pixels,Usage\n" + "\n".join(rows) + "\n"
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wt") as f:
        f.write(text)


def write_folder(root, rng):
    """root/<class alias>/*.png, 64x64 colour; 'Contempt' is a class the 7-class model lacks."""
    folders = {
        "Angry": "angry",
        "happiness": "happy",
        "Surprised": "surprise",
        "neutral": "neutral",
        "Contempt": None,
    }
    images, labels = [], []
    for folder, name in folders.items():
        os.makedirs(os.path.join(root, folder))
        shown = CLASSES.index(name or "disgust")
        for i, image in enumerate(class_images([shown] * 3, rng, size=64, channels=3)):
            cv2.imwrite(os.path.join(root, folder, f"{i}.png"), image)
            if name:
                images.append(image)
                labels.append(shown)
    with open(os.path.join(root, "notes.txt"), "w") as f:
        f.write("not an image")
    return np.stack(images), np.array(labels)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("evaluate"))
    run_dir, arrays = make_run(root)
    export = os.path.join(root, "export")
    export_lib.export_run(run_dir, export, representative_samples=30)
    rng = np.random.default_rng(5)
    mixed = {
        usage: fer2013_rows(rng, n, usage)
        for usage, n in (("Training", 14), ("PublicTest", 21), ("PrivateTest", 9))
    }
    grey = " ".join(["128"] * 48 * 48)
    # Two malformed rows, and a contempt row (a class the 7-class model lacks).
    bad = ["7,1 2 3,PublicTest", f"x,{grey},PublicTest", f"7,{grey},PublicTest"]
    write_csv(os.path.join(root, "fer.csv.gz"), [r for rows, _, _ in mixed.values() for r in rows] + bad)
    private = fer2013_rows(rng, 16, "PrivateTest", mislabel_every=3)
    write_csv(os.path.join(root, "private.csv"), private[0])
    folder = write_folder(os.path.join(root, "faces"), rng)
    commands = {
        "csv": [f"--model={export}", f"--data={root}/fer.csv.gz", "--split=PublicTest"],
        "csv_val": [f"--model={export}", f"--data={root}/fer.csv.gz", "--split=val"],
        "private": [f"--model={export}/model_int8.tflite", f"--data={root}/private.csv"],
        "folder": [f"--model={export}/model_int8.tflite", f"--data={root}/faces"],
        "tfrecord": [f"--model={export}", f"--data={root}/data", "--tta=flip", f"--output_dir={root}/eval"],
        "missing": [f"--model={export}", f"--data={root}/nothing.csv"],
    }
    results = run_scripts_in_parallel("evaluate.py", commands)
    return {"root": root, "export": export, "arrays": arrays, "mixed": mixed, "private": private,
            "folder": folder, "results": results}  # fmt: skip


def parsed(setup, name):
    code, stdout, stderr = setup["results"][name]
    assert code == 0, stderr
    result = json.loads(stdout)  # exactly one JSON object, nothing else on stdout
    assert CONTRACT_KEYS <= set(result)
    return result, stderr


def expected(model_path, images, labels, flip=False):
    predictor = predict.load_exported(model_path)
    probs = predictor(images)
    if flip:
        probs = 0.5 * (probs + predictor(np.ascontiguousarray(images[:, :, ::-1])))
    return classification_report(labels, probs.argmax(-1), list(CLASSES))


def assert_same_numbers(result, want):
    for key in ("n", "accuracy", "balanced_accuracy", "macro_f1"):
        assert result[key] == pytest.approx(want[key]), key
    assert result["confusion_matrix"] == want["confusion_matrix"]
    assert result["per_class"].keys() == want["per_class"].keys()
    for name, values in want["per_class"].items():
        assert result["per_class"][name] == pytest.approx(values), name


def test_csv_split_filters_usage_and_skips_bad_rows(setup):
    result, stderr = parsed(setup, "csv")
    _, images, labels = setup["mixed"]["PublicTest"]
    assert result["n"] == 21
    assert result["accuracy"] == pytest.approx(np.mean(np.arange(21) % 4 != 1))
    assert_same_numbers(result, expected(setup["export"], images, labels))
    assert "skipped 2 malformed rows" in stderr and "'wrong_pixel_count': 1" in stderr
    assert "excluded 1 rows of classes the model lacks: {'contempt': 1}" in stderr
    assert parsed(setup, "csv_val")[0] == result  # val is an alias of PublicTest


def test_csv_with_only_private_test_rows_uses_them_all(setup):
    result, _ = parsed(setup, "private")
    _, images, labels = setup["private"]
    assert result["n"] == 16 and sum(map(sum, result["confusion_matrix"])) == 16
    assert_same_numbers(result, expected(os.path.join(setup["export"], "model_int8.tflite"), images, labels))


def test_image_folder_maps_aliases_and_excludes_unknown_classes(setup):
    result, stderr = parsed(setup, "folder")
    images, labels = setup["folder"]
    assert result["n"] == 12
    assert result["accuracy"] == 1.0
    assert {name: v["support"] for name, v in result["per_class"].items() if v["support"]} == {
        "angry": 3, "happy": 3, "surprise": 3, "neutral": 3,
    }  # fmt: skip
    assert "excluded 3 rows of classes the model lacks: {'contempt': 3}" in stderr
    assert_same_numbers(result, expected(os.path.join(setup["export"], "model_int8.tflite"), images, labels))


def test_tfrecord_dir_defaults_to_val_and_writes_plots(setup):
    result, _ = parsed(setup, "tfrecord")
    images, labels = setup["arrays"]["val"]
    assert result["n"] == SPLIT_SIZES["val"]
    assert_same_numbers(result, expected(setup["export"], images, labels, flip=True))
    out = os.path.join(setup["root"], "eval")
    with open(os.path.join(out, "metrics.json")) as f:
        assert json.load(f)["confusion_matrix"] == result["confusion_matrix"]
    for name in ("confusion_matrix.png", "misclassified.png"):
        assert cv2.imread(os.path.join(out, name)) is not None


def test_missing_data_is_a_one_line_error(setup):
    code, stdout, stderr = setup["results"]["missing"]
    assert code == 2 and stdout == ""
    assert stderr.strip().splitlines() == [f"error: --data {setup['root']}/nothing.csv not found"]
