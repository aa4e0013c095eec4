"""Image folders (and labels CSVs) as converter Sources; the source assembly every layout shares.

Layouts under `root` (a lone wrapper folder such as `archive/` is looked through):

    root/<split>/<class>/**/<image>   split folders, case-insensitive: train|training,
                                      val|valid|validation|publictest, test|testing|privatetest
    root/<class>/**/<image>           no split folders: a stratified, seeded split is drawn
                                      (default 80/10/10; `group_pattern` keeps subjects together)
    root/<csv> + images               `annotations=`: columns file,label[,split] (`read_labels_csv`)

Classes: folder names and labels map to canonical lowercase names through
`CLASS_ALIASES` (Anger -> angry, Happiness -> happy, Surprised -> surprise, ...),
ordered as FER2013 (angry, disgust, fear, happy, sad, surprise, neutral) then
contempt, keeping only the classes found. Names that are no known emotion stay
classes of their own, lowercased and sorted after the canonical ones, because
users train on custom labels. `classes=` fixes order and selection instead.

Images are decoded by `data_tools.images` (any format OpenCV reads, stored as a
gray or RGB square); missing splits are drawn by `data_tools.splits`.

Bad input is counted by reason in `Source.skipped` and dataset_info.json, never
fatal here (the writer's `strict` makes it fatal). Listing time:
`not_an_image` (a file in a class folder whose extension OpenCV does not read),
`unlabeled_image` (an image outside any class folder), `unknown_split`,
`unknown_class` (per image of a class not in `classes`, or an unknown CSV code),
`empty_class` (per class folder without images; listed in
details["empty_class_folders"]), `bad_row` (a CSV row without file or label).
Decode time, in the workers: `missing_file`, `empty_file`, `truncated_image`,
`unreadable_image`, `bad_box`, `no_face`. Not counted: hidden files and folders
(`.*`, `__MACOSX`), `Thumbs.db`, `desktop.ini` (operating-system litter) and
non-image files beside the class folders (README, CSV: documentation).
"""

from __future__ import annotations

import collections
import csv
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from data_tools.images import ImageDecoder, ImageItem
from data_tools.splits import draw_splits, group_of
from data_tools.writer import Skips, Source
from fer_tf import cli, schema

DEFAULT_SPLIT = (0.8, 0.1, 0.1)

# Canonical name -> the spellings published datasets and users give it.
CLASS_ALIASES = {
    "angry": ("angry", "anger", "mad"),
    "disgust": ("disgust", "disgusted", "disgusting"),
    "fear": ("fear", "fearful", "afraid", "scared"),
    "happy": ("happy", "happiness", "joy"),
    "sad": ("sad", "sadness"),
    "surprise": ("surprise", "surprised", "suprise", "suprised"),
    "neutral": ("neutral", "neutrality"),
    "contempt": ("contempt", "contemptuous"),
}
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "publictest": "val",
    "test": "test", "testing": "test", "privatetest": "test",
}  # fmt: skip
IMAGE_EXTENSIONS = frozenset(
    ".bmp .dib .jpeg .jpg .jpe .jp2 .png .webp .avif .pbm .pgm .ppm .pxm .pnm .pfm .sr .ras "
    ".tiff .tif .exr .hdr .pic .gif".split()
)
_LITTER = frozenset({"thumbs.db", "desktop.ini", "__macosx"})
FILE_COLUMNS = ("file", "path", "image", "filename", "file_name", "image_name", "image_path", "name")
LABEL_COLUMNS = ("label", "emotion", "expression", "class", "category")
SPLIT_COLUMNS = ("split", "usage", "subset", "set")


class Entry(NamedTuple):
    """One listed image before class resolution and splitting (used by layouts.py too)."""

    image_id: str  # path relative to the dataset root, or a layout-specific id
    class_name: str  # canonical (see `canonical_class`)
    paths: tuple[str, ...]  # candidate files; the first that exists is read
    split: str | None = None  # None: drawn by the stratified split
    group: str | None = None  # images of one group (e.g. a subject) share a split
    box: tuple[int, int, int, int] | None = None  # face box (x0, y0, x1, y1) to crop


def canonical_class(name: str) -> str:
    """Maps a folder name, CSV label or alias to its canonical lowercase class name.

    Names that are no known alias come back lowercased and stripped (custom classes).
    """
    key = name.strip().lower()
    for canonical, aliases in CLASS_ALIASES.items():
        if key in aliases:
            return canonical
    return key


def label_name(value: str) -> str | None:
    """Resolves a CSV label: an int is a FER2013 code (0..6, 7 = contempt; else None), or a name."""
    value = value.strip()
    if re.fullmatch(r"-?[0-9]+", value):
        code = int(value)
        return schema.FERPLUS_CLASSES[code] if 0 <= code < len(schema.FERPLUS_CLASSES) else None
    return canonical_class(value)


# ---------------------------------------------------------------- source assembly


def check_options(image_size: int, channels: int, split: Sequence[float], val_fraction: float) -> None:
    """Raises ValueError on option values no layout accepts."""
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if len(split) != 3 or min(split) < 0 or abs(sum(split) - 1.0) > 1e-6:
        raise ValueError(
            f"split must be 3 non-negative fractions (train, val, test) summing to 1, got {split}"
        )
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")


def build_source(
    name: str,
    entries: Iterable[Entry],
    *,
    decoder: ImageDecoder,
    classes: Sequence[str] | None = None,
    default_classes: Sequence[str] | None = None,
    split: Sequence[float] = DEFAULT_SPLIT,
    val_fraction: float = 0.0,
    seed: int = 0,
    skipped: Mapping[str, int] | None = None,
    details: Mapping[str, Any] | None = None,
) -> Source:
    """Resolves classes, draws the missing splits and assembles the `Source`.

    Args:
      name: the source format name (e.g. "folder", "rafdb").
      entries: the listed images.
      decoder: `Source.decode`.
      classes: names or aliases fixing class order and selection; others are skipped.
      default_classes: the order when `classes` is None; None: the classes found
        (FER2013 order, contempt, then custom names sorted).
      split: train/val/test fractions for entries without a split.
      val_fraction: fraction of train (stratified, seeded) moved to val; needs a layout without val.
      seed: seed of every split drawn here.
      skipped: listing-time skip counts; a `Skips` also names the first, for strict mode.
      details: extra `dataset_info.json` source fields.

    Returns:
      The Source; items sorted by split and id.

    Raises:
      ValueError: when no image is left or the options conflict with the layout.
    """
    entries = sorted(entries, key=lambda e: e.image_id)
    skipped = skipped.copy() if isinstance(skipped, Skips) else Skips(skipped)
    found = {e.class_name for e in entries}
    if classes is not None:
        class_names = [canonical_class(c) for c in classes]
        if len(set(class_names)) != len(class_names):
            raise ValueError(f"classes {list(classes)} name one class twice")
    elif default_classes is not None:
        class_names = list(default_classes)
    else:
        canonical = [c for c in schema.FERPLUS_CLASSES if c in found]
        class_names = canonical + sorted(found - set(canonical))
    index = {c: i for i, c in enumerate(class_names)}
    kept = [e for e in entries if e.class_name in index]
    skipped.add("unknown_class", [e.image_id for e in entries if e.class_name not in index])
    if not kept:
        raise ValueError(f"{name}: no labelled image found (skipped: {dict(skipped)})")
    labels = [index[e.class_name] for e in kept]
    # Once any entry has a group, an entry without one is a group of its own.
    groups = [e.group or e.image_id for e in kept] if any(e.group for e in kept) else None
    splits = draw_splits([e.split for e in kept], labels, groups, split, val_fraction, seed)
    items = sorted(
        (ImageItem(s, e.image_id, y, e.paths, e.box) for e, y, s in zip(kept, labels, splits, strict=True)),
        key=lambda item: (schema.SPLITS.index(item.split), item.image_id),
    )
    present = collections.Counter(labels)
    details = {
        **(details or {}),
        "seed": seed,
        "split_fractions": list(split),
        "val_fraction": val_fraction,
        "align": decoder.align,
        "unknown_classes": sorted(found - set(class_names)),
        "empty_classes": [c for i, c in enumerate(class_names) if not present[i]],
    }
    return Source(
        name=name,
        items=items,
        decode=decoder,
        class_names=class_names,
        image_shape=[decoder.image_size, decoder.image_size, decoder.channels],
        skipped={k: v for k, v in skipped.items() if v},
        first_skipped=skipped.first,
        details=details,
    )


# ---------------------------------------------------------------- listing


def _visible(name: str) -> bool:
    return not name.startswith(".") and name.lower() not in _LITTER


def _listdir(directory: str) -> tuple[dict[str, str], list[str]]:
    """The visible subfolders {name: path} and visible files of `directory`."""
    with os.scandir(directory) as it:
        entries = [e for e in it if _visible(e.name)]
    return {e.name: e.path for e in entries if e.is_dir()}, sorted(e.path for e in entries if e.is_file())


def _walk_files(directory: str, skipped: Skips | None = None) -> list[str]:
    """Every visible file under `directory`, recursively, in sorted order.

    Symlinked folders are followed, except one that leads back to a folder of the
    walk or to one above it (`happy/up -> ..`): that would list the same images
    again, under this class, without end. Each one cut is counted as `symlink_loop`.
    """
    start = os.path.realpath(directory)
    visited = {start}
    found = []
    for parent, dirs, files in os.walk(directory, followlinks=True):
        keep = []
        for d in sorted(d for d in dirs if _visible(d)):
            real = os.path.realpath(os.path.join(parent, d))
            if real in visited or cli.is_within(start, real):
                if skipped is not None:
                    skipped.add("symlink_loop", [os.path.join(parent, d)])
                continue
            visited.add(real)
            keep.append(d)
        dirs[:] = keep
        found.extend(os.path.join(parent, f) for f in sorted(files) if _visible(f))
    return found


def _is_image_name(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def _relative_id(path: str, root: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def _unwrap(directory: str) -> str:
    # Archives often wrap the data in one folder (archive/, Train_Aligned_Faces/, CK+48/):
    # look through a lone subfolder that holds folders, unless it is a split or an emotion.
    while True:
        dirs, files = _listdir(directory)
        if len(dirs) != 1 or files:
            return directory
        ((name, path),) = dirs.items()
        inner_dirs, inner_files = _listdir(path)
        if name.lower() in SPLIT_ALIASES or canonical_class(name) in CLASS_ALIASES:
            return directory
        if not inner_dirs or any(map(_is_image_name, inner_files)):
            return directory
        directory = path


def _scan_class_folders(directory, root, split, skipped, folders) -> list[Entry]:
    entries = []
    dirs, files = _listdir(_unwrap(directory))
    # Loose images have no class; loose other files (README, CSV) are documentation.
    skipped.add("unlabeled_image", [f for f in files if _is_image_name(f)])
    for folder, path in sorted(dirs.items()):
        files = _walk_files(path, skipped)
        images = [f for f in files if _is_image_name(f)]
        skipped.add("not_an_image", [f for f in files if not _is_image_name(f)])
        if not images:
            skipped.add("empty_class", [path])
            folders["empty_class_folders"].append(_relative_id(path, root))
            continue
        name = canonical_class(folder)
        folders["class_folders"].setdefault(name, []).append(_relative_id(path, root))
        entries.extend(Entry(_relative_id(f, root), name, (f,), split) for f in images)
    return entries


def scan_folders(root: str) -> tuple[list[Entry], Skips, dict[str, Any]]:
    """Lists `root/<split>/<class>/**` or `root/<class>/**`.

    Returns:
      The entries, the listing-time skip counts and layout details (layout,
      class_folders {class: [folders]}, empty_class_folders).
    """
    skipped = Skips()
    folders: dict[str, Any] = {"class_folders": {}, "empty_class_folders": []}
    top, files = _listdir(_unwrap(root))
    split_dirs = {n: p for n, p in top.items() if n.lower() in SPLIT_ALIASES}
    if not split_dirs:
        entries = _scan_class_folders(root, root, None, skipped, folders)
        return entries, skipped, {"layout": "class_folders", **folders}
    entries = []
    for folder, path in sorted(split_dirs.items()):
        entries += _scan_class_folders(path, root, SPLIT_ALIASES[folder.lower()], skipped, folders)
    skipped.add("unlabeled_image", [f for f in files if _is_image_name(f)])
    for folder in sorted(set(top) - set(split_dirs)):
        skipped.add("unknown_split", [f for f in _walk_files(top[folder]) if _is_image_name(f)])
    return entries, skipped, {"layout": "split_folders", **folders}


def _find_column(header: Sequence[str], names: Sequence[str]) -> int | None:
    lowered = [h.strip().lower() for h in header]
    return next((lowered.index(n) for n in names if n in lowered), None)


def read_labels_csv(csv_path: str, root: str) -> tuple[list[Entry], Skips]:
    """Reads a labels CSV: a file column, a label column and an optional split column.

    Column names (case-insensitive): file|path|image|filename|file_name|image_name|
    image_path|name; label|emotion|expression|class|category; split|usage|subset|set.
    Labels are class names or aliases, or ints read as FER2013 codes (0 angry,
    1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral; 7 contempt).
    Split values go through `SPLIT_ALIASES` (Training, PublicTest, ...).

    Args:
      csv_path: the CSV file.
      root: files are relative to it, or to a root subfolder named like *image*
        (sfew2.0_images/, ckplus_images/); absolute paths are kept.

    Returns:
      The entries (ids are the file column as written) and skip counts.

    Raises:
      FileNotFoundError: no such CSV.
      ValueError: the header lacks a file or label column.
    """
    skipped = Skips()
    entries = []
    image_dirs = sorted(d for d in _listdir(root)[0] if "image" in d.lower())
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        rows = csv.reader(f)
        header = next(rows, [])
        file_col, label_col = _find_column(header, FILE_COLUMNS), _find_column(header, LABEL_COLUMNS)
        split_col = _find_column(header, SPLIT_COLUMNS)
        if file_col is None or label_col is None:
            raise ValueError(f"{csv_path}: header {header} needs a file and a label column")
        for row in rows:
            where = f"{os.path.basename(csv_path)} line {rows.line_num}"
            if not any(cell.strip() for cell in row):
                continue
            if (
                len(row) <= max(file_col, label_col)
                or not row[file_col].strip()
                or not row[label_col].strip()
            ):
                skipped.add("bad_row", [where])
                continue
            split = None
            if split_col is not None:
                split = SPLIT_ALIASES.get(row[split_col].strip().lower()) if split_col < len(row) else None
                if split is None:
                    skipped.add("unknown_split", [where])
                    continue
            file = row[file_col].strip().replace("\\", "/")
            paths = (
                (file,)
                if os.path.isabs(file)
                else tuple(os.path.join(root, d, file) for d in ("", *image_dirs))
            )
            label = label_name(row[label_col])
            if label is None:
                skipped.add("unknown_class", [where])
                continue
            entries.append(Entry(file, label, paths, split))
    return entries, skipped


def folder_source(
    root: str,
    *,
    classes: Sequence[str] | None = None,
    image_size: int = 48,
    channels: int = 1,
    split: Sequence[float] = DEFAULT_SPLIT,
    seed: int = 0,
    annotations: str | None = None,
    align: bool = False,
    val_fraction: float = 0.0,
    group_pattern: str | None = None,
    margin: float = 0.2,
    name: str = "folder",
) -> Source:
    """A converter Source over an image folder (layouts in the module docstring).

    Args:
      root: the dataset folder.
      classes: names or aliases fixing class order and selection (default: the classes found).
      image_size: side S of the stored square images.
      channels: 1 (gray) or 3 (RGB).
      split: train/val/test fractions used when the layout has no split folders.
      seed: seed of the split.
      annotations: a labels CSV (relative to root or absolute) used instead of class folders.
      align: detect and align faces (YuNet); images without a face are skipped (no_face).
      val_fraction: move this fraction of train to val (layouts with train/test folders only).
      group_pattern: regex on file names whose first group names a subject kept in one split.
      margin: face margin when aligning.
      name: the source name recorded in dataset_info.json.

    Returns:
      The Source for `data_tools.writer.convert`.

    Raises:
      FileNotFoundError: root or annotations missing.
      ValueError: bad options, or no labelled image.
    """
    check_options(image_size, channels, split, val_fraction)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: no such directory")
    if annotations:
        csv_path = annotations if os.path.isabs(annotations) else os.path.join(root, annotations)
        entries, skipped = read_labels_csv(csv_path, root)
        details: dict[str, Any] = {"layout": "annotations", "annotations": annotations}
    else:
        entries, skipped, details = scan_folders(root)
    if group_pattern:
        entries = [e._replace(group=group_of(e.image_id, group_pattern)) for e in entries]
        details["group_pattern"] = group_pattern
    return build_source(
        name,
        entries,
        decoder=ImageDecoder(image_size, channels, align, margin),
        classes=classes,
        split=split,
        val_fraction=val_fraction,
        seed=seed,
        skipped=skipped,
        details={"root": root, **details},
    )
