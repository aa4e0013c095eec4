"""Converts a FER dataset into sharded TFRecords + dataset_info.json.

    python -m data_tools.convert --format=fer2013 --input=fer2013.csv.gz --output=data/fer2013
    python -m data_tools.convert --format=ferplus --input=fer2013.csv --output=data/ferplus
        (FER+ votes from --ferplus_labels, default: fer2013new.csv beside --input)
    python -m data_tools.convert --format=folder --input=my_faces/ --output=data/mine --image_size=64
    python -m data_tools.convert --format=rafdb|expw|sfew|ckplus --input=ROOT --output=DIR [--align]

Beam pipeline options go after `--`, e.g. `-- --runner=DataflowRunner --project=...`;
`--num_workers=2` runs the DirectRunner with worker processes (pays off for large
image datasets; for FER2013 the in-process default is faster).

`--imbalance_factor=IF` writes a long-tail benchmark set instead: the full
conversion goes to a temp dir, `data_tools.longtail.make_longtail` subsamples its
train split to n_i = n_max * IF^(-i/(K-1)) into --output (val/test unchanged), and
the temp dir is removed.

A CSV without a Usage column puts every row in train unless --split_if_missing
gives train,val,test fractions. Bad inputs are skipped and counted by reason in
dataset_info.json; --strict makes the first one fatal. Errors are one line on
stderr with exit code 2.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from typing import Any

if __package__ in (None, ""):  # run as `python data_tools/convert.py`: make the repo importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags

import launch
from fer_tf.cli import fail

# TensorFlow and Beam are imported only once the inputs are checked: they take
# seconds to import, and a wrong path should fail at once with a single line.

FLAGS = flags.FLAGS


def convert_fer2013(csv_path: str, output_dir: str, **kw: Any) -> dict[str, Any]:
    """Converts a FER2013 CSV (or FER+, with `ferplus_labels=`) into TFRecords; returns dataset_info.

    See `data_tools.fer2013.convert_fer2013` for the keywords. Importing this
    module is cheap and defines no flags, so train.py can call it when TFRecords are missing.
    """
    from data_tools import fer2013

    return fer2013.convert_fer2013(csv_path, output_dir, **kw)


def _fer2013(path: str, options: dict[str, Any]) -> Any:
    from data_tools import fer2013

    return fer2013.fer2013_source(
        path, split_if_missing=options["split_if_missing"], seed=options["seed"], progress=options["progress"]
    )


def _ferplus(path: str, options: dict[str, Any]) -> Any:
    from data_tools import fer2013

    return fer2013.ferplus_source(
        path, options["ferplus_labels"], num_classes=options["ferplus_classes"], progress=options["progress"]
    )


def _image_source(module: str, function: str) -> Callable[[str, dict[str, Any]], Any]:
    # Imported when used, so that a missing or broken image module never breaks the CSV formats.
    def build(path: str, options: dict[str, Any]) -> Any:
        keys = ("classes", "image_size", "channels", "seed", "align", "val_fraction")
        return getattr(importlib.import_module(module), function)(path, **{key: options[key] for key in keys})

    return build


# --format -> builder(input path, options) -> writer.Source.
SOURCES: dict[str, Callable[[str, dict[str, Any]], Any]] = {
    "fer2013": _fer2013,
    "ferplus": _ferplus,
    "folder": _image_source("data_tools.folders", "folder_source"),
    "rafdb": _image_source("data_tools.layouts", "rafdb_source"),
    "expw": _image_source("data_tools.layouts", "expw_source"),
    "sfew": _image_source("data_tools.layouts", "sfew_source"),
    "ckplus": _image_source("data_tools.layouts", "ckplus_source"),
}


def default_options(input_path: str, **overrides: Any) -> dict[str, Any]:
    """The options every `SOURCES` builder reads, with the CLI's defaults.

    Args:
      input_path: the raw CSV or dataset root (FER+ votes default to
        `fer2013new.csv` beside it).
      **overrides: any option to change, e.g. image_size=64, channels=3.
    """
    options = {
        "ferplus_labels": os.path.join(os.path.dirname(os.path.abspath(input_path)), "fer2013new.csv"),
        "ferplus_classes": 8,
        "split_if_missing": None,
        "seed": 0,
        "classes": None,
        "image_size": 48,
        "channels": 1,
        "align": False,
        "val_fraction": 0.0,
        "progress": True,
    }
    unknown = set(overrides) - set(options)
    if unknown:
        raise TypeError(f"unknown conversion options: {sorted(unknown)}")
    options.update(overrides)
    return options


def prepare(fmt: str, input_path: str, output_dir: str, **overrides: Any) -> dict[str, Any]:
    """Converts a raw dataset with default options; how train.py builds missing TFRecords.

    Args:
      fmt: a key of `SOURCES` (fer2013, ferplus, folder, rafdb, expw, sfew, ckplus).
      input_path: the raw CSV or dataset root.
      output_dir: the dataset directory to write.
      **overrides: options of `default_options`.

    Returns:
      The dataset_info dict that was written.
    """
    from data_tools import writer

    options = default_options(input_path, **overrides)
    source = SOURCES[fmt](input_path, options)
    return writer.convert(source, output_dir, progress=options["progress"])


FER2013_HELP = (
    "FER2013 is not bundled. Download fer2013.csv from Kaggle "
    "(https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-recognition-challenge/data),"
    " put it at {path} (or pass --raw_data=PATH), and re-run."
)


def prepare_dataset(
    raw: str, data_dir: str, raw_format: str = "fer2013", **overrides: Any
) -> dict[str, Any] | None:
    """Converts a raw download into `data_dir` unless a converted dataset is already there.

    The entry scripts (train.py, study.py) call this so that a first run
    converts the user's download itself (`prepare` with default options).

    Args:
      raw: the raw CSV (`<raw>.gz` is also tried, as Kaggle ships it) or dataset root.
      data_dir: the dataset directory to write.
      raw_format: a key of `SOURCES`.
      **overrides: options of `default_options`, e.g. image_size=64, val_fraction=0.1.

    Returns:
      The new dataset_info, or None when `data_dir` already holds a dataset.

    Raises:
      FileNotFoundError: `raw` is missing (for FER2013 and FER+, with download instructions).
    """
    if os.path.exists(os.path.join(data_dir, "dataset_info.json")):
        return None
    path = raw if os.path.exists(raw) or not os.path.exists(raw + ".gz") else raw + ".gz"
    if not os.path.exists(path):
        raise FileNotFoundError(
            FER2013_HELP.format(path=raw)
            if raw_format in ("fer2013", "ferplus")
            else f"raw data {raw} not found"
        )
    print(f"preparing {data_dir} from {path} ({raw_format})", flush=True)
    return prepare(raw_format, path, data_dir, **overrides)


def define_flags() -> None:
    """Defines the CLI flags; called only when run as a script, so importing defines none."""
    flags.DEFINE_enum("format", None, list(SOURCES), "Input format.")
    flags.DEFINE_string("input", None, "CSV file (fer2013, ferplus) or dataset root folder.")
    flags.DEFINE_string(
        "output", None, "Dataset directory to write (replaced if it holds an older conversion)."
    )
    flags.DEFINE_string("ferplus_labels", None, "FER+ votes CSV (default: fer2013new.csv beside --input).")
    flags.DEFINE_enum(
        "ferplus_classes", "8", ["7", "8"], "FER+ classes: 8 with contempt, or 7 (contempt dropped)."
    )
    flags.DEFINE_list(
        "split_if_missing", [], "train,val,test fractions for a CSV without Usage (default: all train)."
    )
    flags.DEFINE_enum("encoding", "raw", ["raw", "png"], "Image bytes in the records.")
    flags.DEFINE_integer("examples_per_shard", 10_000, "Shards per split = ceil(examples / this).")
    flags.DEFINE_bool("strict", False, "Make the first bad input fatal instead of skipping it.")
    flags.DEFINE_float("imbalance_factor", None, "Write a long-tail train split with this head/tail ratio.")
    flags.DEFINE_integer("seed", 0, "Seed of drawn splits and of the long-tail subset.")
    flags.DEFINE_integer("image_size", 48, "Image side for image formats.")
    flags.DEFINE_integer("channels", 1, "1 (gray) or 3 (RGB) for image formats.")
    flags.DEFINE_list("classes", [], "Class names fixing order and selection (image formats).")
    flags.DEFINE_bool("align", False, "Detect and align faces (image formats).")
    flags.DEFINE_integer("num_workers", 1, "DirectRunner worker processes (1: in-process).")
    flags.DEFINE_bool("progress", True, "Show progress bars.")
    flags.mark_flags_as_required(["format", "input", "output"])


def main(argv: Sequence[str]) -> None:
    f = FLAGS
    if not os.path.exists(f.input):
        fail(f"--input={f.input} does not exist")
    options = default_options(
        f.input,
        ferplus_classes=int(f.ferplus_classes),
        split_if_missing=_fractions(f.split_if_missing),
        seed=f.seed,
        classes=f.classes or None,
        image_size=f.image_size,
        channels=f.channels,
        align=f.align,
        progress=f.progress,
    )
    if f.ferplus_labels:
        options["ferplus_labels"] = f.ferplus_labels
    if f.format == "ferplus" and not os.path.exists(options["ferplus_labels"]):
        fail(f"--ferplus_labels={options['ferplus_labels']} does not exist")
    pipeline_args = list(argv[1:])
    if f.num_workers > 1:
        pipeline_args += [f"--direct_num_workers={f.num_workers}", "--direct_running_mode=multi_processing"]
    # Chatter of Beam and its Google Cloud dependencies, not about this conversion.
    warnings.filterwarnings("ignore", category=FutureWarning, module="google")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    from data_tools import writer

    convert_kw = {
        "encoding": f.encoding,
        "examples_per_shard": f.examples_per_shard,
        "strict": f.strict,
        "pipeline_args": pipeline_args,
        "progress": f.progress,
    }
    try:
        source = SOURCES[f.format](f.input, options)
        if f.imbalance_factor:
            info = _convert_longtail(source, f.output, f.imbalance_factor, f.seed, convert_kw)
        else:
            info = writer.convert(source, f.output, **convert_kw)
    except (writer.ConversionError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    for split, entry in info["splits"].items():
        counts = ", ".join(f"{name} {n}" for name, n in entry["class_counts"].items())
        print(f"{split}: {entry['num_examples']} images in {entry['num_shards']} shards ({counts})")
    print(f"wrote {f.output}")


def _fractions(values: Sequence[str]) -> list[float] | None:
    try:
        return [float(v) for v in values] or None
    except ValueError:
        fail(f"--split_if_missing={','.join(values)}: expected numbers like 0.8,0.1,0.1")


def _convert_longtail(source: Any, output: str, imbalance_factor: float, seed: int, convert_kw: dict) -> dict:
    """Converts into a temp dir beside `output`, then writes the long-tail subset to `output`."""
    from data_tools import longtail, writer

    # Both checks before the conversion, not after it.
    longtail.check_imbalance_factor(imbalance_factor)
    writer.check_replaceable(os.path.abspath(output))
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{os.path.basename(output)}.full-", dir=parent) as full:
        full_dir = os.path.join(full, "dataset")
        writer.convert(source, full_dir, **convert_kw)
        return longtail.make_longtail(full_dir, output, imbalance_factor, seed, overwrite=True)


if __name__ == "__main__":
    define_flags()
    launch.run(main)
