"""Tests of data_tools/writer.py: round trip, counts, determinism, atomicity, skips, strict."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from data_tools import writer
from data_tools.writer import ConversionError, Record, Skip, Source
from fer_tf import schema

CLASSES = ("a", "b", "c")
SHAPE = (4, 5, 1)


def _image(value: int) -> np.ndarray:
    return np.full(SHAPE, value % 256, np.uint8)


def decode_item(item: tuple) -> Record:
    """Toy decode (module level, so Beam can pickle it): (split, id, label, value[, what])."""
    split, image_id, label, value, *what = item
    if what == ["bad"]:
        raise Skip("bad_value", f"{image_id}: marked bad")
    if what == ["boom"]:
        raise RuntimeError(f"{image_id}: unexpected decoder bug")
    soft = tuple(np.eye(len(CLASSES))[label] * 0.5 + 0.5 / len(CLASSES)) if what == ["soft"] else None
    return Record(split, image_id, _image(value), label, soft_label=soft, synthetic=what == ["synthetic"])


def _items(n_train=10, n_val=4, n_test=2):
    items = [("train", f"t{i:02d}", i % 3, i) for i in range(n_train)]
    items += [("val", f"v{i:02d}", i % 2, 100 + i) for i in range(n_val)]
    items += [("test", f"x{i:02d}", 2, 200 + i) for i in range(n_test)]
    return items


def _source(items, **kw) -> Source:
    return Source("toy", items, decode_item, CLASSES, SHAPE, **kw)


def _read(data_dir: str, split: str) -> list[dict]:
    info = schema.read_dataset_info(data_dir)
    files = sorted(glob.glob(schema.shard_pattern(data_dir, split)))
    ds = tf.data.TFRecordDataset(files).map(lambda s: schema.parse_example(s, info))
    return [{k: v.numpy() for k, v in ex.items()} for ex in ds]


def _shard_bytes(data_dir: str) -> dict[str, bytes]:
    paths = sorted(glob.glob(os.path.join(data_dir, "*.tfrecord")))
    return {os.path.basename(p): open(p, "rb").read() for p in paths}


def _siblings(path) -> list[str]:
    return sorted(os.listdir(os.path.dirname(path)))


def test_round_trip_counts_and_shards(tmp_path):
    items = _items() + [("train", "t98", 0, 7, "soft"), ("train", "t99", 1, 9, "synthetic")]
    items += [("train", "bad1", 0, 0, "bad"), ("val", "bad2", 0, 0, "bad")]
    out = str(tmp_path / "ds")
    info = writer.convert(
        _source(items, skipped={"unknown_class": 2}), out, examples_per_shard=3, progress=False
    )

    assert info == schema.read_dataset_info(out)
    assert info["skipped"] == {"bad_value": 2, "unknown_class": 2}
    assert info["splits"]["train"] == {
        "num_examples": 12,
        "class_counts": {"a": 5, "b": 4, "c": 3},
        "num_shards": 4,
        "num_synthetic": 1,
    }
    assert (
        info["splits"]["val"]["class_counts"] == {"a": 2, "b": 2, "c": 0}
        and info["splits"]["val"]["num_shards"] == 2
    )
    assert info["splits"]["test"] == {
        "num_examples": 2,
        "class_counts": {"a": 0, "b": 0, "c": 2},
        "num_shards": 1,
        "num_synthetic": 0,
    }
    assert (
        info["image_shape"] == list(SHAPE) and info["encoding"] == "raw" and info["source"]["format"] == "toy"
    )
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(out, "*.tfrecord")))
    expected = [schema.shard_name("test", 0, 1)] + [schema.shard_name("train", i, 4) for i in range(4)]
    assert names == expected + [schema.shard_name("val", i, 2) for i in range(2)]

    train = {ex["id"].decode(): ex for ex in _read(out, "train")}
    assert len(train) == 12
    for split in ("train", "val", "test"):  # what was counted is what was written
        labels = [ex["label"] for ex in _read(out, split)]
        assert np.bincount(labels, minlength=3).tolist() == list(
            info["splits"][split]["class_counts"].values()
        )
    assert (
        train["t05"]["image"].shape == SHAPE
        and (train["t05"]["image"] == 5).all()
        and train["t05"]["label"] == 2
    )
    np.testing.assert_allclose(train["t98"]["soft_label"], [2 / 3, 1 / 6, 1 / 6], rtol=1e-6)
    np.testing.assert_array_equal(train["t00"]["soft_label"], [1, 0, 0])  # one-hot without votes
    assert train["t99"]["synthetic"] == 1 and train["t00"]["synthetic"] == 0
    assert _siblings(out) == ["ds"]  # no temp dirs, chunks or summary left
    assert sorted(os.listdir(out)) == ["dataset_info.json"] + names


def test_same_input_gives_identical_shards_in_any_item_order(tmp_path):
    items = _items(n_train=25)
    first = writer.convert(_source(items), str(tmp_path / "a"), examples_per_shard=7, progress=False)
    second = writer.convert(_source(items[::-1]), str(tmp_path / "b"), examples_per_shard=7, progress=False)
    assert first == second
    a, b = _shard_bytes(str(tmp_path / "a")), _shard_bytes(str(tmp_path / "b"))
    assert list(a) == list(b) and len(a) == 4 + 1 + 1
    assert a == b


def test_shards_left_empty_by_the_hash_still_exist(tmp_path):
    # Three ids that hash to the same one of three shards.
    ids = [f"id{i}" for i in range(200) if writer._shard_index(f"id{i}", 3) == 0][:3]
    items = [("train", image_id, 0, 1) for image_id in ids]
    info = writer.convert(_source(items), str(tmp_path / "ds"), examples_per_shard=1, progress=False)
    assert info["splits"]["train"]["num_shards"] == 3
    sizes = [os.path.getsize(tmp_path / "ds" / schema.shard_name("train", i, 3)) for i in range(3)]
    assert sizes[0] > 0 and sizes[1:] == [0, 0]
    assert len(_read(str(tmp_path / "ds"), "train")) == 3


def test_rerun_replaces_and_failure_keeps_old_output(tmp_path):
    out = str(tmp_path / "ds")
    writer.convert(_source(_items(n_train=3)), out, progress=False)
    info = writer.convert(_source(_items(n_train=6)), out, progress=False)  # replaces the first
    assert info["splits"]["train"]["num_examples"] == 6 and len(_read(out, "train")) == 6
    before = _shard_bytes(out) | {"info": open(os.path.join(out, schema.INFO_FILE), "rb").read()}

    broken = _items(n_train=1500) + [("train", "t_boom", 0, 1, "boom")]  # fails in a later chunk
    with pytest.raises(Exception, match="unexpected decoder bug"):
        writer.convert(_source(broken), out, progress=False)
    assert _shard_bytes(out) | {"info": open(os.path.join(out, schema.INFO_FILE), "rb").read()} == before
    assert _siblings(out) == ["ds"]


def test_rerun_keeps_user_files_and_drops_stale_validation_reports(tmp_path, capsys):
    out = tmp_path / "ds"
    writer.convert(_source(_items(n_train=3)), str(out), examples_per_shard=1, progress=False)  # 3 shards
    (out / "README.md").write_text("where this data came from")
    (out / "notes").mkdir()
    (out / "notes" / "labels.txt").write_text("relabelled 3 faces")
    (out / "validation").mkdir()
    (out / "validation" / "anomalies.txt").write_text("no anomalies")
    capsys.readouterr()
    writer.convert(_source(_items(n_train=3)), str(out), progress=False)  # 1 train shard now
    assert sorted(os.listdir(out)) == sorted(
        [
            "README.md",
            "notes",
            schema.INFO_FILE,
            *(schema.shard_name(s, 0, 1) for s in ("train", "val", "test")),
        ]
    )  # the old 3-shard train files are not carried over
    assert (out / "notes" / "labels.txt").read_text() == "relabelled 3 faces"
    assert f"note: dropped validation/ of the replaced {out}: " in capsys.readouterr().out
    assert _siblings(str(out)) == ["ds"]


def test_strict_names_the_first_bad_input(tmp_path):
    items = _items() + [("train", "bad_b", 0, 0, "bad"), ("val", "bad_a", 0, 0, "bad")]
    with pytest.raises(ConversionError, match=r"bad_b: marked bad \[bad_value\].*2 bad inputs"):
        writer.convert(_source(items), str(tmp_path / "ds"), strict=True, progress=False)
    with pytest.raises(ConversionError, match="unknown_class=1"):
        writer.convert(
            _source(_items(), skipped={"unknown_class": 1}), str(tmp_path / "ds"), strict=True, progress=False
        )
    skips = writer.Skips()
    skips.add("not_an_image", [])  # nothing skipped: no first
    skips.add("not_an_image", ["a/notes.txt", "b/x.txt"])
    skips.add("unknown_class", ["c/1.png"])
    assert dict(skips) == {"not_an_image": 2, "unknown_class": 1}
    assert skips.copy().first == ("not_an_image", "a/notes.txt")
    listed = _source(_items(), skipped=dict(skips), first_skipped=skips.first)
    with pytest.raises(ConversionError) as error:
        writer.convert(listed, str(tmp_path / "ds"), strict=True, progress=False)
    assert str(error.value) == (
        "toy: a/notes.txt [not_an_image] (strict mode; found while listing: not_an_image=2, unknown_class=1)"
    )
    assert os.listdir(tmp_path) == []


def test_nothing_to_convert_and_refusing_a_foreign_directory(tmp_path, capsys):
    with pytest.raises(ConversionError, match="nothing to convert"):
        writer.convert(_source([]), str(tmp_path / "ds"), progress=False)
    with pytest.raises(ConversionError, match="all 2 inputs were skipped"):
        writer.convert(_source([("train", "a", 0, 0, "bad")] * 2), str(tmp_path / "ds"), progress=False)
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ConversionError, match="refusing to replace"):
        writer.convert(_source(_items()), str(foreign), progress=False)
    assert os.listdir(foreign) == ["notes.txt"]
    assert sorted(os.listdir(tmp_path)) == ["home"]


def test_records_the_writer_cannot_store_are_skipped():
    with pytest.raises(Skip, match="wrong_image_shape"):
        writer._check_record(Record("train", "x", np.zeros((4, 4, 1), np.uint8), 0), SHAPE, 3)
    with pytest.raises(Skip, match="label_out_of_range"):
        writer._check_record(Record("train", "x", _image(0), 3), SHAPE, 3)
    with pytest.raises(Skip, match="unknown_split"):
        writer._check_record(Record("dev", "x", _image(0), 0), SHAPE, 3)
    with pytest.raises(Skip, match="wrong_soft_label_length"):
        writer._check_record(Record("train", "x", _image(0), 0, soft_label=(1.0,)), SHAPE, 3)
    skip = Skip("bad_value", "row 3: why")
    assert str(skip) == "row 3: why [bad_value]" and (skip.reason, skip.detail) == ("bad_value", "row 3: why")


@pytest.mark.parametrize("encoding", ["raw", "png"])
def test_write_shards_round_trip_and_replaces_stale_shards(tmp_path, encoding):
    out = str(tmp_path)
    records = [decode_item(item) for item in _items(n_train=9, n_val=0, n_test=0)]
    assert writer.write_shards(records[:5], out, "train", 3, encoding) == {0: 2, 1: 2, 2: 1}
    counts = writer.write_shards(records, out, "train", 2, encoding)
    assert counts == {0: 3, 1: 3, 2: 3}
    assert sorted(os.listdir(out)) == [schema.shard_name("train", i, 2) for i in range(2)]  # of-00003 gone
    info = {"class_names": CLASSES, "image_shape": SHAPE, "encoding": encoding}
    files = sorted(glob.glob(schema.shard_pattern(out, "train")))
    got = [schema.parse_example(s, info) for s in tf.data.TFRecordDataset(files)]
    assert sorted(ex["id"].numpy().decode() for ex in got) == [f"t{i:02d}" for i in range(9)]
    for ex in got:
        value = int(ex["id"].numpy().decode()[1:])
        assert (ex["image"].numpy() == value).all() and ex["label"].numpy() == value % 3
    first = _shard_bytes(out)
    writer.write_shards(records[::-1], out, "train", 2, encoding)
    assert _shard_bytes(out) == first  # deterministic whatever the input order
    with pytest.raises(ValueError, match="split 'train' given to write_shards"):
        writer.write_shards(records, out, "val", 1, encoding)
    assert sorted(os.listdir(out)) == [schema.shard_name("train", i, 2) for i in range(2)]
