"""Tests of data_tools/teacher_mix.py: a teacher's predictions written into the train targets once."""

import glob
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from data_tools import derive, fer2013, teacher_mix
from fer_tf import data, schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (FER2013 label, usage, constant pixel value of the face)
ROWS = [
    (0, "Training", 20),
    (3, "Training", 200),
    (6, "Training", 120),
    (4, "PublicTest", 90),
    (3, "Training", 60),
]
WEIGHTS = np.array([[3.0, -2.0, 0.5, 1.0, -1.0, 2.0, 0.0]], np.float32)  # logits = mean pixel * w + b
BIAS = np.array([0.0, 1.0, 0.2, -0.5, 0.3, -1.0, 0.1], np.float32)


def _dataset(tmp_path):
    lines = ["emotion,pixels,Usage"] + [f"{y},{' '.join([str(v)] * 2304)},{u}" for y, u, v in ROWS]
    (tmp_path / "fer2013.csv").write_text("\n".join(lines) + "\n")
    data_dir = str(tmp_path / "fer2013")
    fer2013.convert_fer2013(str(tmp_path / "fer2013.csv"), data_dir, progress=False)
    return data_dir


def _teacher(tmp_path, size=56, classes=7):
    """A teacher whose logits are an affine function of the mean pixel (in [0, 1]), at its own input size."""
    inputs = keras.Input((size, size, 1))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    dense = keras.layers.Dense(classes)
    model = keras.Model(inputs, dense(pooled))
    dense.set_weights([WEIGHTS[:, :classes], BIAS[:classes]])
    path = str(tmp_path / f"teacher{size}_{classes}.keras")
    model.save(path)
    return path


def _softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_train_targets_blend_the_label_with_the_teacher(tmp_path):
    data_dir = _dataset(tmp_path)
    teacher = _teacher(tmp_path)
    out = str(tmp_path / "mix")
    info = teacher_mix.make_teacher_mix(data_dir, out, f"{teacher},{teacher}", weight=0.4, tau=0.5, flip=True)
    parent = schema.read_dataset_info(data_dir)
    assert (
        info["has_soft_labels"]
        and info["splits"]["train"]["class_counts"] == parent["splits"]["train"]["class_counts"]
    )
    source = info["source"]
    assert source["format"] == "teacher_mix" and source["weight"] == 0.4 and source["teacher_tau"] == 0.5
    assert source["teacher_flip"] and len(source["teachers"]) == 2
    # Expected targets, computed here: the teacher's logits, adjusted by 0.5 * log prior (empty classes count 1).
    counts = np.maximum([parent["splits"]["train"]["class_counts"][n] for n in schema.FER2013_CLASSES], 1)
    log_prior = np.log(counts / counts.sum())
    train = derive.read_split(out, "train")
    values = {f"row-{i:06d}": v for i, (_, u, v) in enumerate(ROWS) if u == "Training"}
    for image_id, label, soft in zip(train.ids, train.labels, train.soft_labels, strict=True):
        teacher_probs = _softmax(values[str(image_id)] / 255.0 * WEIGHTS[0] + BIAS - 0.5 * log_prior)
        np.testing.assert_allclose(soft, 0.6 * np.eye(7)[label] + 0.4 * teacher_probs, atol=2e-5)
    top1 = [np.argmax(_softmax(v / 255.0 * WEIGHTS[0] + BIAS - 0.5 * log_prior)) for v in values.values()]
    labels = [y for y, u, _ in ROWS if u == "Training"]
    assert source["teacher_train_accuracy"] == round(float(np.mean(np.equal(top1, labels))), 4)
    assert source["label_still_top"] == 1.0  # weight 0.4 < 0.5: the label always leads
    # Evaluation shards are copied byte for byte: the teacher labels no PublicTest face.
    for path in glob.glob(os.path.join(data_dir, "val-*")):
        with open(path, "rb") as a, open(os.path.join(out, os.path.basename(path)), "rb") as b:
            assert a.read() == b.read()
    # The training pipeline reads the blended targets (train.py --soft_labels).
    ds = data.make_eval_dataset(out, info, "train", batch_size=4, soft_labels=True)
    targets = np.concatenate([batch[-1].numpy() for batch in ds])
    np.testing.assert_allclose(np.sort(targets.max(1)), np.sort(train.soft_labels.max(1)), atol=1e-6)


def test_bad_inputs_are_one_line_errors(tmp_path):
    data_dir = _dataset(tmp_path)
    teacher = _teacher(tmp_path)
    with pytest.raises(ValueError, match=r"--weight must be in \(0, 1\], got 0.0"):
        teacher_mix.make_teacher_mix(data_dir, str(tmp_path / "a"), teacher, weight=0.0)
    with pytest.raises(ValueError, match="--teacher_tau must be >= 0, got -0.1"):
        teacher_mix.make_teacher_mix(data_dir, str(tmp_path / "a"), teacher, tau=-0.1)
    with pytest.raises(ValueError, match="no teacher model at"):
        teacher_mix.make_teacher_mix(data_dir, str(tmp_path / "a"), str(tmp_path / "none"))
    with pytest.raises(ValueError, match="predicts 5 classes"):
        teacher_mix.make_teacher_mix(data_dir, str(tmp_path / "a"), _teacher(tmp_path, classes=5))
    assert not os.path.exists(tmp_path / "a")


def test_cli(tmp_path):
    data_dir = _dataset(tmp_path)
    teacher = _teacher(tmp_path, size=48)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

    def run(*args):
        cmd = [sys.executable, "-m", "data_tools.teacher_mix", f"--data={data_dir}", *args]
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    proc = run(f"--output={tmp_path / 'mix'}", f"--teacher={teacher}", "--weight=0.5")
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and "label still the top target for" in proc.stdout
    proc = run(f"--output={tmp_path / 'mix'}", f"--teacher={teacher}")
    assert proc.returncode == 2 and "exists" in proc.stderr.strip().splitlines()[-1]
    proc = run(f"--output={tmp_path / 'bad'}", f"--teacher={tmp_path / 'missing'}")
    assert proc.returncode == 2 and "no teacher model at" in proc.stderr.strip().splitlines()[-1]
