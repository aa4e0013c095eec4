"""Tests for fer_tf/models.py and model_tools.py: every registered model builds, runs, saves, loads."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from fer_tf import model_tools, models

# (min, max) parameters and FLOPs at 48x48x1 with 7 classes and default kwargs.
PLAUSIBLE = {
    "seed_cnn": ((1.0e6, 3.0e6), (150e6, 400e6)),
    "mini_xception": ((50e3, 70e3), (8e6, 15e6)),
    "vgg": ((1.5e6, 5e6), (150e6, 400e6)),
    "resnet18": ((2e6, 4e6), (400e6, 900e6)),
    "fernet": ((200e3, 600e3), (20e6, 60e6)),
}


def test_registry_covers_plausibility_table():
    assert set(models.MODELS) == set(PLAUSIBLE)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_model_builds_runs_and_has_plausible_size(name):
    model = models.build_model(name, 7)
    images = np.random.default_rng(0).random((2, 48, 48, 1), dtype=np.float32)
    logits = model(images, training=False)
    assert tuple(logits.shape) == (2, 7) and logits.dtype == tf.float32
    assert np.isfinite(logits.numpy()).all()
    (pmin, pmax), (fmin, fmax) = PLAUSIBLE[name]
    assert pmin < model.count_params() < pmax
    assert fmin < model_tools.count_flops(model) < fmax
    assert model.get_layer(models.HEAD).trainable_weights


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_model_takes_rgb_input_and_other_class_counts(name):
    model = models.build_model(name, 8, (48, 48, 3))
    logits = model(np.zeros((2, 48, 48, 3), np.float32), training=False)
    assert tuple(logits.shape) == (2, 8) and logits.dtype == tf.float32


@pytest.mark.parametrize("name", ["fernet", "mini_xception", "seed_cnn"])
def test_logits_are_float32_under_mixed_precision(name):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = models.build_model(name, 7)
        logits = model(np.zeros((2, 48, 48, 1), np.float32), training=False)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert logits.dtype == tf.float32
    assert model.get_layer("rescale").compute_dtype == "float16"


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_keras_round_trip_gives_identical_outputs(name, tmp_path):
    model = models.build_model(name, 7)
    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    loaded = keras.models.load_model(path, compile=False)
    images = np.random.default_rng(1).random((2, 48, 48, 1), dtype=np.float32)
    np.testing.assert_array_equal(model(images, training=False), loaded(images, training=False))


def test_width_and_depth_scale_fernet():
    base = models.build_model("fernet", 7)
    narrow = models.build_model("fernet", 7, width=0.5)
    shallow = models.build_model("fernet", 7, depth=0.5)
    assert narrow.count_params() < 0.5 * base.count_params()
    assert len(shallow.layers) < len(base.layers)
    assert model_tools.count_flops(shallow) < model_tools.count_flops(base)


def test_build_model_rejects_unknown_name_and_keyword():
    with pytest.raises(ValueError, match="fernet.*mini_xception"):
        models.build_model("alexnet", 7)
    with pytest.raises(TypeError, match="unknown keyword.*'widht'.*'width'"):
        models.build_model("fernet", 7, widht=0.5)


@pytest.mark.parametrize("suffix", [".keras", ".weights.h5"])
def test_load_init_weights_skips_mismatched_head(suffix, tmp_path):
    source = models.build_model("mini_xception", 7)
    path = str(tmp_path / f"source{suffix}")
    source.save(path) if suffix == ".keras" else source.save_weights(path)
    target = models.build_model("mini_xception", 8)
    head_before = target.get_layer("head").get_weights()[0].copy()

    loaded, skipped = model_tools.load_init_weights(target, path)

    assert skipped == ["head"]
    assert "stem1_conv" in loaded and "module4_sep2_bn" in loaded
    assert len(loaded) == len([layer for layer in target.layers if layer.weights]) - 1
    for name in ("stem1_conv", "module2_sep1", "module4_sep2_bn"):
        for got, want in zip(
            target.get_layer(name).get_weights(), source.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(target.get_layer("head").get_weights()[0], head_before)


def test_load_init_weights_rejects_unrelated_file(tmp_path):
    path = str(tmp_path / "other.keras")
    models.build_model("seed_cnn", 7).save(path)
    with pytest.raises(ValueError, match="no layer"):
        model_tools.load_init_weights(models.build_model("fernet", 7), path)
    with pytest.raises(FileNotFoundError):
        model_tools.load_init_weights(models.build_model("fernet", 7), str(tmp_path / "missing.keras"))


def test_backbone_and_head_freezes_all_but_head():
    model = models.build_model("fernet", 7)
    backbone, head = model_tools.backbone_and_head(model)
    assert head.name == "head" and backbone.output.shape[-1] == head.input.shape[-1]
    backbone.trainable = False
    assert [w.path for w in model.trainable_weights] == [w.path for w in head.trainable_weights]


def test_count_flops_by_hand():
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)  # 8*8*4*9*2 = 4608 MACs
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(x)  # 4*4*4*9 = 576
    x = keras.layers.SeparableConv2D(6, 3, padding="same")(x)  # 4*4*(4*9 + 4*6) = 960
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(3)(x)  # 6*3 = 18
    assert model_tools.count_flops(keras.Model(inputs, x)) == 2 * (4608 + 576 + 960 + 18)


def test_count_flops_agrees_with_tf_profiler():
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    model = models.build_model("mini_xception", 7)
    spec = tf.TensorSpec([1, 48, 48, 1], tf.float32)
    graph = convert_variables_to_constants_v2(
        tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    ).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profiled = tf.compat.v1.profiler.profile(graph=graph, cmd="op", options=options).total_float_ops
    # The profiler also counts batch norm, ReLU, pooling and adds (a few %).
    assert model_tools.count_flops(model) <= profiled < 1.1 * model_tools.count_flops(model)


def test_summary_line():
    line = model_tools.summary_line(models.build_model("mini_xception", 7))
    assert re.fullmatch(r"mini_xception: \d{2},\d{3} params, \d+\.\d MFLOPs", line)
