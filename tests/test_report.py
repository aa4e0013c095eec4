"""Tests for fer_tf/report.py: every plot writes a non-empty PNG of the stated size."""

import os

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from fer_tf import report

# Spelled out rather than imported from fer_tf.schema, which imports TensorFlow.
FER2013_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

FER_TRAIN = (3995, 436, 4097, 7215, 4830, 3171, 4965)


def _png_size(path):
    assert os.path.getsize(path) > 1000
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_confusion_matrix_png_size_and_nested_dir(tmp_path):
    cm = np.diag([50, 5, 40, 70, 45, 30, 48]) + 1
    path = str(tmp_path / "a" / "b" / "cm.png")
    assert report.plot_confusion_matrix(cm, FER2013_CLASSES, path, normalize=True, title="t") == path
    assert _png_size(path) == (900, 900)  # max(6, K + 2) = 9 inches at 100 dpi
    raw = report.plot_confusion_matrix(
        cm.tolist(), FER2013_CLASSES, str(tmp_path / "raw.png"), normalize=False, dpi=50
    )
    assert _png_size(raw) == (450, 450)
    assert plt.get_fignums() == []  # nothing left open in pyplot


def test_confusion_matrix_image_is_rgb_and_shows_the_matrix():
    k = 3
    diagonal = report.confusion_matrix_image(np.eye(k, dtype=int) * 10, ["a", "b", "c"], dpi=50)
    uniform = report.confusion_matrix_image(np.ones((k, k), dtype=int), ["a", "b", "c"], dpi=50)
    assert diagonal.shape == (300, 300, 3) and diagonal.dtype == np.uint8

    # A perfect classifier paints dark diagonal cells: far more dark-blue pixels
    # than a uniform matrix (all cells 1/3, light blue).
    def dark(img):
        return int(((img[..., 2] > 80) & (img[..., 0] < 60)).sum())

    assert dark(diagonal) > 5 * max(1, dark(uniform))


def test_zero_row_does_not_divide_by_zero(tmp_path):
    cm = np.array([[3, 1], [0, 0]])
    path = report.plot_confusion_matrix(cm, ["x", "y"], str(tmp_path / "cm.png"))
    assert _png_size(path) == (600, 600)


def test_imbalance_ratio():
    counts = dict(zip(FER2013_CLASSES, FER_TRAIN, strict=True))
    assert report.imbalance_ratio(counts) == pytest.approx(7215 / 436)
    assert report.imbalance_ratio([5, 0, 3]) == float("inf")


@pytest.mark.parametrize("log_scale", [False, True])
def test_class_distribution(tmp_path, log_scale):
    info = {
        "class_names": list(FER2013_CLASSES),
        "splits": {
            "train": {"class_counts": dict(zip(FER2013_CLASSES, FER_TRAIN, strict=True))},
            "val": {
                "class_counts": dict(zip(FER2013_CLASSES, (467, 56, 496, 895, 653, 415, 607), strict=True))
            },
        },
    }
    path = report.plot_class_distribution(info, str(tmp_path / "dist.png"), log_scale=log_scale)
    assert _png_size(path) == (1000, 500)


def test_image_grid_gray_and_rgb(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (10, 48, 48, 1), dtype=np.uint8)
    path = report.plot_image_grid(gray, [f"#{i}" for i in range(10)], str(tmp_path / "g.png"), cols=5)
    width, height = _png_size(path)
    assert width == 600 and 200 < height < 340  # 2 rows of 1.2-inch cells plus title bands
    rgb = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    path = report.plot_image_grid(rgb, None, str(tmp_path / "c.png"), cols=8)
    width, height = _png_size(path)
    assert width == 360 and 110 < height < 130  # 3 columns (fewer images than cols), 1 row


def test_image_grid_keeps_grey_levels(tmp_path):
    # A constant mid-grey image must stay mid-grey (no contrast stretch).
    path = report.plot_image_grid(
        [np.full((48, 48), 128, np.uint8)], None, str(tmp_path / "grey.png"), cols=1
    )
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
    centre = pixels[pixels.shape[0] // 2, pixels.shape[1] // 2]
    assert np.all(np.abs(centre.astype(int) - 128) <= 2)


def test_sample_grid(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (30, 48, 48, 1), dtype=np.uint8)
    labels = np.arange(30) % 7
    labels[labels == 1] = 0  # an empty class leaves its row blank
    path = report.plot_sample_grid(images, labels, FER2013_CLASSES, str(tmp_path / "s.png"), per_class=4)
    width, height = _png_size(path)
    assert width == 600  # (4 + 1) * 1.2 inches
    assert 7 * 100 < height < 7 * 130


def test_training_curves(tmp_path):
    csv_path = tmp_path / "history.csv"
    csv_path.write_text(
        "epoch,accuracy,learning_rate,loss,val_accuracy,val_loss\n"
        "0,0.30,0.001,1.80,0.35,1.70\n1,0.40,0.001,1.50,0.42,1.55\n2,0.45,0.0005,1.40,0.44,1.50\n"
    )
    log = report.read_training_log(str(csv_path))
    np.testing.assert_allclose(log["val_loss"], [1.70, 1.55, 1.50])
    path = report.plot_training_curves(str(csv_path), str(tmp_path / "curves.png"))
    assert _png_size(path) == (1200, 320)  # loss, accuracy, learning_rate panels


def test_training_curves_rejects_empty_log(tmp_path):
    csv_path = tmp_path / "history.csv"
    csv_path.write_text("epoch,loss\n")
    with pytest.raises(ValueError, match="no epochs"):
        report.plot_training_curves(str(csv_path), str(tmp_path / "c.png"))


def test_per_class_recall(tmp_path):
    per_class = {n: {"recall": 0.1 * i, "support": 10 + i} for i, n in enumerate(FER2013_CLASSES)}
    path = report.plot_per_class_recall(per_class, str(tmp_path / "r.png"))
    assert _png_size(path) == (600, 430)
