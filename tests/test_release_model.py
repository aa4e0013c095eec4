"""The shipped release model (models/fer2013/): its contract, its defaults and its reported numbers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fer_tf import recover, schema
from fer_tf.classifiers import default_model_path
from fer_tf.inference import Recognizer

ROOT = Path(__file__).resolve().parents[1]
RELEASE = ROOT / "models" / "fer2013"
FER2013_CSV = ROOT.parent / "shared" / "data" / "fer2013" / "fer2013_train_publictest.csv.gz"


def _metadata():
    return json.loads((RELEASE / "metadata.json").read_text())


def _evaluate(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "evaluate.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def test_release_export_follows_the_contract_and_fits_in_git():
    assert default_model_path() == RELEASE
    names = {"saved_model", "model_float32.tflite", "model_int8.tflite", "labels.txt", "metadata.json"}
    assert names | {"MODEL_CARD.md"} <= set(os.listdir(RELEASE))
    assert (RELEASE / "labels.txt").read_text().split() == list(schema.FER2013_CLASSES)
    meta = _metadata()
    assert meta["class_names"] == list(schema.FER2013_CLASSES) and meta["input_size"] == 48
    assert meta["parity"]["int8"]["top1_agreement"] >= meta["parity"]["int8"]["threshold"]
    # Shared through git: no path of the machine that built it, and small.
    text = (RELEASE / "metadata.json").read_text()
    assert not any(f'"{root}' in text for root in ("/work", "/home", "/tmp", "/root", "C:\\\\"))
    assert (RELEASE / "model_int8.tflite").stat().st_size <= 1.5 * 2**20
    total = sum(f.stat().st_size for f in RELEASE.rglob("*") if f.is_file())
    assert total <= 15 * 2**20


def test_recognizer_and_evaluate_use_the_release_model_by_default(synthetic_data_dir):
    frame = np.full((240, 320, 3), 90, np.uint8)
    recognizer = Recognizer()  # no model given: the shipped one
    assert recognizer.classifier.class_names == list(schema.FER2013_CLASSES)
    assert recognizer.predict(frame) == []  # no face, no result, no error
    probs = recognizer.classifier.predict_faces([np.full((48, 48, 1), 128, np.uint8)])
    assert probs.shape == (1, 7) and abs(float(probs.sum()) - 1.0) < 0.02
    result, stderr = _evaluate(f"--data={synthetic_data_dir}", "--split=val")
    info = schema.read_dataset_info(synthetic_data_dir)
    assert result["n"] == info["splits"]["val"]["num_examples"]
    assert "models/fer2013" in stderr


@pytest.mark.skipif(not FER2013_CSV.exists(), reason="FER2013 is not beside the repository")
def test_model_card_numbers_are_reproduced_by_evaluate():
    # metadata.json holds what export measured on the converted PublicTest shards;
    # evaluate.py on the raw CSV must give the same figures for the int8 model that ships.
    exported = _metadata()["validation_metrics"]["exported"]["int8"]
    result, _ = _evaluate(
        f"--model={RELEASE / 'model_int8.tflite'}", f"--data={FER2013_CSV}", "--split=PublicTest"
    )
    assert result["n"] == exported["n"] == 3589
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert result[key] == pytest.approx(exported[key], abs=1e-9), key
    card = (RELEASE / "MODEL_CARD.md").read_text()
    assert f"{100 * result['accuracy']:.1f}%" in card
    assert f"{100 * result['balanced_accuracy']:.1f}%" in card


def test_release_export_rebuilds_into_its_keras_model():
    # configs/release_fer2013_v10.flags distils from this model after `python recover.py`;
    # model_from_export checks the rebuilt network against the export's own endpoint.
    model = recover.model_from_export(str(RELEASE))
    meta = _metadata()
    assert model.count_params() == meta["model"]["params"]
    assert model.input_shape[1] == meta["preprocessing"]["network_input_size"]
