"""Tests for data_tools/dedup.py and data_tools/validate.py on planted duplicates and drift.

The planted dataset (see `_planted`) has, with labels chosen so the counts are known:
  exact twins   train t0=dupA; train t1=dup1a=dup1b (one other label); train t2=val vx2;
                train t3=val vx3 (other label); train c0=val vc0 (black, other label);
                val v0=test sv0
  near twins    train t4~val vn4, train t5~test sn5 (other label), +-2 grey-level noise;
                black c0 ~ mid-grey c128 (flat images hash alike)
  constant      train c0 (0), c128 (128); val vc0 (0)
  labels        train uniform, val almost all "happy" (drift), test close to train.
"""

import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import write_records
from PIL import Image

from data_tools import dedup, derive, validate
from data_tools.writer import Record
from fer_tf import schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = schema.FER2013_CLASSES


def _smooth(rng, n):
    # Low-frequency random images: like faces, their pHash is stable under small noise.
    return (
        np.stack(
            [
                cv2.resize(
                    rng.uniform(0, 255, (6, 6)).astype(np.float32), (48, 48), interpolation=cv2.INTER_CUBIC
                )
                for _ in range(n)
            ]
        )
        .clip(0, 255)
        .astype(np.uint8)[..., None]
    )


def _noisy(image, rng):
    noise = rng.integers(-2, 3, image.shape)
    noise.flat[0] = 2 if image.flat[0] < 250 else -2  # never an exact copy
    return np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)


def _planted(seed=0):
    """{split: (images, labels, ids)} as described in the module docstring."""
    rng = np.random.default_rng(seed)
    t, v, s = _smooth(rng, 70), _smooth(rng, 30), _smooth(rng, 35)
    black, grey = np.zeros((48, 48, 1), np.uint8), np.full((48, 48, 1), 128, np.uint8)
    train = [(t[i], i % 7, f"t{i}") for i in range(70)] + [
        (t[0], 0, "dupA"),
        (t[1], 1, "dup1a"),
        (t[1], 4, "dup1b"),
        (black, 0, "c0"),
        (grey, 1, "c128"),
    ]
    val = [(v[i], 3, f"v{i}") for i in range(30)] + [
        (t[2], 2, "vx2"),
        (t[3], 5, "vx3"),
        (_noisy(t[4], rng), 4, "vn4"),
        (black, 3, "vc0"),
    ]
    test = [(s[i], i % 7, f"s{i}") for i in range(35)] + [(v[0], 3, "sv0"), (_noisy(t[5], rng), 6, "sn5")]
    return {
        split: (
            np.stack([r[0] for r in rows]),
            np.array([r[1] for r in rows]),
            np.array([r[2] for r in rows]),
        )
        for split, rows in (("train", train), ("val", val), ("test", test))
    }


def _concat(planted):
    images = np.concatenate([p[0] for p in planted.values()])
    labels = np.concatenate([p[1] for p in planted.values()])
    ids = np.concatenate([p[2] for p in planted.values()])
    splits = np.concatenate([np.full(len(p[1]), split) for split, p in planted.items()])
    return images, labels, splits, ids


EXPECTED_EXACT = {
    "num_groups": 6,
    "num_images": 13,
    "num_redundant": 7,
    "num_cross_split_groups": 4,
    "num_conflicting_label_groups": 3,
    "num_conflicting_label_images": 7,
}
EXPECTED_NEAR = {
    "num_groups": 8,
    "num_images": 18,
    "num_redundant": 10,
    "num_cross_split_groups": 6,
    "num_conflicting_label_groups": 4,
    "num_conflicting_label_images": 10,
}
EXPECTED_LEAKAGE = {
    "exact": {
        "val": {"num_images": 34, "with_twin": 3, "with_conflicting_twin": 2},
        "test": {"num_images": 37, "with_twin": 0, "with_conflicting_twin": 0},
    },
    "near": {
        "val": {"num_images": 34, "with_twin": 4, "with_conflicting_twin": 2},
        "test": {"num_images": 37, "with_twin": 1, "with_conflicting_twin": 1},
    },
}


def test_phash_exact_near_and_flat_images():
    rng = np.random.default_rng(1)
    images = _smooth(rng, 20)
    noisy = np.stack([_noisy(im, rng) for im in images])
    h, hn = dedup.phash(images), dedup.phash(noisy)
    assert h.dtype == np.uint64 and len(set(h.tolist())) == 20
    assert dedup.hamming(h, hn).max() <= 4
    i, j = np.triu_indices(20, k=1)
    assert dedup.hamming(h[i], h[j]).min() > 8  # unrelated images are far apart
    flat = dedup.phash(np.stack([np.full((48, 48, 1), g, np.uint8) for g in (0, 17, 128, 255)]))
    assert flat.tolist() == [0, 1 << 63, 1 << 63, 1 << 63]  # only the DC bit, never rounding noise
    rgb = np.repeat(images, 3, axis=-1)
    assert dedup.hamming(dedup.phash(rgb), h).max() <= 2


def _same_partition(a, b) -> bool:
    """Whether two component labelings group the nodes alike."""
    return len(set(zip(a.tolist(), b.tolist(), strict=True))) == len(set(a.tolist())) == len(set(b.tolist()))


def test_near_graph_groups_like_brute_force():
    rng = np.random.default_rng(2)
    hashes = rng.integers(0, 2**63, 1500, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    # Plant close relatives (flip 0..6 random bits of some hashes) and exact repeats.
    planted = []
    for flips in range(7):
        for base in rng.choice(1500, 10, replace=False):
            bits = rng.choice(64, flips, replace=False)
            planted.append(hashes[base] ^ np.uint64(sum(1 << int(b) for b in bits)))
    hashes = np.concatenate([hashes, np.array(planted, np.uint64), hashes[rng.choice(1500, 20)]])
    i, j = np.triu_indices(len(hashes), k=1)
    distances = dedup.hamming(hashes[i], hashes[j])
    for t in (0, 2, 4, 6):
        close = distances <= t
        expected = dedup.components(len(hashes), np.stack([i[close], j[close]], axis=1))
        edges = dedup.near_graph(hashes, t)
        assert _same_partition(dedup.components(len(hashes), edges), expected), t
        assert dedup.hamming(hashes[edges[:, 0]], hashes[edges[:, 1]]).max() <= t
        assert len(set(expected.tolist())) < len(hashes) - 10 * (t + 1)  # the plants were found


def test_near_graph_links_a_pile_of_equal_hashes_in_linear_memory():
    # 30,000 blank images hash alike: every pair would be 450M edges (3.6 GB of int64 per band).
    blank = np.uint64(1 << 63)
    hashes = np.concatenate([np.full(30_000, blank), [blank ^ np.uint64(0b111), np.uint64(0x5555)]])
    edges = dedup.near_graph(hashes, 4)
    assert len(edges) == 30_000  # 29,999 repeats linked to the first, and its 3-bit neighbour
    ids = dedup.components(len(hashes), edges)
    assert len(set(ids[:30_001].tolist())) == 1 and ids[-1] != ids[0]


def test_duplicate_report_counts():
    images, labels, splits, ids = _concat(_planted())
    report = dedup.duplicate_report(images, labels, splits, ids, CLASSES, max_distance=4)
    assert report["num_images"] == {"train": 75, "val": 34, "test": 37}
    assert {k: report["exact"][k] for k in EXPECTED_EXACT} == EXPECTED_EXACT
    assert report["exact"]["within_split"] == {
        "train": {"num_groups": 2, "num_images": 5},
        "val": {"num_groups": 0, "num_images": 0},
        "test": {"num_groups": 0, "num_images": 0},
    }
    assert {k: report["near"][k] for k in EXPECTED_NEAR} == EXPECTED_NEAR
    assert report["leakage"] == EXPECTED_LEAKAGE
    assert {s: c["count"] for s, c in report["constant_images"].items()} == {"train": 2, "val": 1, "test": 0}
    assert report["constant_images"]["train"]["values"] == [0, 128]
    groups = {frozenset(g["ids"]): g["conflicting_labels"] for g in report["exact"]["groups"]}
    assert groups == {
        frozenset({"t0", "dupA"}): False,
        frozenset({"t1", "dup1a", "dup1b"}): True,
        frozenset({"t2", "vx2"}): False,
        frozenset({"t3", "vx3"}): True,
        frozenset({"c0", "vc0"}): True,
        frozenset({"v0", "sv0"}): False,
    }
    markdown = dedup.report_markdown(report)
    assert "| val | 34 | 3 | 2 | 4 | 2 |" in markdown and "| exact | 6 | 13 | 7 | 4 | 3 |" in markdown


def _write(root, planted):
    records = {
        split: [
            Record(split=split, image_id=str(i), image=im, label=int(k))
            for im, k, i in zip(images, labels, ids, strict=True)
        ]
        for split, (images, labels, ids) in planted.items()
    }
    num_shards = {split: 2 if split == "train" else 1 for split in planted}
    return write_records(root, records, CLASSES, num_shards, source={"format": "planted"})


def _validate_cli(data, timeout):
    return subprocess.run(
        [sys.executable, "-m", "data_tools.validate", f"--data={data}"],
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    """One CLI run (TFDV included) shared by the assertions below: Beam/TFDV start-up is slow."""
    data = _write(tmp_path_factory.mktemp("v") / "data", _planted())
    done = _validate_cli(data, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = os.path.join(data, "validation")
    with open(os.path.join(out, "summary.json")) as f:
        return {"dir": out, "summary": json.load(f), "stdout": done.stdout}


def test_validate_duplicates_and_leakage(validated):
    summary = validated["summary"]
    assert {k: summary["duplicates"]["exact"][k] for k in EXPECTED_EXACT} == EXPECTED_EXACT
    assert {k: summary["duplicates"]["near"][k] for k in EXPECTED_NEAR} == EXPECTED_NEAR
    assert summary["leakage"] == EXPECTED_LEAKAGE
    assert summary["constant_images"] == {"train": 2, "val": 1, "test": 0}
    with open(os.path.join(validated["dir"], "leakage.json")) as f:
        assert len(json.load(f)["exact"]["groups"]) == 6
    assert "3 of 34 val images have a twin in train (2 with another label)" in validated["stdout"]


def test_validate_tfdv_flags_drifted_val_not_matching_test(validated):
    tfdv = validated["summary"]["tfdv"]
    label = schema.KEY_LABEL
    reasons = tfdv["val"]["anomalies"][label]
    assert {r.split(":")[0] for r in reasons} == {
        "COMPARATOR_L_INFTY_HIGH",
        "COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH",
    }
    # train happy share 10/75, val 31/34.
    assert tfdv["val"]["drift"][label]["L_INFTY"] == pytest.approx(31 / 34 - 10 / 75, abs=1e-4)
    assert tfdv["test"]["anomalies"] == {}
    assert tfdv["test"]["drift"][label]["L_INFTY"] < 0.05
    assert tfdv["train"]["anomalies"] == {}
    with open(os.path.join(validated["dir"], "anomalies", "val.txt")) as f:
        assert "COMPARATOR_L_INFTY_HIGH" in f.read()


def test_validate_tfdv_artefacts(validated):
    from tensorflow_metadata.proto.v0 import statistics_pb2

    out = validated["dir"]
    for split, n in (("train", 75), ("val", 34), ("test", 37)):
        with open(os.path.join(out, "statistics", f"{split}.pb"), "rb") as f:
            stats = statistics_pb2.DatasetFeatureStatisticsList.FromString(f.read())
        assert stats.datasets[0].num_examples == n
        assert os.path.getsize(os.path.join(out, "statistics", f"{split}.txt")) > 1000
    with open(os.path.join(out, "schema.pbtxt")) as f:
        text = f.read()
    assert "is_categorical: true" in text and "max: 6" in text and "infinity_norm" in text
    with open(os.path.join(out, "facets.html")) as f:
        html = f.read()
    assert "facets-overview" in html and len(html) > 5000


def test_validate_plots(validated):
    out = validated["dir"]
    with Image.open(os.path.join(out, "class_distribution.png")) as im:
        assert im.size == (1000, 500)
    for name in ("samples_train.png", "samples_val.png", "samples_test.png", "duplicates.png"):
        assert os.path.getsize(os.path.join(out, name)) > 5000
    assert "duplicates.png" in validated["summary"]["files"]


def test_validate_cli_missing_data(tmp_path):
    done = _validate_cli(tmp_path / "missing", timeout=300)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "missing" in done.stderr.strip().splitlines()[-1]


def _copy(data_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    return copy


def test_read_split_refuses_an_incomplete_or_corrupt_dataset(synthetic_data_dir, tmp_path):
    copy = _copy(synthetic_data_dir, tmp_path)
    (shard,) = sorted(copy.glob("val-*.tfrecord"))
    data = shard.read_bytes()
    shard.write_bytes(data[:-3])  # cut inside the last record
    with pytest.raises(
        ValueError, match=r"corrupt val shard \(truncated record at \d+.*\); convert the dataset again"
    ):
        derive.read_split(str(copy), "val")
    shard.unlink()
    with pytest.raises(ValueError, match="dataset_info says 1 val shards, found 0"):
        derive.read_split(str(copy), "val")
    info = schema.read_dataset_info(str(copy))
    info["splits"]["test"]["num_examples"] += 1
    with pytest.raises(ValueError, match="dataset_info says 141 test records, found 140"):
        derive.read_split(str(copy), "test", info)
    (copy / schema.INFO_FILE).write_text('{"class_names": ["a", ')
    with pytest.raises(ValueError, match="is not valid JSON"):
        schema.read_dataset_info(str(copy))


def test_validate_cli_names_a_missing_shard_in_one_line(synthetic_data_dir, tmp_path):
    copy = _copy(synthetic_data_dir, tmp_path)
    for shard in copy.glob("val-*.tfrecord"):
        shard.unlink()
    done = _validate_cli(copy, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith("dataset_info says 1 val shards, found 0")


def test_a_rerun_replaces_the_whole_report_and_keeps_other_folders_safe(tmp_path):
    data = _write(tmp_path / "data", _planted())
    out = tmp_path / "report"
    first = validate.validate(str(data), str(out), with_tfdv=False)
    assert "duplicates.png" in first["files"] and (out / "duplicates.png").exists()
    # A threshold that finds no near pair: the old duplicates.png must not outlive its report.
    second = validate.validate(str(data), str(out), near_max_distance=-1, with_tfdv=False)
    assert second["duplicates"]["near"]["num_groups"] == 0
    assert "duplicates.png" not in second["files"] and not (out / "duplicates.png").exists()
    assert sorted(second["files"]) == sorted(
        str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()
    )  # the summary lists exactly what is there
    assert sorted(os.listdir(tmp_path)) == ["data", "report"]  # no staging folder left
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds other files and no previous report"):
        validate.validate(str(data), str(notes), with_tfdv=False)
    assert os.listdir(notes) == ["mine.txt"]


def test_tfdv_needs_a_train_split(synthetic_data_dir, tmp_path):
    copy = _copy(synthetic_data_dir, tmp_path)
    info = schema.read_dataset_info(str(copy))
    del info["splits"]["train"]
    schema.write_dataset_info(str(copy), info)
    for shard in copy.glob("train-*.tfrecord"):
        shard.unlink()
    with pytest.raises(ValueError, match="has no train split, from which TFDV infers the schema"):
        validate.validate(str(copy))
    summary = validate.validate(str(copy), with_tfdv=False)  # duplicates and plots still work
    assert (
        summary["num_images"] == {"val": 140, "test": 140}
        and not (copy / "validation" / "samples_train.png").exists()
    )
