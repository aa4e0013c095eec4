"""Tests for data_tools/folders.py (with images.py and splits.py): image folders and CSVs as Sources."""

from __future__ import annotations

import collections
import gzip
import json
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf
from conftest import decode_all, write_image

from data_tools import folders, images, writer
from data_tools.splits import assign_splits
from data_tools.writer import Skip
from fer_tf import schema

FER2013_CSV = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "fer2013",
                           "fer2013_train_publictest.csv.gz")  # fmt: skip


def gray(value, height=60, width=60):
    return np.full((height, width), value, np.uint8)


@pytest.fixture
def messy_root(tmp_path):
    """root/<split>/<class>/ with every kind of bad input a real download has."""
    root = tmp_path / "faces"
    write_image(str(root / "Train" / "Angry" / "a1.png"), gray(10))
    write_image(str(root / "Train" / "Angry" / "a2.jpg"), gray(20, 100, 80))  # larger, not square
    write_image(str(root / "Train" / "anger" / "a3.bmp"), gray(30, 30, 30))  # alias folder, merged; upscaled
    write_image(str(root / "Train" / "Happiness" / "smile" / "h1.png"), gray(40))  # nested subfolder
    rgba = np.dstack([np.full((50, 50, 3), 50, np.uint8), np.zeros((50, 50), np.uint8)])
    write_image(str(root / "Train" / "Happiness" / "h2_rgba.png"), rgba)
    write_image(str(root / "Train" / "Happiness" / "h3_16bit.png"), np.full((40, 40), 60 * 257, np.uint16))
    write_image(str(root / "Train" / "Happiness" / "微笑.png"), gray(70))  # non-ASCII name
    write_image(str(root / "Train" / "Surprised" / "s1.png"), gray(80))
    write_image(str(root / "Train" / "Bored" / "b1.png"), gray(90))  # no emotion name: a custom class
    os.makedirs(root / "Train" / "Fear")  # empty class folder
    (root / "Train" / "Angry" / "notes.txt").write_text("not an image")
    (root / "Train" / "Angry" / "empty.jpg").write_bytes(b"")
    ok, jpg = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    (root / "Train" / "Angry" / "cut.jpg").write_bytes(jpg.tobytes()[: len(jpg) // 2])
    (root / "Train" / "Angry" / "fake.png").write_bytes(b"this is text, not a PNG at all")
    (root / "Train" / "Angry" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "Train" / "Angry" / "Thumbs.db").write_bytes(b"\0" * 10)
    write_image(str(root / "Train" / "loose.png"), gray(5))  # outside any class folder
    (root / "Train" / "README.txt").write_text("documentation beside the class folders: not counted")
    (root / "LICENSE").write_text("CC BY-NC")
    write_image(str(root / "PublicTest" / "angry" / "v1.png"), gray(100))
    write_image(str(root / "PrivateTest" / "HAPPY" / "t1.png"), gray(110))
    write_image(str(root / "extras" / "x" / "x1.png"), gray(120))  # not a split folder
    return str(root)


def test_canonical_class_aliases():
    cases = {"Anger": "angry", "ANGRY": "angry", "happiness": "happy", "Happy": "happy", "Surprised": "surprise",
             "sadness": "sad", "fearful": "fear", "Disgusted": "disgust", "Neutrality": "neutral",
             "contempt": "contempt", " Bored ": "bored"}  # fmt: skip
    assert {name: folders.canonical_class(name) for name in cases} == cases
    assert folders.label_name("3") == "happy" and folders.label_name("7") == "contempt"
    assert folders.label_name("12") is None and folders.label_name("Sadness") == "sad"


def test_split_layout_classes_splits_and_listing_skips(messy_root):
    source = folders.folder_source(messy_root)
    assert source.name == "folder"
    # FER2013 order restricted to the classes found, then custom classes; empty Fear/ dropped.
    assert list(source.class_names) == ["angry", "happy", "surprise", "bored"]
    assert list(source.image_shape) == [48, 48, 1]
    assert dict(source.skipped) == {
        "not_an_image": 1,
        "empty_class": 1,
        "unlabeled_image": 1,
        "unknown_split": 1,
    }
    # The first one found, which --strict names: folders are listed in sorted order.
    assert source.first_skipped == ("unlabeled_image", os.path.join(messy_root, "Train", "loose.png"))
    assert source.details["layout"] == "split_folders"
    assert sorted(source.details["class_folders"]["angry"]) == [
        "PublicTest/angry",
        "Train/Angry",
        "Train/anger",
    ]
    assert source.details["empty_class_folders"] == ["Train/Fear"]
    by_id = {item.image_id: item for item in source.items}
    assert by_id["Train/Angry/a1.png"].split == "train" and by_id["Train/Angry/a1.png"].label == 0
    assert by_id["Train/Happiness/smile/h1.png"].label == 1
    assert by_id["PublicTest/angry/v1.png"].split == "val"
    assert by_id["PrivateTest/HAPPY/t1.png"].split == "test"
    assert by_id["Train/Bored/b1.png"].label == 3
    assert collections.Counter(i.split for i in source.items) == {"train": 12, "val": 1, "test": 1}
    assert [i.split for i in source.items] == sorted((i.split for i in source.items), key=schema.SPLITS.index)


def test_decode_every_format_and_bad_file(messy_root):
    results = decode_all(folders.folder_source(messy_root))
    expected_skips = {"Train/Angry/empty.jpg": "empty_file", "Train/Angry/cut.jpg": "truncated_image",
                      "Train/Angry/fake.png": "unreadable_image"}  # fmt: skip
    assert {k: v for k, v in results.items() if isinstance(v, str)} == expected_skips
    values = {k: int(r.image.mean().round()) for k, r in results.items() if not isinstance(r, str)}
    assert values == {"Train/Angry/a1.png": 10, "Train/Angry/a2.jpg": 20, "Train/anger/a3.bmp": 30,
                      "Train/Happiness/smile/h1.png": 40, "Train/Happiness/h2_rgba.png": 50,
                      "Train/Happiness/h3_16bit.png": 60, "Train/Happiness/微笑.png": 70,
                      "Train/Surprised/s1.png": 80, "Train/Bored/b1.png": 90,
                      "PublicTest/angry/v1.png": 100, "PrivateTest/HAPPY/t1.png": 110}  # fmt: skip
    record = results["Train/Angry/a2.jpg"]
    assert record.image.shape == (48, 48, 1) and record.image.dtype == np.uint8
    assert (record.split, record.label) == ("train", 0)


def test_read_image_counts_headers_opencv_refuses(tmp_path):
    ok, bmp = cv2.imencode(".bmp", np.full((40, 40), 128, np.uint8))
    tall = bytearray(bmp.tobytes())
    tall[22:26] = (2_000_000).to_bytes(4, "little", signed=True)  # height above OpenCV's 2**20 limit
    (tmp_path / "tall.bmp").write_bytes(bytes(tall))
    (tmp_path / "x.exr").write_bytes(b"\x76\x2f\x31\x01" + b"\0" * 64)  # OpenEXR magic
    for name in ("tall.bmp", "x.exr"):
        with pytest.raises(Skip) as e:  # cv2.imdecode raised cv2.error here, which ended the conversion
            images.read_image(str(tmp_path / name))
        assert e.value.reason == "unreadable_image" and name in e.value.detail


def test_symlink_loop_is_cut_and_counted(tmp_path):
    root = tmp_path / "loop"
    for name in ("happy/h1.png", "happy/h2.png", "sad/s1.png", "sad/s2.png"):
        write_image(str(root / name), np.full((48, 48), 9, np.uint8))
    os.symlink("..", root / "happy" / "up")  # happy/up/happy/up/... and happy/up/sad/
    source = folders.folder_source(str(root))
    ids = sorted(i.image_id for i in source.items)
    assert ids == ["happy/h1.png", "happy/h2.png", "sad/s1.png", "sad/s2.png"]
    assert source.skipped["symlink_loop"] == 1


def test_classes_override_order_selection_and_aliases(messy_root):
    source = folders.folder_source(messy_root, classes=["Happiness", "anger", "fear"], image_size=32)
    assert list(source.class_names) == ["happy", "angry", "fear"]
    # Surprised (1 image) and Bored (1) are not selected; Fear is kept although empty.
    assert source.skipped["unknown_class"] == 2
    assert source.details["unknown_classes"] == ["bored", "surprise"]
    assert source.details["empty_classes"] == ["fear"]
    labels = {item.image_id: item.label for item in source.items}
    assert labels["Train/Angry/a1.png"] == 1 and labels["PrivateTest/HAPPY/t1.png"] == 0
    assert list(source.image_shape) == [32, 32, 1]
    with pytest.raises(ValueError, match="twice"):
        folders.folder_source(messy_root, classes=["angry", "Anger"])


def test_rgb_channels_keep_colour_order(tmp_path):
    bgr = np.zeros((20, 30, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR order
    write_image(str(tmp_path / "train" / "happy" / "red.png"), bgr)
    source = folders.folder_source(str(tmp_path), channels=3, image_size=16)
    record = source.decode(source.items[0])
    assert record.image.shape == (16, 16, 3)
    np.testing.assert_array_equal(
        record.image[0, 0], [200, 0, 0]
    )  # stored RGB, as preprocess_for_eval expects


def flat_root(tmp_path, counts):
    for name, count in counts.items():
        for i in range(count):
            write_image(str(tmp_path / name / f"{name}_{i:03d}.png"), gray(i, 8, 8))
    return str(tmp_path)


def test_flat_layout_stratified_seeded_split(tmp_path):
    root = flat_root(tmp_path, {"Happy": 40, "Sad": 20, "Disgust": 10, "Fear": 3})
    source = folders.folder_source(root, seed=1)
    assert list(source.class_names) == ["disgust", "fear", "happy", "sad"]
    assert source.details["layout"] == "class_folders"
    counts = collections.Counter((source.class_names[i.label], i.split) for i in source.items)
    assert [counts[("happy", s)] for s in schema.SPLITS] == [32, 4, 4]
    assert [counts[("sad", s)] for s in schema.SPLITS] == [16, 2, 2]
    assert [counts[("disgust", s)] for s in schema.SPLITS] == [8, 1, 1]
    assert sum(counts[("fear", s)] for s in schema.SPLITS) == 3
    split_of = lambda s: {i.image_id: i.split for i in s.items}  # noqa: E731
    assert split_of(folders.folder_source(root, seed=1)) == split_of(source)
    assert split_of(folders.folder_source(root, seed=2)) != split_of(source)
    other = folders.folder_source(root, split=(0.5, 0.0, 0.5))
    assert collections.Counter(i.split for i in other.items) == {"train": 37, "test": 36}
    with pytest.raises(ValueError, match="split"):
        folders.folder_source(root, split=(0.8, 0.3, 0.1))


def test_assign_splits_groups_never_span_splits():
    rng = np.random.default_rng(0)
    groups = [f"S{g:03d}" for g in range(60) for _ in range(int(rng.integers(2, 8)))]
    labels = [int(rng.integers(0, 3)) for _ in groups]
    splits = assign_splits(labels, (0.8, 0.1, 0.1), seed=3, groups=groups)
    per_group = collections.defaultdict(set)
    for group, split in zip(groups, splits, strict=True):
        per_group[group].add(split)
    assert all(len(s) == 1 for s in per_group.values())
    share = {s: splits.count(s) / len(splits) for s in schema.SPLITS}
    assert 0.7 < share["train"] < 0.9 and 0.05 < share["val"] < 0.15 and 0.05 < share["test"] < 0.15
    assert assign_splits(labels, (0.8, 0.1, 0.1), seed=3, groups=groups) == splits


def test_micro_expression_six_class_layout(tmp_path):
    names = ["Anger", "Disgust", "Fear", "Happy", "Neutral", "Surprised"]
    for split in ("train", "test"):
        for k, name in enumerate(names):
            for i in range(2):
                write_image(str(tmp_path / "data" / split / name / f"{i}.jpg"), gray(20 * k, 24, 24))
    (tmp_path / "data" / "README.md").write_text("micro-expressions")
    source = folders.folder_source(str(tmp_path / "data"), val_fraction=0.5)
    assert list(source.class_names) == ["angry", "disgust", "fear", "happy", "surprise", "neutral"]
    counts = collections.Counter(i.split for i in source.items)
    assert counts == {"train": 6, "val": 6, "test": 12}  # val carved from train, one per class
    assert dict(source.skipped) == {}


def test_val_fraction_refused_when_layout_has_val(messy_root):
    with pytest.raises(ValueError, match="val_fraction"):
        folders.folder_source(messy_root, val_fraction=0.2)


def test_annotations_csv(tmp_path):
    for i in range(4):
        write_image(str(tmp_path / "imgs" / f"{i}.png"), gray(10 * i, 10, 10))
    (tmp_path / "annotations.csv").write_text(
        "File,Emotion,Usage\n"
        "imgs/0.png,happy,Training\n"
        "imgs/1.png,3,PublicTest\n"  # FER2013 code 3 = happy
        "imgs/2.png,Sadness,PrivateTest\n"
        "imgs/3.png,,Training\n"  # no label
        "imgs/missing.png,sad,Training\n"
        "imgs/0.png,9,Training\n"  # no such code
        "imgs/1.png,sad,Holdout\n"
    )
    source = folders.folder_source(str(tmp_path), annotations="annotations.csv")
    assert list(source.class_names) == ["happy", "sad"]
    assert dict(source.skipped) == {"bad_row": 1, "unknown_class": 1, "unknown_split": 1}
    assert [(i.image_id, i.split, i.label) for i in source.items] == [
        ("imgs/0.png", "train", 0), ("imgs/missing.png", "train", 1),
        ("imgs/1.png", "val", 0), ("imgs/2.png", "test", 1)]  # fmt: skip
    results = decode_all(source)
    assert results["imgs/missing.png"] == "missing_file"
    assert int(results["imgs/2.png"].image.mean()) == 20
    with pytest.raises(FileNotFoundError):
        folders.folder_source(str(tmp_path), annotations="nope.csv")
    with pytest.raises(FileNotFoundError):
        folders.folder_source(str(tmp_path / "nope"))


def test_wrapper_folder_is_looked_through(tmp_path):
    write_image(str(tmp_path / "dl" / "archive" / "train" / "happy" / "1.png"), gray(1, 8, 8))
    write_image(str(tmp_path / "dl" / "archive" / "test" / "sad" / "2.png"), gray(2, 8, 8))
    source = folders.folder_source(str(tmp_path / "dl"))
    assert [(i.image_id, i.split) for i in source.items] == [
        ("archive/train/happy/1.png", "train"),
        ("archive/test/sad/2.png", "test"),
    ]
    write_image(str(tmp_path / "other" / "bored" / "3.png"), gray(3, 8, 8))
    lone_class = folders.folder_source(str(tmp_path / "other"))  # a lone class folder is no wrapper
    assert list(lone_class.class_names) == ["bored"] and len(lone_class.items) == 1


def test_crop_box_clamps_and_rejects():
    image = np.arange(100, dtype=np.uint8).reshape(10, 10, 1)
    np.testing.assert_array_equal(images.crop_box(image, (2, 3, 5, 7), "x"), image[3:7, 2:5])
    assert images.crop_box(image, (-5, -5, 4, 4), "x").shape[:2] == (4, 4)
    for box in [(5, 5, 5, 9), (6, 2, 3, 9), (20, 20, 30, 30)]:
        with pytest.raises(Skip):
            images.crop_box(image, box, "x")


def _read_split(out_dir, split):
    info = schema.read_dataset_info(str(out_dir))
    files = sorted(tf.io.gfile.glob(schema.shard_pattern(str(out_dir), split)))
    records = [schema.parse_example(r, info) for r in tf.data.TFRecordDataset(files)]
    return info, {r["id"].numpy().decode(): r for r in records}


def test_convert_round_trip(messy_root, tmp_path):
    source = folders.folder_source(messy_root)
    writer.convert(source, str(tmp_path / "out"), progress=False)
    info, train = _read_split(tmp_path / "out", "train")
    assert info["class_names"] == ["angry", "happy", "surprise", "bored"]
    assert info["image_shape"] == [48, 48, 1]
    assert info["splits"]["train"]["num_examples"] == 9
    assert info["splits"]["train"]["class_counts"] == {"angry": 3, "happy": 4, "surprise": 1, "bored": 1}
    assert info["splits"]["val"]["class_counts"]["angry"] == 1
    assert info["splits"]["test"]["class_counts"]["happy"] == 1
    skipped = info["skipped"]
    for reason, n in {"not_an_image": 1, "empty_class": 1, "unlabeled_image": 1, "unknown_split": 1,
                      "empty_file": 1, "truncated_image": 1, "unreadable_image": 1}.items():  # fmt: skip
        assert skipped.get(reason) == n, (reason, skipped)
    record = train["Train/Happiness/h3_16bit.png"]
    assert int(record["label"]) == 1 and record["image"].shape == (48, 48, 1)
    assert int(tf.reduce_mean(tf.cast(record["image"], tf.float32)).numpy().round()) == 60
    assert json.dumps(info)  # details must be JSON-serialisable


def _fer2013_face(tmp_path):
    if not os.path.exists(FER2013_CSV):
        pytest.skip("shared FER2013 data not present")
    with gzip.open(FER2013_CSV, "rt") as f:
        next(f)
        pixels = next(f).split(",")[1]
    face = np.array(pixels.split(), np.uint8).reshape(48, 48)
    canvas = np.full((320, 320), 128, np.uint8)
    canvas[64:256, 64:256] = cv2.resize(face, (192, 192), interpolation=cv2.INTER_CUBIC)
    return canvas


def test_align_detects_face_or_skips(tmp_path):
    write_image(str(tmp_path / "train" / "happy" / "face.png"), _fer2013_face(tmp_path))
    write_image(str(tmp_path / "train" / "happy" / "blank.png"), gray(128, 320, 320))
    source = folders.folder_source(str(tmp_path), align=True, image_size=40)
    assert source.details["align"] is True
    results = decode_all(source)
    assert results["train/happy/blank.png"] == "no_face"
    assert results["train/happy/face.png"].image.shape == (40, 40, 1)
