"""Tests for data_tools/layouts.py: RAF-DB, ExpW, SFEW 2.0 and CK+ layouts as converter Sources."""

from __future__ import annotations

import collections
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import decode_all, write_image

from data_tools import layouts, writer
from fer_tf import schema


def gray(value, size=20):
    return np.full((size, size), value, np.uint8)


# ---------------------------------------------------------------- RAF-DB


@pytest.fixture
def rafdb_root(tmp_path):
    root = tmp_path / "raf-basic"
    lines = []
    for i in range(1, 15):  # codes cycle 1..7, twice: 2 train images per class
        lines.append(f"train_{i:05d}.jpg {(i - 1) % 7 + 1}")
    for i in range(1, 8):
        lines.append(f"test_{i:04d}.jpg {i}")
    lines += ["train_09999.jpg", "train_09998.jpg 9", "extra_0001.jpg 1", ""]
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines))
    for line in lines[:21]:
        name, code = line.split()
        stem = os.path.splitext(name)[0]
        if name == "train_00003.jpg":  # only the original image exists
            write_image(str(root / "Image" / "original" / name), gray(10 * int(code), 60))
        elif name != "test_0007.jpg":  # missing entirely
            write_image(str(root / "Image" / "aligned" / f"{stem}_aligned.jpg"), gray(10 * int(code), 100))
    return str(root)


def test_rafdb_labels_splits_and_files(rafdb_root):
    source = layouts.rafdb_source(rafdb_root)
    assert source.name == "rafdb"
    assert list(source.class_names) == list(schema.FER2013_CLASSES)
    assert dict(source.skipped) == {"bad_row": 1, "unknown_class": 1, "unknown_split": 1}
    assert source.first_skipped == ("bad_row", "list_patition_label.txt line 22")  # named by --strict
    by_id = {i.image_id: i for i in source.items}
    assert len(by_id) == 21
    # RAF-DB 1 = Surprise, 5 = Sadness, 6 = Anger, 7 = Neutral.
    assert source.class_names[by_id["train_00001.jpg"].label] == "surprise"
    assert source.class_names[by_id["test_0005.jpg"].label] == "sad"
    assert source.class_names[by_id["test_0006.jpg"].label] == "angry"
    assert source.class_names[by_id["train_00007.jpg"].label] == "neutral"
    assert collections.Counter(i.split for i in source.items) == {"train": 14, "test": 7}
    results = decode_all(source)
    assert results["test_0007.jpg"] == "missing_file"
    assert int(results["train_00003.jpg"].image.mean().round()) == 30  # from Image/original
    assert int(results["train_00005.jpg"].image.mean().round()) == 50
    assert results["train_00005.jpg"].image.shape == (48, 48, 1)


def test_rafdb_val_fraction_and_options(rafdb_root):
    source = layouts.rafdb_source(rafdb_root, val_fraction=0.5, seed=4, image_size=24, channels=3)
    counts = collections.Counter((i.split, i.label) for i in source.items)
    assert all(counts[("train", k)] == 1 and counts[("val", k)] == 1 for k in range(7))
    assert list(source.image_shape) == [24, 24, 3]
    with pytest.raises(ValueError, match="train/test split"):
        layouts.rafdb_source(rafdb_root, split=(0.7, 0.15, 0.15))
    with pytest.raises(FileNotFoundError):
        layouts.rafdb_source(os.path.dirname(rafdb_root) + "/missing")


# ---------------------------------------------------------------- ExpW


@pytest.fixture
def expw_root(tmp_path):
    root = tmp_path / "ExpW"
    lines = []
    for k in range(7):
        for j in range(10):
            name = f"{schema.FER2013_CLASSES[k]}_{j}.jpg"
            image = np.zeros((120, 160), np.uint8)
            image[30:70, 40:100] = 30 * k + 20  # the face box: top 30, left 40, right 100, bottom 70
            write_image(str(root / "image" / "origin" / name), image)
            lines.append(f"{name} 0 30 40 100 70 {0.5 + j / 20:.2f} {k}")
    lines += [
        "happy_0.jpg 1 60 150 200 110 0.9 3",  # box partly outside the image: clamped
        "happy_1.jpg 1 50 90 40 100 0.9 3",  # right < left
        "happy_2.jpg 1 500 500 600 600 0.9 3",  # outside the image
        "happy_3.jpg 1 30 40 100",  # too few fields
        "happy_4.jpg 1 30 40 100 70 0.9 8",  # no such label
    ]
    (root / "label").mkdir()
    (root / "label" / "label.lst").write_text("\n".join(lines) + "\n")
    return str(root)


def test_expw_boxes_labels_and_split(expw_root):
    source = layouts.expw_source(expw_root, seed=0)
    assert list(source.class_names) == list(schema.FER2013_CLASSES)
    assert dict(source.skipped) == {"bad_row": 1, "unknown_class": 1}
    counts = collections.Counter((i.split, source.class_names[i.label]) for i in source.items)
    assert (
        counts[("train", "angry")] == 8 and counts[("val", "angry")] == 1 and counts[("test", "angry")] == 1
    )
    assert counts[("train", "happy")] + counts[("val", "happy")] + counts[("test", "happy")] == 13
    results = decode_all(source)
    assert results["happy_1.jpg#1"] == "bad_box" and results["happy_2.jpg#1"] == "bad_box"
    for k, name in enumerate(schema.FER2013_CLASSES):
        record = results[f"{name}_4.jpg#0"]
        assert (
            record.label == k and abs(int(record.image.mean()) - (30 * k + 20)) <= 1
        )  # the box, nothing else
    assert results["happy_0.jpg#1"].image.shape == (48, 48, 1)  # clamped crop
    other = layouts.expw_source(expw_root, seed=1)
    assert {i.image_id: i.split for i in other.items} != {i.image_id: i.split for i in source.items}
    confident = layouts.expw_source(expw_root, min_confidence=0.9)
    assert confident.skipped["low_confidence"] == 7 * 8


def test_expw_rows_with_nan_or_inf_boxes_are_bad_rows(expw_root):
    label_file = os.path.join(expw_root, "label", "label.lst")
    with open(label_file, "a") as f:
        f.write("happy_5.jpg 1 nan 40 100 70 0.9 3\nhappy_6.jpg 1 30 inf 100 70 0.9 3\n")
    source = layouts.expw_source(expw_root, seed=0)
    assert dict(source.skipped) == {"bad_row": 3, "unknown_class": 1}
    assert not any(i.image_id.startswith(("happy_5.jpg#1", "happy_6.jpg#1")) for i in source.items)


def test_expw_missing_parts(tmp_path):
    with pytest.raises(FileNotFoundError, match="label.lst"):
        layouts.expw_source(str(tmp_path))
    (tmp_path / "label").mkdir()
    (tmp_path / "label" / "label.lst").write_text("a.jpg 0 1 1 5 5 0.9 3\n")
    with pytest.raises(FileNotFoundError, match="image"):
        layouts.expw_source(str(tmp_path))


# ---------------------------------------------------------------- SFEW 2.0


def test_sfew_labels_csv(tmp_path):
    root = tmp_path / "SFEW2.0"
    rows = ["image,label,usage"]
    for i in range(14):
        write_image(str(root / "sfew2.0_images" / f"image_{i:06d}.png"), gray(i * 10))
        rows.append(f"image_{i:06d}.png,{i % 7},{'Train' if i < 7 else 'Val'}")
    rows.append("image_000099.png,Angry,Train")  # listed, missing on disk
    (root / "sfew_2.0_labels.csv").write_text("\n".join(rows))
    source = layouts.sfew_source(str(root))
    assert source.name == "sfew" and source.details["layout"] == "annotations"
    assert list(source.class_names) == list(schema.FER2013_CLASSES)
    assert collections.Counter(i.split for i in source.items) == {"train": 8, "val": 7}
    results = decode_all(source)
    assert results["image_000099.png"] == "missing_file"
    assert results["image_000009.png"].label == 2 and int(results["image_000009.png"].image.mean()) == 90


def test_sfew_folder_fallback(tmp_path):
    root = tmp_path / "SFEW2.0"
    for split in ("Train", "Val"):
        for k, name in enumerate(["Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"]):
            write_image(str(root / split / f"{split}_Aligned_Faces" / name / f"{k}.png"), gray(k))
    source = layouts.sfew_source(str(root), image_size=32)
    assert source.name == "sfew" and source.details["layout"] == "split_folders"
    assert list(source.class_names) == list(schema.FER2013_CLASSES)
    assert collections.Counter(i.split for i in source.items) == {"train": 7, "val": 7}


# ---------------------------------------------------------------- CK+


@pytest.fixture
def ckplus_root(tmp_path):
    root = tmp_path / "CKPlus"
    names = ["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"]
    for s in range(20):
        for k in (s % 7, (s + 3) % 7):  # two sequences per subject, three frames each
            for frame in range(3):
                file = f"S{s + 10:03d}_{k + 1:03d}_{frame:08d}.png"
                write_image(str(root / "CK+48" / names[k] / file), gray(k * 30, 48))
    return str(root)


def test_ckplus_folders_keep_subjects_in_one_split(ckplus_root):
    source = layouts.ckplus_source(ckplus_root, seed=2)
    assert source.name == "ckplus"
    assert list(source.class_names) == ["angry", "disgust", "fear", "happy", "sad", "surprise", "contempt"]
    assert len(source.items) == 120
    splits_of = collections.defaultdict(set)
    for item in source.items:
        splits_of[os.path.basename(item.image_id)[:4]].add(item.split)
    assert len(splits_of) == 20 and all(len(s) == 1 for s in splits_of.values())
    counts = collections.Counter(i.split for i in source.items)
    assert 84 <= counts["train"] <= 108 and counts["val"] >= 6 and counts["test"] >= 6
    assert source.details["group_pattern"] == layouts.CKPLUS_SUBJECT
    results = decode_all(source)
    contempt = next(i for i in source.items if i.image_id.startswith("contempt/"))
    assert results[contempt.image_id].label == 6 and int(results[contempt.image_id].image.mean()) == 30


def test_ckplus_labels_csv_groups_subjects(tmp_path, monkeypatch):
    root = tmp_path / "CKPlus"
    rows = ["path,emotion"]
    for s in range(10):
        for frame in range(3):
            file = f"S{s:03d}_001_{frame:08d}.png"
            write_image(str(root / "ckplus_images" / file), gray(s))
            rows.append(f"{file},{'happy' if s % 2 else 'contempt'}")
    (root / "ckplus_labels.csv").write_text("\n".join(rows) + "\n")
    monkeypatch.chdir(tmp_path)  # a relative root, as users type it
    source = layouts.ckplus_source("CKPlus", split=(0.6, 0.2, 0.2))
    assert list(source.class_names) == ["happy", "contempt"]
    subject_splits = collections.defaultdict(set)
    for item in source.items:
        subject_splits[item.image_id[:4]].add(item.split)
    assert all(len(s) == 1 for s in subject_splits.values())
    assert collections.Counter(i.split for i in source.items) == {"train": 18, "val": 6, "test": 6}
    assert int(decode_all(source)["S007_001_00000002.png"].image.mean()) == 7


def test_expw_convert_round_trip(expw_root, tmp_path):
    source = layouts.expw_source(expw_root, image_size=16)
    out = str(tmp_path / "out")
    writer.convert(source, out, progress=False)
    info = schema.read_dataset_info(out)
    assert info["class_names"] == list(schema.FER2013_CLASSES) and info["image_shape"] == [16, 16, 1]
    total = sum(info["splits"][s]["num_examples"] for s in info["splits"])
    assert total == 71  # 70 boxes + the clamped one; two bad boxes skipped at decode
    assert info["skipped"]["bad_box"] == 2 and info["skipped"]["bad_row"] == 1
    assert info["splits"]["val"]["class_counts"]["angry"] == 1
    files = tf.io.gfile.glob(schema.shard_pattern(out, "train"))
    for serialized in tf.data.TFRecordDataset(files).take(10):
        record = schema.parse_example(serialized, info)
        k = int(record["label"])
        mean = float(tf.reduce_mean(tf.cast(record["image"], tf.float32)))
        if not record["id"].numpy().startswith(b"happy_0.jpg#1"):
            assert abs(mean - (30 * k + 20)) <= 1.0
