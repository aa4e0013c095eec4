"""Small helpers shared by the entry scripts (train.py, study.py, ...).

Nothing here defines or reads flags: the scripts own their flags and pass plain
values (launch.py, beside the scripts, starts them under absl).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from typing import Any

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def resolve_flagfiles(argv: Sequence[str], config_dir: str = CONFIG_DIR) -> list[str]:
    """Lets `--flagfile=fer2013.flags` name a file in `configs/`.

    A flagfile path that exists as given is kept; otherwise `configs/<name>`
    (and `configs/<name>.flags`) are tried, so the command in the README works
    from the repository root as typed.

    Args:
      argv: the command line, e.g. `sys.argv`.
      config_dir: where the project's flagfiles live.

    Returns:
      argv with flagfile paths rewritten where a config file was found.
    """
    resolved = []
    for arg in argv:
        prefix = next((p for p in ("--flagfile=", "-flagfile=") if arg.startswith(p)), None)
        if prefix:
            path = arg[len(prefix) :]
            candidates = [path, os.path.join(config_dir, path), os.path.join(config_dir, path + ".flags")]
            found = next((c for c in candidates if os.path.isfile(c)), None)
            if found is None:
                fail(f"flagfile {path!r} not found (looked in . and {config_dir})")
            arg = prefix + found
        resolved.append(arg)
    return resolved


def fail(message: str, code: int = 2) -> None:
    """Prints a one-line error to stderr and exits with `code` (no traceback)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def check_output_path(flag: str, path: str, *, folder: bool = True) -> None:
    """Fails in one line when `path` cannot be created: it or a folder above it is a file.

    Called before the work, so a typo costs nothing (makedirs would fail only
    when the results are written). With `folder`, `path` itself must not be a file.
    """
    here = os.path.abspath(path) if folder else os.path.dirname(os.path.abspath(path))
    while not os.path.exists(here):
        here = os.path.dirname(here)
    if not os.path.isdir(here):
        fail(f"--{flag}={path}: {here} is a file, not a folder")


def is_within(path: str, folder: str) -> bool:
    """True when `path` is `folder` or lies inside it, symlinks resolved: writing there could overwrite it."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def number_or_text(value: str) -> Any:
    """A flag value as int or float when it reads as one (`model_kw` values), else the text."""
    try:
        return float(value) if "." in value or "e" in value.lower() else int(value)
    except ValueError:
        return value


def parse_model_kw(items: Sequence[str]) -> dict[str, Any]:
    """`--model_kw` items ("depth=0.5", "activation=hard_silu") as model keywords; a one-line error otherwise."""
    pairs = [item.partition("=") for item in items if item]
    for key, equals, _ in pairs:
        if not equals or not key.strip():
            fail(f"--model_kw items must be key=value (e.g. depth=0.5), got {key!r}")
    return {key.strip(): number_or_text(value.strip()) for key, _, value in pairs}


def parse_input_range(value: str) -> tuple[float, float]:
    """'low,high' -> (low, high); a one-line error unless two finite increasing numbers."""
    try:
        low, high = (float(v) for v in value.split(","))
    except ValueError:
        fail(f"--input_range must be two numbers low,high (e.g. -1,1), got {value!r}")
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        fail(f"--input_range must be finite with low < high, got {value!r}")
    return low, high


def parse_labels(value: str | None) -> list[str] | None:
    """--labels: a file with one class name a line, or comma-separated names (as given)."""
    if value is None:
        return None
    if os.path.isfile(value):
        with open(value) as f:
            names = [line.strip() for line in f if line.strip()]
    elif "," in value:
        names = [name.strip() for name in value.split(",")]
    else:
        fail(f"--labels {value} is neither a file nor comma-separated class names")
    if not names or not all(names):
        fail(f"--labels {value!r} has an empty class name")
    return names
