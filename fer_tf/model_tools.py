"""Tools around a built model: FLOPs, a one-line summary, the backbone/head split, init weights.

`count_flops` and `summary_line` describe a model (train_lib prints the line,
benchmarks compare FLOPs); `backbone_and_head` splits off the classifier layer
`fer_tf.models.HEAD` for classifier re-training (cRT); `load_init_weights`
initialises a model from another one's weights by layer name (fine-tuning),
widening a narrower model or slimming a wider one (`slim_weights`).
"""

from __future__ import annotations

import logging
import math
import os
import re

import keras
import numpy as np
from keras import layers

from fer_tf.models import HEAD

_MAC_LAYERS = (layers.Conv1D, layers.Conv2D, layers.Conv3D, layers.DepthwiseConv2D, layers.Dense)


def _layer_macs(layer: keras.layers.Layer) -> int:
    """Multiply-accumulates of one image through `layer` (conv and dense layers only)."""
    # SeparableConv2D subclasses neither Conv2D nor DepthwiseConv2D.
    if not isinstance(layer, _MAC_LAYERS + (layers.SeparableConv2D,)):
        return 0
    in_ch, out_shape = layer.input.shape[-1], layer.output.shape[1:]
    positions = math.prod(out_shape[:-1])
    if isinstance(layer, layers.Dense):
        return positions * in_ch * layer.units
    kernel = math.prod(layer.kernel_size)
    if isinstance(layer, layers.DepthwiseConv2D):
        return positions * kernel * in_ch * layer.depth_multiplier
    if isinstance(layer, layers.SeparableConv2D):
        mid = in_ch * layer.depth_multiplier
        return positions * (kernel * mid + mid * out_shape[-1])
    return positions * kernel * (in_ch // layer.groups) * out_shape[-1]


def count_flops(model: keras.Model) -> int:
    """FLOPs of one image, counted analytically as 2 x MACs of conv and dense layers.

    Biases, batch norm (folded at export), activations, pooling and additions
    are not counted, the convention of the MobileNet and EfficientNet papers.
    Nested models are counted recursively.
    """
    macs = 0
    for layer in model.layers:
        macs += count_flops(layer) // 2 if isinstance(layer, keras.Model) else _layer_macs(layer)
    return 2 * macs


def summary_line(model: keras.Model) -> str:
    """One line, e.g. `fernet: 412,345 params, 38.2 MFLOPs`."""
    return f"{model.name}: {model.count_params():,} params, {count_flops(model) / 1e6:.1f} MFLOPs"


def backbone_and_head(model: keras.Model) -> tuple[keras.Model, keras.layers.Layer]:
    """Splits `model` into a feature extractor and its classifier layer `HEAD`.

    The backbone shares layers with `model`, so `backbone.trainable = False`
    freezes all but the head of `model` (classifier re-training, cRT).
    """
    try:
        head = model.get_layer(HEAD)
    except ValueError:
        raise ValueError(f"model {model.name!r} has no layer named {HEAD!r}") from None
    return keras.Model(model.inputs, head.input, name=f"{model.name}_backbone"), head


def _snake_case(name: str) -> str:
    # Keras' rule (keras.src.utils.naming.to_snake_case) for groups in .weights.h5.
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _h5_weights_by_name(model: keras.Model, path: str) -> dict[str, list]:
    """Reads a `.weights.h5`, keyed by the names of `model`'s corresponding layers.

    Keras stores these files by layer class and order (`layers/conv2d_3/vars`),
    not by name, so they are matched to `model` through that same rule: this
    is name matching whenever both models come from the same builder.
    """
    import h5py  # noqa: PLC0415 (a Keras dependency, only needed here)

    weights, used = {}, {}
    with h5py.File(path, "r") as f:
        for layer in model.layers:
            key = _snake_case(type(layer).__name__)
            used[key] = used.get(key, -1) + 1
            group = f"layers/{key}_{used[key]}" if used[key] else f"layers/{key}"
            if f"{group}/vars" in f and len(f[f"{group}/vars"]):
                variables = f[f"{group}/vars"]
                weights[layer.name] = [variables[str(i)][()] for i in range(len(variables))]
    return weights


# The layers of one inverted-residual block share a name prefix (fer_tf.models._inverted_residual).
_BLOCK = re.compile(r"^(stage\d+_block\d+)_")
# The layer whose batch norm scales a block's expanded channels just before the projection.
_HIDDEN_BN = ("_dw_bn", "_fused_bn")


def _hidden_importance(source: keras.Model, block: str) -> np.ndarray:
    """How much each expanded channel of `block` contributes to its output.

    |batch-norm scale| of the channel (network slimming, Liu et al. 2017) times
    the L2 norm of its row in the projection kernel: a channel that is scaled
    down or barely projected changes the block's output little when removed.
    """
    names = {layer.name for layer in source.layers}
    bn = next(f"{block}{suffix}" for suffix in _HIDDEN_BN if f"{block}{suffix}" in names)
    gamma = np.abs(source.get_layer(bn).gamma.numpy())
    project = source.get_layer(f"{block}_project_conv").kernel.numpy()  # [1, 1, hidden, out]
    return gamma * np.linalg.norm(project.reshape(project.shape[2], -1), axis=1)


def slim_weights(source: keras.Model, model: keras.Model) -> dict[str, list[np.ndarray]]:
    """Weights for `model` taken from `source`, the same network with more expanded channels.

    For a FERNet built with a lower `expansion_scale`: every inverted-residual
    block keeps the expanded channels of `source` with the highest
    `_hidden_importance`, in their original order, and every weight of the
    block is cut to them (expanding and depthwise convs, their batch norms,
    squeeze-excite, the projection's inputs). All other layers must match in
    shape and are copied. The slimmed network computes an approximation of
    `source` that fine-tuning (`train.py --init_slim`) then repairs.

    Returns:
      {layer name: weights} for every layer of `model` that has weights.

    Raises:
      ValueError: when a layer is missing from `source`, or differs in shape
        outside the expanded channels of a block (e.g. another --width).
    """
    out, keep = {}, {}
    for layer in model.layers:
        if not layer.weights:
            continue
        try:
            values = source.get_layer(layer.name).get_weights()
        except ValueError:
            raise ValueError(f"slimming: {source.name} has no layer {layer.name}") from None
        shapes = [tuple(w.shape) for w in layer.weights]
        match = _BLOCK.match(layer.name)
        if [v.shape for v in values] != shapes and match:
            block = match.group(1)
            hidden = model.get_layer(f"{block}_project_conv").kernel.shape[2]
            if block not in keep:
                order = np.argsort(-_hidden_importance(source, block), kind="stable")
                keep[block] = np.sort(order[:hidden])
            full = source.get_layer(f"{block}_project_conv").kernel.shape[2]
            cut = []
            for value, shape in zip(values, shapes, strict=True):
                for axis, (have, want) in enumerate(zip(value.shape, shape, strict=True)):
                    if (have, want) == (full, hidden):
                        value = np.take(value, keep[block], axis=axis)
                cut.append(value)
            values = cut
        if [v.shape for v in values] != shapes:
            raise ValueError(
                f"slimming: {layer.name} is {shapes} in the new model, {[v.shape for v in values]} in "
                f"{source.name}; only the expanded channels of the blocks (expansion_scale) may shrink"
            )
        out[layer.name] = values
    return out


def load_init_weights(
    model: keras.Model, path: str, *, widen: bool = False, slim: bool = False
) -> tuple[list[str], list[str]]:
    """Initialises `model` from a `.keras` or `.weights.h5` file, layer by layer name.

    Layers whose weights are missing from the file or differ in shape (e.g. a
    head for another number of classes) keep their initial values and are
    reported. With `widen`, a layer whose file weights fit inside its own (a
    narrower model of the same architecture, e.g. FERNet x1.0 into x1.3) is
    embedded instead, so that the wider model computes the same function
    (`embed_narrow_weights`). With `slim`, a FERNet with fewer expanded
    channels keeps the file's most important ones (`slim_weights`).

    Args:
      model: the model to initialise, modified in place.
      path: a `.keras` model (matched by layer name) or `.weights.h5` file.
      widen: embed narrower weights instead of skipping them (`.keras` only).
      slim: cut wider expanded channels to the most important ones (`.keras` only).

    Returns:
      (loaded, skipped): names of the layers with weights that were loaded and
      that were left as initialised.

    Raises:
      ValueError: for an unusable file, or when a widened model that loaded
        every layer does not reproduce the file's outputs (channels mixed by a
        layer other than Conv2D, SeparableConv2D or Dense, e.g. VGG's Flatten).
    """
    if widen and slim:
        raise ValueError("--init_widen and --init_slim exclude each other")
    for wanted, option in ((widen, "--init_widen"), (slim, "--init_slim")):
        if wanted and not path.endswith(".keras"):
            raise ValueError(f"{option} needs a .keras model, got {path}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"init weights not found: {path}")
    if path.endswith(".keras"):
        source = keras.models.load_model(path, compile=False)
        if slim:
            weights = slim_weights(source, model)
        else:
            weights = {layer.name: layer.get_weights() for layer in source.layers if layer.weights}
    elif path.endswith(".weights.h5"):
        weights = _h5_weights_by_name(model, path)
    else:
        raise ValueError(f"init weights must be a .keras or .weights.h5 file, got {path}")
    loaded, skipped = [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        values = weights.get(layer.name)
        shapes = [tuple(w.shape) for w in layer.weights]
        if widen and values is not None and _fits_inside(layer, values):
            values = embed_narrow_weights(layer, values)
        if values is None or [tuple(v.shape) for v in values] != shapes:
            found = None if values is None else [tuple(v.shape) for v in values]
            logging.warning("init weights: skip %s (model %s, file %s)", layer.name, shapes, found)
            skipped.append(layer.name)
            continue
        layer.set_weights(values)
        loaded.append(layer.name)
    if not loaded:
        raise ValueError(f"no layer of {model.name!r} matches {path} by name and shape")
    if widen and not skipped:
        _check_same_function(source, model)
    return loaded, skipped


def _check_same_function(source: keras.Model, model: keras.Model) -> None:
    images = np.random.default_rng(0).random((4, *model.input_shape[1:]), dtype=np.float32)
    want = np.asarray(source(images, training=False))
    error = float(np.abs(np.asarray(model(images, training=False)) - want).max())
    if error > 1e-3 * max(1.0, float(np.abs(want).max())):
        raise ValueError(
            f"widening {source.name} does not preserve its outputs (max difference {error:.3g}): "
            "it mixes channels outside Conv2D/SeparableConv2D/Dense kernels (e.g. a Flatten)"
        )


def _fits_inside(layer: keras.layers.Layer, values: list) -> bool:
    if len(values) != len(layer.weights) or any(
        v.ndim != len(w.shape) for v, w in zip(values, layer.weights)
    ):
        return False
    if layer.name == HEAD and values[0].shape[-1] != layer.weights[0].shape[-1]:
        return False  # a head for other classes is re-learnt, not embedded
    return all(all(a <= b for a, b in zip(v.shape, w.shape)) for v, w in zip(values, layer.weights))


def embed_narrow_weights(layer: keras.layers.Layer, values: list) -> list:
    """The layer's own weights with a narrower copy of it (`values`) embedded, function-preservingly.

    Function-preserving widening as in Net2Net (Chen et al. 2016), but with fresh
    units instead of copies of old ones: each weight keeps its initial values,
    the narrow values overwrite its leading slice, and in a channel-mixing kernel
    (Conv2D, SeparableConv2D's pointwise, Dense) the block from the new input
    channels to the old output channels is zeroed. The new channels are then
    invisible to the old ones, so the wider network computes the narrow one's
    outputs exactly, while they still receive gradients and learn. Channel-wise
    weights (depthwise kernels, batch norm, biases) need no zeroing.
    """
    mixing = isinstance(layer, (layers.Conv2D, layers.Dense))
    out = []
    for variable, narrow in zip(layer.weights, values):
        full = np.array(variable.numpy())
        if (mixing and full.ndim >= 2) or variable.path.endswith("pointwise_kernel"):
            full[..., narrow.shape[-2] :, : narrow.shape[-1]] = 0.0
        full[tuple(slice(0, n) for n in narrow.shape)] = narrow
        out.append(full)
    return out
