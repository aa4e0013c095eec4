"""Tests of the data_tools/convert.py CLI (in subprocesses) and its format registry."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_tools import convert
from fer_tf import schema

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def _csv(path: Path, rows: list[tuple[int, int, str]]) -> str:
    lines = ["emotion,pixels,Usage"] + [
        f"{label},{' '.join([str(value)] * 2304)},{usage}" for label, value, usage in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize("entry", [["-m", "data_tools.convert"], ["data_tools/convert.py"]])
def test_missing_input_is_one_line_and_exit_2(tmp_path, entry):
    result = _run(
        *entry, "--format=fer2013", f"--input={tmp_path / 'nope.csv'}", f"--output={tmp_path / 'out'}"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: --input={tmp_path / 'nope.csv'} does not exist"]
    assert not (tmp_path / "out").exists()


def test_cli_converts_and_strict_fails_naming_the_row(tmp_path):
    rows = [
        (0, 1, "Training"),
        (3, 2, "Training"),
        (3, 3, "Training"),
        (5, 4, "PublicTest"),
        (9, 5, "Training"),
    ]
    csv_path = _csv(tmp_path / "fer2013.csv", rows)
    out = tmp_path / "out"
    args = [
        "-m",
        "data_tools.convert",
        "--format=fer2013",
        f"--input={csv_path}",
        f"--output={out}",
        "--noprogress",
    ]
    result = _run(*args, "--examples_per_shard=2")
    assert result.returncode == 0, result.stderr
    info = json.loads((out / schema.INFO_FILE).read_text())
    assert info["splits"]["train"]["num_examples"] == 3 and info["splits"]["train"]["num_shards"] == 2
    assert info["splits"]["val"]["class_counts"]["surprise"] == 1 and info["skipped"] == {
        "label_out_of_range": 1
    }
    assert "skipped 1 of 5 inputs: label_out_of_range=1" in result.stdout
    assert "train: 3 images in 2 shards (angry 1, disgust 0, fear 0, happy 2," in result.stdout

    strict = _run(*args, "--strict", f"--output={tmp_path / 'strict'}")
    assert strict.returncode == 2
    last = strict.stderr.strip().splitlines()[-1]
    assert last.startswith("error: fer2013_csv: row 4 (line 6): emotion 9 not in 0..6 [label_out_of_range]")
    assert "Traceback" not in strict.stderr and not (tmp_path / "strict").exists()
    assert sorted(os.listdir(tmp_path)) == ["fer2013.csv", "out"]


def test_registry_covers_every_format_and_passes_image_options(tmp_path, monkeypatch):
    assert sorted(convert.SOURCES) == ["ckplus", "expw", "fer2013", "ferplus", "folder", "rafdb", "sfew"]
    folders = pytest.importorskip("data_tools.folders")
    calls = []
    monkeypatch.setattr(folders, "folder_source", lambda root, **kw: calls.append((root, kw)) or "source")
    chosen = {"classes": ["happy", "sad"], "image_size": 64, "channels": 3, "seed": 4, "align": True}
    options = convert.default_options("root/", **chosen)
    assert convert.SOURCES["folder"]("root/", options) == "source"
    [(root, kw)] = calls
    assert root == "root/" and {key: kw[key] for key in chosen} == chosen


def test_imbalance_factor_never_replaces_a_folder_of_other_files(tmp_path):
    csv = _csv(tmp_path / "f.csv", [(3, 1, "Training"), (0, 2, "Training"), (3, 3, "PublicTest")])
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("precious")
    result = _run(
        "-m", "data_tools.convert", "--format=fer2013", f"--input={csv}", f"--output={mine}",
        "--imbalance_factor=2", "--noprogress",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert (
        result.stderr.strip().splitlines()[-1].endswith("holds no dataset_info.json; refusing to replace it")
    )
    assert os.listdir(mine) == ["thesis.txt"] and sorted(os.listdir(tmp_path)) == ["f.csv", "mine"]


def test_imbalance_factor_writes_a_long_tail_train_split(tmp_path):
    pytest.importorskip("data_tools.longtail")
    from data_tools import fer2013

    rows = (
        [(3, 1, "Training")] * 40
        + [(0, 2, "Training")] * 30
        + [(1, 3, "Training")] * 20
        + [(3, 4, "PublicTest")] * 5
    )
    source = fer2013.fer2013_source(_csv(tmp_path / "f.csv", rows), progress=False)
    info = convert._convert_longtail(source, str(tmp_path / "lt"), 10.0, 0, {"progress": False})
    # n_i = round(40 * 10 ** (-rank / 6)), capped by what the class has: 40, 27, 19.
    expected = dict.fromkeys(schema.FER2013_CLASSES, 0) | {"happy": 40, "angry": 27, "disgust": 19}
    assert info["splits"]["train"]["class_counts"] == expected
    assert info["splits"]["val"]["num_examples"] == 5
    assert schema.read_dataset_info(str(tmp_path / "lt"))["splits"]["train"]["class_counts"] == expected
    assert sorted(os.listdir(tmp_path)) == ["f.csv", "lt"]  # the full conversion was temporary
