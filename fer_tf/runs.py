"""Reading a training run directory (`runs/<name>/`, written by `fer_tf.train_lib`).

Export and other tools that start from a finished run use these: its flags
(`flags.txt`), its `run_info.json`, its best model (`model.keras`) and the
training class priors used for post-hoc logit adjustment.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

# models: importing the registry registers fer_tf's custom layers, so that
# `model.keras` files that use them load.
from fer_tf import models, schema  # noqa: F401

# The final epoch's weights, whatever the monitor says, kept by train_lib beside
# model.keras (the best epoch): soups average these (soup.py --checkpoint=last),
# free of the per-run selection on validation.
LAST_CHECKPOINT = os.path.join("checkpoints", "last.keras")


def read_flags(path: str) -> dict[str, str]:
    """Parses an absl flagfile into {name: value}; `--flag`/`--noflag` give "true"/"false".

    A missing file gives an empty dict.
    """
    if not os.path.exists(path):
        return {}
    flags = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("--"):
                continue
            name, sep, value = line[2:].partition("=")
            if not sep:
                # absl writes booleans as --flag / --noflag.
                value = "false" if name.startswith("no") else "true"
                name = name[2:] if name.startswith("no") else name
            flags[name] = value
    return flags


def read_run_info(run_dir: str) -> dict[str, Any]:
    """Reads and checks `run_info.json` of a run directory.

    Raises:
      FileNotFoundError: when the run directory or its files are missing.
      ValueError: when a required key is missing.
    """
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"run directory {run_dir} not found")
    path = os.path.join(run_dir, "run_info.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {run_dir} a training run directory?")
    info = schema.read_json_object(path, "train the run again or recover it from its export")
    missing = [k for k in ("data_dir", "class_names", "image_size", "channels") if k not in info]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}")
    return info


def resolve_data_dir(data_dir: str, run_dir: str, user: str) -> str:
    """The run's converted dataset: `data_dir` as recorded, else relative to the run directory.

    Raises:
      FileNotFoundError: naming `user` (e.g. "export"), when neither has a dataset_info.json.
    """
    for candidate in (data_dir, os.path.join(run_dir, data_dir)):
        if os.path.exists(os.path.join(candidate, schema.INFO_FILE)):
            return candidate
    raise FileNotFoundError(
        f"dataset {data_dir} of run {run_dir} not found: {user} needs its train split "
        "(calibration) and val split (scoring)"
    )


def load_run_model(run_dir: str, run_info: Mapping[str, Any], filename: str = "model.keras") -> keras.Model:
    """Loads `model.keras` (or another model file) of a run, with fer_tf's custom layers registered.

    Args:
      run_dir: the run directory.
      run_info: its run_info.json.
      filename: the model file, relative to `run_dir`: "model.keras" (the
        best epoch) or "checkpoints/last.keras" (the final one).

    Raises:
      FileNotFoundError: when the model file is missing.
      ValueError: when the model cannot be deserialized (e.g. a custom layer
        that is not importable) or its input shape differs from the run's.
    """
    path = os.path.join(run_dir, filename)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: has the run finished training?")
    if not zipfile.is_zipfile(path):  # a .keras file is a zip archive
        raise ValueError(f"{path} is truncated or corrupt (not a .keras archive)")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as err:  # Keras raises TypeError/ValueError/KeyError here.
        name = run_info.get("model", "?")
        raise ValueError(
            f"cannot load {path} (model {name!r}); its custom layers must be importable "
            f"from fer_tf.models: {str(err).splitlines()[0]}"
        ) from err
    size, channels = int(run_info["image_size"]), int(run_info["channels"])
    if tuple(model.input_shape[1:]) != (size, size, channels):
        raise ValueError(
            f"{path}: input shape {model.input_shape} differs from run_info [{size},{size},{channels}]"
        )
    return model


@dataclasses.dataclass(frozen=True)
class Run:
    """A finished run opened for scoring or export (`open_run`)."""

    info: dict[str, Any]
    model: keras.Model
    data_dir: str
    data_info: dict[str, Any]
    class_names: list[str]
    image_size: int
    channels: int


def open_run(run_dir: str, user: str) -> Run:
    """Reads a run's info, loads its model and finds its converted dataset.

    Args:
      run_dir: a training run directory.
      user: who needs the dataset (e.g. "export"), named in the error when it is missing.

    Raises:
      FileNotFoundError, ValueError: as `read_run_info`, `load_run_model` and `resolve_data_dir`.
    """
    info = read_run_info(run_dir)
    model = load_run_model(run_dir, info)
    data_dir = resolve_data_dir(info["data_dir"], run_dir, user)
    return Run(
        info=info,
        model=model,
        data_dir=data_dir,
        data_info=schema.read_dataset_info(data_dir),
        class_names=[str(c) for c in info["class_names"]],
        image_size=int(info["image_size"]),
        channels=int(info["channels"]),
    )


def train_log_prior(run_info: Mapping[str, Any], data_info: Mapping[str, Any] | None) -> np.ndarray:
    """Returns log class priors of the training split, in run class order.

    Read from `run_info["train_class_counts"]` (dict by name or list), else from
    the dataset's `dataset_info.json`. Empty classes count as one image, so the
    adjustment stays finite.
    """
    names = list(run_info["class_names"])
    counts = run_info.get("train_class_counts")
    if counts is None and data_info is not None:
        counts = data_info["splits"]["train"]["class_counts"]
    if counts is None:
        raise ValueError("logit adjustment needs train class counts (run_info.json or dataset_info.json)")
    if isinstance(counts, Mapping):
        counts = [counts[name] for name in names]
    counts = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    return np.log(counts / counts.sum()).astype(np.float32)


def portable_paths(value: Any, base: str | None = None) -> Any:
    """`value` with every absolute path made relative to `base` (default: the working directory).

    Exports are meant to be shared and committed (models/fer2013/), so their
    metadata must not name directories of the machine that built them: a path
    outside `base` keeps only its last component.
    """
    base = os.getcwd() if base is None else base
    if isinstance(value, Mapping):
        return {k: portable_paths(v, base) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [portable_paths(v, base) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        relative = os.path.relpath(value, base)
        return os.path.basename(value) if relative.startswith("..") else relative
    return value
