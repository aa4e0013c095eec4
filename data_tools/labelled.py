"""Labelled images as arrays, for scoring a model: a FER2013 CSV, an image folder or TFRecords.

`load_labelled(data, split, image_size, channels)` returns uint8 images
`[N, S, S, C]` and their class names; `match_classes` maps the names onto a
model's classes. evaluate.py is the user of both. Bad rows and unreadable images
are counted skips, reported through `log`; a source that yields nothing usable
raises `ValueError` with a one-line message.
"""

from __future__ import annotations

import collections
import os
import re
import sys
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from data_tools import fer2013, folders
from data_tools.images import read_image
from data_tools.writer import ConversionError, Skip

Log = Callable[[str], object]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def split_name(split: str) -> str:
    """A typed split (`PublicTest`, `val`, ...) as a dataset split name; unknown names lowercased."""
    return folders.SPLIT_ALIASES.get(split.lower(), split.lower())


class CsvRows(NamedTuple):
    """The usable rows of a FER2013-style CSV, with where each came from."""

    images: np.ndarray  # uint8 [N, 48, 48, 1]
    names: list[str]  # class name of each image
    rows: np.ndarray  # int64 [N]: data row (0 = the line after the header) of each image
    splits: list[str | None]  # split of each image from its Usage (None: no Usage column)
    num_rows: int  # data rows in the file, usable or not


def read_csv(path: str, split: str | None, log: Log = _stderr) -> tuple[np.ndarray, list[str]]:
    """FER2013 rows (every Usage value unless `split`) -> uint8 [N,48,48,1] and class names."""
    selected = read_csv_rows(path, split, log)
    return selected.images, selected.names


def _usage_split(value: str) -> str:
    value = value.strip().lower()
    return fer2013.USAGE_SPLITS.get(value, value)


def read_csv_rows(path: str, split: str | None, log: Log = _stderr) -> CsvRows:
    """`read_csv` that also says which file row and split each image is (see `CsvRows`)."""
    from fer_tf.schema import FERPLUS_CLASSES

    try:
        header, rows = fer2013.read_csv(path, progress=False)
    except ConversionError as err:
        raise ValueError(str(err)) from None
    if not {"emotion", "pixels"} <= set(header):
        raise ValueError(f"{path}: expected FER2013 columns emotion,pixels[,Usage], got {','.join(header)}")
    emotion, pixels = header.index("emotion"), header.index("pixels")
    usage = header.index("usage") if "usage" in header else None

    def split_of(row: list[str]) -> str | None:
        return _usage_split(row[usage]) if usage is not None and usage < len(row) else None

    indices = range(len(rows))
    if split:
        # Any Usage value is accepted: the FER2013 names map to splits, others match as written.
        wanted = split_name(split)
        indices = [i for i in indices if split_of(rows[i]) == wanted]
        if not indices:
            raise ValueError(f"no rows with Usage {split!r} in {path}")
    images, names, kept, skipped = [], [], [], collections.Counter()
    for i in indices:
        row = rows[i]
        code = row[emotion].strip() if len(row) > max(emotion, pixels) else ""
        if not re.fullmatch(r"[0-9]+", code) or int(code) >= len(FERPLUS_CLASSES):
            skipped["bad_label"] += 1
            continue
        try:
            images.append(fer2013.parse_pixels(row[pixels], f"row {i}"))
        except Skip as err:
            skipped[err.reason] += 1
            continue
        names.append(FERPLUS_CLASSES[int(code)])
        kept.append(i)
    if skipped:
        log(f"skipped {sum(skipped.values())} malformed rows of {path}: {dict(skipped)}")
    return CsvRows(
        images=np.stack(images) if images else np.zeros((0, 48, 48, 1), np.uint8),
        names=names,
        rows=np.asarray(kept, dtype=np.int64),
        splits=[split_of(rows[i]) for i in kept],
        num_rows=len(rows),
    )


def ferplus_majority(labels_path: str, selected: CsvRows, log: Log = _stderr) -> list[str | None]:
    """The FER+ majority class of each selected FER2013 row, from FER+'s `fer2013new.csv`.

    Row i of the FER+ file labels data row i of the FER2013 file. The majority
    rule is FER+'s (`fer2013.ferplus_label`, 8 classes, contempt included).
    Rows without one (no majority, unknown, not a face, unreadable votes) get
    None; they are counted through `log`.

    Raises:
      ValueError: an unreadable file, missing vote columns, or files that are not
        row-aligned (different row counts, or a row whose Usage differs).
    """
    from fer_tf.schema import FERPLUS_CLASSES

    names = fer2013.FERPLUS_VOTE_COLUMNS + fer2013.FERPLUS_DROP_COLUMNS
    rows, columns = fer2013.read_vote_file(labels_path, names)
    if len(rows) != selected.num_rows:
        raise ValueError(
            f"{labels_path} has {len(rows)} rows but the data has {selected.num_rows}: row i must label row i"
        )
    majority, skipped = [], collections.Counter()
    for i, split in zip(selected.rows, selected.splits, strict=True):
        row = rows[i]
        usage = columns["usage"]
        if split is not None and usage is not None and usage < len(row) and _usage_split(row[usage]) != split:
            raise ValueError(
                f"{labels_path} row {i}: its Usage differs from the data's; the files are not aligned"
            )
        try:
            votes = [float(row[columns[name]]) for name in names]
            label, _ = fer2013.ferplus_label(votes, len(FERPLUS_CLASSES))
        except (IndexError, ValueError):
            skipped["ferplus_bad_votes"] += 1
            majority.append(None)
        except Skip as skip:
            skipped[skip.reason] += 1
            majority.append(None)
        else:
            majority.append(FERPLUS_CLASSES[label])
    if skipped:
        log(f"{sum(skipped.values())} rows have no FER+ majority label: {dict(sorted(skipped.items()))}")
    return majority


def read_tfrecords(
    data_dir: str, split: str | None, image_size: int, channels: int
) -> tuple[np.ndarray, list[str]]:
    """A converted dataset's split (default val, else test) -> uint8 model-size images, class names."""
    from data_tools import derive
    from fer_tf import data, schema

    info = schema.read_dataset_info(data_dir)
    available = [s for s in schema.SPLITS if info["splits"].get(s, {}).get("num_examples")]
    default = next((s for s in ("val", "test") if s in available), None)
    name = folders.SPLIT_ALIASES.get(split.lower(), split) if split else default
    if name not in available:
        raise ValueError(f"{data_dir} has no split {split or 'val/test'} (has: {', '.join(available)})")
    entry = info["splits"][name]
    derive.split_files(data_dir, name, entry.get("num_shards"))  # missing shards: one line
    try:
        images, labels = data.eval_arrays(data_dir, info, name, image_size=image_size, channels=channels)
    except derive.CORRUPT_SHARD as e:
        raise derive.corrupt_shard(data_dir, name, e) from None
    derive.check_record_count(data_dir, name, entry, len(labels))
    return images, [info["class_names"][k] for k in labels]


def read_folder(
    root: str, split: str | None, image_size: int, channels: int, log: Log = _stderr
) -> tuple[np.ndarray, list[str]]:
    """Images under class folders -> uint8 [N,S,S,C] resized by the serving preprocessing."""
    from fer_tf.predict import to_model_input

    entries, _, layout = folders.scan_folders(root)
    if split:
        if layout["layout"] != "split_folders":
            raise ValueError(f"{root} has no split folders; leave out --split")
        wanted = folders.SPLIT_ALIASES.get(split.lower(), split)
        entries = [e for e in entries if e.split == wanted]
    images, names, skipped = [], [], collections.Counter()
    for entry in entries:
        try:
            rgb = read_image(entry.paths[0])[..., ::-1]
        except Skip as err:
            skipped[err.reason] += 1
            continue
        images.append(to_model_input(rgb[np.newaxis], image_size, channels)[0])
        names.append(entry.class_name)
    if skipped:
        log(f"skipped images of {root}: {dict(skipped)}")
    shape = (0, image_size, image_size, channels)
    return np.stack(images) if images else np.zeros(shape, np.uint8), names


def load_labelled(
    data: str, split: str | None, image_size: int, channels: int, log: Log = _stderr
) -> tuple[np.ndarray, list[str]]:
    """Any supported source -> (uint8 images, class names); raises ValueError if nothing is labelled.

    Args:
      data: a FER2013-style CSV(.gz) file, a converted TFRecord directory (with
        dataset_info.json) or an image folder.
      split: a split or FER2013 Usage name; None: every CSV row and folder image,
        the val (else test) split of TFRecords.
      image_size, channels: the model input the folder and TFRecord images are
        resized to (CSV rows stay 48x48x1, as stored).
      log: receives the counted skips.
    """
    if os.path.isfile(data):
        images, names = read_csv(data, split, log)
    elif os.path.exists(os.path.join(data, "dataset_info.json")):
        images, names = read_tfrecords(data, split, image_size, channels)
    else:
        images, names = read_folder(data, split, image_size, channels, log)
    if not names:
        raise ValueError(f"no labelled images in {data}")
    return images, names


def match_classes(
    images: np.ndarray, names: list[str], class_names: list[str], log: Log = _stderr
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Maps data class names onto a model's classes; drops (and reports) the others.

    Returns:
      (images of known classes, labels int64 in the model's class order, {excluded class: count}).
    """
    index = {name: k for k, name in enumerate(class_names)}
    known = np.array([name in index for name in names], dtype=bool)
    excluded = dict(sorted(collections.Counter(n for n in names if n not in index).items()))
    if excluded:
        log(f"excluded {sum(excluded.values())} rows of classes the model lacks: {excluded}")
    if not known.any():
        raise ValueError(f"no image has a class of the model ({', '.join(class_names)})")
    labels = np.array([index[name] for name in names if name in index], dtype=np.int64)
    return images[known], labels, excluded
