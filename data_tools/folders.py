"""Image folders (and labels CSVs) as converter Sources; the image decoding every layout shares.

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

Images: anything `cv2.imdecode` reads (8/16 bit, gray, colour, alpha dropped,
EXIF orientation applied), read with `np.fromfile` so non-ASCII paths work,
stored gray (channels=1) or RGB (3), resized to a square with INTER_AREA when
shrinking (no crop: aspect ratio is not kept, as in `preprocess_for_eval`).

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
import dataclasses
import functools
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import cv2
import numpy as np

from data_tools.writer import Record, Skip, Source
from fer_tf import inference, schema

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


class ImageItem(NamedTuple):
    """One `Source.items` element: all a worker needs to decode one image."""

    split: str
    image_id: str
    label: int
    paths: tuple[str, ...]
    box: tuple[int, int, int, int] | None = None


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
    if value.lstrip("-").isdigit():
        code = int(value)
        return schema.FERPLUS_CLASSES[code] if 0 <= code < len(schema.FERPLUS_CLASSES) else None
    return canonical_class(value)


# ---------------------------------------------------------------- decoding


@functools.cache
def _face_detector(kind: str = "yunet") -> Any:
    # One detector per worker process, built on first use: decode runs in Beam
    # workers and only --align needs the ONNX model.
    return inference.FaceDetector(kind)


def read_image(path: str) -> np.ndarray:
    """Reads any image OpenCV decodes (8/16 bit, gray, colour, alpha) as uint8 BGR [H, W, 3].

    Raises:
      Skip: missing_file, empty_file, truncated_image or unreadable_image.
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)  # not cv2.imread: it fails on non-ASCII paths
    except FileNotFoundError:
        raise Skip("missing_file", path) from None
    except OSError as e:
        raise Skip("unreadable_image", f"{path}: {e}") from None
    if data.size == 0:
        raise Skip("empty_file", path)
    if _is_truncated(data.tobytes()):
        raise Skip("truncated_image", path)
    # IMREAD_COLOR applies EXIF orientation and drops alpha (as preprocess_for_eval does);
    # ANYDEPTH keeps 16-bit precision until the rescale below.
    image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if image is None or image.size == 0:
        raise Skip("unreadable_image", path)
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = (np.clip(image.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return image


def _is_truncated(data: bytes) -> bool:
    # Some decoders fill a cut-off image with grey instead of failing: check the end markers.
    if data.startswith(b"\xff\xd8"):  # JPEG: EOI must follow the last start-of-scan
        sos = data.rfind(b"\xff\xda")
        return sos >= 0 and data.find(b"\xff\xd9", sos) < 0
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return b"IEND" not in data[-64:]
    return False


def crop_box(image: np.ndarray, box: Sequence[int], detail: str, context: float = 0.0) -> np.ndarray:
    """Crops box (x0, y0, x1, y1), grown by `context` x its size per side, clamped to the image.

    Raises:
      Skip: bad_box when the box is empty, inverted or outside the image.
    """
    x0, y0, x1, y1 = (int(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise Skip("bad_box", f"{detail}: box {tuple(box)}")
    dx, dy = int(context * (x1 - x0)), int(context * (y1 - y0))
    height, width = image.shape[:2]
    x0, y0 = max(x0 - dx, 0), max(y0 - dy, 0)
    x1, y1 = min(x1 + dx, width), min(y1 + dy, height)
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise Skip("bad_box", f"{detail}: box {tuple(box)} outside the {width}x{height} image")
    return image[y0:y1, x0:x1]


def to_model_image(bgr: np.ndarray, image_size: int, channels: int) -> np.ndarray:
    """Converts uint8 BGR to gray (channels=1) or RGB (3) and resizes to a square uint8 [S, S, C]."""
    image = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY if channels == 1 else cv2.COLOR_BGR2RGB)
    height, width = image.shape[:2]
    if (height, width) != (image_size, image_size):
        # INTER_AREA averages when shrinking (no aliasing); it is no better than linear when enlarging.
        shrink = height > image_size or width > image_size
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        image = cv2.resize(image, (image_size, image_size), interpolation=interpolation)
    return image.reshape(image_size, image_size, channels)


@dataclasses.dataclass(frozen=True)
class ImageDecoder:
    """`Source.decode`: reads an `ImageItem` into a `Record`; picklable for Beam workers.

    Attributes:
      image_size: side of the square output.
      channels: 1 (gray) or 3 (RGB).
      align: detect the face with YuNet and align it by the eye line; no face -> Skip("no_face").
      margin: the crop margin around the aligned face.
    """

    image_size: int = 48
    channels: int = 1
    align: bool = False
    margin: float = 0.2

    def __call__(self, item: ImageItem) -> Record:
        path = next((p for p in item.paths if os.path.exists(p)), None)
        if path is None:
            raise Skip("missing_file", item.paths[0])
        image = read_image(path)
        if item.box is not None:
            # With align, keep some context so the detector sees the whole face.
            image = crop_box(image, item.box, item.image_id, context=0.25 if self.align else 0.0)
        if self.align:
            image = self._aligned(image, path)
        else:
            image = to_model_image(image, self.image_size, self.channels)
        return Record(split=item.split, image_id=item.image_id, image=image, label=item.label)

    def _aligned(self, bgr: np.ndarray, path: str) -> np.ndarray:
        faces = _face_detector("yunet").detect(bgr)
        if not faces:
            raise Skip("no_face", path)
        # The most confident face: in a face dataset, the subject, not a bystander.
        face = max(faces, key=lambda f: f.score)
        image = inference.align_face(
            bgr, face, output_size=self.image_size, margin=self.margin, channels=self.channels
        )
        return np.asarray(image, dtype=np.uint8).reshape(self.image_size, self.image_size, self.channels)


# ---------------------------------------------------------------- splitting


def assign_splits(
    labels: Sequence[int],
    fractions: Sequence[float],
    seed: int,
    groups: Sequence[str] | None = None,
    names: Sequence[str] = schema.SPLITS,
) -> list[str]:
    """Draws a stratified, seeded split; deterministic for a given input order and seed.

    Args:
      labels: class index per example.
      fractions: one fraction per split name, summing to 1.
      seed: the random seed.
      groups: optional group per example (e.g. a subject); a group never spans two splits.
      names: the split names, in the order of `fractions`.

    Returns:
      The split name of each example.
    """
    labels = np.asarray(labels, dtype=np.int64)
    out = np.empty(len(labels), dtype=object)
    if groups is None:
        for label in np.unique(labels):
            index = np.flatnonzero(labels == label)
            index = index[np.random.default_rng([seed, int(label)]).permutation(len(index))]
            cuts = np.floor(np.cumsum(fractions) * len(index) + 0.5).astype(int)
            for name, part in zip(names, np.split(index, cuts[:-1]), strict=True):
                out[part] = name
        return list(out)
    # Greedy: each group, in seeded order (largest first), goes to the split whose
    # per-class quota it fills best, so classes stay near `fractions` in every split.
    members = collections.defaultdict(list)
    for i, group in enumerate(groups):
        members[group].append(i)
    order = [sorted(members)[i] for i in np.random.default_rng(seed).permutation(len(members))]
    order.sort(key=lambda g: -len(members[g]))  # stable: equal sizes keep the seeded order
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    need = np.outer(fractions, np.bincount(labels, minlength=num_classes)).astype(float)
    for group in order:
        hist = np.bincount(labels[members[group]], minlength=num_classes)
        # Ties (common in small sets) go to the split that is furthest from its size.
        best = int(np.argmax(need @ hist + 1e-6 * need.sum(axis=1)))
        need[best] -= hist
        out[members[group]] = names[best]
    return list(out)


def group_of(image_id: str, pattern: str) -> str:
    """The group of an image: the first regex group (or match) of `pattern` in its file name.

    Files the pattern does not match form a group of their own.
    """
    match = re.search(pattern, os.path.basename(image_id))
    if match is None:
        return image_id
    return match.group(1) if match.groups() else match.group(0)


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
      skipped: listing-time skip counts.
      details: extra `dataset_info.json` source fields.

    Returns:
      The Source; items sorted by split and id.

    Raises:
      ValueError: when no image is left or the options conflict with the layout.
    """
    entries = sorted(entries, key=lambda e: e.image_id)
    skipped = collections.Counter(skipped or {})
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
    skipped["unknown_class"] += len(entries) - len(kept)
    if not kept:
        raise ValueError(f"{name}: no labelled image found (skipped: {dict(skipped)})")
    labels = [index[e.class_name] for e in kept]
    splits = _draw_splits(kept, labels, split, val_fraction, seed)
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
        details=details,
    )


def _draw_splits(entries, labels, split, val_fraction, seed) -> list[str]:
    splits = [e.split for e in entries]
    grouped = any(e.group for e in entries)

    def draw(indices, fractions, names):
        groups = [entries[i].group or entries[i].image_id for i in indices] if grouped else None
        for i, s in zip(
            indices, assign_splits([labels[i] for i in indices], fractions, seed, groups, names), strict=True
        ):
            splits[i] = s

    draw([i for i, s in enumerate(splits) if s is None], split, schema.SPLITS)
    if val_fraction > 0:
        if "val" in splits:
            raise ValueError("val_fraction needs a layout without a val split; this one has one")
        draw(
            [i for i, s in enumerate(splits) if s == "train"],
            (1.0 - val_fraction, val_fraction),
            ("train", "val"),
        )
    return splits


# ---------------------------------------------------------------- listing


def _visible(name: str) -> bool:
    return not name.startswith(".") and name.lower() not in _LITTER


def _listdir(directory: str) -> tuple[dict[str, str], list[str]]:
    """The visible subfolders {name: path} and visible files of `directory`."""
    with os.scandir(directory) as it:
        entries = [e for e in it if _visible(e.name)]
    return {e.name: e.path for e in entries if e.is_dir()}, sorted(e.path for e in entries if e.is_file())


def _walk_files(directory: str) -> list[str]:
    """Every visible file under `directory`, recursively, in sorted order."""
    found = []
    for parent, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = sorted(d for d in dirs if _visible(d))
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
    skipped["unlabeled_image"] += sum(map(_is_image_name, files))
    for folder, path in sorted(dirs.items()):
        files = _walk_files(path)
        images = [f for f in files if _is_image_name(f)]
        skipped["not_an_image"] += len(files) - len(images)
        if not images:
            skipped["empty_class"] += 1
            folders["empty_class_folders"].append(_relative_id(path, root))
            continue
        name = canonical_class(folder)
        folders["class_folders"].setdefault(name, []).append(_relative_id(path, root))
        entries.extend(Entry(_relative_id(f, root), name, (f,), split) for f in images)
    return entries


def scan_folders(root: str) -> tuple[list[Entry], collections.Counter, dict[str, Any]]:
    """Lists `root/<split>/<class>/**` or `root/<class>/**`.

    Returns:
      The entries, the listing-time skip counts and layout details (layout,
      class_folders {class: [folders]}, empty_class_folders).
    """
    skipped = collections.Counter()
    folders: dict[str, Any] = {"class_folders": {}, "empty_class_folders": []}
    top, files = _listdir(_unwrap(root))
    split_dirs = {n: p for n, p in top.items() if n.lower() in SPLIT_ALIASES}
    if not split_dirs:
        entries = _scan_class_folders(root, root, None, skipped, folders)
        return entries, skipped, {"layout": "class_folders", **folders}
    entries = []
    for folder, path in sorted(split_dirs.items()):
        entries += _scan_class_folders(path, root, SPLIT_ALIASES[folder.lower()], skipped, folders)
    skipped["unlabeled_image"] += sum(map(_is_image_name, files))
    for folder in sorted(set(top) - set(split_dirs)):
        skipped["unknown_split"] += sum(map(_is_image_name, _walk_files(top[folder])))
    return entries, skipped, {"layout": "split_folders", **folders}


def _find_column(header: Sequence[str], names: Sequence[str]) -> int | None:
    lowered = [h.strip().lower() for h in header]
    return next((lowered.index(n) for n in names if n in lowered), None)


def read_labels_csv(csv_path: str, root: str) -> tuple[list[Entry], collections.Counter]:
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
    skipped = collections.Counter()
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
            if not any(cell.strip() for cell in row):
                continue
            if (
                len(row) <= max(file_col, label_col)
                or not row[file_col].strip()
                or not row[label_col].strip()
            ):
                skipped["bad_row"] += 1
                continue
            split = None
            if split_col is not None:
                split = SPLIT_ALIASES.get(row[split_col].strip().lower()) if split_col < len(row) else None
                if split is None:
                    skipped["unknown_split"] += 1
                    continue
            file = row[file_col].strip().replace("\\", "/")
            paths = (
                (file,)
                if os.path.isabs(file)
                else tuple(os.path.join(root, d, file) for d in ("", *image_dirs))
            )
            label = label_name(row[label_col])
            if label is None:
                skipped["unknown_class"] += 1
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
