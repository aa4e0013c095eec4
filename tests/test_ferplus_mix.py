"""Tests of data_tools/ferplus_mix.py: FER2013 labels blended with FER+ votes as soft targets."""

import glob
import os
import subprocess
import sys

import numpy as np
import pytest

from data_tools import derive, fer2013, ferplus_mix
from fer_tf import data, schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOTES_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
ROWS = [  # (FER2013 label, usage, FER+ votes: neutral happiness surprise sadness anger disgust fear contempt unknown NF)
    (0, "Training", "0,8,0,2,0,0,0,0,0,0"),  # angry face, annotators said happy/sad
    (3, "Training", "1,1,1,1,1,1,1,0,3,0"),  # single votes only: noise, no shares
    (6, "Training", "0,0,0,0,0,0,0,10,0,0"),  # contempt only: not a FER2013 class
    (4, "PublicTest", "0,0,0,10,0,0,0,0,0,0"),
    (6, "Training", "6,0,0,0,0,0,0,0,4,0"),  # neutral
]


def _files(tmp_path, rows=ROWS):
    fer = ["emotion,pixels,Usage"] + [
        f"{y},{' '.join([str(10 * i)] * 2304)},{u}" for i, (y, u, _) in enumerate(rows)
    ]
    votes = [VOTES_HEADER] + [f"{u},fer{i:07d}.png,{v}" for i, (_, u, v) in enumerate(rows)]
    (tmp_path / "fer2013.csv").write_text("\n".join(fer) + "\n")
    (tmp_path / "fer2013new.csv").write_text("\n".join(votes) + "\n")
    data_dir = str(tmp_path / "fer2013")
    fer2013.convert_fer2013(str(tmp_path / "fer2013.csv"), data_dir, progress=False)
    return data_dir, str(tmp_path / "fer2013new.csv")


def test_train_targets_blend_the_label_with_the_votes(tmp_path):
    data_dir, votes = _files(tmp_path)
    out = str(tmp_path / "mix")
    info = ferplus_mix.make_ferplus_mix(data_dir, out, votes, weight=0.4)
    assert info["has_soft_labels"] and info["class_names"] == list(schema.FER2013_CLASSES)
    assert info["source"]["with_votes"] == 2 and info["source"]["without_votes"] == 2
    assert info["source"]["weight"] == 0.4 and info["source"]["ferplus_labels"] == "fer2013new.csv"
    assert (
        info["splits"]["train"]["class_counts"]
        == schema.read_dataset_info(data_dir)["splits"]["train"]["class_counts"]
    )
    train = derive.read_split(out, "train")
    by_id = {i: (y, s) for i, y, s in zip(train.ids, train.labels, train.soft_labels, strict=True)}
    y, soft = by_id["row-000000"]
    assert y == 0
    np.testing.assert_allclose(soft, [0.6, 0, 0, 0.4 * 0.8, 0.4 * 0.2, 0, 0], atol=1e-6)
    np.testing.assert_allclose(by_id["row-000001"][1], np.eye(7)[3])  # single votes dropped: one-hot
    np.testing.assert_allclose(by_id["row-000002"][1], np.eye(7)[6])  # contempt only: one-hot
    np.testing.assert_allclose(by_id["row-000004"][1], np.eye(7)[6])  # neutral votes on a neutral face
    # Evaluation shards are copied byte for byte: no vote of a PublicTest face is used.
    for path in glob.glob(os.path.join(data_dir, "val-*")):
        with open(path, "rb") as a, open(os.path.join(out, os.path.basename(path)), "rb") as b:
            assert a.read() == b.read()
    # The training pipeline reads the blended targets (train.py --soft_labels).
    ds = data.make_eval_dataset(out, info, "train", batch_size=4, soft_labels=True)
    targets = np.concatenate([batch[-1].numpy() for batch in ds])
    assert np.isclose(targets, 0.6).any() and np.allclose(targets.sum(1), 1.0, atol=1e-5)


def test_bad_inputs_are_one_line_errors(tmp_path):
    data_dir, votes = _files(tmp_path)
    with pytest.raises(ValueError, match=r"--weight must be in \(0, 1\], got 0.0"):
        ferplus_mix.make_ferplus_mix(data_dir, str(tmp_path / "a"), votes, weight=0.0)
    with pytest.raises(ValueError, match="is not a file"):
        ferplus_mix.make_ferplus_mix(data_dir, str(tmp_path / "a"), str(tmp_path / "none.csv"))
    short = tmp_path / "short.csv"
    short.write_text("\n".join(open(votes).read().splitlines()[:-1]) + "\n")
    with pytest.raises(
        ValueError, match="no Training row 4 for record row-000004; the files are not aligned"
    ):
        ferplus_mix.make_ferplus_mix(data_dir, str(tmp_path / "a"), str(short))
    plus = str(tmp_path / "ferplus")
    fer2013.convert_fer2013(str(tmp_path / "fer2013.csv"), plus, ferplus_labels=votes, progress=False)
    with pytest.raises(ValueError, match="not FER2013's"):
        ferplus_mix.make_ferplus_mix(plus, str(tmp_path / "a"), votes)
    assert not os.path.exists(tmp_path / "a")


def test_cli(tmp_path):
    data_dir, votes = _files(tmp_path)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

    def run(*args):
        cmd = [sys.executable, "-m", "data_tools.ferplus_mix", f"--data={data_dir}", *args]
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    proc = run(f"--output={tmp_path / 'mix'}", f"--ferplus_labels={votes}")
    assert proc.returncode == 0, proc.stderr
    assert "2 images got FER+ votes (weight 0.5), 2 kept one-hot" in proc.stdout
    proc = run(f"--output={tmp_path / 'bad'}", "--ferplus_labels=missing.csv")
    assert proc.returncode == 2 and proc.stderr.strip().endswith(
        "--ferplus_labels='missing.csv' is not a file"
    )
