"""Tests of the study tool: study.py end to end, aggregation, cross-dataset mapping, intensity."""

import csv
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_records

from fer_tf import schema, scoring, study, study_report

REPO = Path(__file__).resolve().parents[1]
# The cheapest model to trace (the fixed cost of a cell dominates a 2-step run).
TINY = [
    "--model=seed_cnn",
    "--width=0.25",
    "--batch_size=16",
    "--epochs=1",
    "--steps_per_epoch=2",
    "--augment=flip",
    "--verbose=0",
]


def _study_cmd(study_dir, data_dir, *extra):
    return [
        sys.executable,
        str(REPO / "study.py"),
        f"--study_dir={study_dir}",
        f"--datasets=syn={data_dir}",
        "--methods=crossentropy,posthoc_la",
        "--seeds=2",
        "--cross_dataset",
        *TINY,
        *extra,
    ]


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finished_study(synthetic_data_dir, tmp_path_factory):
    study_dir = tmp_path_factory.mktemp("study") / "s"
    proc = subprocess.run(
        _study_cmd(study_dir, synthetic_data_dir), capture_output=True, text=True, cwd=REPO, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return study_dir


def test_study_writes_one_row_per_cell_and_mean_std_summary(finished_study, synthetic_data_dir):
    rows = _read_csv(finished_study / "results.csv")
    assert [(r["dataset"], r["method"], r["seed"]) for r in rows] == [
        ("syn", "crossentropy", "0"),
        ("syn", "posthoc_la", "0"),
        ("syn", "crossentropy", "1"),
        ("syn", "posthoc_la", "1"),
    ]
    info = schema.read_dataset_info(synthetic_data_dir)
    for row in rows:
        cell = finished_study / "runs" / "syn" / row["method"] / f"seed{row['seed']}"
        assert (cell / "metrics.json").exists()
        record = json.loads((cell / study.EVAL_FILE).read_text())
        assert row["split"] == "test" and int(row["n"]) == info["splits"]["test"]["num_examples"]
        assert float(row["balanced_accuracy"]) == pytest.approx(record["report"]["balanced_accuracy"])
        recalls = [float(row[f"recall_{name}"]) for name in info["class_names"]]
        assert np.mean(recalls) == pytest.approx(float(row["balanced_accuracy"]))
    # Post-hoc adjustment trains nothing: its cell has no model of its own.
    assert not (finished_study / "runs" / "syn" / "posthoc_la" / "seed0" / "model.keras").exists()
    assert float(rows[1]["train_seconds"]) < float(rows[0]["train_seconds"])

    summary = (finished_study / "summary.md").read_text()
    minority = study_report.minority_classes(info)
    assert minority == ["angry", "disgust", "surprise"]  # below the median train count (fear, 100)
    header = next(line for line in summary.splitlines() if line.startswith("| method"))
    assert [f"recall {name}" in header for name in minority] == [True] * 3 and "recall happy" not in header
    for method in ("crossentropy", "posthoc_la"):
        line = next(line for line in summary.splitlines() if line.startswith(f"| {method} |"))
        values = [float(r["macro_f1"]) * 100 for r in rows if r["method"] == method]
        expected = f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"
        assert expected in line and line.rstrip().endswith("| 2 |")  # n = 2 seeds
    # FER-crossval keeps the best of its repeated runs: the summary names it, ready for export.py.
    best = summary[summary.index("Best run of each method by balanced accuracy") :].splitlines()
    for method, suffix in (("crossentropy", ""), ("posthoc_la", " --logit_adjust_tau=1")):
        top = max((r for r in rows if r["method"] == method), key=lambda r: float(r["balanced_accuracy"]))
        line = next(line for line in best if line.startswith(f"| {method} |"))
        cells = [c.strip() for c in line.strip("| ").split("|")]
        assert cells[1] == top["seed"] and cells[3] == f"{100 * float(top['balanced_accuracy']):.2f}"
        run = finished_study / "runs" / "syn" / "crossentropy" / f"seed{top['seed']}"
        assert cells[4] == f"{run}{suffix}" and (run / "model.keras").exists()
    for name in ("syn_methods.png", "syn_recall.png"):
        assert (finished_study / "plots" / name).stat().st_size > 5000
    cross = _read_csv(finished_study / "cross_dataset" / "crossentropy" / "cross_dataset.csv")
    assert float(cross[0]["accuracy"]) == pytest.approx(float(rows[0]["accuracy"]))


def test_rerun_skips_finished_cells(finished_study, synthetic_data_dir):
    cells = sorted((finished_study / "runs").rglob("seed*"))
    watched = [
        p for c in cells for p in (c / "metrics.json", c / study.EVAL_FILE, c / "history.csv") if p.exists()
    ]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in watched}
    results = (finished_study / "results.csv").read_text()
    proc = subprocess.run(
        _study_cmd(finished_study, synthetic_data_dir), capture_output=True, text=True, cwd=REPO, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "val accuracy" not in proc.stdout  # train_lib printed nothing: no cell trained
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in watched} == before
    assert (finished_study / "results.csv").read_text() == results
    # Another recipe would be reported under this study's summary, beside cells of the first one.
    proc = subprocess.run(
        _study_cmd(finished_study, synthetic_data_dir, "--epochs=3", "--lr=0.1"),
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"error: --study_dir={finished_study} was run with another recipe (epochs 1 -> 3, "
    )
    assert "learning_rate" in last and last.endswith("use a new --study_dir")
    assert (finished_study / "results.csv").read_text() == results


def test_report_only_tabulates_finished_cells_and_trains_nothing(
    finished_study, synthetic_data_dir, tmp_path
):
    study_dir = tmp_path / "s"
    shutil.copytree(finished_study, study_dir)
    (study_dir / "summary.md").unlink()
    # A third seed was asked for but never run: the report counts it as pending.
    cmd = _study_cmd(study_dir, synthetic_data_dir, "--seeds=3", "--report_only")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 cells scored, 2 not yet run" in proc.stdout
    assert not (study_dir / "runs" / "syn" / "crossentropy" / "seed2").exists()
    assert len(_read_csv(study_dir / "results.csv")) == 4
    summary = (study_dir / "summary.md").read_text()
    assert "**Partial:** 4 cells scored, 2 not yet run" in summary
    # One mean ± std row (2 seeds of 3 scored); the best-run table names crossentropy again.
    mean_rows = [x for x in summary.splitlines() if x.startswith("| crossentropy |") and "±" in x]
    assert len(mean_rows) == 1 and mean_rows[0].endswith("| 2 |"), mean_rows


def test_train_datasets_trains_one_dataset_and_reports_the_rest(finished_study, synthetic_data_dir, tmp_path):
    """A sitting that trains only part of the grid (e.g. the IF 100 cells on a second machine)."""
    study_dir = tmp_path / "s"
    shutil.copytree(finished_study, study_dir)
    datasets = f"--datasets=syn={synthetic_data_dir},other={synthetic_data_dir}"
    cmd = _study_cmd(study_dir, synthetic_data_dir, datasets, "--train_datasets=syn")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # syn's 4 cells were finished (nothing trains); other's 4 wait for their own sitting.
    assert "4 cells scored, 4 not yet run" in proc.stdout
    assert "val accuracy" not in proc.stdout
    assert not (study_dir / "runs" / "other").exists()
    assert {r["dataset"] for r in _read_csv(study_dir / "results.csv")} == {"syn"}

    bad = _study_cmd(study_dir, synthetic_data_dir, "--train_datasets=syn,nope")
    proc = subprocess.run(bad, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 2
    assert "--train_datasets nope: the study's datasets are syn" in proc.stderr


def test_a_train_flagfile_runs_as_repeated_seeds(synthetic_data_dir, tmp_path):
    """FER-crossval's "N runs as mean ± std" of one recipe: train.py's flagfile, --seeds=N."""
    flagfile = tmp_path / "recipe.flags"
    lines = ["--name=rep", f"--data_dir={synthetic_data_dir}", "--raw_format=fer2013", *TINY]
    flagfile.write_text("\n".join(lines) + "\n")
    cmd = [
        sys.executable,
        str(REPO / "study.py"),
        f"--flagfile={flagfile}",
        f"--runs_dir={tmp_path}",
        "--seeds=2",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _read_csv(tmp_path / "rep_seeds" / "results.csv")
    assert [(r["dataset"], r["method"], r["seed"]) for r in rows] == [
        ("rep", "crossentropy", "0"),
        ("rep", "crossentropy", "1"),
    ]
    line = next(
        x
        for x in (tmp_path / "rep_seeds" / "summary.md").read_text().splitlines()
        if x.startswith("| crossentropy |")
    )
    accuracies = [float(r["accuracy"]) * 100 for r in rows]
    assert f"{np.mean(accuracies):.2f} ± {np.std(accuracies, ddof=1):.2f}" in line


def test_missing_dataset_is_a_one_line_error(tmp_path):
    proc = subprocess.run(
        _study_cmd(tmp_path / "s", tmp_path / "missing"),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: dataset syn:") and "missing" in last
    (tmp_path / "notes.txt").write_text("mine")
    for args, message in (
        ([], "error: give --study_dir"),
        ([f"--study_dir={tmp_path}"], "error: give --datasets"),
        (
            [f"--study_dir={tmp_path}", f"--datasets=a={tmp_path},a={tmp_path}"],
            "error: --datasets names 'a' twice",
        ),
        ([f"--study_dir={tmp_path}", "--seeds=0"], "error: flag --seeds=0: 0 is not a positive integer"),
        (
            [f"--study_dir={tmp_path / 'notes.txt' / 's'}"],
            f"error: --study_dir={tmp_path / 'notes.txt' / 's'}: ",
        ),
    ):
        proc = subprocess.run(
            [sys.executable, str(REPO / "study.py"), *args], capture_output=True, text=True, cwd=REPO
        )
        assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr


def _write_soft_dataset(data_dir, images, votes):
    """A FER+-like dataset: 8 classes (with contempt), vote counts as soft labels, one shard a split."""
    from data_tools.writer import Record

    labels = votes.argmax(axis=1)
    records = {
        split: [
            Record(split, f"{split}/{i}", image, int(label), soft_label=tuple(vote.tolist()))
            for i, (image, label, vote) in enumerate(zip(images, labels, votes, strict=True))
        ]
        for split in ("train", "val", "test")
    }
    write_records(data_dir, records, schema.FERPLUS_CLASSES)


def test_seven_class_run_on_an_eight_class_soft_label_dataset(finished_study, synthetic_data_dir, tmp_path):
    import keras

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 48, 48, 1), dtype=np.uint8)
    votes = rng.integers(0, 4, (24, 8)).astype(np.float32)
    votes[:, 0] += 1  # every image has a vote among the shared classes...
    votes[:, 7] = 0  # ...and none is contempt, except these:
    votes[:4] = 0
    votes[:4, 7] = 10  # four contempt images: a class the FER2013 model lacks
    votes[4, :7] = 0
    votes[4, [0, 7]] = [2, 8]  # majority contempt too, but one shared vote
    _write_soft_dataset(tmp_path / "fp", images, votes)
    run = finished_study / "runs" / "syn" / "crossentropy" / "seed0"

    result = scoring.intensity_report(str(run), str(tmp_path / "fp"))
    model = keras.models.load_model(run / "model.keras", compile=False)
    logits = np.asarray(model(images.astype(np.float32) / 255.0))
    keep = np.arange(5, 24)  # images of a class the model knows
    p = np.exp(logits[keep]) / np.exp(logits[keep]).sum(axis=1, keepdims=True)
    v = votes[keep, :7] / votes[keep, :7].sum(axis=1, keepdims=True)
    assert result["n"] == 19 and result["mae"] == pytest.approx(np.abs(p - v).mean(), rel=1e-4)
    for k, name in enumerate(schema.FER2013_CLASSES):
        assert result["pearson"][name] == pytest.approx(
            np.corrcoef(p[:, k], v[:, k])[0, 1], rel=1e-3, abs=1e-4
        )

    rows = scoring.cross_dataset_matrix(
        {"syn": str(run)},
        {"syn": synthetic_data_dir, "fp": str(tmp_path / "fp")},
        output_dir=str(tmp_path / "cross"),
    )
    assert [(r["train"], r["eval"], r["n"]) for r in rows] == [("syn", "syn", 140), ("syn", "fp", 19)]
    assert rows[1]["target_only"] == "contempt:5" and rows[1]["model_only"] == ""
    markdown = (tmp_path / "cross" / "cross_dataset.md").read_text()
    assert "| syn | " in markdown and "images left out: contempt:5" in markdown


def test_map_to_shared_scores_a_seven_class_model_on_six_classes():
    model_classes = list(schema.FER2013_CLASSES)
    target_classes = ["neutral", "happy", "sad", "angry", "surprise", "fear"]  # no disgust, other order
    labels = np.array([0, 1, 2, 3, 4, 5])
    logits = np.full((6, 7), -5.0)
    # Image 0 (neutral): disgust scores highest, but disgust cannot be predicted on this data.
    logits[0, [1, 6]] = [9.0, 1.0]
    for i, name in enumerate(target_classes[1:], start=1):
        logits[i, model_classes.index(name)] = 3.0
    logits[5, model_classes.index("sad")] = 4.0  # a fear image predicted sad
    shared = scoring.map_to_shared(logits, labels, model_classes, target_classes)
    assert shared["class_names"] == ["angry", "fear", "happy", "sad", "surprise", "neutral"]
    assert shared["model_only"] == ["disgust"] and shared["target_only"] == {}
    names = shared["class_names"]
    assert [names[k] for k in shared["labels"]] == target_classes
    assert [names[k] for k in shared["logits"].argmax(axis=1)] == target_classes[:5] + ["sad"]
    assert shared["target_columns"] == [3, 5, 1, 2, 4, 0]

    # A dataset class the model lacks: its images are left out and counted.
    shared = scoring.map_to_shared(
        logits[:3, :6],
        np.array([0, 6, 6]),
        model_classes[:6],
        list(schema.FERPLUS_CLASSES[:6]) + ["contempt"],
    )
    assert shared["target_only"] == {"contempt": 2} and shared["keep"].tolist() == [True, False, False]


def test_aggregate_and_format_match_numpy():
    rows = [
        {"dataset": "d", "method": "ce", "seed": s, "accuracy": a, "recall_disgust": r, "intensity_mae": ""}
        for s, a, r in ((0, 0.60, 0.10), (1, 0.64, 0.30), (2, 0.65, 0.20))
    ] + [{"dataset": "d", "method": "focal", "seed": 0, "accuracy": 0.5, "recall_disgust": 0.4}]
    stats = study_report.aggregate(rows, ["accuracy", "recall_disgust", "intensity_mae"])
    assert set(stats) == {("d", "ce"), ("d", "focal")}
    ce = stats[("d", "ce")]
    assert "intensity_mae" not in ce  # empty for these rows: left out
    assert ce["accuracy"]["mean"] == pytest.approx(np.mean([0.60, 0.64, 0.65]))
    assert ce["accuracy"]["std"] == pytest.approx(np.std([0.60, 0.64, 0.65], ddof=1))
    assert ce["recall_disgust"] == pytest.approx({"mean": 0.2, "std": 0.1, "n": 3})
    assert study_report.format_cell(ce["recall_disgust"]) == "20.00 ± 10.00"
    focal = stats[("d", "focal")]["accuracy"]
    assert focal["n"] == 1 and math.isnan(focal["std"]) and study_report.format_cell(focal) == "50.00 ± n/a"


def test_compare_to_baseline_flags_only_steady_differences():
    def row(method, seed, bal, f1, angry, disgust):
        return {"method": method, "seed": seed, "balanced_accuracy": bal, "macro_f1": f1,
                "recall_angry": angry, "recall_disgust": disgust}  # fmt: skip

    rows = [
        row("crossentropy", s, 0.40 + d, 0.30 + d, 0.10 + d, 0.0) for s, d in enumerate((0.0, 0.01, -0.01))
    ]
    rows += [
        row("balanced", s, 0.50 + d, 0.30 - d, 0.30 + d, 0.50 + d) for s, d in enumerate((0.0, 0.01, -0.01))
    ]
    rows += [row("noisy", s, 0.45 + d, 0.30, 0.10, 0.0) for s, d in enumerate((0.15, -0.15, 0.0))]
    rows += [row("one_seed", 0, 0.60, 0.40, 0.20, 0.20)]
    result = {
        e["method"]: e for e in study_report.compare_to_baseline(rows, "crossentropy", ["angry", "disgust"])
    }
    assert list(result) == ["balanced", "noisy", "one_seed"]
    assert result["balanced"]["balanced_accuracy"]["diff"] == pytest.approx(0.10)
    assert result["balanced"]["balanced_accuracy"]["significant"]
    # Mean of the minority recalls: (0.30 + 0.50) / 2 - (0.10 + 0.0) / 2 = 0.35.
    assert result["balanced"]["minority_recall"]["diff"] == pytest.approx(0.35)
    assert not result["balanced"]["macro_f1"]["significant"]  # same mean
    assert result["noisy"]["balanced_accuracy"]["diff"] == pytest.approx(0.05)
    assert not result["noisy"]["balanced_accuracy"]["significant"]  # within its seed noise
    assert math.isnan(result["one_seed"]["balanced_accuracy"]["p"])
    # No spread on either side: equal is no difference (p 1), unequal is a certain one (p 0).
    same = [row("crossentropy", s, 0.4, 0.3, 0.0, 0.0) for s in range(2)] + [
        row("x", s, 0.4, 0.5, 0.0, 0.0) for s in range(2)
    ]
    flat = study_report.compare_to_baseline(same, "crossentropy", ["angry"])[0]
    assert flat["balanced_accuracy"]["p"] == 1.0 and flat["macro_f1"]["p"] == 0.0
    assert not result["one_seed"]["balanced_accuracy"]["significant"]


def test_intensity_metrics_match_numpy():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1]])
    votes = np.array([[0.6, 0.4, 0.0], [0.0, 1.0, 0.0], [0.2, 0.2, 0.6], [0.5, 0.5, 0.0]])
    result = scoring.intensity_metrics(probabilities, votes, ["a", "b", "c"])
    assert result["n"] == 4 and result["mae"] == pytest.approx(np.abs(probabilities - votes).mean())
    r = [np.corrcoef(probabilities[:, k], votes[:, k])[0, 1] for k in range(3)]
    assert [result["pearson"][n] for n in "abc"] == pytest.approx(r)
    assert result["mean_pearson"] == pytest.approx(np.mean(r))
    # A class nobody voted for has no correlation; the mean skips it.
    votes[:, 2], votes[:, 1] = 0.0, 1.0 - votes[:, 0]
    result = scoring.intensity_metrics(probabilities, votes, ["a", "b", "c"])
    assert math.isnan(result["pearson"]["c"])
    assert result["mean_pearson"] == pytest.approx(np.mean([result["pearson"]["a"], result["pearson"]["b"]]))


def test_methods_run_after_the_runs_they_build_on():
    assert study.expand_methods(["posthoc_la", "crt", "focal"]) == [
        "crossentropy",
        "posthoc_la",
        "crt",
        "focal",
    ]
    assert study.METHODS["crt"].overrides["sampling"] == "balanced"
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        study.expand_methods(["nope"])
    summary = re.compile(r"\d+\.\d\d ± (\d+\.\d\d|n/a)")
    assert summary.fullmatch(study_report.format_cell({"mean": 0.5, "std": 0.01, "n": 2}))


def test_long_tail_tables_say_the_real_head_tail_ratio():
    # FER2013 at IF 10: disgust's target is 721 but it has 436, so the subset is 7215 / 436 = 16.5.
    counts = {"angry": 1554, "disgust": 436, "fear": 2282, "happy": 7215, "sad": 3349, "surprise": 1059}
    info = {
        "class_names": list(counts),
        "splits": {"train": {"class_counts": counts}, "val": {"num_examples": 10}},
        "source": {"format": "longtail", "imbalance_factor": 10.0},
    }
    by_method = {
        "crossentropy": {"accuracy": {"mean": 0.5, "std": 0.1, "n": 2}, "train_seconds": {"mean": 1.0}}
    }
    table = study_report._summary_table("lt", info, "val", by_method)
    assert "imbalance factor 10; its real head/tail ratio is 16.5" in table
    info["source"]["imbalance_factor"] = 16.5  # asked what the counts are: nothing to explain
    table = study_report._summary_table("lt", info, "val", by_method)
    assert "imbalance factor 16.5." in table and "head/tail" not in table
    del info["source"]
    assert "imbalance factor" not in study_report._summary_table("lt", info, "val", by_method)


def test_a_bad_imbalance_factor_is_a_one_line_error(synthetic_data_dir, tmp_path):
    cmd = _study_cmd(tmp_path / "s", synthetic_data_dir, "--imbalance_factors=10,abc")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == "error: --imbalance_factors: 'abc' is not a number >= 1"
