"""Tests for fer_tf/recover.py: an export turned back into the Keras model it was exported from."""

import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from fer_tf import export_lib, models, recover, runs
from tests.test_export import make_run, run_script


def _tiny_fernet(size):
    model = models.build_model("fernet", 7, (size, size, 1), width=0.25, dropout=0.1, depth=0.5)
    rng = np.random.default_rng(3)
    for w in model.weights:  # non-trivial batch-norm statistics, so every weight matters
        if "moving_mean" in w.path or "beta" in w.path:
            w.assign(rng.normal(0, 0.2, w.shape).astype(np.float32))
    return model


@pytest.fixture(scope="module")
def fernet_export(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("recover"))
    model = _tiny_fernet(32)
    run_dir, _ = make_run(root, model=model, image_size=32)
    with open(os.path.join(run_dir, "flags.txt"), "w") as f:
        f.write("--model=fernet\n--width=0.25\n--dropout=0.1\n--model_kw=depth=0.5\n--image_size=32\n")
    out = os.path.join(root, "export")
    export_lib.export_run(run_dir, out, int8=False, tta_flip=True, logit_adjust_tau=0.5, input_size=24)
    return model, out


def test_rebuilt_model_has_the_exported_weights(fernet_export, tmp_path):
    original, out = fernet_export
    path = recover.write_model(out, str(tmp_path / "run"))
    assert path == str(tmp_path / "run" / "model.keras")
    rebuilt = keras.models.load_model(path, compile=False)
    assert rebuilt.input_shape == original.input_shape
    # The stem kernel was a folded graph constant in the SavedModel; it comes back unscaled.
    for want, got in zip(original.weights, rebuilt.weights, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5, err_msg=want.path)
    x = np.random.default_rng(0).uniform(0, 1, (4, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(rebuilt(x), original(x), atol=1e-4)


def test_recovered_directory_is_a_run(fernet_export, tmp_path):
    """The directory gets the run files export.py and soup.py read, from the export's metadata."""
    original, out = fernet_export
    meta = recover._read_metadata(out)
    run_dir = str(tmp_path / "run")
    recover.write_model(out, run_dir)
    info = runs.read_run_info(run_dir)
    assert info["class_names"] == meta["class_names"]
    assert (info["image_size"], info["channels"], info["model"]) == (32, 1, "fernet")  # the network's size
    assert info["params"] == original.count_params()
    counts = meta["source_dataset"]["train_class_counts"]
    np.testing.assert_allclose(
        runs.train_log_prior(info, None), runs.train_log_prior({**info, "train_class_counts": counts}, None)
    )
    assert info["train_class_counts"] and info["data_dir"] == meta["source_dataset"]["data_dir"]
    flags = runs.read_flags(os.path.join(run_dir, "flags.txt"))
    assert (flags["width"], flags["dropout"], flags["model_kw"]) == ("0.25", "0.1", "depth=0.5")
    with open(os.path.join(run_dir, "metrics.json")) as f:  # the run's own, so a re-export keeps them
        assert json.load(f) == meta["validation_metrics"]["run"] and meta["validation_metrics"]["run"]
    # A model is never replaced, nor a run still training given one.
    with pytest.raises(FileExistsError, match="model.keras exists"):
        recover.write_model(out, run_dir)
    os.makedirs(tmp_path / "training" / "backup")
    with pytest.raises(FileExistsError, match="still training"):
        recover.write_model(out, str(tmp_path / "training"))
    # A run that lost its model gets it back, its own files kept; a .keras output writes no run files.
    os.remove(os.path.join(run_dir, "model.keras"))
    with open(os.path.join(run_dir, "run_info.json"), "w") as f:
        f.write('{"kept": true}')
    recover.write_model(out, run_dir)
    with open(os.path.join(run_dir, "run_info.json")) as f:
        assert f.read() == '{"kept": true}'
    recover.write_model(out, str(tmp_path / "alone" / "m.keras"))
    assert os.listdir(tmp_path / "alone") == ["m.keras"]


def test_check_refuses_a_model_that_differs_from_the_export(fernet_export):
    original, out = fernet_export
    meta = recover._read_metadata(out)
    loaded = tf.saved_model.load(os.path.join(out, export_lib.SAVED_MODEL_DIR))
    wrong = keras.models.clone_model(original)
    wrong.set_weights(original.get_weights())
    head = wrong.get_layer("head")
    head.bias.assign(head.bias.numpy() + np.arange(7, dtype=np.float32))
    with pytest.raises(ValueError, match="differs from the export"):
        recover._check(wrong, loaded.signatures["lite"], meta)
    recover._check(original, loaded.signatures["lite"], meta)  # and accepts the real one


def test_cli_writes_the_model_and_fails_in_one_line(fernet_export, tmp_path):
    _, out = fernet_export
    proc = run_script("recover.py", f"--export={out}", f"--output={tmp_path / 'm.keras'}")
    assert proc.returncode == 0, proc.stderr
    assert os.path.exists(tmp_path / "m.keras")
    proc = run_script("recover.py", f"--export={tmp_path / 'none'}", f"--output={tmp_path / 'x'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no export at")
    proc = run_script("recover.py", f"--export={out}", f"--output={tmp_path / 'm.keras'}")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].endswith("nothing is replaced")
    under = tmp_path / "m.keras" / "x.keras"
    proc = run_script("recover.py", f"--export={out}", f"--output={under}")
    assert (
        proc.stderr.strip().splitlines()[-1]
        == f"error: --output={under}: {tmp_path / 'm.keras'} is a file, not a folder"
    )
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "metadata.json").write_text('{"class_names": ["a",')  # truncated
    proc = run_script("recover.py", f"--export={broken}", f"--output={tmp_path / 'b.keras'}")
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: {broken / 'metadata.json'} is not valid JSON")
    )
    shutil.copy(os.path.join(out, "metadata.json"), broken / "metadata.json")
    pb = broken / export_lib.SAVED_MODEL_DIR / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[:1000])
    proc = run_script("recover.py", f"--export={broken}", f"--output={tmp_path / 'b.keras'}")
    assert (
        proc.returncode == 2 and "saved_model is corrupt or truncated" in proc.stderr.strip().splitlines()[-1]
    )


def test_export_of_an_unregistered_model_is_refused(tmp_path):
    run_dir, _ = make_run(str(tmp_path))  # the hand-set "brightness" model of test_export
    out = str(tmp_path / "export")
    export_lib.export_run(run_dir, out, int8=False)
    with pytest.raises(ValueError, match="'brightness' is not one of fer_tf.models"):
        recover.model_from_export(out)
