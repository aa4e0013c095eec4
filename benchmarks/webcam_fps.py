"""End-to-end FPS of webcam.py's pipeline on a 640x480 clip with 3 faces.

  python benchmarks/webcam_fps.py [--model=export/model_int8.tflite] [--frames=150] [--threads=2]

Measured in one run, on the same decoded clip:
  - baseline: decode + YuNet detection alone (the floor any pipeline pays);
  - ours: decode + YuNet + align + TFLite (as webcam.py picks it) + track + EMA smoothing + overlay drawing;
  - Haar instead of YuNet, for reference;
  - per-face latency of align_face and of the classifier.
Faces are real FER2013 images upscaled when ../shared/data is present, else
synthetic ones from data_tools.synthetic_faces. Without --model it uses the shipped
models/fer2013/model_int8.tflite, or builds an untrained FERNet int8 stand-in
(same ops and size, so the same speed). The `fer` package pipeline is timed
too when it is importable (it needs torch + facenet-pytorch, not in this stack).
Goal: >= 30 FPS end to end on 2 CPU cores.
"""

import csv
import gzip
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fer_tf.inference import FaceDetector, Recognizer, align_face, default_model_path, open_source  # noqa: E402

FER2013_CSV = ROOT.parent / "shared" / "data" / "fer2013" / "fer2013_train_publictest.csv.gz"
F = flags.FLAGS
flags.DEFINE_string(
    "model",
    None,
    ".tflite or export directory (the TFLite file webcam.py picks for this CPU) to time "
    "(default: the release model, else an untrained stand-in).",
)
flags.DEFINE_integer("frames", 150, "Clip length.")
flags.DEFINE_integer("repeats", 3, "Passes over the clip per pipeline; the best counts.")
flags.DEFINE_integer("threads", 2, "OpenCV threads.")
flags.DEFINE_integer("classifier_threads", 1, "TFLite interpreter threads.")


def face_images(n: int = 3) -> tuple[list[np.ndarray], str]:
    """n gray face crops of 150 px the detector finds: FER2013 if present, else synthetic."""
    detector = FaceDetector("yunet")
    if FER2013_CSV.exists():
        with gzip.open(FER2013_CSV, "rt") as f:
            rows = csv.reader(f)
            next(rows)
            candidates = [np.array(next(rows)[1].split(), np.uint8).reshape(48, 48) for _ in range(200)]
            source = "FER2013 faces upscaled to 150 px"
    else:
        from data_tools.synthetic_faces import render_face_large

        rng = np.random.default_rng(0)
        candidates = (render_face_large(i % 7, rng, 160) for i in range(200))
        source = "synthetic faces (data_tools.synthetic_faces)"
    faces = []
    for face in candidates:
        face = cv2.resize(face, (150, 150), interpolation=cv2.INTER_CUBIC)
        if len(detector.detect(cv2.copyMakeBorder(face, 60, 60, 60, 60, cv2.BORDER_REPLICATE))) == 1:
            faces.append(face)
        if len(faces) == n:
            return faces, source
    raise RuntimeError("could not find faces the detector fires on")


def write_clip(path: str, faces: list[np.ndarray], frames: int) -> None:
    """A 640x480 mp4 of the faces drifting a few pixels per frame, over a gradient."""
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (640, 480))
    background = np.tile(np.linspace(40, 160, 640, dtype=np.uint8), (480, 1))
    for t in range(frames):
        frame = background.copy()
        for i, face in enumerate(faces):
            x = 30 + 200 * i + int(15 * np.sin(t / 10 + i))
            y = 140 + int(20 * np.cos(t / 12 + i))
            frame[y : y + 150, x : x + 150] = face
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    writer.release()


def stand_in_model(directory: str) -> str:
    """An untrained FERNet exported to int8 TFLite: the release model's ops at its size."""
    from fer_tf import export_lib, models

    model = models.build_model("fernet", 7, (48, 48, 1))
    names = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    archive = export_lib.build_export_archive(model, names)
    saved = os.path.join(directory, "saved_model")
    archive.write_out(saved, verbose=False)
    representative = np.random.default_rng(0).integers(0, 256, (32, 48, 48, 1), np.uint8)
    path = os.path.join(directory, "model_int8.tflite")
    Path(path).write_bytes(export_lib.convert_tflite(saved, "int8", representative))
    Path(directory, "labels.txt").write_text("".join(f"{n}\n" for n in names))
    return path


def timed_pass(clip: str, step, repeats: int) -> tuple[float, float, float]:
    """Runs `step(frame)` over the clip `repeats` times.

    Returns:
      (best FPS, CPU milliseconds per frame of that pass, mean faces per frame).
      Best of several passes, because the shared machine's load comes and goes.
    """
    best = (0.0, 0.0, 0.0)
    for _ in range(repeats):
        faces, n = 0, 0
        wall, cpu = time.perf_counter(), time.process_time()
        for frame in open_source(clip):
            faces += step(frame)
            n += 1
        fps = n / (time.perf_counter() - wall)
        if fps > best[0]:
            best = (fps, 1000 * (time.process_time() - cpu) / n, faces / n)
    return best


def per_face_ms(fn, repeats: int = 200) -> float:
    """Median milliseconds of one call of fn."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def fer_package_pass(clip: str):
    """The `fer` package's pipeline on the same clip, or None when it is not installed."""
    if importlib.util.find_spec("fer") is None:
        print("fer package: not installed (needs torch + facenet-pytorch + TF + opencv-contrib); skipped")
        return None
    from fer import FER

    detector = FER()
    return timed_pass(clip, lambda f: len(detector.detect_emotions(f)), F.repeats)


def main(argv):
    del argv
    cv2.setNumThreads(F.threads)
    with tempfile.TemporaryDirectory() as tmp:
        faces, face_source = face_images()
        clip = os.path.join(tmp, "clip.mp4")
        write_clip(clip, faces, F.frames)
        model = F.model or str(default_model_path())
        if not os.path.exists(model):
            print(f"{model} not found: timing an untrained FERNet int8 stand-in")
            model = stand_in_model(tmp)
        yunet, haar = FaceDetector("yunet"), FaceDetector("haar")
        recognizer = Recognizer(model, detector=yunet, smoothing="ema", num_threads=F.classifier_threads)
        rows = {
            "baseline: decode + YuNet detection": timed_pass(clip, lambda f: len(yunet.detect(f)), F.repeats),
            "decode + Haar detection": timed_pass(clip, lambda f: len(haar.detect(f)), F.repeats),
            "ours: YuNet + align + TFLite + draw": timed_pass(
                clip, lambda f: len(recognizer.process_frame(f)[0]), F.repeats
            ),
            "fer package (Haar + mini-Xception)": fer_package_pass(clip),
        }
        frame = next(iter(open_source(clip)))
        face = yunet.detect(frame)[0]
        crop = align_face(frame, face)
        align_ms = per_face_ms(lambda: align_face(frame, face))
        classify_ms = per_face_ms(lambda: recognizer.classifier.predict_faces([crop]))

    print(
        f"clip: 640x480, {F.frames} frames, 3 {face_source}; model {recognizer.classifier.path.name}; "
        f"{F.threads} OpenCV / {F.classifier_threads} TFLite threads; best of {F.repeats} passes"
    )
    print(f"{'pipeline':<44s}{'FPS':>8s}{'CPU ms/frame':>14s}{'faces/frame':>13s}{'vs detector':>13s}")
    baseline_fps = rows["baseline: decode + YuNet detection"][0]
    for name, row in rows.items():
        if row is not None:
            fps, cpu_ms, n = row
            print(f"{name:<44s}{fps:8.1f}{cpu_ms:14.1f}{n:13.2f}{fps / baseline_fps:12.2f}x")
    print(f"per face (median): align_face {align_ms:.2f} ms, classifier {classify_ms:.2f} ms")
    ours_fps = rows["ours: YuNet + align + TFLite + draw"][0]
    print(f"goal >= 30 FPS end to end: {'met' if ours_fps >= 30 else 'NOT met'} ({ours_fps:.1f})")


if __name__ == "__main__":
    app.run(main)
