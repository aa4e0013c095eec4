"""Live expression recognition: `python webcam.py [--model=export/] [--source=0]`.

The source is a camera index, a video, an image or a folder of images. Each
frame: detect faces (YuNet), align, classify, track, smooth, draw. q or Esc
quits the window. Needs only OpenCV + NumPy + LiteRT for a .tflite model
(requirements-edge.txt); an export dir's SavedModel needs TensorFlow.

  python webcam.py --model=export/model_int8.tflite --source=clip.mp4 --headless \
      --output=annotated.mp4 --log=results.jsonl
"""

import json
import os
import sys
import time

import cv2
from absl import flags

# Only an export dir's SavedModel (or TFLite without LiteRT) imports TensorFlow; keep its logs quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import launch
from fer_tf import cli, sources
from fer_tf.classifiers import BACKENDS
from fer_tf.inference import Recognizer, SourceError, open_source
from fer_tf.overlay import SessionSummary

F = flags.FLAGS
flags.DEFINE_string("model", None, "Export dir or .tflite file (default: the shipped models/fer2013).")
flags.DEFINE_string("source", "0", "Camera index, video file, image file or folder of images.")
flags.DEFINE_string(
    "output", None, "Annotated .mp4 (camera/video), image file (image) or directory (folder)."
)
flags.DEFINE_boolean("headless", False, "No window (automatic when there is no display).")
flags.DEFINE_string("log", None, "Write one JSON line per frame (faces, boxes, probabilities, labels).")
flags.DEFINE_enum("smoothing", "ema", ["ema", "mode", "none"], "Per-face temporal smoothing.")
flags.DEFINE_enum("detector", "yunet", ["yunet", "haar"], "Face detector.")
flags.DEFINE_integer("max_frames", 0, "Stop after this many frames (0: until the source ends).")
flags.DEFINE_integer("threads", 2, "CPU threads for OpenCV (decoding, YuNet, drawing).")
flags.DEFINE_enum(
    "backend",
    "auto",
    list(BACKENDS),
    "Which file of an export dir runs: auto (int8 TFLite, or float32 on a CPU without int8 "
    "dot-product instructions, where it is faster), int8, float32 or saved_model.",
)
flags.DEFINE_integer("classifier_threads", 1, "TFLite threads; 1 is fastest for 48x48 face crops.")

WINDOW = "fer-tf (q/Esc quits)"


def _has_display() -> bool:
    display = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    if sys.platform.startswith("linux") and not display:
        return False
    try:  # opencv-python-headless has no GUI at all
        cv2.namedWindow(WINDOW)
    except cv2.error:
        return False
    return True


class _Writer:
    """Writes annotated frames: a video for streams, image files for images/folders."""

    def __init__(self, path: str | None, source):
        self.path, self.source, self.video = path, source, None
        if path and source.kind == "folder":
            os.makedirs(path, exist_ok=True)

    def write(self, frame) -> None:
        if not self.path:
            return
        if self.source.kind == "folder":
            cv2.imwrite(os.path.join(self.path, os.path.basename(self.source.frame_name)), frame)
        elif self.source.kind == "image":
            try:
                written = cv2.imwrite(self.path, frame)
            except cv2.error:  # OpenCV 4.11 raises for an extension it has no writer for
                written = False
            if not written:
                folder = os.path.dirname(os.path.abspath(self.path))
                reason = (
                    "no such folder" if not os.path.isdir(folder) else "use an image extension such as .png"
                )
                cli.fail(f"cannot write image {self.path} ({reason})")
        else:
            if self.video is None:
                size = (frame.shape[1], frame.shape[0])
                fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                self.video = cv2.VideoWriter(self.path, fourcc, self.source.fps or 30.0, size)
                if not self.video.isOpened():
                    cli.fail(f"cannot write video {self.path}")
            self.video.write(frame)

    def close(self) -> None:
        if self.video is not None:
            self.video.release()


def check_outputs(source, output: str | None, log: str | None) -> None:
    """Exits with a one-line error when --output or --log would overwrite the source being read.

    A video written onto itself is cut to the frames read so far, a log opened
    with "w" on the source empties it, and a folder written into itself replaces
    its images with their annotated copies: each would destroy the user's input.
    A camera or video written to an image name would leave one image, each frame
    overwriting the last (OpenCV's image-sequence writer), so that is refused too.
    """
    if output and source.kind in ("camera", "video") and output.lower().endswith(sources.IMAGE_EXTENSIONS):
        cli.fail(
            f"--output={output} names an image; "
            f"the {source.kind}'s annotated frames go to a video file (e.g. .mp4)"
        )
    if source.kind == "camera":
        return
    for flag, path in (("--output", output), ("--log", log)):
        if not path:
            continue
        same = os.path.realpath(path) == os.path.realpath(source.spec)
        if same or (source.kind == "folder" and cli.is_within(path, source.spec)):
            where = "the source itself" if same else "inside the source folder"
            cli.fail(f"{flag}={path} is {where}; it would overwrite the input {source.spec}")
    if source.kind != "folder" and output and log and os.path.realpath(output) == os.path.realpath(log):
        cli.fail(f"--output and --log are the same file {output}")


def _log_line(index, source, results) -> str:
    record = {"frame": index, "source": source.frame_name, "timestamp": round(time.time(), 3)}
    if source.fps:
        record["video_time"] = round(index / source.fps, 3)
    keys = ("track_id", "box", "label", "score", "smoothed_label", "probabilities")
    record["faces"] = [{k: r[k] for k in keys} for r in results]
    return json.dumps(record)


def run(recognizer: Recognizer, source, writer: _Writer, log, window: bool, summary: SessionSummary) -> None:
    """Runs the recognizer over every frame of the source, adding each to `summary`."""
    still = source.kind in ("image", "folder")
    last = time.perf_counter()
    for index, frame in enumerate(source):
        if F.max_frames and index >= F.max_frames:
            break
        if still:
            recognizer.reset()  # unrelated images: no tracks or smoothing across them
        results, annotated = recognizer.process_frame(frame)
        now = time.perf_counter()
        summary.add(results, 1.0 / source.fps if source.fps else now - last)
        last = now
        writer.write(annotated)
        if log:
            log.write(_log_line(index, source, results) + "\n")
        if window:
            cv2.imshow(WINDOW, annotated)
            if cv2.waitKey(0 if still else 1) & 0xFF in (ord("q"), 27):
                break


def main(argv):
    if len(argv) > 1:  # `webcam.py clip.mp4` would otherwise open camera 0
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])} (the input is --source=...)")
    if F.max_frames < 0:
        cli.fail(f"--max_frames must be >= 0 (0: all frames), got {F.max_frames}")
    cv2.setNumThreads(F.threads)
    try:
        source = open_source(F.source)
    except SourceError as e:
        cli.fail(str(e))
    try:
        recognizer = Recognizer(
            F.model,
            detector=F.detector,
            smoothing=F.smoothing,
            num_threads=F.classifier_threads,
            backend=F.backend,
        )
    except (OSError, ValueError, RuntimeError) as e:  # missing or unreadable model
        cli.fail(str(e).strip().splitlines()[0])
    check_outputs(source, F.output, F.log)
    window = not F.headless and _has_display()
    try:
        writer = _Writer(F.output, source)
        log = open(F.log, "w") if F.log else None
    except OSError as e:
        cli.fail(f"cannot write {e.filename}: {e.strerror}")
    summary = SessionSummary(source.spec, recognizer.class_names)
    start = time.perf_counter()
    try:
        run(recognizer, source, writer, log, window, summary)
    except KeyboardInterrupt:
        pass  # Ctrl-C ends a camera session; the summary still prints
    finally:
        elapsed = time.perf_counter() - start
        source.close()
        writer.close()
        if log:
            log.close()
        if window:
            cv2.destroyAllWindows()
    print(summary.report(summary.frames / elapsed if elapsed > 0 else 0.0, elapsed))
    print(f"  model: {recognizer.classifier.path} on {recognizer.classifier.runtime}")
    if source.skipped:
        print(f"  skipped {source.skipped} undecodable file(s)")


if __name__ == "__main__":
    launch.run(main, argv=cli.resolve_flagfiles(sys.argv))
