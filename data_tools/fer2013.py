"""FER2013 and FER+ CSVs as writer `Source`s.

FER2013 (`fer2013.csv`, plain or gzipped): header `emotion,pixels,Usage`, one
48x48 grayscale image per row as 2304 space-separated integers. Usage maps to
splits: Training -> train, PublicTest -> val, PrivateTest -> test. A CSV without
a Usage column puts every row in train, or, with `split_if_missing=(0.8, 0.1, 0.1)`,
draws a seeded split by a stable hash of the row number.

FER+ (`fer2013new.csv`, Microsoft, MIT): row i holds 10 annotator votes for row i
of the FER2013 CSV. Labels follow the "majority" mode of the FER+ reference code
(`FERPlus/src/ferplus.py`, `_process_data`):
  1. a class with a single vote is annotator noise: its vote is dropped;
  2. the label is the class holding more than half of the remaining votes;
  3. no such class -> dropped (`ferplus_no_majority`); majority "unknown" or "NF"
     (not a face) -> dropped (`ferplus_unknown`, `ferplus_not_face`).
With 7 classes, contempt-majority images are dropped too (`ferplus_contempt`).
The soft label is the vote distribution after step 1, over the kept classes.

Row ids are `row-000123`: the 0-based data row, the same in both files.
"""

from __future__ import annotations

import concurrent.futures
import csv
import functools
import hashlib
import os
import re
import warnings
import zlib
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

import numpy as np
import tqdm

from data_tools import writer
from data_tools.writer import ConversionError, Record, Skip, Source
from fer_tf import schema

IMAGE_SHAPE = (48, 48, 1)
_NUM_PIXELS = 48 * 48
USAGE_SPLITS = {"training": "train", "publictest": "val", "privatetest": "test"}
# FER+ vote columns in schema.FERPLUS_CLASSES order, then the two "drop" columns.
FERPLUS_VOTE_COLUMNS = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral", "contempt")
FERPLUS_DROP_COLUMNS = ("unknown", "nf")
_CONTEMPT = FERPLUS_VOTE_COLUMNS.index("contempt")
_BLOCK = 1 << 24


def read_csv(path: str, *, progress: bool = True) -> tuple[list[str], list[list[str]]]:
    """Reads a CSV, plain or gzipped, into its header and data rows.

    Fields are split on commas (the csv module only for lines holding quotes: it
    is several times slower on FER2013's 8 KB pixel fields).

    Args:
      path: a .csv or .csv.gz file (gzip is recognised by its magic bytes).
      progress: show a progress bar over the bytes read.

    Returns:
      (lowercased header names, rows as lists of strings); row i is line i + 2.

    Raises:
      ConversionError: an empty, header-only or unreadable file.
    """
    size = os.path.getsize(path)
    if size == 0:
        raise ConversionError(f"{path}: empty file, nothing to convert")
    rows, tail = [], b""
    with (
        open(path, "rb") as raw,
        tqdm.tqdm(
            total=size, unit="B", unit_scale=True, desc=f"read {os.path.basename(path)}", disable=not progress
        ) as bar,
    ):
        try:
            for block in _prefetched(_read_blocks(raw)):
                lines = (tail + block).split(b"\n")
                tail = lines.pop()
                rows.extend(_fields(line) for line in lines)
                bar.update(raw.tell() - bar.n)
        except (EOFError, zlib.error) as e:
            raise ConversionError(f"{path}: unreadable gzip ({e})") from None
    if tail.strip():
        rows.append(_fields(tail))
    if len(rows) < 2:
        raise ConversionError(f"{path}: no data rows after the header, nothing to convert")
    header = [name.strip().lstrip("\ufeff").lower() for name in rows[0]]
    return header, rows[1:]


def _read_blocks(raw: BinaryIO) -> Iterator[bytes]:
    """Yields a file's bytes in large blocks, gunzipped when it starts with the gzip magic.

    zlib on 16 MB blocks, because gzip.GzipFile inflates in 8 KB steps with a
    Python-level CRC: 30% slower on the 270 MB of FER2013.
    """
    gzipped = raw.read(2) == b"\x1f\x8b"
    raw.seek(0)
    # `between` holds between gzip members, where zero bytes may pad the file (tape
    # blocks, some archivers); gzip.decompress skips them too.
    inflater, pending, between = zlib.decompressobj(wbits=31), False, True
    while block := raw.read(_BLOCK):
        if not gzipped:
            yield block
            continue
        while block:
            if between:
                block = block.lstrip(b"\x00")
                if not block:
                    break
            yield inflater.decompress(block)
            pending, between = not inflater.eof, False
            block = inflater.unused_data
            if inflater.eof:  # a gzip file may hold several members back to back
                inflater, between = zlib.decompressobj(wbits=31), True
    if pending:
        raise EOFError("truncated gzip file")


def _prefetched(blocks: Iterator[bytes]) -> Iterator[bytes]:
    """Yields from `blocks` while a thread already makes the next one.

    zlib releases the GIL, so gunzipping overlaps the line splitting on a second core.
    """
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(next, blocks, None)
        while (block := future.result()) is not None:
            future = pool.submit(next, blocks, None)
            yield block


def _fields(line: bytes) -> list[str]:
    text = line.decode("utf-8", errors="replace").rstrip("\r")
    if '"' not in text:
        return text.split(",")
    try:
        return next(csv.reader([text]))
    except csv.Error:  # e.g. a stray CR inside quotes: the row decoder judges and counts the row
        return text.split(",")


def fer2013_source(
    csv_path: str,
    *,
    split_if_missing: Sequence[float] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Source:
    """The FER2013 CSV as a Source (7 classes, 48x48x1).

    Args:
      csv_path: `fer2013.csv` or `.csv.gz`, header `emotion,pixels[,Usage]`.
      split_if_missing: train/val/test fractions for a CSV without Usage column
        (default: every row is train).
      seed: seed of that split.
      progress: show a progress bar while reading.

    Returns:
      The Source for `writer.convert`.

    Raises:
      ConversionError: an empty file, no data rows, or no emotion/pixels columns.
    """
    header, rows = read_csv(csv_path, progress=progress)
    columns = header_columns(csv_path, header, ("emotion", "pixels"), ("usage",))
    split_rule = _split_rule(columns["usage"], split_if_missing, seed)
    return Source(
        name="fer2013_csv",
        items=list(enumerate(rows)),
        decode=functools.partial(
            decode_fer2013_row, columns=columns, num_fields=len(header), split_rule=split_rule
        ),
        class_names=schema.FER2013_CLASSES,
        image_shape=IMAGE_SHAPE,
        details={"path": os.path.abspath(csv_path), "splits_from": split_rule[0]},
    )


def decode_fer2013_row(
    item: tuple[int, list[str]], *, columns: dict[str, int | None], num_fields: int, split_rule: tuple
) -> Record:
    """Decodes one FER2013 row `(row, fields)`; raises Skip for a bad one."""
    row, fields = item
    where = _where(row)
    _check_length(fields, num_fields, where)
    text = fields[columns["emotion"]].strip()
    if not re.fullmatch(r"-?[0-9]+", text):  # not str.isdigit: it accepts "²" and "--3"
        raise Skip("non_numeric_label", f"{where}: emotion {text!r} is not an integer")
    label = int(text)
    if not 0 <= label < len(schema.FER2013_CLASSES):
        raise Skip(
            "label_out_of_range", f"{where}: emotion {label} not in 0..{len(schema.FER2013_CLASSES) - 1}"
        )
    split = _split_of(row, fields, columns, split_rule)
    return Record(split, _row_id(row), parse_pixels(fields[columns["pixels"]], where), label)


def parse_pixels(text: str, where: str) -> np.ndarray:
    """Parses 2304 space-separated integers 0..255 into a uint8 [48, 48, 1] image.

    Raises:
      Skip: `non_numeric_pixels`, `wrong_pixel_count` or `pixel_out_of_range`.
    """
    # np.fromstring is the fastest parser here, but it stops at the first non-number with
    # only a DeprecationWarning. A clean row (2304 values, 2303 single spaces, a plain
    # last number) cannot have been cut short; only other rows pay for a re-parse that
    # turns the warning into an error.
    last = text[text.rfind(" ") + 1 :]
    try:
        values = np.fromstring(text, dtype=np.int64, sep=" ")
    except DeprecationWarning:  # when warnings are errors (python -W error)
        values = np.zeros(0, np.int64)
    clean = (
        values.size == _NUM_PIXELS
        and text.count(" ") == _NUM_PIXELS - 1
        and last.isascii()
        and last.isdigit()
    )
    if not clean:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            try:
                values = np.fromstring(text, dtype=np.int64, sep=" ")
            except DeprecationWarning:
                bad = next((t for t in text.split() if not (t.isascii() and t.isdigit())), text)
                raise Skip(
                    "non_numeric_pixels", f"{where}: pixel value {bad[:20]!r} is not an integer"
                ) from None
        if values.size != _NUM_PIXELS:
            raise Skip("wrong_pixel_count", f"{where}: {values.size} pixel values, expected {_NUM_PIXELS}")
    if np.any(values >> 8):  # outside 0..255 (negatives keep their sign bits)
        raise Skip(
            "pixel_out_of_range", f"{where}: pixel values {values.min()}..{values.max()}, expected 0..255"
        )
    return values.astype(np.uint8).reshape(IMAGE_SHAPE)


def drop_single_votes(votes: Sequence[float]) -> np.ndarray:
    """FER+ vote counts with every single vote set to 0: annotator noise (FER+ reference code)."""
    kept = np.asarray(votes, dtype=np.float64)
    return np.where(kept > 1, kept, 0.0)


def ferplus_label(votes: Sequence[float], num_classes: int = 8) -> tuple[int, tuple[float, ...]]:
    """Applies the FER+ majority rule to one row of 10 votes.

    Args:
      votes: FER+ counts in FERPLUS_VOTE_COLUMNS order, then unknown, NF.
      num_classes: 8 (schema.FERPLUS_CLASSES) or 7 (schema.FER2013_CLASSES, no contempt).

    Returns:
      (label, soft label over the kept classes, summing to 1).

    Raises:
      Skip: `ferplus_not_face`, `ferplus_unknown`, `ferplus_no_majority` or `ferplus_contempt`.
    """
    names = FERPLUS_VOTE_COLUMNS + FERPLUS_DROP_COLUMNS
    if len(votes) != len(names):
        raise ValueError(f"expected {len(names)} FER+ votes, got {len(votes)}")
    kept = drop_single_votes(votes)
    total = kept.sum()
    winner = int(np.argmax(kept))
    detail = "votes " + " ".join(f"{name}={v:g}" for name, v in zip(names, votes, strict=True))
    if total == 0 or kept[winner] <= total / 2:
        raise Skip("ferplus_no_majority", detail)
    if winner == len(FERPLUS_VOTE_COLUMNS) + 1:
        raise Skip("ferplus_not_face", detail)
    if winner == len(FERPLUS_VOTE_COLUMNS):
        raise Skip("ferplus_unknown", detail)
    if num_classes == 7 and winner == _CONTEMPT:
        raise Skip("ferplus_contempt", detail)
    emotions = kept[:num_classes]
    return winner, tuple(float(v) for v in emotions / emotions.sum())


def ferplus_source(
    csv_path: str,
    labels_path: str,
    *,
    num_classes: int = 8,
    progress: bool = True,
) -> Source:
    """FER2013 pixels with FER+ labels as a Source (8 or 7 classes, soft labels).

    Args:
      csv_path: the FER2013 CSV (pixels; its Usage, if any, must agree with FER+).
      labels_path: `fer2013new.csv`, row i labelling row i of `csv_path`.
      num_classes: 8 (with contempt) or 7 (contempt-majority images dropped).
      progress: show progress bars while reading.

    Returns:
      The Source for `writer.convert`.

    Raises:
      ConversionError: unreadable files, missing columns or different row counts.
    """
    if num_classes not in (7, 8):
        raise ValueError(f"num_classes must be 7 or 8, got {num_classes}")
    header, rows = read_csv(csv_path, progress=progress)
    columns = header_columns(csv_path, header, ("pixels",), ("usage",))
    vote_header, vote_rows = read_csv(labels_path, progress=progress)
    names = ("usage", "image name") + FERPLUS_VOTE_COLUMNS + FERPLUS_DROP_COLUMNS
    vote_columns = header_columns(labels_path, vote_header, names, ())
    if len(vote_rows) != len(rows):
        raise ConversionError(
            f"{labels_path} has {len(vote_rows)} rows but {csv_path} has {len(rows)}: row i must label row i"
        )
    return Source(
        name="ferplus",
        items=[(row, fields, votes) for row, (fields, votes) in enumerate(zip(rows, vote_rows, strict=True))],
        decode=functools.partial(
            decode_ferplus_row,
            columns=columns,
            vote_columns=vote_columns,
            num_fields=(len(header), len(vote_header)),
            num_classes=num_classes,
        ),
        class_names=schema.FERPLUS_CLASSES if num_classes == 8 else schema.FER2013_CLASSES,
        image_shape=IMAGE_SHAPE,
        details={
            "path": os.path.abspath(csv_path),
            "labels_path": os.path.abspath(labels_path),
            "label_mode": "majority",
            "num_classes": num_classes,
        },
        has_soft_labels=True,
    )


def decode_ferplus_row(
    item: tuple[int, list[str], list[str]],
    *,
    columns: dict,
    vote_columns: dict,
    num_fields: tuple[int, int],
    num_classes: int,
) -> Record:
    """Decodes one `(row, fer2013 fields, fer+ fields)` item; raises Skip for a bad or dropped one."""
    row, fields, vote_fields = item
    where = _where(row)
    _check_length(fields, num_fields[0], where)
    _check_length(vote_fields, num_fields[1], f"{where} of the FER+ labels")
    try:
        votes = [
            float(vote_fields[vote_columns[name]]) for name in FERPLUS_VOTE_COLUMNS + FERPLUS_DROP_COLUMNS
        ]
    except ValueError:
        raise Skip("ferplus_bad_votes", f"{where}: non-numeric FER+ votes") from None
    try:
        label, soft_label = ferplus_label(votes, num_classes)
    except Skip as skip:
        raise Skip(skip.reason, f"{where}: {skip.detail}") from None
    if not vote_fields[vote_columns["image name"]].strip():
        raise Skip("ferplus_no_image", f"{where}: FER+ gives no image name (image dropped by FER+)")
    split = _usage_split(vote_fields[vote_columns["usage"]], where)
    if columns["usage"] is not None and _usage_split(fields[columns["usage"]], where) != split:
        raise Skip("ferplus_usage_mismatch", f"{where}: Usage differs between the FER2013 and FER+ files")
    image = parse_pixels(fields[columns["pixels"]], where)
    return Record(split, _row_id(row), image, label, soft_label=soft_label)


def convert_fer2013(
    csv_path: str, output_dir: str, *, ferplus_labels: str | None = None, **kw: Any
) -> dict[str, Any]:
    """Converts a FER2013 CSV (with `ferplus_labels`: FER+) into TFRecords; for train.py.

    Args:
      csv_path: `fer2013.csv` or `.csv.gz`.
      output_dir: the dataset directory to create or replace.
      ferplus_labels: `fer2013new.csv` to use FER+ labels instead of FER2013's.
      **kw: `ferplus_classes` (7 or 8), `split_if_missing`, `seed`, then any
        keyword of `writer.convert` (encoding, examples_per_shard, strict,
        pipeline_args, progress).

    Returns:
      The dataset_info dict that was written.
    """
    progress = kw.get("progress", True)
    num_classes = kw.pop("ferplus_classes", 8)
    split_if_missing, seed = kw.pop("split_if_missing", None), kw.pop("seed", 0)
    if ferplus_labels:
        source = ferplus_source(csv_path, ferplus_labels, num_classes=num_classes, progress=progress)
    else:
        source = fer2013_source(csv_path, split_if_missing=split_if_missing, seed=seed, progress=progress)
    return writer.convert(source, output_dir, **kw)


# --- row helpers ------------------------------------------------------------------------


def _row_id(row: int) -> str:
    return f"row-{row:06d}"


def _where(row: int) -> str:
    return f"row {row} (line {row + 2})"


def read_vote_file(path: str, names: Sequence[str]) -> tuple[list[list[str]], dict[str, int | None]]:
    """The data rows of a FER+ votes file and the index of each named vote column and of Usage.

    Raises:
      ValueError: the file is unreadable or lacks one of `names` (Usage is optional).
    """
    try:
        header, rows = read_csv(path, progress=False)
        return rows, header_columns(path, header, names, ("usage",))
    except ConversionError as err:
        raise ValueError(str(err)) from None


def header_columns(
    path: str, header: list[str], required: Sequence[str], optional: Sequence[str]
) -> dict[str, int | None]:
    """Index of each named column in a lowercased CSV header (None: an absent optional one).

    Raises:
      ConversionError: a required column is missing.
    """
    missing = [name for name in required if name not in header]
    if missing:
        raise ConversionError(f"{path}: no {', '.join(missing)} column in header {','.join(header)[:120]!r}")
    return {name: header.index(name) if name in header else None for name in (*required, *optional)}


def _check_length(fields: list[str], num_fields: int, where: str) -> None:
    if len(fields) < num_fields:
        raise Skip("short_row", f"{where}: {len(fields)} fields, expected {num_fields}")


def _split_rule(usage_column: int | None, fractions: Sequence[float] | None, seed: int) -> tuple:
    if usage_column is not None:
        return ("usage",)
    if fractions is None:
        return ("all_train",)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split_if_missing must be 3 fractions summing to 1, got {fractions}")
    return ("hash", tuple(float(f) for f in fractions), int(seed))


def _split_of(row: int, fields: list[str], columns: dict, rule: tuple) -> str:
    if rule[0] == "usage":
        return _usage_split(fields[columns["usage"]], _where(row))
    if rule[0] == "all_train":
        return "train"
    _, (train, val, _), seed = rule
    digest = hashlib.md5(f"{seed}:{row}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "train" if u < train else "val" if u < train + val else "test"


def _usage_split(usage: str, where: str) -> str:
    usage = usage.strip()
    if not usage:
        raise Skip("missing_usage", f"{where}: empty Usage")
    if usage.lower() not in USAGE_SPLITS:
        raise Skip(
            "unknown_usage", f"{where}: Usage {usage[:30]!r} is none of Training, PublicTest, PrivateTest"
        )
    return USAGE_SPLITS[usage.lower()]
