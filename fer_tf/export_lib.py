"""Export a trained run: SavedModel, TFLite float32/float16/int8, parity gate.

The SavedModel is built with `keras.export.ExportArchive`, because TFLite's
converter fails on a `tf.Module` that calls a Keras 3 model (DESIGN.md,
Pitfalls). It has two endpoints sharing one set of weights:

- `serving_default`: uint8 images `[N, H, W, 1|3|4]` of any size; preprocessing
  (`fer_tf.data.preprocess_for_eval`) happens in the graph; returns
  `probabilities`, `label` and `class_name` (contract 4).
- `lite`: uint8 `[1, S, S, C]`, already at the export's input size S; the
  TFLite files are converted from it.

The export's input size is the model's unless `input_size` is smaller: a
network trained on 48x48 faces upscaled to 56x56 (`train.py --image_size=56`)
then takes 48x48 faces everywhere, and the graph upscales them to 56 (bilinear)
as the training pipeline did.

`export_run` writes everything into a temporary directory beside the output
and renames it only after every TFLite variant agrees with the SavedModel on
the validation split, so a refused export leaves nothing behind. The run is
read through `fer_tf.runs`; `fer_tf.predict` loads the result for inference.
The int8-specific graph folds and checks live in `fer_tf.quantize`, the choice
of the logit-adjustment strength in `fer_tf.logit_adjust`.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from fer_tf import cli, data, metrics, outdir, quantize, runs
from fer_tf.classifiers import FLOAT32_FILE, INT8_FILE
from fer_tf.predict import LABELS_FILE, METADATA_FILE, SAVED_MODEL_DIR, SavedModelPredictor, TFLitePredictor

TFLITE_FILES = {
    "float32": FLOAT32_FILE,
    "float16": "model_float16.tflite",
    "int8": INT8_FILE,
}
DEFAULT_PARITY_THRESHOLD = 0.98  # int8 top-1 agreement with the SavedModel
# Float variants differ from the SavedModel only by rounding, so only near-ties
# may flip. A parity_threshold below the default relaxes these too (an override).
FLOAT_PARITY = {"float32": 0.999, "float16": 0.99}


class ParityError(RuntimeError):
    """A TFLite variant disagrees with the SavedModel too often to be shipped."""


# ---------------------------------------------------------------- SavedModel


def build_export_archive(
    model: keras.Model,
    class_names: Sequence[str],
    *,
    logit_adjust_tau: float = 0.0,
    log_prior: np.ndarray | None = None,
    tta_flip: bool = False,
    tta_zoom: float = 0.0,
    input_size: int | None = None,
) -> keras.export.ExportArchive:
    """Builds the `serving_default` and `lite` endpoints around `model`.

    Args:
      model: Keras model, float32 `[N, S, S, C]` in [0, 1] -> logits `[N, K]`.
      class_names: the K names returned as `class_name`.
      logit_adjust_tau: post-hoc logit adjustment (Menon 2021):
        `logits - tau * log_prior` before the softmax.
      log_prior: log training class priors `[K]`, needed when tau != 0.
      tta_flip: average the probabilities of each image and its mirror.
      tta_zoom: when > 1, also average in the image zoomed in on its centre by
        this factor (`data.center_zoom`).
      input_size: side of the endpoints' images after preprocessing, at most the
        model's S (None: S); smaller ones are upscaled to S in the graph.

    Returns:
      The archive; call `write_out(path)`.
    """
    _, size, _, channels = model.input_shape
    in_size = check_input_size(input_size, size)
    adjustment = np.zeros(len(class_names), np.float32)
    if logit_adjust_tau:
        adjustment = (logit_adjust_tau * np.asarray(log_prior)).astype(np.float32)
    network = quantize.pixel_network(model)

    def probabilities(pixels):
        # `pixels`: float [N, in_size, in_size, C] in [0, 255]. Every op up to the network's
        # affine input layer is linear, so the views are taken on pixel values.
        if in_size != size:
            # Plain bilinear (an upscale: antialiasing would change nothing), a TFLite op.
            pixels = tf.image.resize(pixels, [size, size], method="bilinear")
        views = data.tta_views(pixels, tta_flip, tta_zoom)
        logits = network(tf.concat(views, axis=0))
        every = tf.nn.softmax(logits - adjustment, axis=-1)
        if len(views) == 1:
            return every
        # One MEAN over a views axis: int8 TFLite averages at full resolution in one
        # op (ADD_N has no int8 kernel and made the converter dequantize).
        return tf.reduce_mean(tf.reshape(every, [len(views), -1, every.shape[-1]]), axis=0)

    def serve(images):
        # The signature's channel count is dynamic, preprocess_for_eval needs it
        # static: each branch slices to 1 or 3 channels (4: alpha dropped).
        def sliced(n):
            return lambda: data.preprocess_for_eval(
                tf.ensure_shape(images[..., :n], [None, None, None, n]), in_size, channels
            )

        in_channels = tf.shape(images)[-1]
        valid = tf.reduce_any(tf.equal(in_channels, [1, 3, 4]))
        tf.debugging.assert_equal(valid, True, message="images must have 1, 3 or 4 channels")
        probs = probabilities(255.0 * tf.cond(in_channels == 1, sliced(1), sliced(3)))
        label = tf.argmax(probs, axis=-1, output_type=tf.int64)
        return {"probabilities": probs, "label": label, "class_name": tf.gather(list(class_names), label)}

    def lite(images):
        # Already in_size x in_size with the model's channels, so preprocess_for_eval has
        # nothing to do but scale to [0, 1]; that is folded into the network's input
        # layer instead (`pixel_network`), so int8 keeps all 256 grey levels.
        return {"probabilities": probabilities(tf.cast(images, tf.float32))}

    # No archive.track(model): add_endpoint already saves the variables the endpoints use, and
    # tracking the model as well stores every weight twice (keras-team/keras#23553).
    archive = keras.export.ExportArchive()
    archive.add_endpoint(
        "serving_default",
        serve,
        input_signature=[tf.TensorSpec([None, None, None, None], tf.uint8, name="images")],
    )
    archive.add_endpoint(
        "lite",
        lite,
        input_signature=[tf.TensorSpec([1, in_size, in_size, channels], tf.uint8, name="images")],
    )
    return archive


def check_input_size(input_size: int | None, model_size: int) -> int:
    """The export input size for `input_size` (None or 0: the model's); ValueError above it or below 8."""
    if not input_size:
        return model_size
    if not 8 <= input_size <= model_size:
        raise ValueError(
            f"--input_size must be between 8 and the model's input size {model_size} "
            f"(the graph only upscales), got {input_size}"
        )
    return int(input_size)


def convert_tflite(saved_model_dir: str, variant: str, representative: np.ndarray | None = None) -> bytes:
    """Converts the `lite` endpoint to TFLite.

    Args:
      saved_model_dir: a SavedModel from `build_export_archive`.
      variant: "float32", "float16" or "int8" (full integer; uint8 in and out).
      representative: uint8 `[N, S, S, C]` calibration images, needed for int8.

    Returns:
      The flatbuffer bytes.
    """
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=["lite"])
    if variant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "int8":
        if representative is None or not len(representative):
            raise ValueError("int8 conversion needs representative images")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
        converter.representative_dataset = lambda: ({"images": image[None]} for image in representative)
    elif variant != "float32":
        raise ValueError(f"unknown TFLite variant {variant!r}; expected one of {sorted(TFLITE_FILES)}")
    return converter.convert()


# ---------------------------------------------------------------- parity and export


# Reference top-1 minus top-2 probability below which a face counts as a near-tie in parity.
PARITY_MARGIN = 0.05


def parity(reference: np.ndarray, probabilities: np.ndarray, margin: float = PARITY_MARGIN) -> dict[str, Any]:
    """Top-1 agreement and max |delta p| of `probabilities` against `reference` ([N, K] each).

    Int8 rounding mostly flips near-ties of the reference (measured on the release
    model: median top-1 minus top-2 gap 0.02 on the faces where they disagree), so
    the agreement is also given over the faces whose reference margin is >= `margin`
    (`top1_agreement_confident`, over `confident_share` of the faces): a drop there
    is quantization damage, not a coin toss between two classes.
    """
    agree = np.argmax(reference, axis=-1) == np.argmax(probabilities, axis=-1)
    top2 = np.sort(reference, axis=-1)[:, -2:]
    confident = (top2[:, 1] - top2[:, 0]) >= margin
    return {
        "top1_agreement": float(np.mean(agree)),
        "top1_agreement_confident": float(np.mean(agree[confident])) if confident.any() else 1.0,
        "confident_margin": margin,
        "confident_share": float(np.mean(confident)),
        "max_abs_diff_prob": float(np.max(np.abs(reference - probabilities))),
        "n": int(len(reference)),
    }


def _check_parity(results: Mapping[str, Mapping[str, Any]], split: str) -> None:
    for variant, result in results.items():
        if result["top1_agreement"] < result["threshold"]:
            raise ParityError(
                # Rounded down, so an agreement just under the threshold never prints as equal.
                f"{variant} TFLite top-1 agreement {math.floor(result['top1_agreement'] * 1000) / 1000:.3f} "
                f"< {result['threshold']:g} "
                f"with the SavedModel on {result['n']} {split} images; not exporting "
                "(use --parity_threshold to override)"
            )


def _convert_variants(staging, variants, representative):
    sizes = {}
    for variant in variants:
        logging.info("converting %s TFLite", variant)
        path = os.path.join(staging, TFLITE_FILES[variant])
        with open(path, "wb") as f:
            f.write(convert_tflite(os.path.join(staging, SAVED_MODEL_DIR), variant, representative))
        sizes[TFLITE_FILES[variant]] = os.path.getsize(path)
    return sizes


def _measure(staging, variants, class_names, data_dir, data_info, split, image_size, channels, options):
    """Runs the split through the SavedModel and every TFLite file: parity + metrics."""
    images, labels = data.eval_arrays(data_dir, data_info, split, image_size=image_size, channels=channels)
    images, labels = images[: options["parity_samples"]], labels[: options["parity_samples"]]
    logging.info("parity check on %d %s images", len(images), split)
    reference = SavedModelPredictor(os.path.join(staging, SAVED_MODEL_DIR), class_names)(images)
    exported = {"saved_model": metrics.classification_report(labels, reference.argmax(-1), class_names)}
    results = {}
    for variant in variants:
        probs = TFLitePredictor(os.path.join(staging, TFLITE_FILES[variant]), class_names)(images)
        threshold = options["parity_threshold"]
        if variant != "int8" and threshold >= DEFAULT_PARITY_THRESHOLD:
            threshold = FLOAT_PARITY[variant]
        results[variant] = {"file": TFLITE_FILES[variant], **parity(reference, probs), "threshold": threshold}
        report = metrics.classification_report(labels, probs.argmax(-1), class_names)
        exported[variant] = {k: report[k] for k in ("n", "accuracy", "balanced_accuracy", "macro_f1")}
    return results, exported


def _preprocessing(
    image_size: int, channels: int, logit_adjust_tau: float, tta_flip: bool, tta_zoom: float, model_size: int
) -> dict[str, Any]:
    views = ["the mirrored image"] if tta_flip else []
    if tta_zoom:
        margin = data.zoom_margin(model_size, tta_zoom)
        views.append(f"the central {model_size - 2 * margin} px zoomed back to {model_size} (bilinear)")
    resize = f"bilinear, antialiased, to {image_size}x{image_size} (aspect ratio not kept)"
    if model_size != image_size:
        resize += f", then bilinear up to the network's {model_size}x{model_size}"
    return {
        "function": "fer_tf.data.preprocess_for_eval",
        "input": "uint8 pixels [N, H, W, 1|3|4] (RGB order; alpha dropped), any H and W",
        "color": "grayscale (tf.image.rgb_to_grayscale)" if channels == 1 else "RGB (gray repeated)",
        "resize": resize,
        "scale": "divide by 255 to float32 [0, 1]",
        "tflite_input": f"uint8 [1, {image_size}, {image_size}, {channels}] raw pixels, already resized",
        "logit_adjust_tau": float(logit_adjust_tau),
        "logit_adjustment": "softmax(logits - tau * log(train class prior))" if logit_adjust_tau else None,
        "tta_flip": bool(tta_flip),
        "tta_zoom": round(data.effective_zoom(model_size, tta_zoom), 4) if tta_zoom else 0.0,
        "network_input_size": model_size,
        "output": "softmax probabilities" + (" averaged with " + " and ".join(views) if views else ""),
    }


def _parity_split(data_dir: str, data_info: Mapping[str, Any], class_names: Sequence[str]) -> str:
    """The split the parity check runs on (val, else test); ValueError if the dataset cannot serve."""
    if list(data_info["class_names"]) != list(class_names):
        raise ValueError(
            f"classes of {data_dir} {data_info['class_names']} differ from the run's {list(class_names)}"
        )
    split = next((s for s in ("val", "test") if data_info["splits"].get(s, {}).get("num_examples")), None)
    if split is None:
        raise ValueError(f"{data_dir} has no val or test split for the parity check")
    return split


def _requantization(int8_path: str) -> dict[str, Any]:
    """`quantize.requantization_check` of the int8 file, with a warning per op XNNPACK would refuse."""
    check = quantize.requantization_check(int8_path)
    for op in check["outside_xnnpack_range"]:
        logging.warning(
            "int8 %s %s: requantization ratio %.3g is outside XNNPACK's range; the int8 model "
            "will run undelegated (several times slower)",
            op["op"],
            op["tensor"],
            op["ratio"],
        )
    return check


def _write_export(staging: str, run_dir: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Writes a complete export into `staging` and returns its metadata; raises ParityError."""
    run = runs.open_run(run_dir, "export")
    run_info, model, data_dir, data_info = run.info, run.model, run.data_dir, run.data_info
    class_names, model_size, channels = run.class_names, run.image_size, run.channels
    tau = options["logit_adjust_tau"]
    split = _parity_split(data_dir, data_info, class_names)
    size = check_input_size(options["input_size"], model_size)
    variants = ["float32"] + ["float16"] * options["fp16"] + ["int8"] * options["int8"]

    representative, folded = None, []
    if "int8" in variants:
        representative = quantize.representative_sample(
            data_dir, data_info, size, channels, options["representative_samples"], options["seed"]
        )
        folded = quantize.fold_dead_squeeze_excite(
            model, quantize.to_model_size(representative, model_size, channels)
        )
    log_prior = runs.train_log_prior(run_info, data_info) if tau else None
    archive = build_export_archive(model, class_names, logit_adjust_tau=tau, log_prior=log_prior,
                                   tta_flip=options["tta_flip"], tta_zoom=options["tta_zoom"],
                                   input_size=size)  # fmt: skip
    archive.write_out(os.path.join(staging, SAVED_MODEL_DIR), verbose=False)
    sizes = _convert_variants(staging, variants, representative)
    results, exported = _measure(
        staging, variants, class_names, data_dir, data_info, split, size, channels, options
    )
    _check_parity(results, split)
    requantization = None
    if "int8" in variants:
        requantization = _requantization(os.path.join(staging, TFLITE_FILES["int8"]))

    run_metrics = None
    if os.path.exists(os.path.join(run_dir, "metrics.json")):
        with open(os.path.join(run_dir, "metrics.json")) as f:
            run_metrics = json.load(f)
    metadata = {
        "format_version": 1,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "class_names": class_names,
        "num_classes": len(class_names),
        "input_size": size,
        "channels": channels,
        "preprocessing": _preprocessing(
            size, channels, tau, options["tta_flip"], options["tta_zoom"], model_size
        ),
        "model": {"name": run_info.get("model"), "params": int(model.count_params()), "run_dir": run_dir},
        "source_dataset": {
            "data_dir": run_info["data_dir"],
            "source": run_info.get("dataset_source", data_info.get("source")),
            "image_shape": data_info["image_shape"],
            "train_class_counts": data_info["splits"].get("train", {}).get("class_counts"),
        },
        "validation_metrics": {"split": split, "run": run_metrics, "exported": exported},
        "parity": results,
        "tflite_files": sizes,
        "export_options": {**options, "folded_squeeze_excite": folded},
        "int8_requantization": requantization,
        "flags": runs.read_flags(os.path.join(run_dir, "flags.txt")),
    }
    with open(os.path.join(staging, LABELS_FILE), "w") as f:
        f.write("".join(f"{name}\n" for name in class_names))
    with open(os.path.join(staging, METADATA_FILE), "w") as f:
        json.dump(runs.portable_paths(metadata), f, indent=2)
        f.write("\n")
    return metadata


def export_run(
    run_dir: str,
    output_dir: str,
    *,
    int8: bool = True,
    fp16: bool = False,
    parity_threshold: float = DEFAULT_PARITY_THRESHOLD,
    logit_adjust_tau: float = 0.0,
    tta_flip: bool = False,
    tta_zoom: float = 0.0,
    input_size: int | None = None,
    representative_samples: int = 300,
    parity_samples: int | None = None,
    seed: int = 0,
    tau_sweep: Sequence[Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """Exports a training run (DESIGN.md contract 4) after a TFLite parity check.

    Args:
      run_dir: `runs/<name>/` with run_info.json, model.keras, flags.txt, metrics.json.
      output_dir: the export directory; a previous export there is replaced only
        when the new one passes the parity gate.
      int8: also write `model_int8.tflite` (full integer, uint8 in and out).
      fp16: also write `model_float16.tflite`.
      parity_threshold: minimum int8 top-1 agreement with the SavedModel on the
        val split. Float32 / float16 need 0.999 / 0.99; a value below the
        default 0.98 lowers those to it as well.
      logit_adjust_tau: post-hoc logit adjustment strength (0 = off).
      tta_flip: average each image with its mirror, in every format.
      tta_zoom: when > 1, also average in its centre zoomed by this factor.
      representative_samples: training images for int8 calibration (seeded).
      parity_samples: val images for the parity check (None = all).
      seed: picks the calibration images.
      tau_sweep: the `sweep_logit_adjust_tau` rows `logit_adjust_tau` was chosen
        from, recorded in the metadata.

    Returns:
      The metadata written to `metadata.json`.

    Raises:
      FileNotFoundError: missing run, model or dataset.
      FileExistsError: `output_dir` exists and is not an export, or it is or holds `run_dir`.
      ParityError: a TFLite variant disagrees with the SavedModel; nothing written.
    """
    options = dict(int8=int8, fp16=fp16, parity_threshold=parity_threshold, logit_adjust_tau=logit_adjust_tau,
                   tta_flip=tta_flip, tta_zoom=tta_zoom, input_size=input_size,
                   representative_samples=representative_samples,
                   parity_samples=parity_samples, seed=seed)  # fmt: skip
    if tau_sweep is not None:
        options["logit_adjust_sweep"] = [dict(row) for row in tau_sweep]
    output_dir = os.path.normpath(output_dir)  # "export/" -> "export", for the renames
    # Fail on a bad run or input size before touching the output.
    check_input_size(input_size, int(runs.read_run_info(run_dir)["image_size"]))
    if cli.is_within(run_dir, output_dir):
        # Replacing the output would delete the run it is exported from (e.g. a directory that
        # `fer_tf.recover` made both a run and an export).
        raise FileExistsError(f"--output={output_dir} holds the run {run_dir}; export to another directory")
    if os.path.isfile(output_dir) or (
        os.path.isdir(output_dir)
        and os.listdir(output_dir)
        and not os.path.exists(os.path.join(output_dir, METADATA_FILE))
    ):
        # Only a previous export is ever replaced; never an unrelated folder or file.
        raise FileExistsError(
            f"{output_dir} exists and is not an export (no {METADATA_FILE}); choose another output"
        )
    # Hand-written documents (MODEL_CARD.md) belong to the model, not to one export of it.
    with outdir.staged(output_dir, carry=lambda name: name.endswith(".md")) as staging:
        return _write_export(staging, run_dir, options)
