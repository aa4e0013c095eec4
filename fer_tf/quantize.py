"""Int8 preparation and checks: what full-integer TFLite needs from a float Keras model.

- `pixel_network`: the model as a function of raw [0, 255] pixels, its input
  rescale folded into the stem convolution, so int8 holds every grey level.
- `fold_dead_squeeze_excite`: squeeze-excite blocks that calibration never
  fires made constant, so no tensor gets a degenerate int8 scale.
- `representative_sample`: the seeded calibration images.
- `requantization_check`: the per-op scale ratios XNNPACK must accept, or the
  whole int8 graph silently runs undelegated.

`fer_tf.export_lib` uses them to build and convert an export.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from fer_tf import data


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> list[int]:
    """[before, after] padding of one spatial axis under Keras/TF "same" convolution."""
    span = (kernel - 1) * dilation + 1
    total = max((-(-size // stride) - 1) * stride + span - size, 0)
    return [total // 2, total - total // 2]


def pixel_network(model: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    """`model` as a function of raw pixel values: `f(p) == model(p / 255)` for float p in [0, 255].

    The models of `fer_tf.models` begin with `Rescaling(2, offset=-1)` on [0, 1]
    input. A full-integer TFLite graph lost grey levels there: the [0, 1] tensor
    got 2/255 steps (128 levels), and no int8 grid holds the 256 values of
    2p/255 - 1 (the zero point forces a half-step offset). On release v7 that
    was the largest single int8 error: removing it raised int8/float top-1
    agreement on PublicTest from 95.3% to 97.0%.

    When the rescale feeds a single plain convolution (FERNet's stem), both are
    folded into one convolution of the pixels: kernel `W * scale/255`, bias
    `b + offset * sum(W)`, and the "same" zero padding of the rescaled image
    becomes padding with the pixel value that rescales to 0 (127.5; int8 rounds
    it to a neighbouring level, on border pixels only). int8 then holds the
    uint8 pixels exactly. The rest of the network keeps `model`'s weights.
    Other models get the affine map in front, in one step on [0, 255] values.
    """
    rescale = model.layers[1] if len(model.layers) > 1 else None
    if not isinstance(rescale, keras.layers.Rescaling) or rescale.input is not model.inputs[0]:
        return lambda pixels: model(pixels / 255.0, training=False)
    scale, offset = float(rescale.scale) / 255.0, float(rescale.offset)
    readers = [layer for layer in model.layers if layer is not rescale and _reads(layer, rescale.output)]
    conv = readers[0] if len(readers) == 1 else None
    _, height, width, _ = model.input_shape
    if not (_foldable(conv) and height and width):
        after = keras.Model(rescale.output, model.outputs)
        return lambda pixels: after(pixels * scale + offset, training=False)

    after = keras.Model(conv.output, model.outputs)
    kernel = np.asarray(conv.kernel.numpy(), np.float32)
    bias = offset * kernel.sum(axis=(0, 1, 2)) + (conv.bias.numpy() if conv.use_bias else 0.0)
    kernel, bias = tf.constant(kernel * scale), tf.constant(bias.astype(np.float32))
    pads = [[0, 0], [0, 0], [0, 0], [0, 0]]
    if conv.padding == "same":
        for axis, size in ((1, height), (2, width)):
            k, stride, dilation = (
                conv.kernel_size[axis - 1],
                conv.strides[axis - 1],
                conv.dilation_rate[axis - 1],
            )
            pads[axis] = _same_padding(size, k, stride, dilation)
    neutral = -offset / scale  # the pixel value the model's zero padding stands for

    def network(pixels):
        padded = tf.pad(pixels, pads, constant_values=neutral)
        y = tf.nn.conv2d(padded, kernel, conv.strides, "VALID", dilations=conv.dilation_rate) + bias
        return after(y, training=False)

    return network


def _foldable(layer: keras.layers.Layer | None) -> bool:
    """Whether an affine map of its input folds exactly into `layer`: a plain, linear Conv2D."""
    return (
        type(layer) is keras.layers.Conv2D
        and layer.groups == 1
        and layer.data_format == "channels_last"
        and layer.padding in ("same", "valid")
        and layer.activation is keras.activations.linear
    )


def _reads(layer: keras.layers.Layer, tensor: keras.KerasTensor) -> bool:
    """Whether `layer` takes `tensor` as (one of) its inputs."""
    inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
    return any(x is tensor for x in inputs)


# XNNPACK, TFLite's default CPU delegate, takes a quantized conv or dense op only
# when input_scale * filter_scale / output_scale lies in [2**-32, 256) for every
# output channel; one op outside the range left release v3's whole int8 graph
# undelegated (7x slower), with no error at conversion or run time.
XNNPACK_REQUANT_RANGE = (2.0**-32, 256.0)
_REQUANT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def requantization_check(tflite_path: str) -> dict[str, Any]:
    """Requantization ratios of the conv and dense ops of a quantized TFLite file.

    Returns:
      {"ops": ops checked, "max_ratio", "min_ratio", "outside_xnnpack_range":
      [{"op", "tensor", "ratio"}] for the ops XNNPACK would refuse}. A float
      model has no quantized op: ops 0 and no ratios.
    """
    interpreter = tf.lite.Interpreter(
        model_path=tflite_path,
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}

    def scales(index: int) -> np.ndarray:
        return np.asarray(tensors[index]["quantization_parameters"]["scales"], dtype=np.float64)

    low, high = XNNPACK_REQUANT_RANGE
    ratios, outside = [], []
    for op in interpreter._get_ops_details():  # the only public-enough op listing in tf.lite
        if op["op_name"] not in _REQUANT_OPS:
            continue
        x, w, y = scales(op["inputs"][0]), scales(op["inputs"][1]), scales(op["outputs"][0])
        if not (len(x) and len(w) and len(y)):
            continue
        ratio = x[0] * w / y[0]
        ratios.append(ratio)
        bad = ratio[(ratio < low) | (ratio >= high)]
        if len(bad):
            worst = float(bad.max() if bad.max() >= high else bad.min())
            outside.append({"op": op["op_name"], "tensor": tensors[op["outputs"][0]]["name"], "ratio": worst})
    flat = np.concatenate(ratios) if ratios else np.zeros(0)
    return {
        "ops": len(ratios),
        "max_ratio": float(flat.max()) if len(flat) else None,
        "min_ratio": float(flat.min()) if len(flat) else None,
        "outside_xnnpack_range": outside,
    }


def fold_dead_squeeze_excite(model: keras.Model, images: np.ndarray) -> list[str]:
    """Folds squeeze-excite blocks whose squeeze (ReLU) is zero on every calibration image.

    Such a block (FERNet's `<block>_se_reduce` -> `<block>_se_expand`) scales its
    input by a constant, but int8 calibration gives the all-zero tensor a ~1e-8
    scale: the following conv's requantization ratio then exceeds what XNNPACK
    accepts, and the whole int8 graph ran undelegated (7x slower; measured on
    release v3, where weight decay had killed two squeezes). The squeeze is made
    a constant 1 (zero kernel, bias 1) and the excite's bias absorbs it, so the
    float function is the same on those images and the tensor quantizes sanely.

    Args:
      model: modified in place.
      images: uint8 calibration images [N, S, S, C].

    Returns:
      The names of the folded squeeze layers.
    """
    reduces = [layer for layer in model.layers if layer.name.endswith("_se_reduce")]
    if not reduces:
        return []
    probe = keras.Model(model.inputs, [layer.output for layer in reduces])
    outputs = probe.predict(images.astype(np.float32) / 255.0, batch_size=256, verbose=0)
    outputs = outputs if isinstance(outputs, list) else [outputs]
    folded = []
    for reduce, output in zip(reduces, outputs, strict=True):
        if np.max(output) > 0:
            continue
        expand = model.get_layer(reduce.name.removesuffix("_reduce") + "_expand")
        kernel, bias = reduce.get_weights()
        expand_kernel, expand_bias = expand.get_weights()
        reduce.set_weights([np.zeros_like(kernel), np.ones_like(bias)])
        expand.set_weights([expand_kernel, expand_bias - expand_kernel.sum(axis=(0, 1, 2))])
        folded.append(reduce.name)
    if folded:
        logging.info("folded squeeze-excite blocks with an all-zero squeeze: %s", ", ".join(folded))
    return folded


def representative_sample(
    data_dir: str, data_info: Mapping[str, Any], image_size: int, channels: int, count: int, seed: int
) -> np.ndarray:
    """A seeded sample of `count` training images (uint8 [n, S, S, C]) that calibrates int8."""
    images, _ = data.eval_arrays(data_dir, data_info, "train", image_size=image_size, channels=channels)
    rng = np.random.default_rng(seed)
    count = min(count, len(images))
    sample = images[np.sort(rng.choice(len(images), count, replace=False))]
    # The int8 input range is the calibration's pixel range: one black and one white
    # pixel make it [0, 255], so each grey level stays one exact int8 step (scale 1).
    sample[0, 0, 0] = 0
    sample[-1, 0, 0] = 255
    return sample


def to_model_size(images: np.ndarray, model_size: int, channels: int) -> np.ndarray:
    """uint8 images upscaled to the network's input as in training (`data.preprocess_for_eval`)."""
    if images.shape[1] == model_size:
        return images
    x = data.preprocess_for_eval(images, model_size, channels).numpy()
    return np.round(x * 255.0).astype(np.uint8)
