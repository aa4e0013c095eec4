"""Tests for evaluate.py (DESIGN.md contract 5) on a CSV, an image folder and a TFRecord dir.

The evaluate.py runs are started together in one module fixture (each pays
TensorFlow's start-up; in parallel they share it) and checked one per test
against a direct computation with `predict.load_exported`.
"""

import glob
import gzip
import json
import os
import shutil

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


# FER+ vote columns in the order of fer2013new.csv.
FERPLUS_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
FERPLUS_ORDER = (
    "neutral",
    "happy",
    "surprise",
    "sad",
    "angry",
    "disgust",
    "fear",
    "contempt",
    "unknown",
    "nf",
)


def ferplus_votes(usage, winner, runner_up=None):
    """One fer2013new.csv row: 8 votes for `winner`, or 5/5 with `runner_up` (no majority)."""
    votes = dict.fromkeys(FERPLUS_ORDER, 0)
    votes[winner], votes["unknown"] = (5, 0) if runner_up else (8, 2)
    if runner_up:
        votes[runner_up] = 5
    return f"{usage},img.png," + ",".join(str(votes[name]) for name in FERPLUS_ORDER)


def ferplus_plan(labels, shown):
    """FER+ majority of each PublicTest row: its label, the class its pixels show, none, or contempt."""
    plan = []
    for j, (label, pixels) in enumerate(zip(labels, shown, strict=True)):
        plan.append(
            [CLASSES[label], CLASSES[pixels], None, "contempt"][j % 4]
            if j != 20
            else CLASSES[(label + 1) % 7]
        )
    return plan


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
    # fer2013new.csv for fer.csv.gz: row i labels row i; rows outside PublicTest vote "surprise".
    public_labels = mixed["PublicTest"][2]
    plan = ferplus_plan(public_labels, np.arange(21) % len(CLASSES))
    votes = [ferplus_votes("Training", "surprise")] * 14
    votes += [ferplus_votes("PublicTest", m or "happy", None if m else "sad") for m in plan]
    votes += [ferplus_votes("PrivateTest", "surprise")] * 9 + [ferplus_votes("PublicTest", "angry")] * 3
    with open(os.path.join(root, "fer2013new.csv"), "w") as f:
        f.write("\n".join([FERPLUS_HEADER, *votes]) + "\n")
    with open(os.path.join(root, "short.csv"), "w") as f:
        f.write("\n".join([FERPLUS_HEADER, *votes[:-1]]) + "\n")
    private = fer2013_rows(rng, 16, "PrivateTest", mislabel_every=3)
    write_csv(os.path.join(root, "private.csv"), private[0])
    folder = write_folder(os.path.join(root, "faces"), rng)
    # Broken copies of the converted dataset: a val shard cut in half, and no val shard at all.
    shutil.copytree(os.path.join(root, "data"), os.path.join(root, "data_cut"))
    (shard,) = glob.glob(os.path.join(root, "data_cut", "val-*.tfrecord"))
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) // 2 + 7)  # inside a record
    shutil.copytree(os.path.join(root, "data"), os.path.join(root, "data_noval"))
    os.remove(glob.glob(os.path.join(root, "data_noval", "val-*.tfrecord"))[0])
    os.makedirs(os.path.join(root, "foreign"))
    with open(os.path.join(root, "foreign", "metrics.json"), "w") as f:
        f.write('{"accuracy": 0.9}')
    commands = {
        "csv": [f"--model={export}", f"--data={root}/fer.csv.gz", "--split=PublicTest"],
        "csv_val": [f"--model={export}", f"--data={root}/fer.csv.gz", "--split=val"],
        "private": [f"--model={export}/model_int8.tflite", f"--data={root}/private.csv"],
        "folder": [f"--model={export}/model_int8.tflite", f"--data={root}/faces"],
        "tfrecord": [f"--model={export}", f"--data={root}/data", "--tta=flip", f"--output_dir={root}/eval"],
        "missing": [f"--model={export}", f"--data={root}/nothing.csv"],
        "ferplus": [f"--model={export}", f"--data={root}/fer.csv.gz", "--split=PublicTest",
                    f"--ferplus_labels={root}/fer2013new.csv"],
        "ferplus_short": [f"--model={export}", f"--data={root}/fer.csv.gz", f"--ferplus_labels={root}/short.csv"],
        "ferplus_folder": [f"--model={export}", f"--data={root}/faces", f"--ferplus_labels={root}/fer2013new.csv"],
        "ferplus_dir": [f"--model={export}", f"--data={root}/fer.csv.gz", f"--ferplus_labels={root}/faces"],
        "corrupt_shard": [f"--model={export}", f"--data={root}/data_cut"],
        "missing_shard": [f"--model={export}", f"--data={root}/data_noval"],
        "into_run": [f"--model={export}", f"--data={root}/data", f"--output_dir={run_dir}"],
        "under_file": [f"--model={export}", f"--data={root}/data", f"--output_dir={root}/faces/notes.txt/eval"],
        "foreign": [f"--model={export}", f"--data={root}/data", f"--output_dir={root}/foreign"],
    }  # fmt: skip
    results = run_scripts_in_parallel("evaluate.py", commands)
    return {"root": root, "export": export, "arrays": arrays, "mixed": mixed, "private": private,
            "folder": folder, "ferplus_plan": plan, "results": results, "run_dir": run_dir}  # fmt: skip


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


def test_ferplus_labels_split_scores_by_agreement(setup):
    result, stderr = parsed(setup, "ferplus")
    _, images, labels = setup["mixed"]["PublicTest"]
    assert_same_numbers(result, expected(setup["export"], images, labels))  # the main scores are unchanged
    plan = setup["ferplus_plan"]
    y_ferplus = np.array([CLASSES.index(m) if m in CLASSES else -1 for m in plan])
    agree = y_ferplus == labels
    # Rows 0, 4, ..., 16 vote for the label; rows 1, 5, ... for the class the pixels show, which
    # is never the label there (fer2013_rows mislabels rows j % 4 == 1); row 20 for another class.
    assert agree.sum() == 5 and (y_ferplus == -1).sum() == 10  # 5 without a majority, 5 contempt
    predictions = predict.load_exported(setup["export"])(images).argmax(-1)
    ferplus = result["ferplus"]
    assert ferplus["labels"].endswith("fer2013new.csv")
    assert ferplus["agree"]["n"] == 5 and ferplus["disputed"]["n"] == 16
    assert ferplus["agree"]["accuracy"] == pytest.approx(np.mean(predictions[agree] == labels[agree]))
    assert ferplus["disputed"]["accuracy"] == pytest.approx(np.mean(predictions[~agree] == labels[~agree]))
    contested = ~agree & (y_ferplus >= 0)
    assert ferplus["disputed"]["accuracy_vs_other"] == pytest.approx(
        np.mean(predictions[contested] == y_ferplus[contested])
    )
    given = y_ferplus >= 0
    assert ferplus["vs_other"] == classification_report(y_ferplus[given], predictions[given], list(CLASSES))
    assert "5 rows have no FER+ majority label: {'ferplus_no_majority': 5}" in stderr


@pytest.mark.parametrize(
    "name, message",
    [
        ("ferplus_short", "short.csv has 46 rows but the data has 47: row i must label row i"),
        ("ferplus_folder", "--ferplus_labels needs --data to be the FER2013 CSV its rows label"),
    ],
)
def test_ferplus_labels_bad_input_is_a_one_line_error(setup, name, message):
    check_one_line_error(setup, name, message)


@pytest.mark.parametrize(
    "name, message",
    [
        ("ferplus_dir", "/faces is a folder; expected FER+'s fer2013new.csv"),
        ("corrupt_shard", "; convert the dataset again"),
        ("missing_shard", "dataset_info says 1 val shards, found 0"),
        ("into_run", "runs/tiny is a training run; its metrics.json would be replaced"),
        ("under_file", "/faces/notes.txt is a file, not a folder"),
        ("foreign", "/foreign holds a metrics.json that evaluate.py did not write"),
    ],
)
def test_bad_data_and_outputs_are_one_line_errors_that_write_nothing(setup, name, message):
    check_one_line_error(setup, name, message)
    with open(os.path.join(setup["run_dir"], "metrics.json")) as f:
        assert json.load(f) == {"n": 42, "accuracy": 1.0}  # the run's own metrics, untouched
    with open(os.path.join(setup["root"], "foreign", "metrics.json")) as f:
        assert f.read() == '{"accuracy": 0.9}'


def check_one_line_error(setup, name, message):
    code, stdout, stderr = setup["results"][name]
    assert code == 2 and stdout == ""
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and lines[-1].endswith(message), stderr
    assert "Traceback" not in stderr


def test_an_output_dir_that_is_a_file_is_refused_before_evaluating(tmp_path):
    (tmp_path / "report").write_text("not a folder")
    results = run_scripts_in_parallel(
        "evaluate.py", {"file": [f"--data={tmp_path / 'faces.csv'}", f"--output_dir={tmp_path / 'report'}"]}
    )
    code, stdout, stderr = results["file"]
    assert code == 2 and stdout == ""
    report = tmp_path / "report"
    assert stderr.strip().splitlines() == [f"error: --output_dir={report}: {report} is a file, not a folder"]
