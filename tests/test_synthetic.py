"""Tests of data_tools/synthetic.py and synthetic_faces.py: the built-in synthetic expression dataset."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pandas as pd
import pytest

from data_tools import synthetic, synthetic_faces
from fer_tf.schema import FER2013_CLASSES

K = len(FER2013_CLASSES)


def test_generate_is_deterministic_per_seed():
    images, labels = synthetic.generate(30, seed=3)
    again_images, again_labels = synthetic.generate(30, seed=3)
    other_images, _ = synthetic.generate(30, seed=4)
    np.testing.assert_array_equal(images, again_images)
    np.testing.assert_array_equal(labels, again_labels)
    assert np.abs(images.astype(int) - other_images.astype(int)).mean() > 10


def test_shapes_dtypes_and_pixel_range():
    images, labels = synthetic.generate(21, seed=0, image_size=32)
    assert images.shape == (21, 32, 32) and images.dtype == np.uint8
    assert labels.shape == (21,) and labels.dtype == np.int64
    assert set(labels.tolist()) == set(range(K))  # every class, even in a tiny set
    assert images.reshape(21, -1).std(axis=1).min() > 5  # real content, not flat frames
    face = synthetic_faces.render_face(3, np.random.default_rng(0))
    big = synthetic_faces.render_face_large(3, np.random.default_rng(0), size=120)
    assert face.shape == (48, 48) and big.shape == (120, 120) and big.dtype == np.uint8
    with pytest.raises(ValueError):
        synthetic_faces.render_face(K, np.random.default_rng(0))


def test_default_counts_follow_fer2013_proportions():
    counts = synthetic.class_counts_for(sum(synthetic.FER2013_TRAIN_COUNTS))
    np.testing.assert_allclose(counts, synthetic.FER2013_TRAIN_COUNTS, atol=1)
    _, labels = synthetic.generate(300, seed=1)
    expected = 300 * np.array(synthetic.FER2013_TRAIN_COUNTS) / sum(synthetic.FER2013_TRAIN_COUNTS)
    np.testing.assert_allclose(np.bincount(labels, minlength=K), expected, atol=1.0)


@pytest.mark.parametrize("imbalance_factor", [1.0, 10.0, 50.0])
def test_imbalance_factor_gives_exponential_profile(imbalance_factor):
    counts = synthetic.class_counts_for(2000, imbalance_factor=imbalance_factor)
    assert counts.sum() == 2000
    ranked = counts[list(synthetic.IMBALANCE_RANK)]
    profile = imbalance_factor ** (-np.arange(K) / (K - 1))
    np.testing.assert_allclose(ranked, 2000 * profile / profile.sum(), atol=1.0)
    assert ranked[0] / ranked[-1] == pytest.approx(imbalance_factor, rel=0.05)
    assert FER2013_CLASSES[synthetic.IMBALANCE_RANK[-1]] == "disgust"


def test_class_proportions_and_bad_arguments():
    counts = synthetic.class_counts_for(100, class_proportions=[1, 0, 0, 3, 0, 0, 0])
    np.testing.assert_array_equal(counts, [25, 0, 0, 75, 0, 0, 0])
    _, labels = synthetic.generate(40, seed=0, class_proportions=[1, 0, 0, 3, 0, 0, 0])
    assert set(labels.tolist()) == {0, 3}
    with pytest.raises(ValueError):
        synthetic.class_counts_for(10, class_proportions=[1] * K, imbalance_factor=2.0)
    with pytest.raises(ValueError):
        synthetic.class_counts_for(10, class_proportions=[1, 2])
    with pytest.raises(ValueError):
        synthetic.class_counts_for(10, imbalance_factor=0.5)


def _hog(images):
    hog = cv2.HOGDescriptor((48, 48), (16, 16), (8, 8), (8, 8), 9)
    return np.stack([hog.compute(image).ravel() for image in images])


def test_classes_are_distinguishable_but_not_trivial():
    train_x, train_y = synthetic.generate(700, seed=10, imbalance_factor=1.0)
    test_x, test_y = synthetic.generate(350, seed=11, imbalance_factor=1.0)
    train_f, test_f = _hog(train_x), _hog(test_x)
    mean, std = train_f.mean(0), train_f.std(0) + 1e-6
    train_f, test_f = (train_f - mean) / std, (test_f - mean) / std
    # Nearest class mean: the per-class mean shapes differ (chance is 1/7; measured ~0.6).
    means = np.stack([train_f[train_y == k].mean(0) for k in range(K)])
    nearest = np.argmin(((test_f[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (nearest == test_y).mean() > 0.4
    # A ridge-regression linear classifier: far above chance, far from perfect (measured ~0.78).
    targets = np.eye(K)[train_y] * 2 - 1
    weights = np.linalg.solve(train_f.T @ train_f + 1000.0 * np.eye(train_f.shape[1]), train_f.T @ targets)
    accuracy = ((test_f @ weights).argmax(1) == test_y).mean()
    assert 0.55 < accuracy < 0.97


def test_fer2013_csv_round_trip(tmp_path):
    path = tmp_path / "synthetic.csv.gz"
    counts = synthetic.write_fer2013_csv(str(path), num_train=30, num_val=10, num_test=8, seed=5)
    assert list(counts) == ["train", "val", "test"]
    assert [sum(c.values()) for c in counts.values()] == [30, 10, 8]
    frame = pd.read_csv(path)
    assert list(frame.columns) == ["emotion", "pixels", "Usage"]
    assert frame["Usage"].tolist() == ["Training"] * 30 + ["PublicTest"] * 10 + ["PrivateTest"] * 8
    pixels = np.stack([np.array(row.split(), dtype=np.int64) for row in frame["pixels"]])
    assert pixels.shape == (48, 2304) and pixels.min() >= 0 and pixels.max() <= 255
    train = frame[frame["Usage"] == "Training"]
    by_name = {FER2013_CLASSES[k]: int(n) for k, n in enumerate(np.bincount(train["emotion"], minlength=K))}
    assert by_name == counts["train"]
    # Same arguments, same bytes (gzip header without a timestamp); no temp files left.
    again = tmp_path / "again.csv.gz"
    synthetic.write_fer2013_csv(str(again), num_train=30, num_val=10, num_test=8, seed=5)
    assert path.read_bytes() == again.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["again.csv.gz", "synthetic.csv.gz"]


def test_plain_csv_without_test_split(tmp_path):
    path = tmp_path / "sub" / "fer.csv"
    counts = synthetic.write_fer2013_csv(str(path), num_train=12, num_val=7, seed=1)
    assert list(counts) == ["train", "val"]
    frame = pd.read_csv(path)
    assert len(frame) == 19 and set(frame["Usage"]) == {"Training", "PublicTest"}


def test_image_folder_with_splits(tmp_path):
    counts = synthetic.write_image_folder(str(tmp_path), num_images=50, seed=2)
    assert sorted(counts) == ["test", "train", "val"]
    assert [sum(counts[s].values()) for s in ("train", "val", "test")] == [40, 5, 5]
    for split, by_class in counts.items():
        assert sorted(os.listdir(tmp_path / split)) == sorted(FER2013_CLASSES)
        for name, n in by_class.items():
            files = sorted(os.listdir(tmp_path / split / name))
            assert len(files) == n and all(f.endswith(".png") for f in files)
    first = next(iter(sorted((tmp_path / "train" / "happy").iterdir())))
    assert cv2.imread(str(first), cv2.IMREAD_UNCHANGED).shape == (48, 48)


def test_flat_color_image_folder(tmp_path):
    names = ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]
    counts = synthetic.write_image_folder(
        str(tmp_path), num_images=14, split_dirs=False, image_format="jpg", size=(40, 56), channels=3,
        class_names=names,
    )  # fmt: skip
    assert sorted(counts) == sorted(names) and sum(counts.values()) == 14
    assert sorted(os.listdir(tmp_path)) == sorted(names)
    image = cv2.imread(str(next((tmp_path / "Happy").iterdir())), cv2.IMREAD_UNCHANGED)
    assert image.shape == (40, 56, 3)
    with pytest.raises(ValueError):
        synthetic.write_image_folder(str(tmp_path), num_images=2, image_format="gif")


def test_clip_has_one_segment_per_class(tmp_path):
    path = tmp_path / "clip.avi"
    labels = synthetic.write_clip(str(path), seed=0, frame_size=(96, 128), fps=4, seconds_per_face=1.0)
    np.testing.assert_array_equal(labels, np.repeat(np.arange(K), 4))
    capture = cv2.VideoCapture(str(path))
    frames = []
    ok, frame = capture.read()
    while ok:
        frames.append(frame)
        ok, frame = capture.read()
    assert len(frames) == len(labels) and frames[0].shape == (96, 128, 3)


def test_cli_runs_as_a_script(tmp_path):
    script = os.path.join(os.path.dirname(synthetic.__file__), "synthetic.py")
    output = tmp_path / "out" / "demo.csv"
    flags = [f"--output={output}", "--num_train=14", "--num_val=7", "--num_test=7", "--seed=3"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, script, *flags], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    usage = pd.read_csv(output)["Usage"].value_counts().to_dict()
    assert usage == {"Training": 14, "PublicTest": 7, "PrivateTest": 7}
    assert "train: 14 images" in done.stdout


@pytest.mark.parametrize("bad", [{"num_val": -1}, {"imbalance_factor": 0.5}, {"output": "FILE/x.csv"}])
def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys, bad):
    (tmp_path / "FILE").write_text("a file, not a folder")
    kw = {"output": "ok.csv", "num_train": 7, "num_val": 7, "num_test": 0, **bad}
    output = str(tmp_path / kw.pop("output"))
    with pytest.raises(SystemExit) as stopped:
        synthetic.run(output, **kw)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["FILE"]  # nothing half-written
