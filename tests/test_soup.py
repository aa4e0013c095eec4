"""Tests for fer_tf/soup.py and soup.py: weight averaging of runs into one model."""

import json
import os
import shutil

import keras
import numpy as np
import pytest
from test_export import brightness_model, make_run, run_script

from fer_tf import soup


def test_average_weights_is_the_elementwise_mean():
    a, b = brightness_model(alpha=100.0), brightness_model(alpha=300.0)
    averaged = soup.average_weights([a, b])
    expected = brightness_model(alpha=200.0).get_weights()
    assert len(averaged) == len(expected)
    for got, want in zip(averaged, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_average_weights_refuses_other_architectures():
    other = keras.Sequential([keras.Input((48, 48, 1)), keras.layers.Flatten(), keras.layers.Dense(7)])
    with pytest.raises(ValueError, match="one architecture"):
        soup.average_weights([brightness_model(), other])


def test_recalibrate_batchnorm_gives_the_mean_of_the_batch_statistics():
    inputs = keras.Input((4,))
    inner = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(name="inner_bn")])
    model = keras.Model(inputs, inner(keras.layers.BatchNormalization(name="outer_bn")(inputs)))
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc=k, scale=1 + k, size=(16, 4)).astype(np.float32) for k in range(5)]
    stream = iter(batches)
    assert soup.recalibrate_batchnorm(model, stream, batches=0) == 0
    assert next(stream) is batches[0]  # nothing was read
    np.testing.assert_array_equal(model.get_layer("outer_bn").moving_mean.numpy(), np.zeros(4))
    used = soup.recalibrate_batchnorm(model, batches, batches=4)
    assert used == 4
    outer = model.get_layer("outer_bn")
    np.testing.assert_allclose(
        outer.moving_mean.numpy(), np.mean([b.mean(0) for b in batches[:4]], 0), rtol=1e-5
    )
    np.testing.assert_allclose(
        outer.moving_variance.numpy(), np.mean([b.var(0) for b in batches[:4]], 0), rtol=1e-4
    )
    # The nested model's layer is found too: its input is normalised, so its mean is ~0, not the initial 0 by chance.
    inner_bn = inner.get_layer("inner_bn")
    assert np.all(inner_bn.moving_variance.numpy() < 1.0) and outer.momentum == inner_bn.momentum == 0.99


def _two_runs(root):
    """A good run (the brightness classifier) and a bad one (its head negated), on one dataset."""
    good, arrays = make_run(root)
    bad = os.path.join(os.path.dirname(good), "bad")
    shutil.copytree(good, bad)
    model = brightness_model()
    kernel, bias = model.get_layer("head").get_weights()
    model.get_layer("head").set_weights([-kernel, -bias])
    model.save(os.path.join(bad, "model.keras"))
    return good, bad, arrays


def test_greedy_soup_drops_a_harmful_run_and_uniform_keeps_it(tmp_path):
    good, bad, arrays = _two_runs(str(tmp_path))
    greedy = soup.make_soup([bad, good], str(tmp_path / "greedy"), recipe="greedy", log=lambda m: None)
    uniform = soup.make_soup([bad, good], str(tmp_path / "uniform"), recipe="uniform", log=lambda m: None)
    x_val, y_val = arrays["val"]
    good_accuracy = np.mean(brightness_model().predict(x_val / 255.0, verbose=0).argmax(-1) == y_val)
    assert greedy["accuracy"] == pytest.approx(good_accuracy) and good_accuracy > 0.9
    # The uniform average of a head and its negation is all zeros: every image gets class 0.
    assert uniform["accuracy"] == pytest.approx(np.mean(y_val == 0))
    with open(tmp_path / "greedy" / "run_info.json") as f:
        record = json.load(f)["soup"]
    assert [i["in_soup"] for i in record["ingredients"]] == [False, True]
    assert record["recipe"] == "greedy" and record["ingredients"][1]["val_accuracy"] == pytest.approx(
        good_accuracy
    )
    for name in ("model.keras", "metrics.json", "flags.txt", "cost.json", "confusion_matrix.png"):
        assert os.path.exists(tmp_path / "greedy" / name), name
    # The saved soup is the kept one, not the last (dropped) trial.
    saved = keras.models.load_model(tmp_path / "greedy" / "model.keras")
    for got, want in zip(saved.get_weights(), brightness_model().get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_last_checkpoint_soup_averages_the_final_epochs(tmp_path):
    """checkpoint="last" reads checkpoints/last.keras, not the best-epoch model.keras."""
    good, bad, arrays = _two_runs(str(tmp_path))
    for run_dir in (good, bad):
        os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
        shutil.copy(os.path.join(good, "model.keras"), os.path.join(run_dir, "checkpoints", "last.keras"))
    last = soup.make_soup(
        [bad, good], str(tmp_path / "last"), recipe="uniform", checkpoint="last", log=lambda m: None
    )
    best = soup.make_soup([bad, good], str(tmp_path / "best"), recipe="uniform", log=lambda m: None)
    x_val, y_val = arrays["val"]
    good_accuracy = np.mean(brightness_model().predict(x_val / 255.0, verbose=0).argmax(-1) == y_val)
    assert last["accuracy"] == pytest.approx(good_accuracy) and good_accuracy > 0.9
    assert best["accuracy"] == pytest.approx(np.mean(y_val == 0))  # bad's best model cancels good's head
    with open(tmp_path / "last" / "run_info.json") as f:
        assert json.load(f)["soup"]["checkpoint"] == "last"
    with pytest.raises(ValueError, match="checkpoint 'first'"):
        soup.make_soup([bad, good], str(tmp_path / "x"), checkpoint="first", log=lambda m: None)


def test_an_ingredient_may_be_a_model_file_inside_a_run(tmp_path):
    good, bad, arrays = _two_runs(str(tmp_path))
    os.makedirs(os.path.join(good, "checkpoints"))
    inside = os.path.join(good, "checkpoints", "epoch1.keras")
    shutil.copy(os.path.join(bad, "model.keras"), inside)  # good's run, bad's weights
    assert soup.split_ingredient(inside) == (good, os.path.join("checkpoints", "epoch1.keras"))
    assert soup.split_ingredient(good, "last") == (good, os.path.join("checkpoints", "last.keras"))
    result = soup.make_soup([inside, good], str(tmp_path / "mixed"), recipe="uniform", log=lambda m: None)
    _, y_val = arrays["val"]
    assert result["accuracy"] == pytest.approx(
        np.mean(y_val == 0)
    )  # the file's weights, not good's model.keras
    with open(tmp_path / "mixed" / "run_info.json") as f:
        first = json.load(f)["soup"]["ingredients"][0]
    assert first["run_dir"] == good and first["model_file"] == os.path.join("checkpoints", "epoch1.keras")
    stray = str(tmp_path / "stray.keras")
    shutil.copy(inside, stray)
    with pytest.raises(FileNotFoundError, match="no run_info.json"):
        soup.split_ingredient(stray)
    proc = run_script("soup.py", f"--runs={stray},{good}", f"--output={tmp_path / 'x'}")
    assert proc.returncode == 2 and "no run_info.json" in proc.stderr


def test_soup_cli_output_exports_like_a_run(tmp_path):
    first, _, _ = _two_runs(str(tmp_path))
    second = os.path.join(os.path.dirname(first), "second")
    shutil.copytree(first, second)
    brightness_model(alpha=200.0).save(os.path.join(second, "model.keras"))
    out = str(tmp_path / "soup")
    proc = run_script("soup.py", f"--runs={first},{second}", f"--output={out}", "--recipe=uniform")
    assert proc.returncode == 0, proc.stderr
    averaged = keras.models.load_model(os.path.join(out, "model.keras")).get_layer("head").get_weights()
    # flags.txt keeps the ingredients' training flags (the architecture export.py records and
    # fer_tf.recover rebuilds); the soup's own command goes to soup_flags.txt.
    with open(os.path.join(out, "flags.txt")) as f, open(os.path.join(first, "flags.txt")) as g:
        assert f.read() == g.read()
    with open(os.path.join(out, "soup_flags.txt")) as f:
        assert "--recipe=uniform" in f.read()
    np.testing.assert_allclose(
        averaged[0], brightness_model(alpha=250.0).get_layer("head").get_weights()[0], rtol=1e-6
    )
    proc = run_script("export.py", f"--run={out}", f"--output={tmp_path / 'export'}", "--noint8")
    assert proc.returncode == 0, proc.stderr
    assert os.path.exists(tmp_path / "export" / "model_float32.tflite")
    again = run_script("soup.py", f"--runs={first},{second}", f"--output={out}")
    assert again.returncode == 2 and "is not empty" in again.stderr


def test_soup_refuses_a_run_in_progress_a_file_and_a_repeated_run(tmp_path):
    first, _, _ = _two_runs(str(tmp_path))
    second = os.path.join(os.path.dirname(first), "second")
    shutil.copytree(first, second)
    training = tmp_path / "training"  # a run mid-training: run files and a backup, no model.keras yet
    (training / "backup").mkdir(parents=True)
    (training / "flags.txt").write_text("--epochs=30\n")
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for output, message in ((training, "is not empty"), (notes, "is a file")):
        proc = run_script("soup.py", f"--runs={first},{second}", f"--output={output}")
        assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].endswith(
            f"--output={output} {message}; a soup {'needs a new run directory' if 'empty' in message else 'is a run directory'}"
        )
    assert sorted(os.listdir(training)) == ["backup", "flags.txt"] and notes.read_text() == "mine"
    with pytest.raises(ValueError, match="is in the soup twice"):
        soup.make_soup([first, second, first + os.sep], str(tmp_path / "x"))


def test_soup_cli_errors(tmp_path):
    first, _, _ = _two_runs(str(tmp_path))
    one = run_script("soup.py", f"--runs={first}", f"--output={tmp_path / 'x'}")
    assert one.returncode == 2 and "at least two" in one.stderr
    missing = run_script("soup.py", f"--runs={first},{tmp_path / 'nope'}", f"--output={tmp_path / 'x'}")
    assert missing.returncode == 2 and "not found" in missing.stderr
    second = os.path.join(os.path.dirname(first), "second")
    shutil.copytree(first, second)
    no_last = run_script(
        "soup.py", f"--runs={first},{second}", f"--output={tmp_path / 'x'}", "--checkpoint=last"
    )
    assert no_last.returncode == 2 and os.path.join("checkpoints", "last.keras") in no_last.stderr
    other = os.path.join(os.path.dirname(first), "other")
    shutil.copytree(first, other)
    with open(os.path.join(other, "run_info.json")) as f:
        info = json.load(f)
    info["image_size"] = 64
    with open(os.path.join(other, "run_info.json"), "w") as f:
        json.dump(info, f)
    mixed = run_script("soup.py", f"--runs={first},{other}", f"--output={tmp_path / 'x'}")
    assert mixed.returncode == 1 and "image_size" in mixed.stderr
    with open(os.path.join(first, "run_info.json")) as f:
        info = json.load(f)
    info["params"] = (info.get("params") or 1000) * 2  # another width of the same model
    with open(os.path.join(other, "run_info.json"), "w") as f:
        json.dump(info, f)
    wider = run_script("soup.py", f"--runs={first},{other}", f"--output={tmp_path / 'x'}")
    assert wider.returncode == 1 and f"{other} differs from {first} in params" in wider.stderr
