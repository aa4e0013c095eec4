"""Tests for data_tools/labelled.py and fer_tf.predict.predict_all: the pieces evaluate.py is made of."""

import gzip

import numpy as np
import pytest

from data_tools import labelled
from fer_tf import report
from fer_tf.predict import predict_all

CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def left_right_predictor(images):
    """A real function of the pixels: P(class 0) is the share of brightness in the left half."""
    images = np.asarray(images, np.float32)
    half = images.shape[2] // 2
    left = images[:, :, :half].sum(axis=(1, 2, 3))
    right = images[:, :, half:].sum(axis=(1, 2, 3))
    p = left / np.maximum(left + right, 1e-6)
    return np.stack([p, 1 - p], axis=1)


def test_predict_all_batches_and_flip_tta():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 8, 8, 1)).astype(np.uint8)
    images[:, :, :4] //= 4  # the right half is brighter

    plain = predict_all(left_right_predictor, images, batch_size=3)
    np.testing.assert_allclose(plain, left_right_predictor(images), rtol=1e-6)
    assert (plain[:, 0] < 0.5).all()
    # Averaged with the mirror image, left and right weigh the same.
    np.testing.assert_allclose(predict_all(left_right_predictor, images, 4, tta="flip"), 0.5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown tta"):
        predict_all(left_right_predictor, images, tta="rotate")


def test_predict_all_zoom_tta_averages_with_the_zoomed_centre():
    images = np.zeros((3, 48, 40, 1), np.uint8)
    images[:, 2:46, 2:38] = 200  # zero border; the zoom (44 of 48, 36 of 40 px) keeps only the 200s
    seen = []

    def mean_brightness(batch):
        seen.append(batch)
        p = batch.mean(axis=(1, 2, 3)) / 255.0
        return np.stack([p, 1 - p], axis=1)

    probs = predict_all(mean_brightness, images, tta="zoom")
    assert seen[1].dtype == np.uint8 and seen[1].shape == images.shape and (seen[1] == 200).all()
    plain = images.mean() / 255.0
    np.testing.assert_allclose(probs[:, 0], 0.5 * (plain + 200 / 255.0), rtol=1e-6)


def test_match_classes_drops_and_reports_unknown_classes():
    images = np.arange(5)[:, None, None, None].astype(np.uint8)
    names = ["happy", "contempt", "angry", "contempt", "neutral"]
    messages = []
    kept, labels, excluded = labelled.match_classes(images, names, CLASSES, messages.append)
    assert kept.ravel().tolist() == [0, 2, 4]
    assert labels.tolist() == [3, 0, 6]
    assert excluded == {"contempt": 2}
    assert "excluded 2 rows" in messages[0]
    with pytest.raises(ValueError, match="no image has a class of the model"):
        labelled.match_classes(images[:2], ["contempt", "pain"], CLASSES, messages.append)


def test_load_labelled_csv_counts_bad_rows_and_filters_usage(tmp_path):
    pixels = " ".join(["7"] * 48 * 48)
    rows = [
        f"3,{pixels},PublicTest",
        f"0,{pixels},Training",
        f"9,{pixels},PublicTest",  # no such class
        "2,1 2 3,PublicTest",  # wrong pixel count
        f"6,{pixels},PublicTest",
    ]
    path = str(tmp_path / "faces.csv.gz")
    with gzip.open(path, "wt") as f:
        f.write("emotion,pixels,Usage\n" + "\n".join(rows) + "\n")
    messages = []
    images, names = labelled.load_labelled(path, "publictest", 48, 1, messages.append)
    assert names == ["happy", "neutral"]
    assert images.shape == (2, 48, 48, 1) and images.dtype == np.uint8 and (images == 7).all()
    assert "skipped 2 malformed rows" in messages[0]
    images, names = labelled.load_labelled(path, None, 48, 1, messages.append)
    assert names == ["happy", "angry", "neutral"]
    with pytest.raises(ValueError, match="no rows with Usage 'PrivateTest'"):
        labelled.load_labelled(path, "PrivateTest", 48, 1, messages.append)


def test_load_labelled_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "happy").mkdir()
    with pytest.raises(ValueError, match="no labelled images"):
        labelled.load_labelled(str(tmp_path), None, 48, 1, lambda message: None)


def test_plot_misclassified_draws_the_mistakes(tmp_path):
    images = np.zeros((4, 8, 8, 1), np.uint8)
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]], np.float32)
    path = report.plot_misclassified(
        images, np.array([0, 0, 0, 1]), probs, ["a", "b"], str(tmp_path / "m.png")
    )
    assert (tmp_path / "m.png").stat().st_size > 0 and path.endswith("m.png")
