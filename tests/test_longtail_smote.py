"""Tests for the derived training sets: data_tools/longtail.py and data_tools/smote.py."""

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_records

from data_tools import derive, longtail, smote
from data_tools.writer import Record
from fer_tf import schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("a", "b", "c", "d")
TRAIN_COUNTS = (40, 20, 30, 12)


def _class_images(label, n, rng):
    # Class-specific brightness plus noise: SMOTE output must stay inside each class's pixel range.
    base = 40 + 50 * label
    return np.clip(base + rng.normal(0, 12, (n, 12, 12, 1)), 0, 255).astype(np.uint8)


def _write_dataset(root, counts_by_split, seed=0):
    rng = np.random.default_rng(seed)
    records = {
        split: [
            Record(split=split, image_id=f"{split}/{k}/{i}", image=image, label=k)
            for k, n in enumerate(counts)
            for i, image in enumerate(_class_images(k, n, rng))
        ]
        for split, counts in counts_by_split.items()
    }
    return write_records(root, records, CLASSES, num_shards=2, skipped={"bad_pixels": 1})


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    root = tmp_path_factory.mktemp("parent") / "data"
    return _write_dataset(root, {"train": TRAIN_COUNTS, "val": (5, 3, 4, 2), "test": (6, 2, 3, 4)})


def _eval_shards(data_dir):
    return {
        os.path.basename(p): open(p, "rb").read()
        for split in ("val", "test")
        for p in derive.split_files(data_dir, split)
    }


def _assert_eval_splits_untouched(parent_dir, child_dir, info):
    parent_info = schema.read_dataset_info(parent_dir)
    assert _eval_shards(child_dir) == _eval_shards(parent_dir)
    assert len(_eval_shards(child_dir)) == 4  # 2 shards each of val and test
    for split in ("val", "test"):
        assert info["splits"][split] == parent_info["splits"][split]


def test_longtail_counts_formula():
    # FER2013 train counts; ranks by count: happy 0, neutral 1, sad 2, fear 3, angry 4, surprise 5, disgust 6.
    counts = [3995, 436, 4097, 7215, 4830, 3171, 4965]
    ranks = [4, 6, 3, 0, 2, 5, 1]
    expected = [round(7215 * 50 ** (-r / 6)) for r in ranks]
    np.testing.assert_array_equal(longtail.longtail_counts(counts, 50), expected)
    assert longtail.longtail_counts(counts, 50).tolist() == [532, 144, 1020, 7215, 1958, 277, 3759]
    assert longtail.longtail_counts(counts, 1).tolist() == [3995, 436, 4097, 7215, 4830, 3171, 4965]


def test_longtail_counts_ties_and_clipping():
    # Ties go to the lower class index; a class never keeps more than it has.
    assert longtail.longtail_counts([10, 10, 3], 5).tolist() == [10, 4, 2]
    assert longtail.longtail_counts([100, 90, 5], 2).tolist() == [100, 71, 5]
    with pytest.raises(ValueError, match=">= 1"):
        longtail.longtail_counts([10, 5], 0.5)
    with pytest.raises(ValueError, match="two classes"):
        longtail.longtail_counts([10], 2)


def test_make_longtail(parent, tmp_path):
    output = tmp_path / "if4"
    info = longtail.make_longtail(parent, str(output), imbalance_factor=4, seed=3)
    # Ranks by count: a 0, c 1, b 2, d 3; n_i = round(40 * 4 ** (-rank / 3)), all below the counts.
    want = {"a": 40, "b": round(40 * 4 ** (-2 / 3)), "c": round(40 * 4 ** (-1 / 3)), "d": round(40 / 4)}
    assert want == {"a": 40, "b": 16, "c": 25, "d": 10}
    assert info["splits"]["train"]["class_counts"] == want
    assert info["splits"]["train"]["num_examples"] == 91
    assert info == schema.read_dataset_info(str(output))
    train = derive.read_split(str(output), "train")
    assert np.bincount(train.labels, minlength=4).tolist() == list(want.values())
    parent_train = derive.read_split(parent, "train")
    assert set(train.ids) <= set(parent_train.ids) and len(set(train.ids)) == len(train.ids)
    by_id = dict(zip(parent_train.ids, parent_train.images, strict=True))
    assert all(np.array_equal(by_id[i], im) for i, im in zip(train.ids, train.images, strict=True))
    assert info["source"]["imbalance_factor"] == 4.0
    assert info["source"]["achieved_imbalance_factor"] == 4.0 and info["source"]["short_of_target"] == {}
    assert longtail.shortfall(info["source"]) is None
    assert info["source"]["parent_dir"] == os.path.abspath(parent)
    assert info["source"]["parent_source"] == {"format": "test"}
    assert info["splits"]["train"]["num_synthetic"] == 0
    _assert_eval_splits_untouched(parent, str(output), info)
    assert sorted(os.listdir(tmp_path)) == ["if4"]  # no temp dirs left behind


def test_classes_short_of_their_target_are_reported_with_the_real_ratio(parent, tmp_path):
    # IF 2 targets a 40, c round(40 * 2^(-1/3)) = 32, b 25, d 20, but b, c and d have only 20, 30, 12.
    info = longtail.make_longtail(parent, str(tmp_path / "if2"), imbalance_factor=2)
    assert longtail.longtail_targets(TRAIN_COUNTS, 2).tolist() == [40, 25, 32, 20]
    assert info["splits"]["train"]["class_counts"] == {"a": 40, "b": 20, "c": 30, "d": 12}
    assert info["source"]["short_of_target"] == {"b": 25, "c": 32, "d": 20}
    assert info["source"]["achieved_imbalance_factor"] == round(40 / 12, 2) == 3.33
    line = "  real head/tail ratio 3.33: b (target 25), c (target 32), d (target 20) kept all it had\n"
    assert longtail.shortfall(info["source"]) == line


def test_make_longtail_steep_factor_is_seeded(parent, tmp_path):
    info = longtail.make_longtail(parent, str(tmp_path / "s0"), imbalance_factor=10, seed=0)
    # a 40, c round(40 * 10^(-1/3)) = 19, b round(40 * 10^(-2/3)) = 9, d 40 / 10 = 4.
    assert info["splits"]["train"]["class_counts"] == {"a": 40, "b": 9, "c": 19, "d": 4}
    again = longtail.make_longtail(parent, str(tmp_path / "s0b"), imbalance_factor=10, seed=0)
    longtail.make_longtail(parent, str(tmp_path / "s1"), imbalance_factor=10, seed=1)
    assert again["splits"] == info["splits"]
    ids = {name: set(derive.read_split(str(tmp_path / name), "train").ids) for name in ("s0", "s0b", "s1")}
    assert ids["s0"] == ids["s0b"] and ids["s0"] != ids["s1"]


def test_existing_output_is_refused_then_replaced(parent, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "old.txt").write_text("x")
    with pytest.raises(FileExistsError):
        longtail.make_longtail(parent, str(output), imbalance_factor=2)
    # --overwrite replaces a dataset, never a folder of other files.
    with pytest.raises(ValueError, match="holds no dataset_info.json; refusing to replace it"):
        longtail.make_longtail(parent, str(output), imbalance_factor=2, overwrite=True)
    assert os.listdir(output) == ["old.txt"]
    (output / "old.txt").unlink()
    longtail.make_longtail(parent, str(output), imbalance_factor=2, overwrite=True)  # empty: replaceable
    (output / "validation").mkdir()  # data_tools.validate's reports: stale once the data changes
    (output / "validation" / "anomalies.txt").write_text("a report on the old data")
    (output / "README.md").write_text("the user's notes")  # kept
    longtail.make_longtail(parent, str(output), imbalance_factor=3, overwrite=True)
    assert "validation" not in os.listdir(output) and schema.INFO_FILE in os.listdir(output)
    assert (output / "README.md").read_text() == "the user's notes"
    assert schema.read_dataset_info(str(output))["source"]["imbalance_factor"] == 3
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_smote_targets_met_and_flagged(parent, tmp_path):
    output = str(tmp_path / "smote")
    info = smote.apply_smote(parent, output, {"b": 30, "d": 25}, k_neighbors=3, seed=0)
    assert info["splits"]["train"]["class_counts"] == {"a": 40, "b": 30, "c": 30, "d": 25}
    assert info["splits"]["train"]["num_synthetic"] == 10 + 13
    assert info["source"]["targets"] == {"b": 30, "d": 25} and info["source"]["k_neighbors"] == 3
    train = derive.read_split(output, "train")
    synthetic_ids = sorted(train.ids[train.synthetic])
    assert synthetic_ids == sorted([f"smote/b/{i}" for i in range(10)] + [f"smote/d/{i}" for i in range(13)])
    parent_train = derive.read_split(parent, "train")
    originals = dict(zip(parent_train.ids, parent_train.images, strict=True))
    kept = {i: im for i, im, s in zip(train.ids, train.images, train.synthetic, strict=True) if not s}
    assert kept.keys() == originals.keys()
    assert all(np.array_equal(originals[i], im) for i, im in kept.items())
    for k in (1, 3):
        # Interpolations between same-class images stay inside the class's per-pixel range.
        members = parent_train.images[parent_train.labels == k].astype(int)
        made = train.images[train.synthetic & (train.labels == k)].astype(int)
        assert len(made) > 0
        assert np.all(made >= members.min(axis=0) - 1) and np.all(made <= members.max(axis=0) + 1)
    _assert_eval_splits_untouched(parent, output, info)
    assert info["splits"]["val"]["num_synthetic"] == 0 and info["splits"]["test"]["num_synthetic"] == 0


def test_smote_balance_reads_only_train(parent, tmp_path, monkeypatch):
    read = []
    original = derive.read_split

    def spy(data_dir, split, info=None):
        read.append(split)
        return original(data_dir, split, info)

    monkeypatch.setattr(derive, "read_split", spy)
    info = smote.apply_smote(parent, str(tmp_path / "bal"), "balance", seed=1)
    assert read == ["train"]  # val/test are never decoded, only copied as bytes
    assert set(info["splits"]["train"]["class_counts"].values()) == {40}
    assert info["splits"]["train"]["num_synthetic"] == 4 * 40 - sum(TRAIN_COUNTS)
    _assert_eval_splits_untouched(parent, str(tmp_path / "bal"), info)


def test_smote_targets_parsing_and_errors():
    assert smote.parse_targets("disgust:2000, Surprise:4000") == {"disgust": 2000, "surprise": 4000}
    assert smote.parse_targets("balance") == "balance"
    with pytest.raises(ValueError, match="class:count"):
        smote.parse_targets("disgust=2000")
    counts = {"a": 40, "b": 10, "c": 20, "d": 8}
    assert smote.resolve_targets(counts, "median") == {"b": 15, "d": 15}
    assert smote.resolve_targets(counts, {"a": 40, "b": 12}) == {"b": 12}
    with pytest.raises(ValueError, match="only adds"):
        smote.resolve_targets(counts, {"a": 30})
    with pytest.raises(ValueError, match="unknown class"):
        smote.resolve_targets(counts, {"zz": 50})


def test_cli(parent, tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    output = tmp_path / "cli"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_tools.longtail",
            f"--data={parent}",
            f"--output={output}",
            "--imbalance_factor=4",
            "--num_shards=1",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "train 91 images" in done.stdout
    assert [os.path.basename(p) for p in derive.split_files(str(output), "train")] == [
        "train-00000-of-00001.tfrecord"
    ]
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_tools.smote",
            f"--data={tmp_path / 'nope'}",
            f"--output={tmp_path / 'x'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr and "nope" in missing.stderr.strip().splitlines()[-1]
