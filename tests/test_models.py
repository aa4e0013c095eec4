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


def test_vgg_gap_head_pools_globally_and_runs_at_any_size():
    flat = models.build_model("vgg", 7, width=0.5)
    gap = models.build_model("vgg", 7, width=0.5, head="gap")
    names = {layer.name for layer in gap.layers}
    assert "gap" in names and not names & {"flatten", "fc1", "fc2"}
    # Same convolutions; only the dense layers (3x3x256 -> 512 -> 512) are gone.
    assert flat.count_params() - gap.count_params() > 1.4e6
    larger = models.build_model("vgg", 7, (56, 56, 1), width=0.5, head="gap")
    assert larger.count_params() == gap.count_params()
    assert tuple(larger(np.zeros((2, 56, 56, 1), np.float32), training=False).shape) == (2, 7)
    with pytest.raises(ValueError, match="unknown vgg head 'avg'.*flatten, gap"):
        models.build_model("vgg", 7, head="avg")


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


def _randomised(model: keras.Model, seed: int) -> keras.Model:
    """The model with every weight random, BN statistics included, so no output is trivial."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        low = 0.5 if "variance" in variable.path or "gamma" in variable.path else -0.5
        variable.assign(rng.uniform(low, low + 1.0, shape).astype(np.float32))
    return model


@pytest.mark.parametrize(
    "name,narrow,wide", [("fernet", 0.5, 0.75), ("resnet18", 0.25, 0.5), ("mini_xception", 0.5, 1.0)]
)
def test_load_init_weights_widen_preserves_the_function(name, narrow, wide, tmp_path):
    path = str(tmp_path / "narrow.keras")
    source = _randomised(models.build_model(name, 7, width=narrow), seed=1)
    source.save(path)
    target = models.build_model(name, 7, width=wide)
    assert target.count_params() > 1.5 * source.count_params()
    with_layers = [layer.name for layer in target.layers if layer.weights]

    loaded, skipped = model_tools.load_init_weights(target, path, widen=True)

    assert skipped == [] and loaded == with_layers
    images = np.random.default_rng(2).random((4, 48, 48, 1), dtype=np.float32)
    want = source(images, training=False).numpy()
    np.testing.assert_allclose(target(images, training=False).numpy(), want, rtol=1e-4, atol=1e-4)
    assert np.abs(want).max() > 1e-2  # a non-trivial function was preserved


def test_widened_channels_are_fresh_and_learn(tmp_path):
    path = str(tmp_path / "narrow.keras")
    _randomised(models.build_model("fernet", 7, width=0.5), seed=3).save(path)
    target = models.build_model("fernet", 7, width=0.75)
    fresh = {w.path: w.numpy().copy() for w in target.weights}
    model_tools.load_init_weights(target, path, widen=True)
    project = target.get_layer("stage4_block1_project_conv")
    kernel = project.kernel.numpy()
    narrow_in, narrow_out = keras.models.load_model(path).get_layer(project.name).kernel.shape[-2:]
    # New inputs -> old outputs: zero. New outputs keep their fresh initial values.
    assert not kernel[..., narrow_in:, :narrow_out].any()
    np.testing.assert_array_equal(kernel[..., narrow_out:], fresh[project.kernel.path][..., narrow_out:])
    depthwise = target.get_layer("stage4_block1_dw").weights[0].numpy()
    assert depthwise[..., narrow_in:, :].any()  # channel-wise: new channels are not silenced

    images = np.random.default_rng(4).random((8, 48, 48, 1), dtype=np.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(target(images, training=True) ** 2)
    grad = tape.gradient(loss, project.kernel).numpy()
    assert np.abs(grad[..., narrow_in:, :narrow_out]).max() > 0  # the zero block is trained


def test_widen_refuses_what_it_cannot_preserve(tmp_path):
    path = str(tmp_path / "narrow.keras")
    _randomised(models.build_model("vgg", 7, width=0.25), seed=5).save(path)
    with pytest.raises(ValueError, match="does not preserve its outputs.*Flatten"):
        model_tools.load_init_weights(models.build_model("vgg", 7, width=0.5), path, widen=True)
    with pytest.raises(ValueError, match="needs a .keras model"):
        model_tools.load_init_weights(
            models.build_model("vgg", 7), str(tmp_path / "w.weights.h5"), widen=True
        )


def test_expansion_scale_shrinks_only_the_expanded_channels():
    full = models.build_model("fernet", 7, width=0.5)
    slim = models.build_model("fernet", 7, width=0.5, expansion_scale=0.5)
    assert model_tools.count_flops(slim) < 0.65 * model_tools.count_flops(full)
    for layer in full.layers:
        if layer.name.endswith("_project_conv"):  # block outputs, and so residual paths, keep their width
            assert slim.get_layer(layer.name).kernel.shape[3] == layer.kernel.shape[3]
    # Its input has 16 channels (24 x 0.5), expanded 4x, or 2x when slim.
    assert full.get_layer("stage4_block1_project_conv").kernel.shape[2] == 64
    assert slim.get_layer("stage4_block1_project_conv").kernel.shape[2] == 32
    with pytest.raises(ValueError, match="expansion_scale must be > 0"):
        models.build_model("fernet", 7, expansion_scale=0)


def test_slimming_keeps_the_important_channels_and_is_exact_when_the_rest_are_dead(tmp_path):
    """Channels whose last batch norm outputs zero contribute nothing: removing them is exact."""
    source = _randomised(models.build_model("fernet", 7, width=0.5), seed=6)
    target = models.build_model("fernet", 7, width=0.5, expansion_scale=0.5)
    rng = np.random.default_rng(7)
    dead = {}
    for layer in target.layers:
        if layer.name.endswith("_project_conv"):
            block = layer.name[: -len("_project_conv")]
            names = [f"{block}_dw_bn", f"{block}_fused_bn"]
            bn = next(source.get_layer(n) for n in names if n in {x.name for x in source.layers})
            full, kept = bn.gamma.shape[0], layer.kernel.shape[2]
            if kept < full:
                dead[block] = np.sort(rng.choice(full, full - kept, replace=False))
                bn.gamma.assign(np.where(np.isin(np.arange(full), dead[block]), 0.0, bn.gamma.numpy()))
                bn.beta.assign(np.where(np.isin(np.arange(full), dead[block]), 0.0, bn.beta.numpy()))
    assert len(dead) >= 8  # every expanding block shrinks
    path = str(tmp_path / "wide.keras")
    source.save(path)

    loaded, skipped = model_tools.load_init_weights(target, path, slim=True)

    assert skipped == [] and loaded == [layer.name for layer in target.layers if layer.weights]
    block = "stage4_block2"
    alive = np.setdiff1d(np.arange(source.get_layer(f"{block}_dw").weights[0].shape[2]), dead[block])
    np.testing.assert_array_equal(
        target.get_layer(f"{block}_dw").weights[0].numpy(),
        source.get_layer(f"{block}_dw").weights[0].numpy()[:, :, alive, :],
    )
    images = np.random.default_rng(8).random((4, 48, 48, 1), dtype=np.float32)
    want = source(images, training=False).numpy()
    np.testing.assert_allclose(target(images, training=False).numpy(), want, rtol=1e-4, atol=1e-4)
    assert np.abs(want).max() > 1e-2


def test_slimming_refuses_other_widths_and_weights_files(tmp_path):
    path = str(tmp_path / "wide.keras")
    models.build_model("fernet", 7, width=0.75).save(path)
    with pytest.raises(ValueError, match="stem_conv is .* only the expanded channels"):
        model_tools.load_init_weights(models.build_model("fernet", 7, width=0.5), path, slim=True)
    with pytest.raises(ValueError, match="exclude each other"):
        model_tools.load_init_weights(models.build_model("fernet", 7), path, slim=True, widen=True)
    with pytest.raises(ValueError, match="--init_slim needs a .keras model"):
        model_tools.load_init_weights(
            models.build_model("fernet", 7), str(tmp_path / "w.weights.h5"), slim=True
        )


def test_widen_skips_a_head_for_other_classes(tmp_path):
    path = str(tmp_path / "narrow.keras")
    models.build_model("fernet", 6, width=0.5).save(path)
    _, skipped = model_tools.load_init_weights(models.build_model("fernet", 7, width=0.75), path, widen=True)
    assert skipped == ["head"]


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
