"""Tests of data_tools/fer2013.py: FER2013 CSV rows, bad inputs by reason, FER+ majority labels."""

import glob
import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from data_tools import fer2013
from data_tools.writer import ConversionError, Skip
from fer_tf import schema

REAL_DATA = Path(__file__).parents[1].parent / "shared/data/fer2013"
HEADER = "emotion,pixels,Usage"


def _pixels(value: int) -> str:
    return " ".join([str(value)] * 2304)


def _write(path: Path, lines: list[str]) -> str:
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return str(path)


GOOD = [
    f"0,{_pixels(10)},Training",
    f"3,{_pixels(20)},Training",
    f"3,{_pixels(30)},PublicTest",
    f"6,{_pixels(40)},PrivateTest",
]
BAD = {  # reason -> row
    "wrong_pixel_count": f"1,{' '.join(['5'] * 2303)},Training",
    "non_numeric_pixels": f"1,{_pixels(5)[:-1]}x,Training",
    "pixel_out_of_range": f"1,{_pixels(300)},Training",
    "label_out_of_range": f"7,{_pixels(5)},Training",
    "non_numeric_label": f"happy,{_pixels(5)},Training",
    "missing_usage": f"1,{_pixels(5)},",
    "unknown_usage": f"1,{_pixels(5)},Validation",
    "short_row": "1",
}


def _shards(data_dir: str) -> dict[str, bytes]:
    return {
        os.path.basename(p): open(p, "rb").read()
        for p in sorted(glob.glob(os.path.join(data_dir, "*.tfrecord")))
    }


def _read(data_dir: str, split: str) -> dict[str, dict]:
    info = schema.read_dataset_info(data_dir)
    ds = tf.data.TFRecordDataset(sorted(glob.glob(schema.shard_pattern(data_dir, split))))
    return {ex["id"].numpy().decode(): ex for ex in ds.map(lambda s: schema.parse_example(s, info))}


def test_every_bad_row_is_counted_by_reason_and_gz_gives_the_same_shards(tmp_path):
    lines = [HEADER, GOOD[0], *BAD.values(), *GOOD[1:]]
    info = fer2013.convert_fer2013(_write(tmp_path / "f.csv", lines), str(tmp_path / "plain"), progress=False)
    assert info["skipped"] == {reason: 1 for reason in BAD}
    assert {split: entry["num_examples"] for split, entry in info["splits"].items()} == {
        "train": 2,
        "val": 1,
        "test": 1,
    }
    assert info["splits"]["train"]["class_counts"] == dict.fromkeys(schema.FER2013_CLASSES, 0) | {
        "angry": 1,
        "happy": 1,
    }
    assert info["class_names"] == list(schema.FER2013_CLASSES) and info["image_shape"] == [48, 48, 1]
    train = _read(str(tmp_path / "plain"), "train")
    assert sorted(train) == ["row-000000", "row-000009"]  # rows are numbered 0.. after the header
    assert (train["row-000009"]["image"].numpy() == 20).all() and train["row-000009"]["label"] == 3
    assert (_read(str(tmp_path / "plain"), "test")["row-000011"]["image"].numpy() == 40).all()

    gz_info = fer2013.convert_fer2013(
        _write(tmp_path / "f.csv.gz", lines), str(tmp_path / "gz"), progress=False
    )
    assert gz_info["splits"] == info["splits"] and gz_info["skipped"] == info["skipped"]
    assert _shards(str(tmp_path / "gz")) == _shards(str(tmp_path / "plain"))


@pytest.mark.parametrize("emotion", ["--3", "\u00b2", "3_0", " 4x"])
def test_labels_that_str_isdigit_accepts_but_int_rejects_are_counted(tmp_path, emotion):
    lines = [HEADER, GOOD[0], f"{emotion},{_pixels(5)},Training"]
    info = fer2013.convert_fer2013(_write(tmp_path / "f.csv", lines), str(tmp_path / "out"), progress=False)
    assert info["skipped"] == {"non_numeric_label": 1}
    assert info["splits"]["train"]["num_examples"] == 1


def test_quoted_csv_with_cr_only_line_ends_is_a_conversion_error_not_a_csv_crash(tmp_path):
    path = tmp_path / "mac.csv"
    path.write_bytes(
        ("\r".join([HEADER, f'0,"{_pixels(10)}",Training', f'3,"{_pixels(20)}",Training']) + "\r").encode()
    )
    with pytest.raises(ConversionError):  # csv.Error before: "new-line character seen in unquoted field"
        fer2013.convert_fer2013(str(path), str(tmp_path / "out"), progress=False)
    assert not (tmp_path / "out").exists()


def test_strict_names_the_first_bad_row(tmp_path):
    csv_path = _write(tmp_path / "f.csv", [HEADER, GOOD[0], BAD["label_out_of_range"], BAD["short_row"]])
    with pytest.raises(
        ConversionError, match=r"row 1 \(line 3\): emotion 7 not in 0..6 \[label_out_of_range\]"
    ):
        fer2013.convert_fer2013(csv_path, str(tmp_path / "out"), strict=True, progress=False)
    assert os.listdir(tmp_path) == ["f.csv"]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty file"),
        (b"emotion,pixels,Usage\n", "no data rows"),
        (b"a,b\n1,2\n", "no emotion, pixels column"),
    ],
)
def test_files_with_nothing_to_convert_fail_with_one_line(tmp_path, content, message):
    path = tmp_path / "f.csv"
    path.write_bytes(content)
    with pytest.raises(ConversionError, match=message) as error:
        fer2013.fer2013_source(str(path), progress=False)
    assert "\n" not in str(error.value)


def test_header_only_and_truncated_gzip(tmp_path):
    path = tmp_path / "f.csv.gz"
    path.write_bytes(gzip.compress(b"emotion,pixels,Usage\r\n"))
    with pytest.raises(ConversionError, match="no data rows"):
        fer2013.fer2013_source(str(path), progress=False)
    data = gzip.compress(("\n".join([HEADER, *GOOD]) + "\n").encode())
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="unreadable gzip"):
        fer2013.fer2013_source(str(path), progress=False)


def test_gzip_members_and_zero_padding_read_like_gzip_module(tmp_path, monkeypatch):
    lines = [HEADER, *GOOD]
    first, second = ("\n".join(lines[:3]) + "\n").encode(), ("\n".join(lines[3:]) + "\n").encode()
    monkeypatch.setattr(fer2013, "_BLOCK", 64)  # padding and members straddle read blocks
    path = tmp_path / "f.csv.gz"
    padded = gzip.compress(first) + bytes(100) + gzip.compress(second) + bytes(1000)
    assert gzip.decompress(padded) == first + second  # what the gzip format allows
    path.write_bytes(padded)
    header, rows = fer2013.read_csv(str(path), progress=False)
    assert header == HEADER.lower().split(",") and len(rows) == len(GOOD)
    path.write_bytes(gzip.compress(first + second) + b"\x00\x00junk")  # not padding: refused
    with pytest.raises(ConversionError, match="unreadable gzip"):
        fer2013.read_csv(str(path), progress=False)


def test_csv_without_usage_is_all_train_or_a_seeded_split(tmp_path):
    lines = ["emotion,pixels"] + [f"{i % 7},{_pixels(i)}" for i in range(200)]
    path = _write(tmp_path / "f.csv", lines)
    source = fer2013.fer2013_source(path, progress=False)
    assert {source.decode(item).split for item in source.items} == {"train"}
    split = fer2013.fer2013_source(path, split_if_missing=(0.5, 0.3, 0.2), seed=1, progress=False)
    splits = [split.decode(item).split for item in split.items]
    assert 70 <= splits.count("train") <= 130 and splits.count("val") > 30 and splits.count("test") > 15
    again = fer2013.fer2013_source(path, split_if_missing=(0.5, 0.3, 0.2), seed=1, progress=False)
    assert [again.decode(item).split for item in again.items] == splits
    other = fer2013.fer2013_source(path, split_if_missing=(0.5, 0.3, 0.2), seed=2, progress=False)
    assert [other.decode(item).split for item in other.items] != splits


def test_parse_pixels_checks_every_value():
    image = fer2013.parse_pixels(" ".join(str(i % 256) for i in range(2304)), "row 0")
    assert (
        image.dtype == np.uint8
        and image.shape == (48, 48, 1)
        and image[0, 1, 0] == 1
        and image[47, 47, 0] == 2303 % 256
    )
    for text, reason in [(_pixels(1) + " 2", "wrong_pixel_count"), ("", "wrong_pixel_count"),
                         (_pixels(1)[:-1] + "1.5", "non_numeric_pixels"), ("-1 " + _pixels(1)[2:], "pixel_out_of_range")]:  # fmt: skip
        with pytest.raises(Skip) as skip:
            fer2013.parse_pixels(text, "row 5 (line 7)")
        assert skip.value.reason == reason and skip.value.detail.startswith("row 5 (line 7): ")


# --- FER+ ---------------------------------------------------------------------------------
# Vote order: anger, disgust, fear, happiness, sadness, surprise, neutral, contempt, unknown, NF.


@pytest.mark.parametrize(
    "votes, label, soft",
    [
        ([0, 0, 0, 8, 2, 0, 0, 0, 0, 0], 3, [0, 0, 0, 0.8, 0.2, 0, 0, 0]),
        # The single sad vote is noise: happy then holds 5 of 9 votes, a majority.
        ([0, 0, 0, 5, 1, 0, 4, 0, 0, 0], 3, [0, 0, 0, 5 / 9, 0, 0, 4 / 9, 0]),
        # Unknown votes count in the majority test but not in the soft label.
        ([6, 0, 0, 0, 0, 0, 0, 0, 3, 1], 0, [1, 0, 0, 0, 0, 0, 0, 0]),
        ([0, 0, 0, 0, 0, 0, 2, 8, 0, 0], 7, [0, 0, 0, 0, 0, 0, 0.2, 0.8]),
    ],
)
def test_ferplus_majority_label_and_soft_label(votes, label, soft):
    got_label, got_soft = fer2013.ferplus_label(votes, num_classes=8)
    assert got_label == label
    np.testing.assert_allclose(got_soft, soft, rtol=1e-9)


@pytest.mark.parametrize(
    "votes, num_classes, reason",
    [
        ([0, 0, 0, 0, 0, 0, 0, 0, 0, 10], 8, "ferplus_not_face"),
        ([0, 0, 0, 2, 0, 0, 2, 0, 6, 0], 8, "ferplus_unknown"),
        ([0, 0, 0, 5, 5, 0, 0, 0, 0, 0], 8, "ferplus_no_majority"),  # a tie is no majority
        ([4, 0, 0, 4, 0, 0, 2, 0, 0, 0], 8, "ferplus_no_majority"),
        ([1, 1, 1, 1, 1, 1, 1, 1, 1, 1], 8, "ferplus_no_majority"),  # every vote is noise
        ([0, 0, 0, 0, 0, 0, 2, 8, 0, 0], 7, "ferplus_contempt"),
    ],
)
def test_ferplus_dropped_rows(votes, num_classes, reason):
    with pytest.raises(Skip) as skip:
        fer2013.ferplus_label(votes, num_classes=num_classes)
    assert skip.value.reason == reason


def test_ferplus_label_with_7_classes_renormalises_without_contempt():
    label, soft = fer2013.ferplus_label([0, 0, 0, 6, 0, 0, 2, 2, 0, 0], num_classes=7)
    assert label == 3 and len(soft) == 7
    np.testing.assert_allclose(soft, [0, 0, 0, 0.75, 0, 0, 0.25])


def _ferplus_files(tmp_path):
    fer = [HEADER] + [f"0,{_pixels(v)},{usage}" for v, usage in
                      [(1, "Training"), (2, "Training"), (3, "Training"), (4, "PublicTest"), (5, "Training")]]  # fmt: skip
    votes = ["Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"]
    votes += [
        "Training,fer0000000.png,0,8,0,2,0,0,0,0,0,0",  # happy
        "Training,,0,0,0,0,0,0,0,0,0,10",  # dropped by FER+: not a face
        "Training,fer0000002.png,2,0,0,0,0,0,0,8,0,0",  # contempt
        "PublicTest,fer0000003.png,3,0,0,0,7,0,0,0,0,0",  # anger -> angry
        "Training,,9,0,0,0,0,0,0,0,0,0",  # no image name
    ]
    return _write(tmp_path / "fer2013.csv", fer), _write(tmp_path / "fer2013new.csv", votes)


def test_ferplus_conversion_8_and_7_classes(tmp_path):
    csv_path, labels_path = _ferplus_files(tmp_path)
    info = fer2013.convert_fer2013(csv_path, str(tmp_path / "p8"), ferplus_labels=labels_path, progress=False)
    assert info["class_names"] == list(schema.FERPLUS_CLASSES) and info["has_soft_labels"]
    assert info["skipped"] == {"ferplus_not_face": 1, "ferplus_no_image": 1}
    train, val = _read(str(tmp_path / "p8"), "train"), _read(str(tmp_path / "p8"), "val")
    assert sorted(train) == ["row-000000", "row-000002"] and list(val) == ["row-000003"]
    assert train["row-000000"]["label"] == 3 and train["row-000002"]["label"] == 7
    np.testing.assert_allclose(train["row-000000"]["soft_label"], [0, 0, 0, 0.8, 0.2, 0, 0, 0])
    assert val["row-000003"]["label"] == 0 and (val["row-000003"]["image"].numpy() == 4).all()
    np.testing.assert_allclose(val["row-000003"]["soft_label"], [0.7, 0, 0, 0, 0, 0, 0.3, 0], rtol=1e-6)

    info7 = fer2013.convert_fer2013(
        csv_path, str(tmp_path / "p7"), ferplus_labels=labels_path, ferplus_classes=7, progress=False
    )
    assert info7["class_names"] == list(schema.FER2013_CLASSES)
    assert info7["skipped"] == {"ferplus_not_face": 1, "ferplus_no_image": 1, "ferplus_contempt": 1}
    assert (
        info7["splits"]["train"]["class_counts"]["happy"] == 1
        and info7["splits"]["train"]["num_examples"] == 1
    )


def test_ferplus_needs_one_label_row_per_image(tmp_path):
    csv_path, labels_path = _ferplus_files(tmp_path)
    Path(labels_path).write_text("\n".join(Path(labels_path).read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(ConversionError, match="has 4 rows but .* has 5"):
        fer2013.ferplus_source(csv_path, labels_path, progress=False)


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="real FER2013 data not present")
def test_real_fer2013_counts(tmp_path):
    csv_path = str(REAL_DATA / "fer2013_train_publictest.csv.gz")
    info = fer2013.convert_fer2013(csv_path, str(tmp_path / "fer2013"), progress=False)
    assert info["skipped"] == {}
    train, val = info["splits"]["train"], info["splits"]["val"]
    assert (train["num_examples"], val["num_examples"], set(info["splits"])) == (
        28709,
        3589,
        {"train", "val"},
    )
    names = schema.FER2013_CLASSES
    assert train["class_counts"] == dict(zip(names, [3995, 436, 4097, 7215, 4830, 3171, 4965], strict=True))
    assert val["class_counts"] == dict(zip(names, [467, 56, 496, 895, 653, 415, 607], strict=True))
    assert train["num_shards"] == 3 and len(glob.glob(str(tmp_path / "fer2013" / "train-*.tfrecord"))) == 3
    assert (
        sum(1 for _ in tf.data.TFRecordDataset(glob.glob(str(tmp_path / "fer2013" / "val-*.tfrecord"))))
        == 3589
    )


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="real FER2013 data not present")
def test_real_ferplus_majority_counts():
    header, rows = fer2013.read_csv(str(REAL_DATA / "ferplus_train_publictest.csv"), progress=False)
    columns = [header.index(name) for name in fer2013.FERPLUS_VOTE_COLUMNS + fer2013.FERPLUS_DROP_COLUMNS]
    counts, skipped = {"training": np.zeros(8, int), "publictest": np.zeros(8, int)}, {}
    for row in rows:
        try:
            label, _ = fer2013.ferplus_label([float(row[c]) for c in columns])
            counts[row[0].lower()][label] += 1
        except Skip as skip:
            skipped[skip.reason] = skipped.get(skip.reason, 0) + 1
    # The FER+ "majority" training set (angry .. neutral, contempt).
    assert counts["training"].tolist() == [2100, 119, 532, 7287, 3014, 3149, 8740, 119]
    assert counts["publictest"].tolist() == [287, 24, 62, 865, 351, 415, 1182, 13]
    assert skipped == {"ferplus_no_majority": 3790, "ferplus_not_face": 160, "ferplus_unknown": 89}
