"""Expression classifiers for aligned faces: TFLite (no TensorFlow needed) or SavedModel.

Both take uint8 [S, S, C] faces from `fer_tf.inference.align_face` and return
probabilities [F, K]. The TFLite path runs on LiteRT alone, so edge devices
need no TensorFlow; TensorFlow is imported only for a SavedModel, or as the
last interpreter fallback.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# The TFLite files of an export dir (DESIGN.md contract 4); export_lib writes them under these names.
INT8_FILE, FLOAT32_FILE = "model_int8.tflite", "model_float32.tflite"


def default_model_path() -> Path:
    """The shipped release model: `models/fer2013/` at the repository root."""
    return Path(__file__).resolve().parents[1] / "models" / "fer2013"


def check_tflite_file(path: str | os.PathLike) -> None:
    """Raises ValueError unless `path` holds a whole TFLite flatbuffer.

    The interpreters do not verify the file: one cut short (an interrupted copy
    or download) crashed the process with SIGSEGV or ran out of memory. This
    walks the flatbuffer with no dependency (operator codes, subgraphs, tensors,
    operators, weight buffers) and checks that each lies inside the file.
    """
    data = Path(path).read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ValueError(f"{path} is not a TFLite model (no TFL3 file identifier)")

    def u32(at: int) -> int:
        if not 0 <= at <= len(data) - 4:
            raise IndexError(at)
        return struct.unpack_from("<I", data, at)[0]

    def field(table: int, index: int) -> int | None:
        """Position of field `index` of the table at `table`, or None when absent."""
        vtable = table - struct.unpack_from("<i", data, table)[0]
        size, table_size = struct.unpack_from("<HH", data, vtable)
        if vtable < 0 or vtable + size > len(data) or table + table_size > len(data):
            raise IndexError(table)
        if 4 + 2 * index >= size:
            return None
        offset = struct.unpack_from("<H", data, vtable + 4 + 2 * index)[0]
        return table + offset if offset else None

    def target(at: int) -> int:  # follows a uoffset
        return at + u32(at)

    def vector(table: int, index: int, item: int = 4) -> list[int]:
        """Element positions of vector field `index` (checked to lie inside the file)."""
        at = field(table, index)
        if at is None:
            return []
        start = target(at)
        n = u32(start)
        if start + 4 + n * item > len(data):
            raise IndexError(start)
        return [start + 4 + item * j for j in range(n)]

    def tables(table: int, index: int) -> list[int]:
        return [target(at) for at in vector(table, index)]

    try:
        model = u32(0)
        subgraphs = tables(model, 2)
        if not subgraphs:
            raise ValueError(f"{path} is not a TFLite model (no subgraph)")
        for code in tables(model, 1):  # operator codes
            field(code, 0)
        for graph in subgraphs:
            vector(graph, 1), vector(graph, 2)  # inputs, outputs
            for tensor in tables(graph, 0):
                vector(tensor, 0), vector(tensor, 3, 1)  # shape, name
            for op in tables(graph, 3):
                vector(op, 1), vector(op, 2)  # inputs, outputs
        for buffer in tables(model, 4):
            vector(buffer, 0, 1)  # the weights
            external = field(buffer, 1)  # weights stored after the flatbuffer: offset, size
            if external is not None:
                offset, size = struct.unpack_from("<QQ", data, external)
                if offset > 1 and offset + size > len(data):
                    raise IndexError(offset)
    except (IndexError, struct.error):
        raise ValueError(
            f"{path} is truncated or corrupt ({len(data)} bytes): copy or export it again"
        ) from None


def tflite_interpreter(path: str | os.PathLike, num_threads: int = 1):
    """Returns an allocated TFLite interpreter: LiteRT, else tflite_runtime, else TF.

    Raises:
      ValueError: the file is not a whole TFLite model (`check_tflite_file`).
    """
    check_tflite_file(path)
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            import tensorflow as tf

            Interpreter = tf.lite.Interpreter
    interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter


# Interpreter module -> the name users know the TFLite runtime by.
RUNTIMES = {"ai_edge_litert": "LiteRT", "tflite_runtime": "tflite_runtime", "tensorflow": "tf.lite"}


def read_class_names(model_dir: str | os.PathLike) -> list[str] | None:
    """Class names from `labels.txt` (or `metadata.json`) in `model_dir`, if any."""
    labels = Path(model_dir) / "labels.txt"
    if labels.is_file():
        return [line.strip() for line in labels.read_text().splitlines() if line.strip()]
    names = _read_metadata(model_dir).get("class_names")
    return list(names) if names else None


def _read_metadata(model_dir) -> dict[str, Any]:
    path = Path(model_dir) / "metadata.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); export the model again") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} holds no JSON object; export the model again")
    return meta


def _as_distribution(values: np.ndarray) -> np.ndarray:
    """Probabilities as given, renormalised; logits (a model without softmax) get one."""
    if values.min() < -1e-3 or not 0.8 < values.sum() < 1.2:
        e = np.exp(values - values.max())
        return e / e.sum()
    values = np.clip(values, 0.0, None)
    return values / max(float(values.sum()), 1e-12)


class TFLiteClassifier:
    """Classifies aligned faces with a `.tflite` model ([1,S,S,C] input).

    Our exports take uint8 pixels (preprocessing is in the graph). A model
    with uint8 input gets the pixels as they are and one with int8 input gets
    `pixel - 128`: their quantization parameters say what values they mean.
    A float32-input model gets the pixels mapped linearly onto `input_range`.

    Args:
      path: the `.tflite` file.
      num_threads: interpreter threads.
      class_names: overrides `labels.txt`/`metadata.json` beside the model.
      input_range: (low, high) that a float32-input model expects for pixel
        values 0 and 255, e.g. (0, 1) for our float models or (-1, 1) for
        Keras `preprocess_input`-style models. Unused for integer inputs.

    Raises:
      ValueError: when the class names do not match the model's outputs or
        `input_range` is not increasing.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        num_threads: int = 1,
        class_names: Sequence[str] | None = None,
        input_range: tuple[float, float] = (0.0, 1.0),
    ):
        low, high = (float(v) for v in input_range)
        if not low < high:
            raise ValueError(f"input_range must be (low, high) with low < high, got {tuple(input_range)}")
        self.input_range = (low, high)
        self.path = Path(path)
        self._interpreter = tflite_interpreter(self.path, num_threads)
        self.runtime = RUNTIMES.get(type(self._interpreter).__module__.split(".")[0], "tf.lite")
        inp = self._interpreter.get_input_details()[0]
        out = self._interpreter.get_output_details()[0]
        _, self.input_size, _, self.channels = (int(v) for v in inp["shape"])
        self._input, self._input_dtype = inp["index"], inp["dtype"]
        self._output, self._output_dtype = out["index"], out["dtype"]
        self._output_scale, self._output_zero = out["quantization"]
        k = int(out["shape"][-1])
        names = class_names or read_class_names(self.path.parent) or [f"class_{i}" for i in range(k)]
        if len(names) != k:
            raise ValueError(f"{self.path} has {k} outputs but {len(names)} class names")
        self.class_names = list(names)

    def predict_faces(self, faces: Sequence[np.ndarray]) -> np.ndarray:
        """Returns float32 [F, K] probabilities for uint8 [S, S, C] faces."""
        probs = np.zeros((len(faces), len(self.class_names)), np.float32)
        for i, face in enumerate(faces):
            x = np.asarray(face, np.uint8).reshape(1, self.input_size, self.input_size, self.channels)
            self._interpreter.set_tensor(self._input, self._model_input(x))
            self._interpreter.invoke()
            raw = self._interpreter.get_tensor(self._output)[0].astype(np.float32)
            if self._output_dtype in (np.int8, np.uint8) and self._output_scale:
                raw = (raw - self._output_zero) * self._output_scale
            probs[i] = _as_distribution(raw)
        return probs

    def _model_input(self, x: np.ndarray) -> np.ndarray:
        """uint8 pixels -> the dtype and value range the model's input tensor takes."""
        if self._input_dtype == np.float32:
            low, high = self.input_range
            # (0, 1) keeps x / 255 exactly: the output of preprocess_for_eval.
            return (x.astype(np.float32) / 255.0 * (high - low) + low).astype(np.float32)
        if self._input_dtype == np.int8:
            return (x.astype(np.int16) - 128).astype(np.int8)
        return x


class SavedModelClassifier:
    """Classifies faces with an export dir's SavedModel `serving_default` (needs TF).

    Args:
      export_dir: an export directory (with `saved_model/`) or a SavedModel dir.
      class_names: overrides `labels.txt`/`metadata.json` in the export dir.
    """

    def __init__(self, export_dir: str | os.PathLike, class_names: Sequence[str] | None = None):
        import tensorflow as tf  # lazy: the TFLite path must run without TF

        root = Path(export_dir)
        saved = root / "saved_model" if (root / "saved_model").is_dir() else root
        self._tf = tf
        try:
            self._loaded = tf.saved_model.load(str(saved))  # keeps the variables alive
        except OSError as e:  # a truncated saved_model.pb: "Cannot parse file ..."
            raise ValueError(
                f"{saved} is corrupt or truncated ({str(e).splitlines()[0]}); export again"
            ) from None
        self._fn = self._loaded.signatures["serving_default"]
        self.path, self.runtime = saved, "TensorFlow SavedModel"
        self.input_size, self.channels = _input_spec(root)
        names = class_names or read_class_names(root) or read_class_names(saved)
        if not names:
            raise ValueError(f"no labels.txt or metadata.json class_names in {root}")
        k = self._fn.structured_outputs["probabilities"].shape[-1]
        if k is not None and len(names) != k:  # else the first face would fail, mid-session
            raise ValueError(f"{saved} has {k} outputs but {len(names)} class names")
        self.class_names = list(names)

    def predict_faces(self, faces: Sequence[np.ndarray]) -> np.ndarray:
        """Returns float32 [F, K] probabilities for uint8 [S, S, C] faces."""
        if len(faces) == 0:
            return np.zeros((0, len(self.class_names)), np.float32)
        batch = self._tf.constant(np.stack(faces).astype(np.uint8))
        return self._fn(images=batch)["probabilities"].numpy().astype(np.float32)


def _input_spec(export_dir: Path) -> tuple[int, int]:
    """(S, C) of the model input from metadata.json, the TFLite file, or 48x48x1."""
    meta = _read_metadata(export_dir)
    shape = meta.get("input_shape") or meta.get("input_size") or meta.get("image_size")
    if isinstance(shape, (list, tuple)) and len(shape) >= 3:
        return int(shape[-3]), int(shape[-1])
    if isinstance(shape, int):
        return shape, int(meta.get("channels", 1))
    tflite = export_dir / FLOAT32_FILE
    if tflite.is_file():
        shape = tflite_interpreter(tflite).get_input_details()[0]["shape"]
        return int(shape[1]), int(shape[3])
    return 48, 1


def _tensorflow_installed() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


# CPU flags (/proc/cpuinfo) of int8 dot-product instructions: x86 AVX-512 VNNI and AVX-VNNI, Arm
# dotprod and i8mm. Without them XNNPACK's int8 kernels widen to 16 bits and run no faster than its
# float32 ones; on an AVX2-only EPYC the release's float32 file took 9% less time than its int8
# file, a slimmed network's 23% less (MODEL_CARD.md, Latency).
INT8_DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "asimddp", "i8mm")
BACKENDS = ("auto", "int8", "float32", "saved_model")


def int8_dot_product_isa(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> list[str] | None:
    """The CPU's int8 dot-product instructions: [] when it has none, None when it cannot tell.

    Read from `cpuinfo`'s flags (Linux). Apple silicon has Arm dotprod.
    """
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return ["asimddp"]
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(("flags", "Features")) and ":" in line:
            return sorted(set(line.split(":", 1)[1].split()) & set(INT8_DOT_PRODUCT_FLAGS))
    return None


def tflite_preference(isa: list[str] | None = None) -> tuple[str, str]:
    """An export's TFLite files, the faster one on this CPU first.

    int8 first, unless the CPU is known to lack int8 dot-product instructions:
    then float32, which answers the same (export.py's parity gate) and runs faster there.
    """
    isa = int8_dot_product_isa() if isa is None else isa
    return (FLOAT32_FILE, INT8_FILE) if isa == [] else (INT8_FILE, FLOAT32_FILE)


def load_classifier(model: str | os.PathLike | None = None, num_threads: int = 1, backend: str = "auto"):
    """Opens a model: a `.tflite` file, an export dir, or None for the release model.

    Args:
      model: path, or None for `default_model_path()`.
      num_threads: TFLite interpreter threads.
      backend: for an export dir, which of its files runs: "auto" (the TFLite
        file that is faster on this CPU, `tflite_preference`; the SavedModel
        only when the export has no TFLite file), "int8", "float32" or
        "saved_model" (needs TensorFlow). Ignored for a `.tflite` file.

    Returns:
      A `TFLiteClassifier` or `SavedModelClassifier`.

    Raises:
      FileNotFoundError: no model at `model`, or not the file `backend` asks for.
      ValueError: an unknown `backend`, or an unreadable model.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    path = Path(model) if model is not None else default_model_path()
    if not path.exists():
        if model is None:
            raise FileNotFoundError(
                f"the release model {path} is not there yet; pass --model=<export dir or .tflite> "
                "(make one with export.py --run=runs/<name> --output=export/)"
            )
        raise FileNotFoundError(f"model not found: {path}")
    if path.is_file():
        return TFLiteClassifier(path, num_threads)
    has_saved = (path / "saved_model.pb").is_file() or (path / "saved_model" / "saved_model.pb").is_file()
    if backend == "saved_model":
        if not has_saved:
            raise FileNotFoundError(f"no SavedModel in {path}")
        if not _tensorflow_installed():
            raise FileNotFoundError(f"the SavedModel in {path} needs TensorFlow, which is not installed")
        return SavedModelClassifier(path)
    names = {"int8": (INT8_FILE,), "float32": (FLOAT32_FILE,)}.get(backend) or tflite_preference()
    for name in names:
        if (path / name).is_file():
            return TFLiteClassifier(path / name, num_threads)
    if backend == "auto" and has_saved and _tensorflow_installed():
        return SavedModelClassifier(path)
    wanted = " or ".join(names)
    raise FileNotFoundError(
        f"no usable model in {path}: no {wanted}"
        + ("" if backend != "auto" else " (a SavedModel needs TensorFlow)")
    )
