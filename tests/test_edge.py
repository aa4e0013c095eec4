"""The edge path: requirements-edge.txt alone (OpenCV, NumPy, LiteRT; no TensorFlow) runs webcam.py.

The environment is built the way the README tells a Raspberry-Pi user to build it, in
`.venv-edge/` (reused while requirements-edge.txt is unchanged; about 30 s to create).
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_inference import frame_with_faces

from fer_tf import classifiers

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "requirements-edge.txt"
SHIPPED_INT8 = ROOT / "models" / "fer2013" / "model_int8.tflite"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.fixture(scope="module")
def edge_python() -> Path:
    venv = ROOT / ".venv-edge"
    python, stamp = venv / "bin" / "python", venv / ".installed"
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if not (stamp.is_file() and stamp.read_text() == digest and python.exists()):
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "-r", str(REQUIREMENTS)]
        install = subprocess.run(pip, capture_output=True, text=True, timeout=900)
        assert install.returncode == 0, f"requirements-edge.txt does not install: {install.stderr[-2000:]}"
        check = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout
        stamp.write_text(digest)
    return python


def test_edge_env_has_no_tensorflow_and_loads_the_model_with_litert(edge_python):
    code = (
        "import importlib.util, sys\n"
        "assert importlib.util.find_spec('tensorflow') is None, 'tensorflow is installed'\n"
        "from fer_tf import classifiers, inference\n"
        f"c = inference.load_classifier({str(SHIPPED_INT8.parent)!r})\n"
        "print(type(c).__name__, c.runtime, c.path.name)\n"
        "assert 'tensorflow' not in sys.modules\n"
    )
    proc = subprocess.run([str(edge_python), "-c", code], cwd=ROOT, capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The export's faster file on this CPU: int8, or float32 without int8 dot-product instructions.
    assert proc.stdout.split() == ["TFLiteClassifier", "LiteRT", classifiers.tflite_preference()[0]]


def _faces(log: Path) -> list[dict]:
    return [face for line in log.read_text().splitlines() for face in json.loads(line)["faces"]]


def test_webcam_on_the_edge_env_gives_the_answers_of_full_tensorflow(edge_python, tmp_path):
    clip = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(clip, cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (640, 480))
    for i in range(6):  # two faces, one moving
        writer.write(frame_with_faces([(20 + 10 * i, 60), (380, 100)]))
    writer.release()
    logs = {}
    for name, python in (("edge", edge_python), ("tensorflow", Path(sys.executable))):
        logs[name] = tmp_path / f"{name}.jsonl"
        args = [
            f"--model={SHIPPED_INT8}",
            f"--source={clip}",
            "--headless",
            "--smoothing=none",
            f"--log={logs[name]}",
        ]
        proc = subprocess.run(
            [str(python), "webcam.py", *args], cwd=ROOT, capture_output=True, text=True, env=ENV
        )
        assert proc.returncode == 0, f"{name}: {proc.stderr[-2000:]}"
        assert "FPS" in proc.stdout and "6 frames" in proc.stdout
        runtime = "LiteRT" if name == "edge" else "tf.lite"
        assert f"model_int8.tflite on {runtime}" in proc.stdout
    edge, full = _faces(logs["edge"]), _faces(logs["tensorflow"])
    assert len(edge) == len(full) == 12
    for a, b in zip(edge, full, strict=True):
        assert a["box"] == b["box"]
        assert list(a["probabilities"]) == list(b["probabilities"])
        # The same int8 model on two runtimes: equal up to one uint8 output step.
        np.testing.assert_allclose(
            list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1.5 / 256
        )
