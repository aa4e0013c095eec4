"""End-to-end tests of webcam.py, run as a subprocess the way users run it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_inference import BACKGROUND, CLASSES, build_tiny_export, frame_with_faces, grid_frame

ROOT = Path(__file__).resolve().parents[1]
FACE_FIELDS = {"track_id", "box", "probabilities", "label", "smoothed_label"}


@pytest.fixture(scope="module")
def tflite(tmp_path_factory):
    return build_tiny_export(tmp_path_factory.mktemp("export")) / "model_int8.tflite"


def run_webcam(*args):
    return subprocess.run(
        [sys.executable, "webcam.py", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_video_clip_headless_output_and_log(tmp_path, tflite):
    clip = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(clip, cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (640, 480))
    for i in range(12):  # two faces walking right, then three frames with nobody
        frame = (
            frame_with_faces([(20 + 8 * i, 60), (380, 100)])
            if i < 9
            else np.full((480, 640, 3), BACKGROUND, np.uint8)
        )
        writer.write(frame)
    writer.release()
    out, log = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    proc = run_webcam(
        "--model", tflite, "--source", clip, "--headless", "--output", out, "--log", log, "--smoothing=mode"
    )
    assert proc.returncode == 0, proc.stderr
    cap = cv2.VideoCapture(str(out))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 12
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (640, 480)
    records = read_jsonl(log)
    assert [r["frame"] for r in records] == list(range(12))
    assert all({"frame", "source", "timestamp", "faces"} <= set(r) for r in records)
    assert [len(r["faces"]) for r in records] == [2] * 9 + [0] * 3
    for r in records[:9]:
        assert [f["track_id"] for f in r["faces"]] == [0, 1]
        for face in r["faces"]:
            assert FACE_FIELDS <= set(face) and list(face["probabilities"]) == CLASSES
            assert face["label"] in CLASSES and face["smoothed_label"] in CLASSES and len(face["box"]) == 4
    assert records[0]["source"] == clip
    assert "FPS" in proc.stdout and "dominant emotion" in proc.stdout and "12 frames" in proc.stdout


def test_folder_with_no_faces_many_faces_and_a_non_image(tmp_path, tflite):
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "a_one.png"), frame_with_faces([(200, 100)]))
    cv2.imwrite(str(folder / "b_empty.jpg"), np.full((240, 320, 3), BACKGROUND, np.uint8))
    cv2.imwrite(str(folder / "c_crowd.png"), grid_frame())
    cv2.imwrite(str(folder / "d_gray.png"), cv2.cvtColor(frame_with_faces([(200, 100)]), cv2.COLOR_BGR2GRAY))
    (folder / "readme.txt").write_text("not an image")
    (folder / "e_broken.png").write_bytes(b"broken")
    out, log = tmp_path / "annotated", tmp_path / "log.jsonl"
    proc = run_webcam(
        "--model", tflite, "--source", folder, "--output", out, "--log", log, "--detector=yunet"
    )
    assert proc.returncode == 0, proc.stderr
    records = read_jsonl(log)
    assert [Path(r["source"]).name for r in records] == [
        "a_one.png",
        "b_empty.jpg",
        "c_crowd.png",
        "d_gray.png",
    ]
    assert [len(r["faces"]) for r in records][:3] == [1, 0, 12]
    assert sorted(f["track_id"] for f in records[2]["faces"]) == list(range(12))  # ids restart per image
    assert sorted(p.name for p in out.iterdir()) == ["a_one.png", "b_empty.jpg", "c_crowd.png", "d_gray.png"]
    assert cv2.imread(str(out / "c_crowd.png")).shape == (480, 640, 3)
    assert "skipped 1 undecodable" in proc.stdout


def test_single_image_output_and_max_frames(tmp_path, tflite):
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), frame_with_faces([(200, 100)]))
    proc = run_webcam("--model", tflite, "--source", image, "--output", tmp_path / "annotated.png",
                      "--smoothing=none", "--detector=haar", "--max_frames=1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    annotated = cv2.imread(str(tmp_path / "annotated.png"))
    assert annotated.shape == (480, 640, 3) and not np.array_equal(annotated, cv2.imread(str(image)))


@pytest.mark.parametrize(
    "args",
    [
        ["--source", "7"],  # no camera 7 here
        ["--source", "/no/such/clip.mp4"],
        ["--source", ".", "--model", "/no/such/model.tflite"],
        ["--source", ".", "--model", "truncated"],  # cut at 99%: tf.lite crashed with SIGSEGV
        ["--source", ".", "clip.mp4"],  # a positional path: it used to open camera 0 instead
        ["--source", ".", "--max_frames=-1"],
    ],
)
def test_bad_source_or_model_is_one_line_exit_2(args, tmp_path, tflite):
    if args[-1] == "truncated":
        data = Path(tflite).read_bytes()
        (tmp_path / "cut.tflite").write_bytes(data[: len(data) * 99 // 100])
        args = [*args[:-1], tmp_path / "cut.tflite"]
    if args[1] == ".":
        cv2.imwrite(str(tmp_path / "x.png"), np.zeros((8, 8, 3), np.uint8))
        args = ["--source", tmp_path, *args[2:]]
    proc = run_webcam(*args, "--headless")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr


def test_outputs_that_would_overwrite_the_source_are_refused(tmp_path, tflite):
    image = tmp_path / "faces" / "face.png"
    image.parent.mkdir()
    cv2.imwrite(str(image), frame_with_faces([(200, 100)]))
    original = image.read_bytes()
    cases = [
        (image, "--output", image, "is the source itself"),
        (image, "--log", image, "is the source itself"),
        (image.parent, "--output", image.parent, "is the source itself"),
        (image.parent, "--output", image.parent / "annotated", "is inside the source folder"),
    ]
    for source, flag, target, message in cases:
        proc = run_webcam(
            "--model", tflite, "--source", source, flag, target, "--headless", "--detector=haar"
        )
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert (
            proc.stderr.strip().splitlines()[-1].endswith(f"{message}; it would overwrite the input {source}")
        )
    assert image.read_bytes() == original and sorted(os.listdir(image.parent)) == ["face.png"]


def test_video_output_to_an_image_name_is_refused(tmp_path, tflite):
    """OpenCV would write each frame over one image file, keeping only the last."""
    clip = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(clip, cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (320, 240))
    for _ in range(3):
        writer.write(np.full((240, 320, 3), BACKGROUND, np.uint8))
    writer.release()
    target = tmp_path / "annotated.PNG"
    proc = run_webcam("--model", tflite, "--source", clip, "--output", target, "--headless")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: --output={target} names an image; "
        "the video's annotated frames go to a video file (e.g. .mp4)"
    )
    assert not target.exists()


def test_image_output_without_a_writer_is_one_line_exit_2(tmp_path, tflite):
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), frame_with_faces([(200, 100)]))
    for target, reason in ((tmp_path / "out.txt", "use an image extension such as .png"),
                           (tmp_path / "missing" / "out.png", "no such folder")):  # fmt: skip
        proc = run_webcam(
            "--model", tflite, "--source", image, "--output", target, "--headless", "--detector=haar"
        )
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == f"error: cannot write image {target} ({reason})"
