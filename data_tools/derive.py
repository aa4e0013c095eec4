"""Plumbing shared by the derived training sets (long-tail subsets, SMOTE).

A derived dataset differs from its parent only in the train split. Its
val/test shards are copied byte for byte: the tools that build a derived set
never decode, sample or write an evaluation record, so nothing learned from
them can leak into training (the "oversampling before splitting" trap).
The new directory appears atomically: it is written under a temp name beside
the output and renamed at the end. The tools' CLIs share their common flags
and checks (`define_flags`, `run_cli`).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow as tf
from absl import flags

from data_tools.writer import (
    ConversionError,
    Record,
    carried_on_rewrite,
    check_replaceable,
    stale_note,
    stale_reports,
    write_shards,
)
from fer_tf import cli, outdir, schema

TRAIN = "train"


@dataclasses.dataclass(frozen=True)
class SplitArrays:
    """Every record of one split, decoded, in shard order."""

    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int64 [N]
    ids: np.ndarray  # str [N]
    soft_labels: np.ndarray  # float32 [N, K]; one-hot when the dataset has no votes
    synthetic: np.ndarray  # bool [N]


def split_files(data_dir: str, split: str, expected: int | None = None) -> list[str]:
    """The shard files of `split`, sorted (their order is the record order).

    Raises:
      ValueError: `expected` is given and another number of shards is there.
    """
    files = sorted(tf.io.gfile.glob(schema.shard_pattern(data_dir, split)))
    if expected is not None and len(files) != expected:
        raise ValueError(f"{data_dir}: dataset_info says {expected} {split} shards, found {len(files)}")
    return files


# What reading a truncated or garbled TFRecord shard raises.
CORRUPT_SHARD = (tf.errors.DataLossError, tf.errors.InvalidArgumentError)


def corrupt_shard(data_dir: str, split: str, error: Exception) -> ValueError:
    """The one-line error for a shard of `split` that TensorFlow could not read."""
    message = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:.*", "", str(error).strip().splitlines()[0])  # TF's op wrapping
    return ValueError(f"{data_dir}: corrupt {split} shard ({message}); convert the dataset again")


def check_record_count(data_dir: str, split: str, entry: Mapping[str, Any], found: int) -> None:
    """Raises ValueError unless `found` records match the split's dataset_info entry."""
    if "num_examples" in entry and found != entry["num_examples"]:
        raise ValueError(
            f"{data_dir}: dataset_info says {entry['num_examples']} {split} records, found {found}"
        )


def read_split(data_dir: str, split: str, info: Mapping[str, Any] | None = None) -> SplitArrays:
    """Decodes every record of `split` into numpy arrays.

    Args:
      data_dir: a converted dataset (shards + dataset_info.json).
      split: "train", "val" or "test".
      info: its dataset_info (read from `data_dir` when None).

    Returns:
      The split's records, in shard order.

    Raises:
      ValueError: shards missing, a corrupt shard, or fewer or more records than
        dataset_info promises (an incomplete copy must not pass for the dataset).
    """
    info = info or schema.read_dataset_info(data_dir)
    h, w, c = info["image_shape"]
    k = len(info["class_names"])
    entry = info["splits"].get(split, {})
    files = split_files(data_dir, split, entry.get("num_shards"))
    parts: dict[str, list[np.ndarray]] = collections.defaultdict(list)
    ds = tf.data.TFRecordDataset(files)
    ds = ds.map(
        lambda s: schema.parse_example(s, info), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    try:
        for batch in ds.batch(4096).prefetch(1):
            for key, value in batch.items():
                parts[key].append(value.numpy())
    except CORRUPT_SHARD as e:
        raise corrupt_shard(data_dir, split, e) from None
    check_record_count(data_dir, split, entry, sum(len(p) for p in parts["label"]))

    def cat(key: str, empty: np.ndarray) -> np.ndarray:
        return np.concatenate(parts[key]) if parts[key] else empty

    return SplitArrays(
        images=cat("image", np.zeros((0, h, w, c), np.uint8)),
        labels=cat("label", np.zeros(0, np.int64)),
        ids=np.array([i.decode("utf-8") for i in cat("id", np.zeros(0, object))], dtype=str),
        soft_labels=cat("soft_label", np.zeros((0, k), np.float32)),
        synthetic=cat("synthetic", np.zeros(0, np.int64)).astype(bool),
    )


def records_of(arrays: SplitArrays, indices: Iterable[int], keep_soft_labels: bool) -> Iterator[Record]:
    """Turns decoded train records back into writer Records (ids and flags kept)."""
    for i in indices:
        yield Record(
            split=TRAIN,
            image_id=str(arrays.ids[i]),
            image=arrays.images[i],
            label=int(arrays.labels[i]),
            soft_label=tuple(arrays.soft_labels[i].tolist()) if keep_soft_labels else None,
            synthetic=bool(arrays.synthetic[i]),
        )


def _count_synthetic(records: Iterable[Record], counter: collections.Counter) -> Iterator[Record]:
    # Counted as the writer consumes them: dataset_info describes what was
    # written without reading the shards back (contract 2).
    for record in records:
        counter["synthetic"] += int(bool(record.synthetic))
        yield record


def _copy_split(input_dir: str, output_dir: str, split: str, expected: int) -> None:
    for path in split_files(input_dir, split, expected):
        shutil.copyfile(path, os.path.join(output_dir, os.path.basename(path)))


def write_derived(
    input_dir: str,
    output_dir: str,
    parent_info: Mapping[str, Any],
    train_records: Iterable[Record],
    source: Mapping[str, Any],
    num_shards: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Writes a dataset whose train split is `train_records`, other splits copied.

    Args:
      input_dir: the parent dataset.
      output_dir: the new dataset directory; must not exist unless `overwrite`.
      parent_info: the parent's dataset_info.
      train_records: the new training records (Record.split must be "train").
      source: the tool's `source` fields of the new dataset_info (format,
        options); `parent_dir` and `parent_source` are added here, so every
        derived dataset names the dataset it came from.
      num_shards: train shards (default: as many as the parent's train split).
      overwrite: replace an existing `output_dir`, if it is a dataset (or empty).

    Returns:
      The new dataset_info (also written to `output_dir`).

    Raises:
      FileExistsError: `output_dir` exists and `overwrite` is False.
      ValueError: `output_dir` is a non-empty directory without dataset_info.json, or a file.
    """
    output_dir = os.path.abspath(output_dir)
    if os.path.exists(output_dir) and not overwrite:
        raise FileExistsError(f"{output_dir} exists; pass overwrite=True (--overwrite) to replace it")
    try:
        check_replaceable(output_dir)  # --overwrite replaces a dataset, never a folder of other files
    except ConversionError as e:
        raise ValueError(str(e)) from None
    dropped = stale_reports(output_dir)
    with outdir.staged(output_dir, carry=carried_on_rewrite) as tmp:
        num_shards = num_shards or parent_info["splits"][TRAIN]["num_shards"]
        synthetic: collections.Counter = collections.Counter()
        records = _count_synthetic(train_records, synthetic)
        written = write_shards(records, tmp, TRAIN, num_shards, parent_info["encoding"])
        for split, entry in parent_info["splits"].items():
            if split != TRAIN:
                _copy_split(input_dir, tmp, split, entry["num_shards"])
        lineage = {"parent_dir": os.path.abspath(input_dir), "parent_source": parent_info["source"]}
        info = _derived_info(parent_info, written, synthetic["synthetic"], num_shards, {**source, **lineage})
        schema.write_dataset_info(tmp, info)
    if note := stale_note(output_dir, dropped):
        print(note)
    return info


def _derived_info(
    parent_info: Mapping[str, Any],
    written: Mapping[int, int],
    num_synthetic: int,
    num_shards: int,
    source: Mapping[str, Any],
) -> dict[str, Any]:
    """The parent's dataset_info with the new train entry and `source`."""
    class_names = parent_info["class_names"]
    class_counts = {name: int(written.get(k, 0)) for k, name in enumerate(class_names)}
    splits = {
        split: {**entry, "num_synthetic": entry.get("num_synthetic", 0)}
        for split, entry in parent_info["splits"].items()
    }
    splits[TRAIN] = {
        "num_examples": sum(class_counts.values()),
        "class_counts": class_counts,
        "num_shards": num_shards,
        "num_synthetic": num_synthetic,
    }
    return schema.make_dataset_info(
        class_names=class_names,
        image_shape=parent_info["image_shape"],
        encoding=parent_info["encoding"],
        splits={s: splits[s] for s in schema.SPLITS if s in splits},
        source=source,
        skipped=parent_info.get("skipped", {}),
        has_soft_labels=parent_info.get("has_soft_labels", False),
    )


def define_flags() -> None:
    """Defines the flags every derived-set CLI takes: --data, --output, --num_shards, --overwrite."""
    flags.DEFINE_string("data", None, "Parent dataset directory (shards + dataset_info.json).")
    flags.DEFINE_string("output", None, "New dataset directory.")
    flags.DEFINE_integer("num_shards", None, "Train shards (default: as many as the parent).")
    flags.DEFINE_bool("overwrite", False, "Replace an existing --output.")


def run_cli(build: Callable[[], Mapping[str, Any]]) -> Mapping[str, Any]:
    """The main() of a derived-set CLI: checks --data and --output, runs `build`, prints the counts.

    Args:
      build: writes the derived dataset from the flags and returns its dataset_info.
        A missing input, a ValueError or an existing output (FileExistsError)
        end the CLI with a one-line error and exit code 2 (`fer_tf.cli.fail`).

    Returns:
      The dataset_info `build` returned.
    """
    f = flags.FLAGS
    if not f.data or not os.path.exists(os.path.join(f.data, schema.INFO_FILE)):
        cli.fail(f"--data={f.data}: no {schema.INFO_FILE} there (convert the dataset first)")
    if not f.output:
        cli.fail("--output is required")
    try:
        info = build()
    except (ValueError, FileExistsError) as e:
        cli.fail(str(e))
    train = info["splits"][TRAIN]
    counts = ", ".join(f"{n} {c}" for n, c in train["class_counts"].items())
    synthetic = f", {train['num_synthetic']} synthetic" if train["num_synthetic"] else ""
    print(f"wrote {f.output}: train {train['num_examples']} images{synthetic} ({counts})")
    return info
