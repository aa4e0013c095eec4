"""Tests for fer_tf/metrics.py: the report against sklearn and by hand, mean/std, the callback."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn import metrics as skmetrics

from fer_tf import metrics

NAMES = ["angry", "disgust", "fear", "happy"]
# "fear" (2) never occurs in y_true but is predicted once.
Y_TRUE = np.array([0, 0, 0, 1, 1, 3, 3, 3, 3, 3])
Y_PRED = np.array([0, 0, 3, 1, 2, 3, 3, 3, 0, 3])


def test_report_by_hand_with_absent_class():
    report = metrics.classification_report(Y_TRUE, Y_PRED, NAMES)
    assert report["n"] == 10
    assert report["accuracy"] == pytest.approx(7 / 10)
    # Recalls of the present classes: angry 2/3, disgust 1/2, happy 4/5.
    assert report["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 4 / 5) / 3)
    assert report["confusion_matrix"] == [[2, 0, 0, 1], [0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 4]]
    assert report["per_class"]["fear"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report["per_class"]["disgust"] == {
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(2 / 3),
        "support": 2,
    }
    f1 = {"angry": 2 / 3, "disgust": 2 / 3, "happy": 0.8}  # 2PR/(P+R) with P = 2/3, 1, 4/5
    assert report["macro_f1"] == pytest.approx(np.mean(list(f1.values())))


def test_report_agrees_with_sklearn():
    report = metrics.classification_report(Y_TRUE, Y_PRED, NAMES)
    sk = skmetrics.classification_report(
        Y_TRUE, Y_PRED, labels=range(4), target_names=NAMES, output_dict=True, zero_division=0
    )
    for name in NAMES:
        for key in ("precision", "recall", "f1"):
            assert report["per_class"][name][key] == pytest.approx(
                sk[name][key if key != "f1" else "f1-score"]
            )
        assert report["per_class"][name]["support"] == sk[name]["support"]
    with pytest.warns(UserWarning):  # sklearn warns about the class absent from y_true
        assert report["balanced_accuracy"] == pytest.approx(skmetrics.balanced_accuracy_score(Y_TRUE, Y_PRED))
    assert report["macro_f1"] == pytest.approx(
        skmetrics.f1_score(Y_TRUE, Y_PRED, labels=[0, 1, 3], average="macro", zero_division=0)
    )
    np.testing.assert_array_equal(
        report["confusion_matrix"], skmetrics.confusion_matrix(Y_TRUE, Y_PRED, labels=range(4))
    )


def test_report_accepts_one_hot_targets_and_logits():
    one_hot = np.eye(4)[Y_TRUE]
    logits = np.eye(4)[Y_PRED] * 3.0 - 1.0
    assert metrics.classification_report(one_hot, logits, NAMES) == metrics.classification_report(
        Y_TRUE, Y_PRED, NAMES
    )


def test_report_rejects_bad_input():
    with pytest.raises(ValueError, match="outside"):
        metrics.classification_report([0, 4], [0, 1], NAMES)
    with pytest.raises(ValueError, match="differ"):
        metrics.classification_report([0, 1], [0], NAMES)
    with pytest.raises(ValueError, match="at least one"):
        metrics.classification_report([], [], NAMES)


def test_label_agreement_by_hand():
    # The second labelling agrees with Y_TRUE on rows 0, 1, 3, 5, 6 and 9; it disputes rows 2, 4
    # and 8 with another class, and gives none for row 7. Y_PRED follows it on every labelled row.
    y_other = np.array([0, 0, 3, 1, 2, 3, 3, -1, 0, 3])
    result = metrics.label_agreement(Y_TRUE, Y_PRED, y_other, NAMES)
    agree = np.array([0, 1, 3, 5, 6, 9])
    assert result["agree"]["n"] == 6
    assert np.all(Y_PRED[agree] == Y_TRUE[agree])
    assert result["agree"]["accuracy"] == 1.0 and result["agree"]["balanced_accuracy"] == 1.0
    # Disputed rows 2, 4, 7, 8: predictions 3, 2, 3, 0 against y_true 0, 1, 3, 3 -> 1/4 right;
    # against y_other (rows 2, 4, 8: 3, 2, 0) all 3 right.
    assert result["disputed"] == {"n": 4, "accuracy": 0.25, "accuracy_vs_other": 1.0}
    assert result["vs_other"]["n"] == 9
    assert result["vs_other"]["accuracy"] == 1.0
    assert result["vs_other"] == metrics.classification_report(
        y_other[y_other >= 0], Y_PRED[y_other >= 0], NAMES
    )


def test_label_agreement_empty_parts_are_none():
    result = metrics.label_agreement(Y_TRUE, Y_PRED, Y_TRUE, NAMES)
    assert result["disputed"] is None and result["agree"]["n"] == 10
    assert result["vs_other"] == metrics.classification_report(Y_TRUE, Y_PRED, NAMES)
    none = metrics.label_agreement(Y_TRUE, Y_PRED, np.full(10, -1), NAMES)
    assert none["agree"] is None and none["vs_other"] is None
    assert none["disputed"] == {"n": 10, "accuracy": pytest.approx(0.7), "accuracy_vs_other": None}
    with pytest.raises(ValueError, match="differ"):
        metrics.label_agreement(Y_TRUE, Y_PRED, Y_TRUE[:5], NAMES)


def test_mean_std_uses_sample_std_and_dotted_keys():
    reports = [
        {"accuracy": a, "per_class": {"disgust": {"recall": r}}}
        for a, r in [(0.70, 0.4), (0.72, 0.5), (0.74, 0.6)]
    ]
    summary = metrics.mean_std(reports, ["accuracy", "per_class.disgust.recall"])
    assert summary["accuracy"] == {"mean": pytest.approx(0.72), "std": pytest.approx(0.02), "n": 3}
    assert summary["per_class.disgust.recall"]["std"] == pytest.approx(0.1)
    assert metrics.format_mean_std(summary) == (
        "accuracy: 72.00 ± 2.00 (n=3)\nper_class.disgust.recall: 50.00 ± 10.00 (n=3)"
    )
    single = metrics.mean_std(reports[:1], ["accuracy"])
    assert math.isnan(single["accuracy"]["std"])
    assert metrics.format_mean_std(single, digits=1) == "accuracy: 70.0 ± n/a (n=1)"


class _LogRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append(dict(logs))


def _fixed_model() -> keras.Model:
    # Logits = the first 4 pixels: the prediction is whichever of them is largest.
    inputs = keras.Input((2, 2, 1))
    x = keras.layers.Flatten()(inputs)
    head = keras.layers.Dense(4, use_bias=False, name="head")
    model = keras.Model(inputs, head(x))
    head.set_weights([np.eye(4, dtype=np.float32)])
    model.compile(
        optimizer=keras.optimizers.SGD(0.0), loss=keras.losses.CategoricalCrossentropy(from_logits=True)
    )
    return model


def test_validation_metrics_callback_feeds_later_callbacks(tmp_path):
    images = np.eye(4, dtype=np.float32)[Y_PRED].reshape(-1, 2, 2, 1)
    targets = np.eye(4, dtype=np.float32)[Y_TRUE]
    val_ds = tf.data.Dataset.from_tensor_slices((images, targets)).batch(4)  # 4 + 4 + 2: keeps remainder
    validation = metrics.ValidationMetrics(val_ds, NAMES)
    recorder = _LogRecorder()
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "best.keras"), monitor="val_balanced_accuracy", mode="max", save_best_only=True
    )
    model = _fixed_model()
    history = model.fit(images, targets, epochs=2, verbose=0, callbacks=[validation, recorder, checkpoint])

    want = metrics.classification_report(Y_TRUE, Y_PRED, NAMES)
    assert validation.report == want
    np.testing.assert_array_equal(validation.confusion_matrix, want["confusion_matrix"])
    logs = recorder.seen[-1]
    assert logs["val_balanced_accuracy"] == pytest.approx(want["balanced_accuracy"])
    assert logs["val_accuracy"] == pytest.approx(0.7) and logs["val_macro_f1"] == pytest.approx(
        want["macro_f1"]
    )
    assert logs["val_recall_disgust"] == pytest.approx(0.5) and logs["val_recall_fear"] == 0.0
    assert history.history["val_balanced_accuracy"] == pytest.approx([want["balanced_accuracy"]] * 2)
    assert (tmp_path / "best.keras").exists()
