"""End-to-end tests of train_lib / train.py on the shared synthetic dataset."""

import csv
import dataclasses
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from fer_tf import callbacks, cli, models, optim, schema, train_lib

REPO = Path(__file__).resolve().parents[1]


def _config(data_dir, run_dir, **kw):
    base = dict(
        run_dir=str(run_dir),
        data_dir=data_dir,
        model="fernet",
        model_kwargs={"width": 0.5},
        batch_size=32,
        epochs=2,
        steps_per_epoch=6,
        warmup_epochs=0.5,
        verbose=0,
    )
    base.update(kw)
    return train_lib.TrainConfig(**base)


def _history_epochs(run_dir) -> list[int]:
    with open(os.path.join(run_dir, "history.csv"), newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def _event_tags(log_dir) -> set[str]:
    tags = set()
    for path in Path(log_dir).rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(value.tag for value in event.summary.value)
    return tags


@pytest.fixture(scope="module")
def finished_run(synthetic_data_dir, tmp_path_factory):
    # Long enough to learn something: int8 parity is meaningless on a constant predictor.
    config = _config(
        synthetic_data_dir,
        tmp_path_factory.mktemp("runs") / "base",
        epochs=3,
        steps_per_epoch=15,
        learning_rate=3e-3,
    )
    return config, train_lib.train(config, flags_text="--name=base\n")


def test_run_directory_follows_the_contract(finished_run, synthetic_data_dir):
    config, result = finished_run
    run = Path(config.run_dir)
    for name in (
        "flags.txt",
        "run_info.json",
        "model.keras",
        "metrics.json",
        "history.csv",
        "checkpoints/best.keras",
        "checkpoints/last.keras",
        "confusion_matrix.png",
        "curves.png",
    ):
        assert (run / name).exists(), name
    assert (run / "flags.txt").read_text() == "--name=base\n"
    assert not (run / "backup").exists()  # a finished run keeps no resume state
    info = schema.read_dataset_info(synthetic_data_dir)
    assert result["n"] == info["splits"]["val"]["num_examples"]
    assert set(result) >= {"accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion_matrix"}
    assert np.sum(result["confusion_matrix"]) == result["n"]
    assert json.loads((run / "metrics.json").read_text()) == result
    run_info = json.loads((run / "run_info.json").read_text())
    assert run_info["class_names"] == info["class_names"]
    assert run_info["train_class_counts"] == info["splits"]["train"]["class_counts"]
    assert _history_epochs(run) == [0, 1, 2]
    cost = json.loads((run / "cost.json").read_text())
    assert cost["epochs_done"] == 3 and cost["sittings"] == 1
    assert 0 < cost["wall_seconds"] and 0 < cost["cpu_seconds"]
    # Keras files val_* scalars under logs/validation without the prefix.
    assert {"epoch_balanced_accuracy", "epoch_macro_f1", "epoch_recall_disgust"} <= _event_tags(
        run / "logs" / "validation"
    )
    assert "epoch_learning_rate" in _event_tags(run / "logs" / "train")
    assert "validation_confusion_matrix" in _event_tags(run / "logs" / "confusion")


def test_a_finished_run_keeps_its_flags_when_the_name_is_reused(finished_run):
    config, result = finished_run
    other = dataclasses.replace(config, learning_rate=0.5, batch_size=7)
    assert train_lib.train(other, flags_text="--name=base\n--lr=0.5\n--batch_size=7\n") == result
    assert (Path(config.run_dir) / "flags.txt").read_text() == "--name=base\n"


def test_saved_model_reproduces_the_reported_metrics(finished_run, synthetic_data_dir):
    from fer_tf import data, metrics

    config, result = finished_run
    model = keras.models.load_model(os.path.join(config.run_dir, "model.keras"), compile=False)
    info = schema.read_dataset_info(synthetic_data_dir)
    val = data.make_eval_dataset(synthetic_data_dir, info, "val", batch_size=64)
    y_true, logits = metrics.predict_labels(model, val)
    assert metrics.classification_report(y_true, logits, info["class_names"]) == result


def test_last_checkpoint_holds_the_final_epoch(finished_run, synthetic_data_dir):
    """checkpoints/last.keras scores what history.csv logged for the final epoch (soup.py --checkpoint=last)."""
    from fer_tf import data, metrics

    config, _ = finished_run
    with open(os.path.join(config.run_dir, "history.csv"), newline="") as f:
        final = list(csv.DictReader(f))[-1]
    model = keras.models.load_model(os.path.join(config.run_dir, "checkpoints", "last.keras"), compile=False)
    info = schema.read_dataset_info(synthetic_data_dir)
    val = data.make_eval_dataset(synthetic_data_dir, info, "val", batch_size=64)
    y_true, logits = metrics.predict_labels(model, val)
    report = metrics.classification_report(y_true, logits, info["class_names"])
    assert int(final["epoch"]) == config.epochs - 1
    assert report["accuracy"] == pytest.approx(float(final["val_accuracy"]), abs=1e-6)
    assert report["balanced_accuracy"] == pytest.approx(float(final["val_balanced_accuracy"]), abs=1e-6)


def test_trained_run_exports_and_all_formats_agree(finished_run, synthetic_data_dir, tmp_path):
    """The deployment path on a model trained by train_lib: SavedModel and both TFLite files."""
    from fer_tf import data, export_lib, predict

    config, result = finished_run
    out = tmp_path / "export"
    # A 45-step model is not converged; the gate is checked at 0.98 in test_export.py.
    metadata = export_lib.export_run(config.run_dir, str(out), parity_threshold=0.9)
    info = schema.read_dataset_info(synthetic_data_dir)
    images, labels = data.eval_arrays(synthetic_data_dir, info, "val", image_size=48, channels=1)
    reference = predict.load_exported(str(out))(images)
    assert reference.shape == (len(labels), 7)
    np.testing.assert_allclose(reference.sum(axis=1), 1.0, atol=1e-4)
    # The SavedModel reproduces the run's validation accuracy (same preprocessing in the graph).
    assert np.mean(reference.argmax(1) == labels) == pytest.approx(result["accuracy"], abs=1e-6)
    for name, min_agreement, max_delta in (
        ("model_float32.tflite", 1.0, 1e-4),
        ("model_int8.tflite", 0.9, 0.2),
    ):
        probabilities = predict.load_exported(str(out / name))(images)
        agreement = np.mean(probabilities.argmax(1) == reference.argmax(1))
        assert agreement >= min_agreement, name
        assert np.abs(probabilities - reference).max() <= max_delta, name
        variant = name.removeprefix("model_").removesuffix(".tflite")
        assert metadata["parity"][variant]["top1_agreement"] == pytest.approx(agreement, abs=1e-6)


def test_finished_run_is_not_trained_again(finished_run):
    config, result = finished_run
    before = os.path.getmtime(os.path.join(config.run_dir, "model.keras"))
    assert train_lib.train(config) == result
    assert os.path.getmtime(os.path.join(config.run_dir, "model.keras")) == before


def test_crt_refits_only_the_head(finished_run, synthetic_data_dir, tmp_path):
    base_config, _ = finished_run
    config = _config(
        synthetic_data_dir,
        tmp_path / "crt",
        crt_from=base_config.run_dir,
        sampling="balanced",
        epochs=1,
        steps_per_epoch=4,
    )
    train_lib.train(config)
    base = keras.models.load_model(os.path.join(base_config.run_dir, "model.keras"), compile=False)
    crt = keras.models.load_model(os.path.join(config.run_dir, "model.keras"), compile=False)
    for old, new in zip(base.layers, crt.layers):
        same = all(np.array_equal(a, b) for a, b in zip(old.get_weights(), new.get_weights()))
        assert same == (old.name != "head"), old.name


def test_mixed_bfloat16_keeps_float32_logits(synthetic_data_dir, tmp_path):
    config = _config(
        synthetic_data_dir, tmp_path / "bf16", mixed_precision="mixed_bfloat16", epochs=1, steps_per_epoch=3
    )
    try:
        result = train_lib.train(config)
        model = keras.models.load_model(os.path.join(config.run_dir, "model.keras"), compile=False)
        assert model.layers[-1].compute_dtype == "float32" or model.output.dtype == "float32"
        assert model(np.zeros((2, 48, 48, 1), "float32")).dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert 0.0 <= result["accuracy"] <= 1.0
    assert np.isfinite(_history_losses(config.run_dir)).all()


def _history_losses(run_dir) -> np.ndarray:
    return np.array(callbacks.read_history_column(os.path.join(run_dir, "history.csv"), "loss"))


@pytest.mark.parametrize(
    "loss",
    ["crossentropy", "focal", "class_balanced", "class_balanced_focal", "logit_adjusted", "balanced_softmax"],
)
def test_every_loss_flag_builds_a_working_loss(loss, synthetic_data_dir, tmp_path):
    config = _config(
        synthetic_data_dir, tmp_path, loss=loss, label_smoothing=0.1 if loss != "class_balanced" else 0
    )
    fn = train_lib.make_loss(config, schema.read_dataset_info(synthetic_data_dir))
    targets = tf.one_hot([0, 1, 6], 7)
    good = fn(targets, tf.one_hot([0, 1, 6], 7) * 8.0)
    bad = fn(targets, tf.one_hot([3, 3, 3], 7) * 8.0)
    assert np.isfinite(float(good)) and float(good) < float(bad)


def test_nan_loss_stops_and_names_the_step():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    x = np.ones((8, 4), "float32")
    x[5:] = np.nan  # batch 3 of 4 (batch size 2) is the first bad one
    y = np.eye(2, dtype="float32")[np.zeros(8, int)]
    with pytest.raises(callbacks.NanLossError, match=r"epoch 1, step 3 \(global step 3\)"):
        model.fit(
            x,
            y,
            batch_size=2,
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[callbacks.StopOnNaN(steps_per_epoch=4)],
        )


def test_schedules_warm_up_and_decay():
    config = train_lib.TrainConfig(run_dir="", data_dir="", epochs=10, learning_rate=0.1, warmup_epochs=1)
    for name in ("cosine", "onecycle"):
        schedule = optim.make_schedule(dataclasses.replace(config, schedule=name), steps_per_epoch=10)
        lrs = np.array([float(schedule(step)) for step in range(100)])
        peak = int(np.argmax(lrs))
        assert 0 < peak < 40 and lrs[peak] == pytest.approx(0.1, rel=0.05), name
        assert lrs[0] < 0.05 and lrs[-1] < 0.01, name


def test_flagfile_names_resolve_to_configs(tmp_path):
    (tmp_path / "demo.flags").write_text("--epochs=1\n")
    assert cli.resolve_flagfiles(["train.py", "--flagfile=demo.flags"], str(tmp_path)) == [
        "train.py",
        f"--flagfile={tmp_path / 'demo.flags'}",
    ]
    assert cli.resolve_flagfiles(["x", "--flagfile=demo"], str(tmp_path))[1].endswith("demo.flags")
    with pytest.raises(SystemExit) as exit_info:
        cli.resolve_flagfiles(["x", "--flagfile=nope.flags"], str(tmp_path))
    assert exit_info.value.code == 2


PARSE_FLAGFILE = """
import sys
from absl import flags
sys.path.insert(0, {repo!r})
script = {script!r}
if script == "train":
    import train
    train.define_flags()
else:
    import study  # defines its flags on import
flags.FLAGS(["x", "--flagfile={path}"])
print("parsed", flags.FLAGS["epochs"].value)
"""


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs").glob("*.flags")))
def test_every_shipped_flagfile_parses_for_its_script(config):
    """A renamed or misspelt flag in configs/ fails here, not hours into someone's run."""
    path = REPO / "configs" / config
    script = "study" if "--study_dir=" in path.read_text() else "train"
    code = PARSE_FLAGFILE.format(repo=str(REPO), script=script, path=path)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("parsed ")


def _train_cmd(*args):
    return [sys.executable, str(REPO / "train.py"), *args]


def _train_error(*args) -> str:
    """Runs train.py, expecting a one-line error (exit 2, no traceback); returns that line."""
    proc = subprocess.run(_train_cmd(*args), capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return proc.stderr.strip().splitlines()[-1]


def test_model_kw_without_equals_is_a_one_line_error(synthetic_data_dir, tmp_path):
    last = _train_error(
        "--name=kw", f"--runs_dir={tmp_path}", f"--data_dir={synthetic_data_dir}", "--model_kw=foo"
    )
    assert last == "error: --model_kw items must be key=value (e.g. depth=0.5), got 'foo'"
    assert not (tmp_path / "kw").exists()


def test_missing_raw_data_explains_where_to_download(tmp_path):
    last = _train_error(
        "--name=x",
        f"--runs_dir={tmp_path}",
        f"--data_dir={tmp_path / 'fer'}",
        f"--raw_data={tmp_path / 'raw' / 'fer2013.csv'}",
    )
    assert last.startswith("error:") and "kaggle.com" in last


def test_unconvertible_raw_data_is_a_one_line_error(tmp_path):
    raw = tmp_path / "fer2013.csv.gz"
    raw.write_bytes(gzip.compress(b"emotion,pixels,Usage\n" + b"0,1 2 3,Training\n" * 50)[:-20])
    last = _train_error(
        "--name=x", f"--runs_dir={tmp_path}", f"--data_dir={tmp_path / 'fer'}", f"--raw_data={raw}"
    )
    assert last.startswith("error:") and "unreadable gzip" in last and str(raw) in last
    assert not (tmp_path / "fer").exists()


def test_a_model_that_cannot_be_widened_is_a_one_line_error(synthetic_data_dir, tmp_path):
    last = _train_error(
        "--name=wide",
        f"--runs_dir={tmp_path}",
        f"--data_dir={synthetic_data_dir}",
        f"--init_weights={tmp_path / 'narrow.weights.h5'}",
        "--init_widen",
    )
    assert last.startswith("error: --init_widen needs a .keras model")


def test_a_model_that_cannot_be_slimmed_is_a_one_line_error(synthetic_data_dir, tmp_path):
    models.build_model("fernet", 7, width=0.75).save(tmp_path / "other_width.keras")
    last = _train_error(
        "--name=slim",
        f"--runs_dir={tmp_path}",
        f"--data_dir={synthetic_data_dir}",
        "--model=fernet",
        "--width=0.5",
        "--model_kw=expansion_scale=0.5",
        f"--init_weights={tmp_path / 'other_width.keras'}",
        "--init_slim",
    )
    assert last.startswith("error: slimming: stem_conv is") and "only the expanded channels" in last


def test_train_py_converts_missing_tfrecords_from_the_raw_csv(tmp_path):
    from data_tools import synthetic

    raw = tmp_path / "raw" / "fer2013.csv"
    synthetic.write_fer2013_csv(str(raw) + ".gz", num_train=120, num_val=30, seed=2)
    data_dir = tmp_path / "fer2013"
    # --raw_data names the .csv; the .csv.gz beside it is found, as for a Kaggle download.
    proc = subprocess.run(
        _train_cmd(
            "--name=prep",
            f"--runs_dir={tmp_path / 'runs'}",
            f"--data_dir={data_dir}",
            f"--raw_data={raw}",
            "--width=0.5",
            "--batch_size=16",
            "--epochs=1",
            "--steps_per_epoch=2",
            "--verbose=0",
        ),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = schema.read_dataset_info(str(data_dir))
    assert (info["splits"]["train"]["num_examples"], info["splits"]["val"]["num_examples"]) == (120, 30)
    metrics = json.loads((tmp_path / "runs" / "prep" / "metrics.json").read_text())
    assert metrics["n"] == 30
    flags_txt = (tmp_path / "runs" / "prep" / "flags.txt").read_text()
    assert "--epochs=1" in flags_txt and "--pdb" not in flags_txt  # only train.py's own flags


def test_killed_run_resumes_at_the_right_epoch(synthetic_data_dir, tmp_path):
    run = tmp_path / "runs" / "resume"
    cmd = _train_cmd(
        "--name=resume",
        f"--runs_dir={tmp_path / 'runs'}",
        f"--data_dir={synthetic_data_dir}",
        "--model=fernet",
        "--width=0.5",
        "--batch_size=32",
        "--epochs=4",
        "--steps_per_epoch=5",
        "--verbose=0",
    )
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if (run / "history.csv").exists() and len(_history_epochs(run)) >= 2:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(_history_epochs(run))
    assert 2 <= killed_at < 4, "the run should be killed mid-way"
    assert (run / "backup").exists() and not (run / "metrics.json").exists()
    first = json.loads((run / "cost.json").read_text())
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=900)
    # The second sitting adds its time to the first's.
    cost = json.loads((run / "cost.json").read_text())
    assert (cost["sittings"], cost["epochs_done"]) == (2, 4)
    assert cost["wall_seconds"] > first["wall_seconds"] and cost["cpu_seconds"] > first["cpu_seconds"]
    # A restart from scratch would log epochs 0.. again; a resume logs each epoch once.
    assert _history_epochs(run) == [0, 1, 2, 3]
    assert (run / "metrics.json").exists() and not (run / "backup").exists()


def _free_ports(n):
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_on_localhost_end_with_identical_weights(tmp_path):
    from data_tools import fer2013, synthetic

    csv_path = tmp_path / "syn.csv"
    synthetic.write_fer2013_csv(str(csv_path), num_train=200, num_val=40, seed=1)
    data_dir = tmp_path / "data"  # two train shards, so each worker reads its own file
    fer2013.convert_fer2013(str(csv_path), str(data_dir), examples_per_shard=100, progress=False)
    cluster = [f"localhost:{port}" for port in _free_ports(2)]
    procs = []
    for index in range(2):
        env = dict(
            os.environ,
            TF_CONFIG=json.dumps(
                {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}}
            ),
        )
        cmd = _train_cmd(
            f"--name=w{index}",
            f"--runs_dir={tmp_path / 'runs'}",
            f"--data_dir={data_dir}",
            "--strategy=multi_worker",
            "--width=0.5",
            "--batch_size=16",
            "--epochs=2",
            "--steps_per_epoch=3",
            "--verbose=0",
        )
        procs.append(
            subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
        )
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-2000:]
    models = [
        keras.models.load_model(tmp_path / "runs" / f"w{i}" / "model.keras", compile=False) for i in range(2)
    ]
    weights = [m.get_weights() for m in models]
    assert len(weights[0]) > 10
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)
    assert _history_epochs(tmp_path / "runs" / "w0") == [0, 1]
