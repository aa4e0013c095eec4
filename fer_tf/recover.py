"""Rebuilds the Keras model of an export (DESIGN.md contract 4) from its SavedModel.

An export is what survives of a run once its run directory is gone: this turns
it back into a `model.keras` that `train.py --teacher` / `--init_weights`
accept, e.g. to distil from the shipped model or fine-tune it on other data.

  python recover.py --export=models/fer2013 --output=runs/release_fer2013_v7a

Given a directory, it also writes the run_info.json, flags.txt and metrics.json a
training run has, from what the export recorded (classes, network input size,
training class counts, data directory, training flags, the run's validation
metrics), unless the directory already has them:
the recovered directory is then a run that `export.py` re-exports (another tau or
test-time view) and `soup.py` averages with its fine-tunes.

The architecture comes from the flags the export recorded in metadata.json
(`--model`, `--width`, `--dropout`, `--model_kw`) and its network input size.
The SavedModel holds every weight as a variable, except where
`quantize.pixel_network` folded the input rescale into the first convolution:
that kernel is a graph constant scaled by `scale / 255`, and is unscaled here.
The rebuilt model is checked against the export's own `lite` endpoint (logit
adjustment and test-time views included) before it is written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from fer_tf import cli, data, export_lib, models, runs, schema

# Largest |probability| difference between the export and the rebuilt model.
CHECK_TOLERANCE = 1e-4
CHECK_FACES = 8


def model_from_export(export_dir: str) -> keras.Model:
    """The export's network as a Keras model (float [0, 1] input -> logits).

    Raises:
      FileNotFoundError: no metadata.json or SavedModel in `export_dir`.
      ValueError: the recorded flags name no registered model, a weight cannot be
        found in the SavedModel, or the rebuilt model disagrees with the export.
    """
    meta = _read_metadata(export_dir)
    saved = os.path.join(export_dir, export_lib.SAVED_MODEL_DIR)
    try:
        loaded = tf.saved_model.load(saved)
    except OSError as e:  # a truncated saved_model.pb: "Cannot parse file ..."
        raise ValueError(
            f"{saved} is corrupt or truncated ({str(e).splitlines()[0]}); export again"
        ) from None
    lite = loaded.signatures["lite"]
    model = _build(meta)
    stored = {v.name.split(":")[0]: v.numpy() for v in lite.variables}
    missing = [w for w in model.weights if w.path not in stored]
    for w in model.weights:
        if w.path in stored:
            w.assign(stored[w.path])
    if missing:
        _unfold_stem(model, missing, [c.numpy() for c in lite.captured_inputs if c.dtype == tf.float32])
    _check(model, lite, meta)
    return model


def _read_metadata(export_dir: str) -> dict[str, Any]:
    path = os.path.join(export_dir, export_lib.METADATA_FILE)
    if not os.path.exists(path) or not os.path.isdir(os.path.join(export_dir, export_lib.SAVED_MODEL_DIR)):
        raise FileNotFoundError(f"no export at {export_dir}: expected metadata.json and saved_model/")
    return schema.read_json_object(path, "export the run again")


def _model_name(meta: Mapping[str, Any]) -> str | None:
    """The architecture's name: the training flag, else the export's model record."""
    return (meta.get("flags") or {}).get("model") or (meta.get("model") or {}).get("name")


def _build(meta: Mapping[str, Any]) -> keras.Model:
    recorded = meta.get("flags") or {}
    name = _model_name(meta)
    if name not in models.MODELS:
        raise ValueError(
            f"the export's model {name!r} is not one of fer_tf.models ({', '.join(sorted(models.MODELS))})"
        )
    kwargs: dict[str, Any] = {}
    for key in ("width", "dropout"):
        if recorded.get(key) not in (None, ""):
            kwargs[key] = float(recorded[key])
    kwargs.update(cli.parse_model_kw((recorded.get("model_kw") or "").split(",")))
    prep = meta["preprocessing"]
    size = prep.get("network_input_size", meta["input_size"])
    return models.build_model(name, meta["num_classes"], (size, size, meta["channels"]), **kwargs)


def _unfold_stem(model: keras.Model, missing: list, constants: list[np.ndarray]) -> None:
    """Restores the convolution `quantize.pixel_network` folded the rescale into."""
    rescale = model.layers[1] if len(model.layers) > 1 else None
    conv = model.layers[2] if len(model.layers) > 2 else None
    kernel = getattr(conv, "kernel", None)
    if (
        not isinstance(rescale, keras.layers.Rescaling)
        or kernel is None
        or [w.path for w in missing] != [kernel.path]
    ):
        raise ValueError(
            f"the SavedModel lacks weights {[w.path for w in missing]}: not an export of this model"
        )
    scale, offset = float(rescale.scale) / 255.0, float(rescale.offset)
    shape = tuple(kernel.shape)
    candidates = [c for c in constants if c.shape == shape]
    if len(candidates) != 1:
        raise ValueError(
            f"found {len(candidates)} constants of {conv.name}'s kernel shape {shape}, expected 1"
        )
    unfolded = candidates[0] / scale
    if conv.use_bias:
        folded_bias = [c for c in constants if c.shape == (shape[-1],)]
        sums = offset * unfolded.sum(axis=(0, 1, 2))
        # bias_folded = bias + offset * sum(W): the bias variable already holds `bias`.
        if not any(np.allclose(c, conv.bias.numpy() + sums, atol=1e-4) for c in folded_bias):
            raise ValueError(f"{conv.name}'s folded bias does not match its kernel")
    kernel.assign(unfolded)


def _check(model: keras.Model, lite: Any, meta: Mapping[str, Any]) -> None:
    """Raises ValueError unless `model` reproduces the export's `lite` probabilities."""
    prep = meta["preprocessing"]
    size, channels, net = meta["input_size"], meta["channels"], model.input_shape[1]
    tau = float(prep.get("logit_adjust_tau") or 0.0)
    counts = {
        "class_names": meta["class_names"],
        "train_class_counts": (meta.get("source_dataset") or {}).get("train_class_counts"),
    }
    log_prior = (
        runs.train_log_prior(counts, None) if tau else np.zeros(len(counts["class_names"]), np.float32)
    )
    rng = np.random.default_rng(0)
    # Smooth random faces: a low-resolution grid upscaled, so the check sees structure, not noise only.
    coarse = rng.uniform(0, 255, (CHECK_FACES, 6, 6, channels)).astype(np.float32)
    pixels = tf.cast(tf.round(tf.image.resize(coarse, [size, size])), tf.uint8)
    want = np.concatenate(
        [lite(images=pixels[i : i + 1])["probabilities"].numpy() for i in range(CHECK_FACES)]
    )
    x = (
        tf.image.resize(tf.cast(pixels, tf.float32), [net, net], method="bilinear")
        if size != net
        else tf.cast(pixels, tf.float32)
    )
    views = data.tta_views(x / 255.0, bool(prep.get("tta_flip")), float(prep.get("tta_zoom") or 0.0))
    got = np.mean([tf.nn.softmax(model(v, training=False) - tau * log_prior).numpy() for v in views], axis=0)
    diff = float(np.abs(got - want).max())
    if diff > CHECK_TOLERANCE:
        raise ValueError(f"the rebuilt model differs from the export by up to {diff:.2g} in probability")


def write_model(export_dir: str, output: str) -> str:
    """Rebuilds the export's model and saves it as `output` (a .keras file, or `<dir>/model.keras`
    with the run files of `write_run_files`).

    A run directory that lost its model gets it back, its own run files kept.

    Raises:
      FileExistsError: `output` is a model already, a folder holding one, or a
        run still training (backup/); nothing is replaced.
    """
    path = output if output.endswith(".keras") else os.path.join(output, "model.keras")
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists; recover into a new --output, nothing is replaced")
    if not output.endswith(".keras") and os.path.isdir(os.path.join(output, "backup")):
        raise FileExistsError(f"{output} is a run still training (it has backup/); recover elsewhere")
    model = model_from_export(export_dir)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    model.save(path)
    if not output.endswith(".keras"):
        write_run_files(_read_metadata(export_dir), model, output, export_dir)
    return path


def write_run_files(meta: Mapping[str, Any], model: keras.Model, run_dir: str, export_dir: str) -> None:
    """Writes `run_dir`'s run_info.json, flags.txt and metrics.json from the export's metadata,
    keeping existing ones."""
    source = meta.get("source_dataset") or {}
    run_info = {
        "data_dir": source.get("data_dir", ""),
        "class_names": list(meta["class_names"]),
        "image_size": int(model.input_shape[1]),
        "channels": int(meta["channels"]),
        "model": _model_name(meta),
        "params": int(model.count_params()),
        "dataset_source": source.get("source"),
        "train_class_counts": source.get("train_class_counts"),
        "recovered_from": runs.portable_paths(export_dir),
    }
    run_metrics = (meta.get("validation_metrics") or {}).get("run")
    files = {
        "run_info.json": json.dumps(run_info, indent=2),
        "flags.txt": "".join(f"--{name}={value}\n" for name, value in (meta.get("flags") or {}).items()),
        "metrics.json": json.dumps(run_metrics, indent=2) if run_metrics else "",
    }
    for name, text in files.items():
        path = os.path.join(run_dir, name)
        if text and not os.path.exists(path):  # nothing recorded, or the run's own file: left alone
            with open(path, "w") as f:
                f.write(text)
