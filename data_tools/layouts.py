"""Published FER datasets, in the layouts their downloads (and FER-crossval) use, as converter Sources.

Every function takes the same keyword options as `folders.folder_source`
(classes, image_size, channels, split, val_fraction, seed, align, margin) and
returns a `data_tools.writer.Source`; labels are mapped to the canonical
lowercase names in FER2013 order.

    rafdb   root/EmoLabel/list_patition_label.txt  `train_00001.jpg 5`, codes 1..7 =
            surprise, fear, disgust, happy, sad, angry, neutral;
            root/Image/aligned/train_00001_aligned.jpg (else root/Image/original/train_00001.jpg).
            The train/test split comes from the file name; val only with val_fraction > 0.
    expw    root/label/label.lst  `name face_id top left right bottom confidence label`,
            codes 0..6 in FER2013 order; root/image/origin/<name> (or root/image/<name>).
            The face box is cropped (clamped to the image; an empty box is skipped as
            bad_box), ids are `name#face_id`, split drawn stratified 80/10/10.
    sfew    root/labels.csv (or another root/*label*.csv, e.g. sfew_2.0_labels.csv), else
            folders (SFEW 2.0 ships Train/<Class>/, Val/<Class>/; no labelled test).
    ckplus  root/labels.csv (or ckplus_labels.csv), else folders (CK+48/<class>/*.png,
            contempt kept as an eighth class).

Labels CSVs are read by `folders.read_labels_csv`: a file column relative to
root (or to a root subfolder named like *image*), a label column with names or
FER2013 int codes (0 angry .. 6 neutral, 7 contempt: NOT the native CK+ codes),
an optional split column.

CK+ has several frames of each subject's sequence (S005_001_00000011.png, ...):
a drawn split keeps every image of a subject (the `S\\d+` prefix) in one split,
otherwise near-identical frames would leak from train into test.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from data_tools import folders
from data_tools.folders import DEFAULT_SPLIT, Entry
from data_tools.images import ImageDecoder
from data_tools.writer import Skips, Source
from fer_tf import schema

# RAF-DB basic emotion codes (1-based) -> canonical names.
RAFDB_LABELS = {1: "surprise", 2: "fear", 3: "disgust", 4: "happy", 5: "sad", 6: "angry", 7: "neutral"}
# ExpW codes 0..6 are FER2013's.
EXPW_LABELS = dict(enumerate(schema.FER2013_CLASSES))
CKPLUS_SUBJECT = r"^(S\d+)_"


def _read_lines(path: str) -> list[tuple[str, list[str]]]:
    """The non-blank lines of a label file as ("<file> line <n>", whitespace-split fields)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    name = os.path.basename(path)
    with open(path, encoding="utf-8-sig") as f:
        return [(f"{name} line {n}", line.split()) for n, line in enumerate(f, 1) if line.strip()]


def _code(text: str, table: dict[int, str]) -> str | None:
    try:
        return table.get(int(text))
    except ValueError:
        return None


def _first_dir(root: str, candidates: Sequence[str]) -> str | None:
    return next((os.path.join(root, c) for c in candidates if os.path.isdir(os.path.join(root, c))), None)


def _build(
    name: str,
    root: str,
    entries: list[Entry],
    skipped: Skips,
    details: dict[str, Any],
    *,
    classes: Sequence[str] | None = None,
    image_size: int = 48,
    channels: int = 1,
    split: Sequence[float] = DEFAULT_SPLIT,
    val_fraction: float = 0.0,
    seed: int = 0,
    align: bool = False,
    margin: float = 0.2,
) -> Source:
    """The Source of a layout whose labels are FER2013's 7 classes (unless `classes` says otherwise).

    The keyword options, and their defaults, are `folders.folder_source`'s.
    """
    folders.check_options(image_size, channels, split, val_fraction)
    return folders.build_source(
        name,
        entries,
        decoder=ImageDecoder(image_size, channels, align, margin),
        classes=classes,
        default_classes=schema.FER2013_CLASSES,
        split=split,
        val_fraction=val_fraction,
        seed=seed,
        skipped=skipped,
        details={"root": root, **details},
    )


def rafdb_source(root: str, **options: Any) -> Source:
    """RAF-DB basic (7 classes) from `root` (the raf-basic folder, or a folder holding `basic/`).

    Args:
      root: dataset folder.
      **options: `folders.folder_source` options (classes, default: the 7 FER2013
        classes; image_size, channels, val_fraction, seed, align, margin). `split`
        must stay the default: RAF-DB ships its train/test split, and val comes
        only from val_fraction. The aligned images need no `align`.

    Returns:
      The Source; ids are the label file's names (train_00001.jpg).

    Raises:
      FileNotFoundError: no EmoLabel/list_patition_label.txt.
      ValueError: bad options.
    """
    if tuple(options.get("split", DEFAULT_SPLIT)) != DEFAULT_SPLIT:
        raise ValueError("rafdb ships its own train/test split; use val_fraction for a val split")
    base = root
    if not os.path.isdir(os.path.join(root, "EmoLabel")) and os.path.isdir(os.path.join(root, "basic")):
        base = os.path.join(root, "basic")
    skipped = Skips()
    entries = []
    for where, fields in _read_lines(os.path.join(base, "EmoLabel", "list_patition_label.txt")):
        if len(fields) != 2:
            skipped.add("bad_row", [where])
            continue
        file, label = fields[0], _code(fields[1], RAFDB_LABELS)
        subset = file.split("_", 1)[0].lower()
        if label is None:
            skipped.add("unknown_class", [where])
        elif subset not in ("train", "test"):
            skipped.add("unknown_split", [where])
        else:
            stem, ext = os.path.splitext(file)
            paths = (
                os.path.join(base, "Image", "aligned", f"{stem}_aligned{ext}"),
                os.path.join(base, "Image", "original", file),
            )
            entries.append(Entry(file, label, paths, subset))
    return _build("rafdb", root, entries, skipped, {"layout": "rafdb"}, **options)


def expw_source(root: str, *, min_confidence: float | None = None, **options: Any) -> Source:
    """ExpW (Expression in-the-Wild) from `root`, holding label/label.lst and image/origin/.

    Args:
      root: dataset folder.
      min_confidence: skip faces whose box confidence is below it (low_confidence).
      **options: `folders.folder_source` options (classes, default: the 7 FER2013
        classes; image_size, channels, split, val_fraction, seed, margin; `align`
        detects and aligns the face inside the enlarged box).

    Returns:
      The Source; ids are `name#face_id`.

    Raises:
      FileNotFoundError: no label.lst or no image folder.
      ValueError: bad options.
    """
    label_file = next(
        (
            p
            for p in (os.path.join(root, "label", "label.lst"), os.path.join(root, "label.lst"))
            if os.path.isfile(p)
        ),
        os.path.join(root, "label", "label.lst"),
    )
    rows = _read_lines(label_file)
    image_dir = _first_dir(root, (os.path.join("image", "origin"), "origin", "image"))
    if image_dir is None:
        raise FileNotFoundError(f"{root}: no image/origin/ (or image/) folder")
    skipped = Skips()
    entries = []
    for where, fields in rows:
        try:
            top, left, right, bottom, confidence = (float(v) for v in fields[2:7])
        except ValueError:
            fields = []
        if fields and not all(math.isfinite(v) for v in (top, left, right, bottom)):
            fields = []  # "nan" and "inf" parse as floats but are no box
        if len(fields) != 8:
            skipped.add("bad_row", [where])
            continue
        name, face_id, label = fields[0], fields[1], _code(fields[7], EXPW_LABELS)
        if label is None:
            skipped.add("unknown_class", [where])
        elif min_confidence is not None and confidence < min_confidence:
            skipped.add("low_confidence", [where])
        else:
            box = (int(left), int(top), int(right), int(bottom))
            entries.append(Entry(f"{name}#{face_id}", label, (os.path.join(image_dir, name),), box=box))
    details = {
        "layout": "expw",
        "image_dir": os.path.relpath(image_dir, root),
        "min_confidence": min_confidence,
    }
    return _build("expw", root, entries, skipped, details, **options)


def _labels_csv(root: str) -> str | None:
    """The name of root's labels CSV: labels.csv, else the first *label*.csv."""
    if os.path.isfile(os.path.join(root, "labels.csv")):
        return "labels.csv"
    found = sorted(f for f in os.listdir(root) if f.lower().endswith(".csv") and "label" in f.lower())
    return found[0] if found else None


def _csv_or_folders(name: str, root: str, folder: str, group_pattern: str | None, **options: Any) -> Source:
    """A labels CSV in root if there is one, else the class folders under `folder`."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: no such directory")
    csv_path = _labels_csv(root)
    if csv_path is not None:
        folder = root
    return folders.folder_source(
        folder, annotations=csv_path, group_pattern=group_pattern, name=name, **options
    )


def sfew_source(root: str, **options: Any) -> Source:
    """SFEW 2.0: a labels CSV in root, else split/class folders (Train/<Class>/, Val/<Class>/).

    Args:
      root: dataset folder.
      **options: `folders.folder_source` options (classes, image_size, channels,
        split, val_fraction, seed, align, margin).

    Returns:
      The Source.
    """
    return _csv_or_folders("sfew", root, root, None, **options)


def ckplus_source(root: str, **options: Any) -> Source:
    """CK+: a labels CSV in root, else class folders (root/CK+48/<class>/ or root/<class>/).

    Images of one subject (file names starting `S<digits>_`) always share a
    split, so frames of one sequence cannot leak across splits.

    Args:
      root: dataset folder.
      **options: `folders.folder_source` options (classes, image_size, channels,
        split, val_fraction, seed, align, margin).

    Returns:
      The Source.
    """
    folder = os.path.join(root, "CK+48") if os.path.isdir(os.path.join(root, "CK+48")) else root
    return _csv_or_folders("ckplus", root, folder, CKPLUS_SUBJECT, **options)
