"""Tests for fer_tf/export_lib.py, quantize.py, logit_adjust.py, predict.py, runs.py and export.py (DESIGN.md contract 4).

A hand-set brightness classifier (identity conv -> mean -> dense) is confident
on synthetic images whose grey level encodes the class, so parity between the
SavedModel and the TFLite files is a real check rather than a coin toss on
near-uniform probabilities. `make_run` is reused by tests/test_evaluate.py.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from fer_tf import data, export_lib, logit_adjust, models, predict, quantize, runs, schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 48
CLASSES = schema.FER2013_CLASSES
CENTERS = (np.arange(len(CLASSES)) + 0.5) / len(CLASSES)
SPLIT_SIZES = {"train": 70, "val": 42}


def class_images(labels, rng, size=SIZE, channels=1):
    """uint8 images whose mean grey level is the class centre, plus noise."""
    base = CENTERS[np.asarray(labels)] * 255.0
    noise = rng.integers(-8, 9, (len(labels), size, size, channels))
    return np.clip(base[:, None, None, None] + noise, 0, 255).astype(np.uint8)


def brightness_model(alpha=300.0, size=SIZE):
    """logit_k = -alpha * (mean - centre_k)^2 + const, through a real conv and dense layer."""
    inputs = keras.Input((size, size, 1))
    x = keras.layers.Conv2D(1, 3, padding="same", use_bias=False, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(CLASSES), name="head")(x)
    model = keras.Model(inputs, outputs)
    kernel = np.zeros((3, 3, 1, 1), np.float32)
    kernel[1, 1] = 1.0
    model.get_layer("conv").set_weights([kernel])
    model.get_layer("head").set_weights([(2 * alpha * CENTERS)[None].astype(np.float32), -alpha * CENTERS**2])
    return model


def write_dataset(data_dir, seed=0, split_sizes=SPLIT_SIZES):
    """A tiny converted dataset: raw 48x48x1 shards and dataset_info.json; returns {split: (x, y)}."""
    rng = np.random.default_rng(seed)
    os.makedirs(data_dir, exist_ok=True)
    arrays, splits = {}, {}
    for split, n in split_sizes.items():
        labels = np.arange(n) % len(CLASSES)
        images = class_images(labels, rng)
        with tf.io.TFRecordWriter(os.path.join(data_dir, schema.shard_name(split, 0, 1))) as writer:
            for i, (image, label) in enumerate(zip(images, labels, strict=True)):
                writer.write(schema.make_example(image, int(label), f"{split}/{i}").SerializeToString())
        counts = {name: int(np.sum(labels == k)) for k, name in enumerate(CLASSES)}
        splits[split] = {"num_examples": n, "class_counts": counts, "num_shards": 1}
        arrays[split] = (images, labels)
    info = schema.make_dataset_info(
        class_names=CLASSES, image_shape=[SIZE, SIZE, 1], encoding="raw", splits=splits,
        source={"format": "synthetic-test"}, skipped={},
    )  # fmt: skip
    schema.write_dataset_info(data_dir, info)
    return arrays


def make_run(root, model=None, image_size=SIZE):
    """A fake `runs/<name>/` (model.keras, run_info.json, flags.txt, metrics.json) and its dataset."""
    data_dir, run_dir = os.path.join(root, "data"), os.path.join(root, "runs", "tiny")
    arrays = write_dataset(data_dir)
    os.makedirs(run_dir)
    (model or brightness_model()).save(os.path.join(run_dir, "model.keras"))
    counts = {name: int(np.sum(arrays["train"][1] == k)) for k, name in enumerate(CLASSES)}
    run_info = {
        "data_dir": data_dir, "class_names": list(CLASSES), "image_size": image_size, "channels": 1,
        "model": "brightness", "dataset_source": {"format": "synthetic-test"}, "train_class_counts": counts,
    }  # fmt: skip
    with open(os.path.join(run_dir, "run_info.json"), "w") as f:
        json.dump(run_info, f)
    with open(os.path.join(run_dir, "flags.txt"), "w") as f:
        f.write("--model=brightness\n--batch_size=8\n--nojit_compile\n--mixed\n")
    with open(os.path.join(run_dir, "metrics.json"), "w") as f:
        json.dump({"n": 42, "accuracy": 1.0}, f)
    return run_dir, arrays


def run_script(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One export through the CLI, shared by the tests of this module."""
    root = str(tmp_path_factory.mktemp("export"))
    run_dir, arrays = make_run(root)
    out = os.path.join(root, "export")
    proc = run_script(
        "export.py", f"--run={run_dir}", f"--output={out}", "--fp16", "--representative_samples=50"
    )
    assert proc.returncode == 0, proc.stderr
    return {"root": root, "run_dir": run_dir, "out": out, "arrays": arrays, "stdout": proc.stdout}


def test_portable_paths_keeps_no_absolute_path(tmp_path):
    base = str(tmp_path)
    meta = {
        "a": os.path.join(base, "runs", "x"),
        "b": ["/elsewhere/data/raw.csv", "rel/path", 3],
        "c": "text",
    }
    assert runs.portable_paths(meta, base) == {
        "a": os.path.join("runs", "x"),
        "b": ["raw.csv", "rel/path", 3],
        "c": "text",
    }


def test_export_directory_follows_the_contract(exported):
    out = exported["out"]
    assert sorted(os.listdir(out)) == sorted(
        [
            "saved_model",
            "model_float32.tflite",
            "model_float16.tflite",
            "model_int8.tflite",
            "labels.txt",
            "metadata.json",
        ]
    )
    with open(os.path.join(out, "labels.txt")) as f:
        assert f.read().splitlines() == list(CLASSES)
    with open(os.path.join(out, "metadata.json")) as f:
        meta = json.load(f)
    assert meta["class_names"] == list(CLASSES)
    assert (meta["input_size"], meta["channels"]) == (SIZE, 1)
    assert meta["preprocessing"]["function"] == "fer_tf.data.preprocess_for_eval"
    assert meta["source_dataset"]["source"] == {"format": "synthetic-test"}
    # The run lives outside the working directory: only its name is kept, no path of this machine.
    run_name = os.path.basename(exported["run_dir"])
    assert meta["model"] == {"name": "brightness", "params": 9 + 1 * 7 + 7, "run_dir": run_name}
    assert exported["root"] not in json.dumps(meta)
    assert meta["flags"] == {
        "model": "brightness",
        "batch_size": "8",
        "jit_compile": "false",
        "mixed": "true",
    }
    assert meta["validation_metrics"]["run"] == {"n": 42, "accuracy": 1.0}
    assert meta["validation_metrics"]["exported"]["saved_model"]["n"] == SPLIT_SIZES["val"]
    assert meta["validation_metrics"]["exported"]["saved_model"]["accuracy"] == 1.0
    assert set(meta["parity"]) == {"float32", "float16", "int8"}
    for result in meta["parity"].values():
        assert result["n"] == SPLIT_SIZES["val"]
        assert result["top1_agreement"] == 1.0
        assert meta["tflite_files"][result["file"]] == os.path.getsize(os.path.join(out, result["file"]))
    assert meta["parity"]["float32"]["max_abs_diff_prob"] < 1e-5
    thresholds = {variant: result["threshold"] for variant, result in meta["parity"].items()}
    assert thresholds == {"float32": 0.999, "float16": 0.99, "int8": 0.98}
    assert meta["parity"]["int8"]["max_abs_diff_prob"] < 0.03
    # The CLI prints the parity table and the file sizes.
    assert "int8" in exported["stdout"] and "model_int8.tflite" in exported["stdout"]


def test_saved_model_takes_any_size_and_channels(exported):
    serve = tf.saved_model.load(os.path.join(exported["out"], "saved_model")).signatures["serving_default"]
    rng = np.random.default_rng(1)
    labels = np.array([0, 3, 6])
    model = brightness_model()
    for size, channels in ((48, 1), (64, 3), (30, 1), (40, 4)):
        images = class_images(labels, rng, size=size, channels=channels)
        out = serve(images=tf.constant(images))
        probs = out["probabilities"].numpy()
        assert out["probabilities"].dtype == tf.float32 and probs.shape == (3, len(CLASSES))
        assert out["label"].dtype == tf.int64
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(out["label"].numpy(), labels)
        assert [c.decode() for c in out["class_name"].numpy()] == [CLASSES[k] for k in labels]
        expected = tf.nn.softmax(model(data.preprocess_for_eval(images[..., :3], SIZE, 1))).numpy()
        np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_tflite_files_have_the_contract_io_and_agree(exported):
    out = exported["out"]
    images, labels = exported["arrays"]["val"]
    reference = predict.load_exported(out)(images)
    for name, out_dtype, tolerance in (
        ("model_float32.tflite", np.float32, 1e-5),
        ("model_float16.tflite", np.float32, 5e-3),
        ("model_int8.tflite", np.uint8, 0.03),
    ):
        interpreter = tf.lite.Interpreter(model_path=os.path.join(out, name))
        (inp,), (outp,) = interpreter.get_input_details(), interpreter.get_output_details()
        assert inp["dtype"] == np.uint8 and list(inp["shape"]) == [1, SIZE, SIZE, 1]
        assert outp["dtype"] == out_dtype and list(outp["shape"]) == [1, len(CLASSES)]
        probs = predict.load_exported(os.path.join(out, name))(images)
        assert np.mean(probs.argmax(-1) == reference.argmax(-1)) == 1.0
        assert np.abs(probs - reference).max() < tolerance, name
        np.testing.assert_array_equal(probs.argmax(-1), labels)
    scale, zero_point = outp["quantization"]
    assert scale > 0 and zero_point == 0  # uint8 output dequantizes to probabilities


def test_tflite_predictor_resizes_like_the_saved_model(exported):
    rng = np.random.default_rng(2)
    images = class_images(np.arange(7), rng, size=57, channels=3)
    saved = predict.load_exported(exported["out"])
    lite = predict.load_exported(os.path.join(exported["out"], "model_float32.tflite"))
    assert lite.class_names == list(CLASSES) and (lite.image_size, lite.channels) == (SIZE, 1)
    # Only the uint8 rounding of the resized image separates the two.
    np.testing.assert_allclose(lite(images), saved(images), atol=0.02)


def test_parity_gate_refuses_and_keeps_the_previous_export(exported, tmp_path):
    out = exported["out"]
    before = {name: os.path.getmtime(os.path.join(out, name)) for name in os.listdir(out)}
    with pytest.raises(
        export_lib.ParityError, match=r"int8 TFLite top-1 agreement 1\.000 < 1\.01 .* on 42 val images"
    ):
        export_lib.export_run(exported["run_dir"], out, parity_threshold=1.01, representative_samples=20)
    assert {name: os.path.getmtime(os.path.join(out, name)) for name in os.listdir(out)} == before
    fresh = str(tmp_path / "fresh")
    with pytest.raises(export_lib.ParityError):
        export_lib.export_run(exported["run_dir"], fresh, parity_threshold=1.01, representative_samples=20)
    assert os.listdir(tmp_path) == []  # no partial export, no staging directory


@pytest.mark.parametrize("flip,zoom", [(True, 0.0), (False, 1.09), (True, 1.2)])
def test_logit_adjustment_and_tta_are_in_the_graph(flip, zoom, tmp_path):
    model = keras.Sequential([keras.Input((SIZE, SIZE, 1)), keras.layers.Conv2D(2, 5, strides=4), keras.layers.Flatten(),
                              keras.layers.Dense(len(CLASSES))])  # fmt: skip
    log_prior = np.log(np.arange(1, 8, dtype=np.float32) / 28.0)
    archive = export_lib.build_export_archive(
        model, CLASSES, logit_adjust_tau=1.5, log_prior=log_prior, tta_flip=flip, tta_zoom=zoom
    )
    archive.write_out(str(tmp_path / "sm"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    images = np.random.default_rng(3).integers(0, 256, (2, 50, 44, 3)).astype(np.uint8)
    x = data.preprocess_for_eval(images, SIZE, 1)
    margin = data.zoom_margin(SIZE, zoom) if zoom else 0
    views = [x] + ([x[:, :, ::-1]] if flip else [])
    views += [tf.image.resize(x[:, margin:-margin, margin:-margin], (SIZE, SIZE))] if zoom else []
    expected = np.mean([tf.nn.softmax(model(v) - 1.5 * log_prior) for v in views], axis=0)
    assert not np.allclose(expected, tf.nn.softmax(model(x) - 1.5 * log_prior), atol=1e-3)
    got = loaded.signatures["serving_default"](images=tf.constant(images))["probabilities"]
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    small = predict.to_model_input(images[:1], SIZE, 1)
    lite = loaded.signatures["lite"](images=tf.constant(small))["probabilities"]
    np.testing.assert_allclose(lite.numpy(), got.numpy()[:1], atol=0.01)


def test_train_log_prior_reads_run_counts():
    info = {"class_names": ["a", "b", "c"], "train_class_counts": {"a": 6, "b": 3, "c": 0}}
    np.testing.assert_allclose(np.exp(runs.train_log_prior(info, None)), [0.6, 0.3, 0.1], rtol=1e-6)


def test_open_run_finds_a_moved_dataset_and_names_who_needs_it(tmp_path):
    run_dir, _ = make_run(str(tmp_path))
    info_path = os.path.join(run_dir, "run_info.json")
    with open(info_path) as f:
        info = json.load(f)
    # A relative data_dir that only resolves from the run directory.
    info["data_dir"] = os.path.relpath(os.path.join(str(tmp_path), "data"), run_dir)
    with open(info_path, "w") as f:
        json.dump(info, f)
    run = runs.open_run(run_dir, "export")
    assert run.data_dir == os.path.join(run_dir, info["data_dir"])
    assert (run.class_names, run.image_size, run.channels) == (list(CLASSES), SIZE, 1)
    assert run.data_info["splits"]["train"]["class_counts"] == info["train_class_counts"]
    assert run.model.input_shape[1:] == (SIZE, SIZE, 1)
    shutil.rmtree(os.path.join(str(tmp_path), "data"))
    with pytest.raises(FileNotFoundError, match="soup needs its train split"):
        runs.open_run(run_dir, "soup")


def test_model_with_unknown_custom_layer_fails_clearly(tmp_path):
    @keras.saving.register_keras_serializable(package="fer_tf_test")
    class Twice(keras.layers.Layer):
        def call(self, x):
            return 2 * x

    model = keras.Sequential(
        [keras.Input((SIZE, SIZE, 1)), Twice(), keras.layers.Flatten(), keras.layers.Dense(7)]
    )
    run_dir, _ = make_run(str(tmp_path), model)
    keras.saving.get_custom_objects().pop("fer_tf_test>Twice")
    with pytest.raises(ValueError, match="custom layers must be importable"):
        export_lib.export_run(run_dir, str(tmp_path / "export"))
    assert not os.path.exists(tmp_path / "export")


def test_truncated_model_file_is_named_as_such(tmp_path):
    run_dir, _ = make_run(str(tmp_path))
    path = os.path.join(run_dir, "model.keras")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ValueError, match="model.keras is truncated or corrupt"):
        export_lib.export_run(run_dir, str(tmp_path / "export"))
    assert not os.path.exists(tmp_path / "export")


def test_export_cli_errors(tmp_path):
    proc = run_script("export.py", f"--run={tmp_path / 'missing'}", f"--output={tmp_path / 'out'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not found" in proc.stderr
    proc = run_script("export.py", f"--run={tmp_path}", "--logit_adjust_tau=strong")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --logit_adjust_tau=strong: expected a number or 'auto'"
    proc = run_script("export.py", f"--run={tmp_path}", "--parity_threshold=1.5")  # refused before any work
    assert proc.returncode == 2  # a usage error, not exit 1: that is a refused (non-parity) export
    assert proc.stderr.strip() == (
        "error: flag --parity_threshold=1.5: 1.5 is not a number in the range [0.0, 1.0]"
    )


def test_killed_export_leaves_no_staging_folder_and_keeps_the_old_export(exported, tmp_path):
    """SIGTERM (a scheduler's time limit, `kill`) unwinds the export like an error does."""
    out = tmp_path / "export"
    shutil.copytree(exported["out"], out)
    before = sorted(os.listdir(out))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen(
        [sys.executable, "export.py", f"--run={exported['run_dir']}", f"--output={out}"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 240
    while not any(".tmp-" in name for name in os.listdir(tmp_path)):  # staging has started
        assert proc.poll() is None and time.time() < deadline, "the export never started staging"
        time.sleep(0.05)
    proc.terminate()
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert sorted(os.listdir(tmp_path)) == ["export"]  # no .export.tmp-* or .export.old-* left
    assert sorted(os.listdir(out)) == before


def test_parity_separates_near_ties_from_confident_flips():
    reference = np.array([[0.51, 0.49, 0.0], [0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.34, 0.33, 0.33]])
    # The int8 stand-in flips the two near-ties (margins 0.02 and 0.01) and one confident face.
    flipped = np.array([[0.49, 0.51, 0.0], [0.9, 0.05, 0.05], [0.7, 0.2, 0.1], [0.33, 0.34, 0.33]])
    result = export_lib.parity(reference, flipped)
    assert result["top1_agreement"] == 0.25
    assert result["confident_share"] == 0.5  # margins 0.85 and 0.5 are >= 0.05
    assert result["top1_agreement_confident"] == 0.5
    assert result["max_abs_diff_prob"] == pytest.approx(0.5)
    assert export_lib.parity(reference, reference)["top1_agreement_confident"] == 1.0


def test_dead_squeeze_excite_is_folded_without_changing_the_output():
    inputs = keras.Input((4, 4, 1))
    x = keras.layers.Conv2D(6, 1, activation="relu", name="b_stem")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    s = keras.layers.Conv2D(2, 1, activation="relu", name="b_se_reduce")(pooled)
    s = keras.layers.Conv2D(6, 1, activation="hard_sigmoid", name="b_se_expand")(s)
    model = keras.Model(inputs, keras.layers.Multiply()([x, s]))
    reduce = model.get_layer("b_se_reduce")
    kernel, bias = reduce.get_weights()
    reduce.set_weights([-np.abs(kernel) - 0.1, bias - 1.0])  # never fires on non-negative input
    images = np.random.default_rng(0).integers(0, 256, (16, 4, 4, 1)).astype(np.uint8)
    before = model.predict(images / 255.0, verbose=0)
    assert quantize.fold_dead_squeeze_excite(model, images) == ["b_se_reduce"]
    np.testing.assert_allclose(model.predict(images / 255.0, verbose=0), before, atol=1e-6)
    assert not np.any(reduce.get_weights()[0]) and np.all(reduce.get_weights()[1] == 1.0)
    # A live squeeze is left alone.
    assert quantize.fold_dead_squeeze_excite(model, images) == []


def test_choose_tau_balances_accuracy_and_balanced_accuracy():
    rows = [
        {"tau": 0.0, "accuracy": 0.70, "balanced_accuracy": 0.60},
        {"tau": 0.5, "accuracy": 0.69, "balanced_accuracy": 0.66},
        {"tau": 1.0, "accuracy": 0.66, "balanced_accuracy": 0.67},  # best balanced, worse mean
        {"tau": 1.5, "accuracy": 0.68, "balanced_accuracy": 0.67},  # same mean as 0.5: the smaller wins
    ]
    assert logit_adjust.choose_logit_adjust_tau(rows) == 0.5


def test_auto_tau_sweeps_the_val_split_and_is_recorded(tmp_path):
    run_dir, arrays = make_run(str(tmp_path))
    # A long-tailed training prior: large tau pushes the angry images (centre 1/14) to disgust.
    with open(os.path.join(run_dir, "run_info.json")) as f:
        run_info = json.load(f)
    run_info["train_class_counts"] = {name: 10 for name in CLASSES} | {"angry": 1000}
    with open(os.path.join(run_dir, "run_info.json"), "w") as f:
        json.dump(run_info, f)
    rows = logit_adjust.sweep_logit_adjust_tau(run_dir, tta_flip=True, taus=(0.0, 1.0, 2.0))
    x_val, y_val = arrays["val"]
    expected = np.mean(brightness_model().predict(x_val / 255.0, verbose=0).argmax(-1) == y_val)
    assert [r["tau"] for r in rows] == [0.0, 1.0, 2.0]
    assert rows[0]["accuracy"] == pytest.approx(expected) and rows[0]["accuracy"] > 0.9
    assert rows[2]["accuracy"] < rows[0]["accuracy"] and rows[2]["min_recall"] == 0.0
    out = str(tmp_path / "export")
    proc = run_script("export.py", f"--run={run_dir}", f"--output={out}", "--logit_adjust_tau=auto",
                      "--noint8", "--tta_flip")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "<- chosen" in proc.stdout
    with open(os.path.join(out, "metadata.json")) as f:
        meta = json.load(f)
    sweep = meta["export_options"]["logit_adjust_sweep"]
    assert [r["tau"] for r in sweep] == list(logit_adjust.TAU_GRID)
    assert meta["export_options"]["logit_adjust_tau"] == logit_adjust.choose_logit_adjust_tau(sweep) == 0.0


def test_zoom_tta_exports_to_int8_and_is_recorded(tmp_path):
    run_dir, _ = make_run(str(tmp_path))
    out = str(tmp_path / "export")
    meta = export_lib.export_run(run_dir, out, tta_zoom=1.09, representative_samples=20)
    assert meta["preprocessing"]["tta_zoom"] == pytest.approx(48 / 44, abs=1e-4)
    assert "central 44 px" in meta["preprocessing"]["output"]
    int8 = meta["validation_metrics"]["exported"]["int8"]
    assert int8["accuracy"] > 0.9  # the parity gate passed and the zoomed view still sees the brightness
    proc = run_script("export.py", f"--run={run_dir}", f"--output={out}", "--tta_zoom=0.9")
    assert proc.returncode == 2 and "--tta_zoom must be 0 (off) or above 1" in proc.stderr


def test_upscaled_network_exports_with_the_original_input_size(tmp_path):
    # A network trained on the 48x48 faces upscaled to 56 (train.py --image_size=56).
    model = brightness_model(size=56)
    model.get_layer("conv").set_weights([np.full((3, 3, 1, 1), 1 / 9, np.float32)])  # sees the resampling
    run_dir, arrays = make_run(str(tmp_path), model=model, image_size=56)
    out = str(tmp_path / "export")
    meta = export_lib.export_run(run_dir, out, input_size=48, tta_flip=True, representative_samples=20)
    assert meta["input_size"] == 48 and meta["preprocessing"]["network_input_size"] == 56
    assert "then bilinear up to the network's 56x56" in meta["preprocessing"]["resize"]
    for variant in ("float32", "int8"):
        interpreter = tf.lite.Interpreter(os.path.join(out, export_lib.TFLITE_FILES[variant]))
        assert list(interpreter.get_input_details()[0]["shape"]) == [1, 48, 48, 1]
        assert meta["validation_metrics"]["exported"][variant]["accuracy"] > 0.9
    # The graph upscales exactly as the training pipeline does (preprocess_for_eval to 56).
    images, _ = arrays["val"]
    x = data.preprocess_for_eval(images, 56, 1)
    want = (tf.nn.softmax(model(x)) + tf.nn.softmax(model(x[:, :, ::-1]))) / 2
    got = predict.load_exported(out)(images)
    np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="between 8 and the model's input size 56"):
        export_lib.export_run(run_dir, str(tmp_path / "bad"), input_size=64)
    proc = run_script("export.py", f"--run={run_dir}", f"--output={tmp_path / 'bad'}", "--input_size=60")
    assert (
        proc.returncode == 2 and "--input_size must be between 8 and the model's input size 56" in proc.stderr
    )
    assert not os.path.exists(tmp_path / "bad")


def test_saved_model_stores_every_weight_once(tmp_path):
    run_dir, _ = make_run(str(tmp_path))
    out = tmp_path / "export"
    export_lib.export_run(run_dir, str(out), int8=False)
    reader = tf.train.load_checkpoint(str(out / "saved_model" / "variables" / "variables"))
    stored = sum(int(np.prod(shape)) for name, shape in reader.get_variable_to_shape_map().items()
                 if not name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH"))  # fmt: skip
    assert stored == brightness_model().count_params()  # keras-team/keras#23553 stored them twice


def test_re_export_keeps_the_model_card(tmp_path):
    run_dir, _ = make_run(str(tmp_path))
    out = tmp_path / "export"
    export_lib.export_run(run_dir, str(out), int8=False)
    (out / "MODEL_CARD.md").write_text("# card\n")
    first = (out / "metadata.json").read_text()
    export_lib.export_run(run_dir, str(out), int8=False, logit_adjust_tau=0.5)
    assert (out / "MODEL_CARD.md").read_text() == "# card\n"
    assert (out / "metadata.json").read_text() != first  # the export itself was replaced


def test_an_output_that_is_or_holds_the_run_is_refused(tmp_path):
    run_dir, _ = make_run(str(tmp_path))
    (tmp_path / "runs" / "metadata.json").write_text("{}")  # looks like an earlier export
    before = sorted(os.listdir(run_dir))
    for out in (run_dir, str(tmp_path / "runs")):
        with pytest.raises(FileExistsError, match="holds the run .*; export to another directory"):
            export_lib.export_run(run_dir, out, int8=False)
    assert sorted(os.listdir(run_dir)) == before and "model.keras" in before


def test_requantization_check_finds_the_op_xnnpack_would_refuse(tmp_path, exported):
    # A conv whose ReLU output is zero on every calibration image gets a ~1e-8 int8 scale,
    # so its own requantization ratio is far above XNNPACK's limit (what release v3 met:
    # a squeeze-excite gate, here not named *_se_* and converted without folding).
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="live")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    dead = keras.layers.Conv2D(2, 1, activation="relu", name="dead")(pooled)
    gate = keras.layers.Conv2D(4, 1, activation="sigmoid", name="gate")(dead)
    x = keras.layers.Multiply()([x, gate])
    outputs = keras.layers.Dense(len(CLASSES))(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    kernel, bias = model.get_layer("dead").get_weights()
    model.get_layer("dead").set_weights([-np.abs(kernel) - 0.1, bias - 1.0])
    saved = str(tmp_path / "saved_model")
    export_lib.build_export_archive(model, list(CLASSES)).write_out(saved, verbose=False)
    images = class_images(np.arange(20) % len(CLASSES), np.random.default_rng(0))
    path = str(tmp_path / "dead.tflite")
    with open(path, "wb") as f:
        f.write(export_lib.convert_tflite(saved, "int8", images))
    check = quantize.requantization_check(path)
    assert check["ops"] == 4  # live, dead, gate, dense
    outside = check["outside_xnnpack_range"]
    assert len(outside) == 1 and "dead" in outside[0]["tensor"] and outside[0]["ratio"] >= 256
    # The healthy brightness model of the shared export passes, and its metadata says so.
    with open(os.path.join(exported["out"], "metadata.json")) as f:
        recorded = json.load(f)["int8_requantization"]
    assert recorded["ops"] == 2 and recorded["outside_xnnpack_range"] == []
    assert 2.0**-32 <= recorded["min_ratio"] <= recorded["max_ratio"] < 256
    assert "WARNING" not in exported["stdout"]


def rescaled_stem(size=SIZE, strides=1, padding="same", use_bias=False, second_reader=False):
    """[0, 1] input -> Rescaling(2, -1) -> conv stem -> pooled logits, with non-trivial weights."""
    inputs = keras.Input((size, size, 1))
    x = keras.layers.Rescaling(2.0, offset=-1.0, name="rescale")(inputs)
    y = keras.layers.Conv2D(4, 3, strides=strides, padding=padding, use_bias=use_bias, name="stem")(x)
    if second_reader:  # the rescaled image is read twice: nothing to fold it into
        y = y + keras.layers.Conv2D(4, 1, strides=strides, padding="same", name="side")(x)
    y = keras.layers.BatchNormalization()(keras.layers.ReLU()(y))
    outputs = keras.layers.Dense(len(CLASSES))(keras.layers.GlobalAveragePooling2D()(y))
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(5)
    model.set_weights([rng.normal(0.5, 0.5, w.shape).astype(np.float32) for w in model.get_weights()])
    return model


@pytest.mark.parametrize(
    "size,strides,padding,use_bias,second_reader",
    [(48, 1, "same", False, False), (47, 2, "same", True, False), (48, 2, "valid", True, False),
     (48, 1, "same", False, True)],
)  # fmt: skip
def test_pixel_network_matches_the_model_on_raw_pixels(size, strides, padding, use_bias, second_reader):
    # The export runs networks on pixel values in [0, 255] (int8 keeps every grey level);
    # folding the rescale into the stem conv must reproduce the "same" zero padding of
    # the rescaled image, odd sizes and strides included.
    model = rescaled_stem(size, strides, padding, use_bias, second_reader)
    pixels = np.random.default_rng(6).integers(0, 256, (3, size, size, 1)).astype(np.float32)
    want = model(pixels / 255.0, training=False).numpy()
    got = quantize.pixel_network(model)(tf.constant(pixels)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    other = brightness_model(size=size)  # no Rescaling: run whole on pixels / 255
    np.testing.assert_allclose(
        quantize.pixel_network(other)(tf.constant(pixels)), other(pixels / 255.0), atol=1e-5
    )


def test_int8_export_sees_exact_pixels_and_averages_views_in_int8(tmp_path):
    # Release v7's int8 graph gave its [0, 1] input 2/255 steps (128 grey levels) and
    # averaged the mirror TTA views in float through DEQUANTIZE + ADD_N.
    model = models.build_model("fernet", len(CLASSES), (SIZE, SIZE, 1), width=0.35)
    run_dir, _ = make_run(str(tmp_path), model=model)
    out = str(tmp_path / "export")
    export_lib.export_run(run_dir, out, tta_flip=True, representative_samples=20, parity_threshold=0.0)
    interpreter = tf.lite.Interpreter(os.path.join(out, export_lib.TFLITE_FILES["int8"]))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    first_conv = next(op for op in ops if op["op_name"] == "CONV_2D")
    assert tensors[first_conv["inputs"][0]]["quantization"] == pytest.approx((1.0, -128))
    assert not {"DEQUANTIZE", "ADD_N"} & {op["op_name"] for op in ops}
    assert ops[-2]["op_name"] == "MEAN"
