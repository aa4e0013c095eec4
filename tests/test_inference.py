"""Tests of fer_tf.inference and its helpers (tracking, overlay, sources).

Detection runs on cartoon faces drawn here (YuNet and Haar both fire on them)
and, when ../shared/data is present, on upscaled real FER2013 faces.
"""

import csv
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_tf import classifiers, inference
from fer_tf.inference import Face, FaceDetector, Recognizer, SourceError, align_face, open_source
from fer_tf.overlay import FpsMeter, SessionSummary, draw_results
from fer_tf.tracking import FaceTracker, Smoother, box_iou

ROOT = Path(__file__).resolve().parents[1]
FER2013_CSV = ROOT.parent / "shared" / "data" / "fer2013" / "fer2013_train_publictest.csv.gz"
CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
BACKGROUND = (90, 120, 100)


def draw_face(size: int, smile: float = 1.0, tilt: float = 0.0) -> np.ndarray:
    """A BGR cartoon face (skin ellipse, eyes, brows, nose, mouth) centred in a 2*size square."""
    img = np.full((2 * size, 2 * size, 3), BACKGROUND, np.uint8)
    c, u = size, size / 100.0
    cv2.ellipse(img, (c, c), (int(42 * u), int(55 * u)), 0, 0, 360, (150, 180, 210), -1)
    for side in (-1, 1):
        ex, ey = c + side * int(17 * u), c - int(10 * u)
        cv2.ellipse(img, (ex, ey), (int(9 * u), int(4.5 * u)), 0, 0, 360, (250, 250, 250), -1)
        cv2.circle(img, (ex, ey), max(1, int(3.5 * u)), (40, 30, 20), -1)
        cv2.line(img, (ex - int(10 * u), ey - int(9 * u)), (ex + int(10 * u), ey - int(10 * u)), (40, 40, 60),
                 max(2, size // 40))  # fmt: skip
    cv2.line(img, (c, c - int(5 * u)), (c - int(4 * u), c + int(12 * u)), (110, 130, 150), max(2, size // 50))
    mouth_h = max(1, int(6 * u * abs(smile)))
    start, end = (0, 180) if smile >= 0 else (180, 360)
    cv2.ellipse(
        img, (c, c + int(25 * u)), (int(14 * u), mouth_h), 0, start, end, (60, 60, 160), max(3, size // 30)
    )
    img = cv2.GaussianBlur(img, (0, 0), size / 80)
    if tilt:
        img = cv2.warpAffine(img, cv2.getRotationMatrix2D((c, c), tilt, 1.0), (2 * c, 2 * c),
                             borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
    return img


def frame_with_faces(positions, face_size=100, shape=(480, 640)) -> np.ndarray:
    """A BGR frame with one cartoon face per (x, y) top-left corner of its 2*face_size square."""
    frame = np.full((*shape, 3), BACKGROUND, np.uint8)
    for x, y in positions:
        frame[y : y + 2 * face_size, x : x + 2 * face_size] = draw_face(face_size)
    return frame


def grid_frame(rows=3, cols=4) -> np.ndarray:
    """rows*cols faces on a 640x480 frame."""
    frame = np.full((480, 640, 3), BACKGROUND, np.uint8)
    for r in range(rows):
        for c in range(cols):
            face = cv2.resize(draw_face(80), (140, 140), interpolation=cv2.INTER_AREA)
            frame[10 + 160 * r : 150 + 160 * r, 10 + 160 * c : 150 + 160 * c] = face
    return frame


def build_tiny_export(out_dir: Path, size: int = 48) -> Path:
    """A tiny random classifier exported like export.py: SavedModel + float32/int8 TFLite + labels.txt."""
    import keras
    import tensorflow as tf

    from fer_tf import export_lib

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((size, size, 1)),
        keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(len(CLASSES)),
    ])  # fmt: skip

    def serve(images):
        x = tf.image.convert_image_dtype(images[..., :1], tf.float32)
        return {"probabilities": tf.nn.softmax(model(tf.image.resize(x, [size, size], antialias=True)))}

    def lite(images):
        return {"probabilities": tf.nn.softmax(model(tf.image.convert_image_dtype(images, tf.float32)))}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default", serve, [tf.TensorSpec([None, None, None, None], tf.uint8, name="images")]
    )
    archive.add_endpoint("lite", lite, [tf.TensorSpec([1, size, size, 1], tf.uint8, name="images")])
    saved = str(out_dir / "saved_model")
    archive.write_out(saved, verbose=False)
    representative = np.random.default_rng(0).integers(0, 256, (16, size, size, 1), np.uint8)
    for variant in ("float32", "int8"):
        (out_dir / f"model_{variant}.tflite").write_bytes(
            export_lib.convert_tflite(saved, variant, representative)
        )
    (out_dir / "labels.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    (out_dir / "metadata.json").write_text(
        json.dumps({"class_names": CLASSES, "input_size": size, "channels": 1})
    )
    return out_dir


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return build_tiny_export(tmp_path_factory.mktemp("export"))


# ---------------------------------------------------------------- detection


@pytest.mark.parametrize("kind", ["yunet", "haar"])
def test_detector_finds_drawn_face(kind):
    frame = frame_with_faces([(200, 100)])  # face centre (300, 200)
    faces = FaceDetector(kind).detect(frame)
    assert len(faces) == 1
    x, y, w, h = faces[0].box
    assert abs(x + w / 2 - 300) < 15 and abs(y + h / 2 - 200) < 20 and 60 < h < 140
    if kind == "yunet":
        lm = faces[0].landmarks
        assert lm.shape == (5, 2) and faces[0].score > 0.6
        right_eye, left_eye, nose, mouth_r, mouth_l = lm
        assert right_eye[0] < left_eye[0]  # the subject's right eye is on the image's left
        assert max(right_eye[1], left_eye[1]) < nose[1] < min(mouth_r[1], mouth_l[1])
    else:
        assert faces[0].landmarks is None


def test_detector_accepts_gray_bgra_and_large_frames():
    frame = frame_with_faces([(200, 100)])
    detector = FaceDetector("yunet")
    (ref,) = detector.detect(frame)
    # Without colour the cartoon scores 0.55 at 320 px: a lower threshold, same face.
    (gray,) = FaceDetector("yunet", score_threshold=0.4).detect(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    (bgra,) = detector.detect(cv2.cvtColor(frame, cv2.COLOR_BGR2BGRA))
    (big,) = detector.detect(cv2.resize(frame, (1280, 960)))  # detected at 320 px, scaled back
    assert np.allclose(bgra.box, ref.box, atol=1)
    assert np.allclose(gray.box, ref.box, atol=6)
    assert np.allclose(np.array(big.box) / 2, ref.box, atol=6)
    assert np.allclose(big.landmarks / 2, ref.landmarks, atol=4)


@pytest.mark.parametrize("shape", [(480, 640, 3), (1, 1), (5, 7, 3), (16, 16, 4), (30, 20, 1)])
def test_detector_no_faces_and_tiny_frames(shape):
    assert FaceDetector("yunet").detect(np.full(shape, 128, np.uint8)) == []
    assert FaceDetector("haar").detect(np.full(shape, 128, np.uint8)) == []


def test_detector_finds_twelve_faces():
    faces = FaceDetector("yunet").detect(grid_frame())
    assert len(faces) == 12
    assert [f.box[0] for f in faces] == sorted(f.box[0] for f in faces)


def _fer2013_faces(n):
    if not FER2013_CSV.exists():
        pytest.skip("FER2013 not available at ../shared/data/fer2013")
    with gzip.open(FER2013_CSV, "rt") as f:
        rows = csv.reader(f)
        next(rows)
        return [np.array(next(rows)[1].split(), np.uint8).reshape(48, 48) for _ in range(n)]


def test_detector_on_upscaled_fer2013_faces():
    frame = np.zeros((480, 640), np.uint8)
    placed = []
    for i, face in enumerate(_fer2013_faces(6)):
        x, y = 20 + (i % 3) * 210, 30 + (i // 3) * 230
        frame[y : y + 160, x : x + 160] = cv2.resize(face, (160, 160), interpolation=cv2.INTER_CUBIC)
        placed.append((x, y, 160, 160))
    faces = FaceDetector("yunet").detect(frame)
    matched = {i for f in faces for i, p in enumerate(placed) if box_iou(f.box, p) > 0.5}
    assert len(matched) >= 5 and len(faces) <= 6


# ---------------------------------------------------------------- alignment


def test_align_face_levels_a_tilted_eye_line():
    image = np.full((200, 200), 255, np.uint8)
    right_eye, left_eye = (70.0, 112.0), (130.0, 88.0)  # the eye line rises 22 degrees
    for x, y in (right_eye, left_eye):
        cv2.circle(image, (int(x), int(y)), 5, 0, -1)
    landmarks = np.array([right_eye, left_eye, (100, 110), (80, 140), (120, 140)], np.float32)
    crop = align_face(image, Face((40, 40, 120, 120), 0.9, landmarks), output_size=96, margin=0.2)
    n, _, _, centroids = cv2.connectedComponentsWithStats((crop[..., 0] < 128).astype(np.uint8))
    assert n == 3  # background + two dots
    (x0, y0), (x1, y1) = sorted(centroids[1:].tolist())
    assert abs(y1 - y0) < 1.0 and x1 - x0 > 40  # level, and still left-to-right
    unrotated = align_face(image, Face((40, 40, 120, 120), 0.9, None), output_size=96, margin=0.2)
    _, _, _, c2 = cv2.connectedComponentsWithStats((unrotated[..., 0] < 128).astype(np.uint8))
    assert abs(c2[1][1] - c2[2][1]) > 15


@pytest.mark.parametrize("shape", [(120, 160), (120, 160, 1), (120, 160, 3), (120, 160, 4)])
@pytest.mark.parametrize("channels", [1, 3])
def test_align_face_shape_and_dtype(shape, channels):
    image = np.random.default_rng(0).integers(0, 256, shape, np.uint8)
    # The box sticks out of the frame: the crop pads with edge pixels instead of failing.
    crop = align_face(image, Face((100, -20, 80, 90), 0.9, None), output_size=48, channels=channels)
    assert crop.shape == (48, 48, channels) and crop.dtype == np.uint8


def test_align_face_color_order_and_gray_weights():
    bgr = np.zeros((60, 60, 3), np.uint8)
    bgr[..., 0] = 200  # pure blue in OpenCV order
    face = Face((10, 10, 40, 40), 0.9, None)
    assert align_face(bgr, face, 24, channels=3)[12, 12].tolist() == [0, 0, 200]  # RGB out
    assert align_face(bgr, face, 24, channels=1)[12, 12, 0] == round(200 * 0.1140)


def test_align_face_matches_preprocess_for_eval():
    import tensorflow as tf

    from fer_tf.data import preprocess_for_eval

    bgr = cv2.resize(draw_face(100), (137, 137), interpolation=cv2.INTER_AREA)
    face = Face((0, 0, 137, 137), 1.0, None)
    for channels in (1, 3):
        ours = align_face(bgr, face, 48, margin=0.0, channels=channels).astype(np.float32)
        ref = preprocess_for_eval(tf.constant(bgr[..., ::-1].copy()), 48, channels).numpy() * 255
        assert np.abs(ours - ref).max() <= 0.51  # uint8 rounding only


# ---------------------------------------------------------------- tracking and smoothing


def test_tracker_keeps_ids_and_splits_two_faces():
    tracker = FaceTracker(iou_threshold=0.3, max_missed=2)
    a, b = (10, 10, 100, 100), (300, 20, 100, 100)
    assert tracker.update([a, b]) == [0, 1]
    assert tracker.update([(312, 24, 100, 100), (16, 12, 100, 100)]) == [1, 0]  # moved, listed swapped
    assert tracker.update([(20, 14, 100, 100)]) == [0]  # face 1 missed once
    assert tracker.update([(22, 14, 100, 100), (314, 26, 100, 100)]) == [0, 1]  # back in time
    for _ in range(3):
        tracker.update([(22, 14, 100, 100)])
    assert tracker.active_ids == [0]
    assert tracker.update([(22, 14, 100, 100), (314, 26, 100, 100)]) == [0, 2]  # dropped: new id


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0


def test_ema_smoothing_numbers():
    smoother = Smoother("ema", alpha=0.5)
    p, k = smoother.update(0, [1.0, 0.0, 0.0])
    assert np.allclose(p, [1, 0, 0]) and k == 0
    p, k = smoother.update(0, [0.0, 1.0, 0.0])
    assert np.allclose(p, [0.5, 0.5, 0.0])
    p, k = smoother.update(0, [0.0, 1.0, 0.0])
    assert np.allclose(p, [0.25, 0.75, 0.0]) and k == 1
    p, _ = smoother.update(7, [0.0, 0.0, 1.0])  # another track starts fresh
    assert np.allclose(p, [0, 0, 1])
    smoother.prune([7])
    p, _ = smoother.update(0, [0.0, 0.0, 1.0])
    assert np.allclose(p, [0, 0, 1])


def test_mode_smoothing_votes_over_a_window():
    smoother = Smoother("mode", window=10)
    one_hot = np.eye(3, dtype=np.float32)
    labels = [smoother.update(0, one_hot[k])[1] for k in [0, 0, 1, 1, 1, 2, 0]]
    assert labels == [0, 0, 0, 1, 1, 1, 0]  # a tie (2-2, 3-3) goes to the label seen last
    for _ in range(8):
        probs, label = smoother.update(0, one_hot[2])
    assert label == 2  # window of 10: only 0, 2 x9 remain
    assert np.allclose(probs, [0.1, 0.0, 0.9])
    assert Smoother("none").update(0, [0.2, 0.8])[1] == 1
    with pytest.raises(ValueError):
        Smoother("median")


# ---------------------------------------------------------------- overlay


def test_draw_results_marks_box_bars_and_fps():
    frame = frame_with_faces([(100, 100)], face_size=60)
    probs = dict(zip(CLASSES, [0.05, 0.0, 0.05, 0.7, 0.1, 0.05, 0.05], strict=True))
    result = {
        "box": (120, 130, 80, 90),
        "label": "happy",
        "score": 0.7,
        "probabilities": probs,
        "track_id": 3,
    }
    out = draw_results(frame, [result], CLASSES, fps=30.0)
    assert out.shape == frame.shape and out.dtype == np.uint8
    changed = np.any(out != frame, axis=-1)
    assert changed[130, 120:200].mean() > 0.9  # top edge of the box
    assert changed[130:220, 206:330].mean() > 0.3  # the bar panel right of the box
    assert changed[5:30, 5:80].mean() > 0.3  # the FPS counter
    assert not changed[400:, 400:].any()
    gray = draw_results(frame[..., 0], [result] * 12, CLASSES)  # many faces, gray frame: no crash
    assert gray.shape == frame.shape


def test_fps_meter_and_summary():
    meter = FpsMeter(window=5)
    for t in (0.0, 0.1, 0.2, 0.3):
        fps = meter.tick(t)
    assert fps == pytest.approx(10.0)
    summary = SessionSummary("clip.mp4", CLASSES)
    summary.add([{"label": "sad", "smoothed_label": "happy"}], 0.5)
    summary.add([{"label": "sad", "smoothed_label": "happy"}, {"label": "sad", "smoothed_label": "sad"}], 0.5)
    summary.add([], 0.5)
    assert summary.frames == 3 and summary.frames_with_faces == 2 and summary.dominant == "happy"
    report = summary.report(fps=12.5, elapsed=0.24)
    assert (
        "happy       66.7%     1.00 s" in report and "dominant emotion: happy" in report and "12.5" in report
    )


# ---------------------------------------------------------------- classifiers and Recognizer


def test_recognizer_tflite_int8_and_float_agree_with_saved_model(export_dir):
    frame = frame_with_faces([(40, 60), (360, 80)])
    saved = Recognizer(export_dir, backend="saved_model")
    assert isinstance(saved.classifier, inference.SavedModelClassifier)
    results = {
        name: Recognizer(export_dir / f"model_{name}.tflite").predict(frame) for name in ("float32", "int8")
    }
    results["saved_model"] = saved.predict(frame)
    for name, res in results.items():
        assert len(res) == 2, name
        for r in res:
            assert set(r) >= {"box", "probabilities", "label", "score", "track_id"}
            assert list(r["probabilities"]) == CLASSES and r["track_id"] is None
            assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
            assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)
    for a, b, c in zip(results["float32"], results["saved_model"], results["int8"], strict=True):
        assert a["box"] == b["box"] == c["box"]
        pa, pb, pc = (np.array(list(r["probabilities"].values())) for r in (a, b, c))
        assert np.abs(pa - pb).max() < 1e-4
        assert np.abs(pa - pc).max() < 0.05


def test_recognizer_streams_with_tracking_and_smoothing(export_dir):
    rec = Recognizer(export_dir / "model_int8.tflite", smoothing="ema", ema_alpha=0.5)
    ids = []
    for step in range(4):
        frame = frame_with_faces([(40 + 5 * step, 60), (360, 80)])
        results, annotated = rec.process_frame(frame)
        ids.append([r["track_id"] for r in results])
        assert annotated.shape == frame.shape and not np.array_equal(annotated, frame)
    assert ids == [[0, 1]] * 4
    assert set(results[0]) >= {"smoothed_label", "smoothed_probabilities"}
    assert rec.process_frame(np.full((480, 640, 3), 90, np.uint8))[0] == []  # no faces
    assert len(rec.predict(grid_frame())) == 12


@pytest.mark.parametrize("convert", [cv2.COLOR_BGR2GRAY, cv2.COLOR_BGR2BGRA, None])
def test_recognizer_accepts_gray_rgba_and_tiny_frames(export_dir, convert):
    rec = Recognizer(export_dir / "model_int8.tflite", score_threshold=0.4)  # the gray cartoon scores 0.55
    frame = frame_with_faces([(200, 100)])
    image = cv2.cvtColor(frame, convert) if convert is not None else frame[..., ::-1]
    results = rec.predict(image, rgb=convert is None)
    assert len(results) == 1
    assert rec.predict(np.zeros((8, 8), np.uint8)) == []


def test_missing_default_model_says_how_to_pass_one(monkeypatch, tmp_path):
    monkeypatch.setattr(classifiers, "default_model_path", lambda: tmp_path / "models" / "fer2013")
    with pytest.raises(FileNotFoundError, match="--model"):
        Recognizer()
    with pytest.raises(FileNotFoundError, match="no usable model"):
        inference.load_classifier(tmp_path)


def test_export_dir_without_tensorflow_runs_its_tflite(export_dir, monkeypatch):
    monkeypatch.setattr(classifiers, "_tensorflow_installed", lambda: False)  # as on an edge device
    classifier = inference.load_classifier(export_dir)
    assert isinstance(classifier, inference.TFLiteClassifier)
    assert classifier.path.name == classifiers.tflite_preference()[0]
    assert (classifier.input_size, classifier.channels, classifier.class_names) == (48, 1, CLASSES)
    with pytest.raises(FileNotFoundError, match="needs TensorFlow"):
        inference.load_classifier(export_dir, backend="saved_model")


@pytest.mark.parametrize(
    "flags, expected",
    [
        ("fpu sse avx2 fma avx512f avx512_vnni", ["avx512_vnni"]),  # x86 with VNNI
        ("fpu sse avx2 fma avx_vnni", ["avx_vnni"]),
        ("fpu sse avx2 fma", []),  # AVX2 only: the CPU of MODEL_CARD.md's 2.5 ms
    ],
)
def test_int8_dot_product_isa_reads_cpu_flags(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert classifiers.int8_dot_product_isa(cpuinfo) == expected


def test_int8_dot_product_isa_reads_arm_features_and_admits_what_it_cannot_tell(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\n")
    assert classifiers.int8_dot_product_isa(cpuinfo) == ["asimddp", "i8mm"]
    cpuinfo.write_text("processor\t: 0\n")  # no flags line
    assert classifiers.int8_dot_product_isa(cpuinfo) is None
    assert classifiers.int8_dot_product_isa(tmp_path / "missing") is None


def test_float32_runs_first_only_on_a_cpu_known_to_lack_int8_dot_products():
    assert classifiers.tflite_preference([]) == ("model_float32.tflite", "model_int8.tflite")
    assert classifiers.tflite_preference(["avx512_vnni"])[0] == "model_int8.tflite"
    assert classifiers.tflite_preference(None)[0] in ("model_int8.tflite", "model_float32.tflite")


def test_backend_picks_the_file_of_an_export_dir(export_dir, tmp_path, monkeypatch):
    for backend, name in (("int8", "model_int8.tflite"), ("float32", "model_float32.tflite")):
        classifier = inference.load_classifier(export_dir, backend=backend)
        assert isinstance(classifier, inference.TFLiteClassifier) and classifier.path.name == name
    assert isinstance(inference.load_classifier(export_dir), inference.TFLiteClassifier)  # not the SavedModel
    with pytest.raises(ValueError, match="unknown backend 'onnx'"):
        inference.load_classifier(export_dir, backend="onnx")
    partial = tmp_path / "export"
    shutil.copytree(export_dir, partial)
    (partial / "model_float32.tflite").unlink()
    monkeypatch.setattr(classifiers, "int8_dot_product_isa", lambda: [])  # float32 first, but missing
    assert inference.load_classifier(partial).path.name == "model_int8.tflite"
    with pytest.raises(FileNotFoundError, match="no usable model .*model_float32.tflite"):
        inference.load_classifier(partial, backend="float32")
    (partial / "model_int8.tflite").unlink()  # only the SavedModel is left: auto runs it
    assert isinstance(inference.load_classifier(partial), inference.SavedModelClassifier)


def test_class_names_fallbacks(export_dir, tmp_path):
    tflite = tmp_path / "m.tflite"
    tflite.write_bytes((export_dir / "model_int8.tflite").read_bytes())
    assert inference.TFLiteClassifier(tflite).class_names == [f"class_{i}" for i in range(7)]
    (tmp_path / "metadata.json").write_text(json.dumps({"class_names": CLASSES}))
    assert inference.TFLiteClassifier(tflite).class_names == CLASSES


def test_saved_model_with_the_wrong_number_of_labels_fails_when_loaded(export_dir, tmp_path):
    broken = tmp_path / "export"
    shutil.copytree(export_dir, broken)
    (broken / "labels.txt").write_text("angry\nhappy\nsad\n")
    with pytest.raises(ValueError, match="has 7 outputs but 3 class names"):
        inference.SavedModelClassifier(broken)


def test_a_truncated_tflite_file_is_refused_before_the_interpreter_reads_it(export_dir, tmp_path):
    data = (export_dir / "model_int8.tflite").read_bytes()
    cut = tmp_path / "cut.tflite"
    for n in (len(data) - 1, int(len(data) * 0.99), len(data) // 2, 64):  # 99% crashed tf.lite with SIGSEGV
        cut.write_bytes(data[:n])
        with pytest.raises(ValueError, match=r"is truncated or corrupt|not a TFLite model"):
            inference.TFLiteClassifier(cut)
    cut.write_bytes(b"TFL3" * 4)
    with pytest.raises(ValueError, match="truncated or corrupt|not a TFLite model"):
        classifiers.check_tflite_file(cut)
    classifiers.check_tflite_file(export_dir / "model_int8.tflite")  # the whole file passes


# ---------------------------------------------------------------- sources


def test_open_source_folder_skips_non_images_and_broken_files(tmp_path):
    for name in ("b.png", "a.jpg", "c.bmp"):
        cv2.imwrite(str(tmp_path / name), np.full((20, 30, 3), 7, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    source = open_source(str(tmp_path))
    names = []
    for frame in source:
        names.append(Path(source.frame_name).name)
        assert frame.shape == (20, 30, 3)
    assert names == ["a.jpg", "b.png", "c.bmp"] and source.skipped == 1 and source.kind == "folder"


def test_open_source_video_and_image(tmp_path):
    path = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 15.0, (64, 48))
    for i in range(6):
        writer.write(np.full((48, 64, 3), 30 * i, np.uint8))
    writer.release()
    with open_source(path) as source:
        frames = list(source)
    assert len(frames) == 6 and frames[0].shape == (48, 64, 3) and source.fps == pytest.approx(15.0)
    cv2.imwrite(str(tmp_path / "one.png"), frames[0])
    image_source = open_source(str(tmp_path / "one.png"))
    assert image_source.kind == "image" and len(list(image_source)) == 1


def test_open_source_errors_are_one_line(tmp_path, capfd):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.mp4").write_text("not a video")
    (tmp_path / "bad.png").write_text("not an image")
    for spec in ("7", str(tmp_path / "missing.mp4"), str(tmp_path / "empty"), str(tmp_path / "bad.mp4"),
                 str(tmp_path / "bad.png")):  # fmt: skip
        with pytest.raises(SourceError) as err:
            open_source(spec)
        assert "\n" not in str(err.value)
    captured = capfd.readouterr()
    assert captured.err == ""  # OpenCV/FFmpeg warnings are silenced


def test_inference_imports_without_tensorflow():
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"
        "import fer_tf.inference, fer_tf.classifiers, fer_tf.tracking, fer_tf.overlay, fer_tf.sources\n"
        "import webcam\n"
        "print(sorted(m for m in sys.modules if m.startswith(('tensorflow', 'keras'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert out.stdout.strip() == "['tensorflow']"  # only the blocker we planted
