"""The one conversion engine: a `Source` of raw inputs -> sharded TFRecords + dataset_info.json.

Every dataset format (FER2013 CSV, FER+, image folders, RAF-DB, ...) only says how
to list its raw inputs and how to decode one of them into a `Record`; this module
does the rest with one Apache Beam pipeline:

    stage items in chunks ─▶ decode + serialize ─▶ assign shards ─▶ group by shard ─▶ write shards
                                 └─▶ per-chunk stats ─▶ totals (split sizes, skips) ──▶ summary

- Speed: Beam's per-element overhead is paid per chunk of `_CHUNK_SIZE` items, not per image.
- Determinism: a record's shard is a stable hash of its `image_id` and records are
  sorted by id within a shard, so the same input gives byte-identical shards on any
  runner and any number of workers.
- Atomicity: everything is written into a temp dir beside `output_dir` and renamed
  into place at the end; a failure removes the temp dir and leaves the old output intact.
- Runners: in-process by default (Beam's BundleBasedDirectRunner); worker processes
  with `--direct_num_workers=2 --direct_running_mode=multi_processing`, or any runner
  (`--runner=DataflowRunner ...`), through `pipeline_args`. Workers read the staged
  items and write the shards themselves, so the output directory must be visible to
  every worker (any path for the direct runners; a shared mount for a cluster).
"""

# No `from __future__ import annotations`: Beam reads the type hints of the functions
# it runs, and would only log and ignore them as strings.
import collections
import dataclasses
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import tensorflow as tf
import tqdm

from fer_tf import outdir, schema

# Items per pipeline element: large enough that Beam's per-element cost vanishes,
# small enough that workers share the load and the progress bar moves.
_CHUNK_SIZE = 1000
_STATS = "stats"
_CHUNK_DIR = "_chunks"
_SUMMARY_FILE = "_summary.json"

# One serialized record on its way to a shard: (split, image_id, label, synthetic, example bytes).
# A plain tuple, because Beam encodes tuples natively but pickles a NamedTuple per element.
_Entry = tuple[str, str, int, bool, bytes]
# A shard: (split, shard index, number of shards of the split).
_ShardKey = tuple[str, int, int]


@dataclasses.dataclass(frozen=True)
class Record:
    """One decoded image, ready to be written."""

    split: str  # "train" | "val" | "test"
    image_id: str  # the source row or path
    image: np.ndarray  # uint8 [H, W, C], equal to Source.image_shape
    label: int
    soft_label: tuple[float, ...] | None = None
    synthetic: bool = False


class Skip(Exception):
    """Raised by a decode function for a bad input; counted by `reason`, not fatal.

    Args:
      reason: short snake_case key, e.g. "wrong_pixel_count".
      detail: the row or path and why, e.g. "row 17 (line 19): 2303 pixel values, expected 2304".
    """

    def __init__(self, reason: str, detail: str):
        # Both go to Exception.args so that a Skip survives pickling between processes.
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.detail} [{self.reason}]"


class Skips(collections.Counter):
    """Listing-time skip counts by reason that keep the first skipped input, which strict mode names."""

    def __init__(self, counts: Mapping[str, int] | None = None):
        super().__init__(counts or {})
        self.first: tuple[str, str] | None = None  # (reason, input)

    def add(self, reason: str, inputs: Sequence[str]) -> None:
        """Counts `inputs` (their names: a path, "labels.csv line 7") as skipped for `reason`."""
        if inputs and self.first is None:
            self.first = (reason, inputs[0])
        self[reason] += len(inputs)

    def copy(self) -> "Skips":
        copied = Skips(self)
        copied.first = self.first
        return copied


class ConversionError(Exception):
    """A conversion that cannot produce a dataset; its message is one line for the user."""


@dataclasses.dataclass(frozen=True)
class Source:
    """Everything the writer needs to know about one dataset format."""

    name: str  # "fer2013_csv", "ferplus", "image_folder", "rafdb", ...
    items: Sequence[Any]  # picklable raw inputs (rows, paths, ...)
    decode: Callable[[Any], Record]  # picklable; raises Skip for a bad input
    class_names: Sequence[str]
    image_shape: Sequence[int]  # [H, W, C]
    skipped: Mapping[str, int] = dataclasses.field(default_factory=dict)  # found while listing
    first_skipped: tuple[str, str] | None = None  # (reason, input) of the first of them
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # -> dataset_info["source"]
    has_soft_labels: bool = False


def convert(
    source: Source,
    output_dir: str,
    *,
    encoding: str = "raw",
    examples_per_shard: int = 10_000,
    strict: bool = False,
    pipeline_args: Sequence[str] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """Converts `source` into sharded TFRecords plus dataset_info.json in `output_dir`.

    An existing `output_dir` from an earlier conversion is replaced only once the new
    one is complete; a failure leaves it untouched and no temp files behind.

    Args:
      source: the inputs and how to decode them.
      output_dir: the dataset directory to create or replace.
      encoding: "raw" or "png" (`schema.encode_image`).
      examples_per_shard: shards per split = ceil(num_examples / examples_per_shard), at least 1.
      strict: make the first bad input (in item order) a ConversionError naming it.
      pipeline_args: Beam pipeline options, e.g. ["--runner=DataflowRunner", ...].
      progress: show a progress bar while decoding (in-process runs).

    Returns:
      The dataset_info dict that was written.

    Raises:
      ConversionError: nothing to convert, every input skipped, a bad input with
        `strict`, or an `output_dir` that is not a dataset directory.
    """
    if encoding not in schema.ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; expected one of {schema.ENCODINGS}")
    if examples_per_shard < 1:
        raise ValueError(f"examples_per_shard must be >= 1, got {examples_per_shard}")
    if not source.items:
        raise ConversionError(f"{source.name}: no inputs found, nothing to convert")
    if strict and source.skipped:
        reason, first = source.first_skipped or ("", "bad inputs while listing")
        raise ConversionError(
            f"{source.name}: {first}{f' [{reason}]' if reason else ''} "
            f"(strict mode; found while listing: {_format_counts(source.skipped)})"
        )
    output_dir = os.path.abspath(output_dir)
    check_replaceable(output_dir)
    dropped = stale_reports(output_dir)
    with outdir.staged(output_dir, carry=carried_on_rewrite) as work_dir:
        chunk_paths = _stage_chunks(source.items, os.path.join(work_dir, _CHUNK_DIR))
        _run_pipeline(source, chunk_paths, work_dir, encoding, pipeline_args, examples_per_shard, progress)
        info = _dataset_info(source, encoding, _read_summary(work_dir), strict)
        schema.write_dataset_info(work_dir, info)
    if note := stale_note(output_dir, dropped):
        print(note)
    if info["skipped"]:
        total = sum(info["skipped"].values())
        print(
            f"{source.name}: skipped {total} of {len(source.items)} inputs: {_format_counts(info['skipped'])}"
        )
    return info


def write_shards(
    records: Iterable[Record], output_dir: str, split: str, num_shards: int, encoding: str
) -> dict[int, int]:
    """Writes records into `num_shards` shards of `split`, without Beam (derived datasets).

    Placement and order follow `convert` (stable hash of the id, sorted by id), so
    the output is deterministic. Each shard is written under a temp name and renamed;
    existing shards of `split` in `output_dir` are replaced.

    Args:
      records: records of `split`; all are held in memory as serialized examples.
      output_dir: an existing directory.
      split: "train", "val" or "test".
      num_shards: number of shard files, >= 1.
      encoding: "raw" or "png".

    Returns:
      The number of records written per label, sorted by label.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    shards: list[list[_Entry]] = [[] for _ in range(num_shards)]
    counts: collections.Counter[int] = collections.Counter()
    for record in records:
        if record.split != split:
            raise ValueError(
                f"{record.image_id}: record of split {record.split!r} given to write_shards({split!r})"
            )
        shards[_shard_index(record.image_id, num_shards)].append(_serialize(record, encoding))
        counts[int(record.label)] += 1
    names = [schema.shard_name(split, index, num_shards) for index in range(num_shards)]
    temps = [os.path.join(output_dir, f".{name}.tmp-{uuid.uuid4().hex[:8]}") for name in names]
    try:
        for temp, entries in zip(temps, shards, strict=True):
            _write_tfrecord(temp, entries)
        for stale in tf.io.gfile.glob(schema.shard_pattern(output_dir, split)):
            if os.path.basename(stale) not in names:
                os.remove(stale)
        for temp, name in zip(temps, names, strict=True):
            os.replace(temp, os.path.join(output_dir, name))
    finally:
        for temp in temps:
            if os.path.exists(temp):
                os.remove(temp)
    return dict(sorted(counts.items()))


# --- the pipeline ---------------------------------------------------------------------


def _run_pipeline(
    source, chunk_paths, work_dir, encoding, pipeline_args, examples_per_shard, progress
) -> None:
    args = list(pipeline_args)
    if not any(arg.startswith("--runner") for arg in args):
        # In one process, Beam's original direct runner hands Python objects from step to
        # step where the portable one encodes every element: FER2013 converts 25% faster.
        # Worker-process options (--direct_num_workers=...) need the portable one.
        in_process = not any(arg.startswith("--direct_") for arg in args)
        args.append("--runner=BundleBasedDirectRunner" if in_process else "--runner=DirectRunner")
    decode = _DecodeChunk(source, encoding, len(source.items) if progress else 0)
    with beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(args)) as p:
        decoded = (
            p
            | "ListChunks" >> beam.Create(chunk_paths)
            | "Decode" >> beam.ParDo(decode).with_outputs(_STATS, main="entries")
        )
        totals = beam.pvalue.AsSingleton(
            decoded[_STATS]
            | "KeyStats" >> beam.Map(lambda stats: (None, stats))
            | "GatherStats" >> beam.GroupByKey()
            | "SumStats" >> beam.MapTuple(lambda _, all_stats: _sum_stats(all_stats))
        )
        by_shard = decoded.entries | "AssignShards" >> beam.FlatMap(
            _group_by_shard, totals=totals, examples_per_shard=examples_per_shard
        )
        once = p | "Once" >> beam.Create([None])
        # An empty group per shard, so that a shard the hash leaves empty still gets its file.
        every_shard = once | "EveryShard" >> beam.FlatMap(
            _empty_shards, totals=totals, examples_per_shard=examples_per_shard
        )
        shard_counts = (
            (by_shard, every_shard)
            | "Merge" >> beam.Flatten()
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShards" >> beam.Map(_write_shard, work_dir=work_dir, num_classes=len(source.class_names))
        )
        _ = once | "WriteSummary" >> beam.Map(
            _write_summary,
            path=os.path.join(work_dir, _SUMMARY_FILE),
            shards=beam.pvalue.AsList(shard_counts),
            totals=totals,
        )


class _DecodeChunk(beam.DoFn):
    """Decodes and serializes one staged chunk of items.

    Outputs the chunk's entries, and on the stats output its split sizes, skips by
    reason and first skip (item index, reason, detail).
    """

    def __init__(self, source: Source, encoding: str, progress_total: int):
        # Only what decoding needs: pickling `source` would ship every item with the DoFn.
        self._decode = source.decode
        self._shape = tuple(int(d) for d in source.image_shape)
        self._num_classes = len(source.class_names)
        self._encoding = encoding
        self._progress_total = progress_total
        self._driver_pid = os.getpid()
        self._bar = None

    def setup(self):
        # A bar only in the driver's process: worker processes would each draw a partial one.
        if self._progress_total and os.getpid() == self._driver_pid:
            self._bar = tqdm.tqdm(total=self._progress_total, desc="decode", unit="img", smoothing=0.1)

    def process(self, chunk_path: str) -> Iterator[Any]:
        with open(chunk_path, "rb") as f:
            start, items = pickle.load(f)
        entries, sizes, skips, first_skip = [], collections.Counter(), collections.Counter(), None
        for offset, item in enumerate(items):
            try:
                record = self._decode(item)
                _check_record(record, self._shape, self._num_classes)
            except Skip as skip:
                skips[skip.reason] += 1
                first_skip = first_skip or (start + offset, skip.reason, skip.detail)
                continue
            entries.append(_serialize(record, self._encoding))
            sizes[record.split] += 1
        yield entries
        yield beam.pvalue.TaggedOutput(_STATS, (dict(sizes), dict(skips), first_skip))
        if self._bar is not None:
            self._bar.update(len(items))
            if self._bar.n >= self._bar.total:
                self._bar.close()


def _check_record(record: Record, shape: tuple[int, ...], num_classes: int) -> None:
    """Turns a record the writer cannot store into a Skip, so one bad image never stops a run."""
    if record.split not in schema.SPLITS:
        raise Skip("unknown_split", f"{record.image_id}: split {record.split!r} not in {schema.SPLITS}")
    image = record.image
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.shape != shape:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise Skip("wrong_image_shape", f"{record.image_id}: image {got}, expected uint8 {shape}")
    if not 0 <= record.label < num_classes:
        raise Skip("label_out_of_range", f"{record.image_id}: label {record.label} not in [0, {num_classes})")
    if record.soft_label is not None and len(record.soft_label) != num_classes:
        raise Skip(
            "wrong_soft_label_length",
            f"{record.image_id}: {len(record.soft_label)} votes, expected {num_classes}",
        )


def _serialize(record: Record, encoding: str) -> _Entry:
    example = schema.make_example(
        record.image,
        record.label,
        record.image_id,
        encoding=encoding,
        soft_label=record.soft_label,
        synthetic=record.synthetic,
    )
    return (
        record.split,
        record.image_id,
        int(record.label),
        bool(record.synthetic),
        example.SerializeToString(),
    )


def _shard_index(image_id: str, num_shards: int) -> int:
    # Python's hash() is salted per process; md5 gives the same shard in every run and worker.
    digest = hashlib.md5(image_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % num_shards


def _num_shards(totals: dict, examples_per_shard: int) -> dict[str, int]:
    return {split: max(1, math.ceil(n / examples_per_shard)) for split, n in totals["sizes"].items()}


def _group_by_shard(
    entries: list[_Entry], totals: dict, examples_per_shard: int
) -> Iterator[tuple[_ShardKey, list[_Entry]]]:
    num_shards = _num_shards(totals, examples_per_shard)
    groups = collections.defaultdict(list)
    for entry in entries:
        split, image_id = entry[:2]
        groups[(split, _shard_index(image_id, num_shards[split]), num_shards[split])].append(entry)
    yield from groups.items()


def _empty_shards(_, totals: dict, examples_per_shard: int) -> Iterator[tuple[_ShardKey, list[_Entry]]]:
    for split, n in _num_shards(totals, examples_per_shard).items():
        yield from (((split, index, n), []) for index in range(n))


def _write_shard(shard: tuple[_ShardKey, Iterable[list[_Entry]]], work_dir: str, num_classes: int) -> dict:
    (split, index, num_shards), groups = shard
    entries = [entry for group in groups for entry in group]
    _write_tfrecord(os.path.join(work_dir, schema.shard_name(split, index, num_shards)), entries)
    labels = np.array([label for _, _, label, _, _ in entries], dtype=np.int64)
    return {
        "split": split,
        "num_shards": num_shards,
        "class_counts": np.bincount(labels, minlength=num_classes).tolist(),
        "num_synthetic": sum(synthetic for _, _, _, synthetic, _ in entries),
    }


def _write_tfrecord(path: str, entries: list[_Entry]) -> None:
    # Sorting by id (then bytes, for duplicate ids) makes a shard independent of input order.
    with tf.io.TFRecordWriter(path) as writer:
        for _, _, _, _, serialized in sorted(entries, key=lambda e: (e[1], e[4])):
            writer.write(serialized)


def _sum_stats(all_stats: Iterable[tuple[dict, dict, tuple | None]]) -> dict:
    """Sums the chunks' stats: examples per split, skips by reason, first skip in item order."""
    sizes, skips, first_skips = collections.Counter(), collections.Counter(), []
    for chunk_sizes, chunk_skips, first_skip in all_stats:
        sizes.update(chunk_sizes)
        skips.update(chunk_skips)
        first_skips += [first_skip] if first_skip else []
    return {"sizes": dict(sizes), "skips": dict(skips), "first_skip": min(first_skips, default=None)}


def _write_summary(_, path: str, shards: list[dict], totals: dict) -> None:
    with open(path, "w") as f:
        json.dump({"shards": shards, "totals": totals}, f)


# --- driver side: staging, summary, dataset_info, directory swap ------------------------


def _stage_chunks(items: Sequence[Any], chunk_dir: str) -> list[str]:
    """Pickles items into chunk files for the workers; returns their paths.

    Files rather than `beam.Create(items)`: the pipeline graph stays small whatever
    the dataset size (runners limit it, e.g. Dataflow to about 10 MB).
    """
    os.makedirs(chunk_dir)
    paths = []
    for start in range(0, len(items), _CHUNK_SIZE):
        paths.append(os.path.join(chunk_dir, f"chunk-{start // _CHUNK_SIZE:06d}.pkl"))
        with open(paths[-1], "wb") as f:
            pickle.dump(
                (start, list(items[start : start + _CHUNK_SIZE])), f, protocol=pickle.HIGHEST_PROTOCOL
            )
    return paths


def _read_summary(work_dir: str) -> dict:
    with open(os.path.join(work_dir, _SUMMARY_FILE)) as f:
        summary = json.load(f)
    os.remove(os.path.join(work_dir, _SUMMARY_FILE))
    shutil.rmtree(os.path.join(work_dir, _CHUNK_DIR))
    return summary


def _dataset_info(source: Source, encoding: str, summary: dict, strict: bool) -> dict[str, Any]:
    totals = summary["totals"]
    if strict and totals["first_skip"]:
        _, reason, detail = totals["first_skip"]
        raise ConversionError(
            f"{source.name}: {detail} [{reason}] (strict mode; {sum(totals['skips'].values())} bad inputs)"
        )
    skipped = collections.Counter(source.skipped) + collections.Counter(totals["skips"])
    if not summary["shards"]:
        raise ConversionError(
            f"{source.name}: all {len(source.items)} inputs were skipped ({_format_counts(skipped)})"
        )
    splits: dict[str, dict[str, Any]] = {}
    for shard in sorted(summary["shards"], key=lambda shard: schema.SPLITS.index(shard["split"])):
        entry = splits.setdefault(
            shard["split"],
            {"num_examples": 0, "class_counts": dict.fromkeys(source.class_names, 0), "num_synthetic": 0},
        )
        for name, n in zip(source.class_names, shard["class_counts"], strict=True):
            entry["class_counts"][name] += n
        entry["num_examples"] += sum(shard["class_counts"])
        entry["num_shards"] = shard["num_shards"]
        entry["num_synthetic"] += shard["num_synthetic"]
    return schema.make_dataset_info(
        class_names=source.class_names,
        image_shape=source.image_shape,
        encoding=encoding,
        splits=splits,
        source={"format": source.name, **source.details},
        skipped=skipped,
        has_soft_labels=source.has_soft_labels,
    )


def _format_counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{reason}={n}" for reason, n in sorted(counts.items()))


def check_replaceable(output_dir: str) -> None:
    """Raises ConversionError unless `output_dir` is absent, empty or a dataset (has dataset_info.json).

    Replacing a directory that is not a dataset (e.g. --output=$HOME) would destroy user files.
    """
    if not os.path.exists(output_dir):
        return
    if not os.path.isdir(output_dir):
        raise ConversionError(f"{output_dir} exists and is not a directory")
    if os.listdir(output_dir) and not os.path.exists(os.path.join(output_dir, schema.INFO_FILE)):
        raise ConversionError(
            f"{output_dir} is not empty and holds no {schema.INFO_FILE}; refusing to replace it"
        )


# What a converter writes into a dataset directory; anything else there was put by a user.
_OWNED = re.compile(r"^(" + "|".join(schema.SPLITS) + r")-\d{5}-of-\d{5}\.tfrecord$")
# Reports about the data (data_tools.validate): stale once the data is rewritten.
STALE_ON_REWRITE = ("validation",)


def carried_on_rewrite(name: str) -> bool:
    """Whether `name` in a dataset being replaced is carried into the new one.

    Files and folders a user added (a README, notes) are; the converter's own
    shards and info, hidden files, and the `validation/` reports, which describe
    the data being replaced, are not.
    """
    return not (
        name == schema.INFO_FILE or _OWNED.match(name) or name.startswith(".") or name in STALE_ON_REWRITE
    )


def stale_reports(output_dir: str) -> list[str]:
    """The reports in `output_dir` that replacing its data will drop (e.g. ["validation"])."""
    return [name for name in STALE_ON_REWRITE if os.path.exists(os.path.join(output_dir, name))]


def stale_note(output_dir: str, dropped: Sequence[str]) -> str | None:
    """The line telling the user which reports of a replaced dataset were dropped, if any."""
    if not dropped:
        return None
    return (
        f"note: dropped {', '.join(f'{name}/' for name in dropped)} of the replaced {output_dir}: "
        f"it described the old data; rerun python -m data_tools.validate --data={output_dir}"
    )
