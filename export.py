"""Exports a training run as a SavedModel and TFLite files (DESIGN.md contract 4).

    python export.py --run=runs/fer2013 --output=export/fer2013 [--fp16] [--noint8]
        [--parity_threshold=0.98] [--logit_adjust_tau=1.0|auto] [--tta_flip] [--tta_zoom=1.09] [--input_size=48]

Writes saved_model/ (uint8 images of any size in, probabilities/label/class_name
out), model_float32.tflite, model_int8.tflite (full integer), optionally
model_float16.tflite, labels.txt and metadata.json. Before anything is written,
every TFLite file must agree with the SavedModel on the run's validation split;
otherwise the export is refused (exit code 1) and an existing export stays.
"""

from __future__ import annotations

import os

from absl import flags

import launch
from fer_tf.cli import fail

_RUN = flags.DEFINE_string("run", None, "Training run directory (runs/<name>/).")
_OUTPUT = flags.DEFINE_string("output", "export", "Export directory; a previous export there is replaced.")
_INT8 = flags.DEFINE_bool("int8", True, "Write model_int8.tflite (full integer, uint8 in and out).")
_FP16 = flags.DEFINE_bool("fp16", False, "Also write model_float16.tflite.")
_PARITY = flags.DEFINE_float(
    "parity_threshold",
    0.98,
    "Minimum int8 top-1 agreement with the SavedModel on the val split, in [0, 1].",
    lower_bound=0.0,
    upper_bound=1.0,
)
_TAU = flags.DEFINE_string(
    "logit_adjust_tau",
    "0",
    "Post-hoc logit adjustment: logits - tau * log(train prior). 0 = off; 'auto' picks tau in "
    "0..2 with the best mean of accuracy and balanced accuracy on the run's val split.",
)
_TTA = flags.DEFINE_bool("tta_flip", False, "Average each image with its mirror image, in every format.")
_ZOOM = flags.DEFINE_float(
    "tta_zoom",
    0.0,
    "If > 1, also average each image with its centre zoomed in this much (1.09: 44 of 48 px).",
)
_INPUT_SIZE = flags.DEFINE_integer(
    "input_size", 0, "Side of the exported models' input, at most the run's --image_size (0: the run's). "
    "A network trained on upscaled faces (--image_size=56 on 48x48 FER2013) takes 48x48 faces, "
    "upscaled in the graph.",
)  # fmt: skip
_REPRESENTATIVE = flags.DEFINE_integer(
    "representative_samples", 300, "Training images used to calibrate the int8 model."
)
_PARITY_SAMPLES = flags.DEFINE_integer(
    "parity_samples", None, "Val images for the parity check (default: all)."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the calibration image choice.")


def print_summary(metadata: dict, output: str) -> None:
    margin = next(iter(metadata["parity"].values()), {}).get("confident_margin", 0.0)
    print(
        f"{'variant':<8} {'file':<22} {'bytes':>10} {'top-1 agree':>12} {f'margin>={margin:g}':>13} "
        f"{'max |dp|':>9} {'n':>6}"
    )
    for variant, result in metadata["parity"].items():
        size = metadata["tflite_files"][result["file"]]
        print(
            f"{variant:<8} {result['file']:<22} {size:>10,d} {result['top1_agreement']:>12.4f} "
            f"{result['top1_agreement_confident']:>13.4f} {result['max_abs_diff_prob']:>9.4f} {result['n']:>6d}"
        )
    requantization = metadata.get("int8_requantization")
    if requantization and requantization["outside_xnnpack_range"]:
        ops = requantization["outside_xnnpack_range"]
        print(
            f"WARNING: {len(ops)} int8 op(s) have a requantization ratio outside XNNPACK's range "
            f"(worst {ops[0]['ratio']:.3g} at {ops[0]['tensor']}): the int8 model will run undelegated, "
            "several times slower; see metadata.json int8_requantization"
        )
    exported = metadata["validation_metrics"]["exported"]["saved_model"]
    split = metadata["validation_metrics"]["split"]
    print(
        f"SavedModel on {split}: accuracy {exported['accuracy']:.4f}  balanced accuracy "
        f"{exported['balanced_accuracy']:.4f}  macro-F1 {exported['macro_f1']:.4f}  -> {output}"
    )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}", 2)
    if _ZOOM.value and _ZOOM.value <= 1.0:
        fail(f"--tta_zoom must be 0 (off) or above 1 (a zoom in), got {_ZOOM.value}", 2)
    if _TAU.value != "auto":
        try:
            tau = float(_TAU.value)
        except ValueError:
            fail(f"--logit_adjust_tau={_TAU.value}: expected a number or 'auto'", 2)
    if not _RUN.value:
        fail("--run is required (a training run directory, e.g. runs/fer2013)", 2)
    for name in ("run_info.json", "model.keras"):
        if not os.path.exists(os.path.join(_RUN.value, name)):
            fail(f"{os.path.join(_RUN.value, name)} not found: is --run a finished training run?", 2)
    # Imported after the argument checks: a typo fails at once, without TensorFlow's start-up.
    from fer_tf import export_lib, logit_adjust, runs

    try:
        export_lib.check_input_size(_INPUT_SIZE.value, int(runs.read_run_info(_RUN.value)["image_size"]))
    except ValueError as err:
        fail(str(err), 2)
    if _TAU.value == "auto":
        sweep = logit_adjust.sweep_logit_adjust_tau(_RUN.value, tta_flip=_TTA.value, tta_zoom=_ZOOM.value)
        tau = logit_adjust.choose_logit_adjust_tau(sweep)
        print(f"{'tau':>5} {'accuracy':>9} {'balanced':>9} {'macro-F1':>9} {'min recall':>10}")
        for row in sweep:
            mark = "  <- chosen" if row["tau"] == tau else ""
            print(
                f"{row['tau']:>5.1f} {row['accuracy']:>9.4f} {row['balanced_accuracy']:>9.4f} "
                f"{row['macro_f1']:>9.4f} {row['min_recall']:>10.4f}{mark}"
            )

    try:
        metadata = export_lib.export_run(
            _RUN.value,
            _OUTPUT.value,
            int8=_INT8.value,
            fp16=_FP16.value,
            parity_threshold=_PARITY.value,
            logit_adjust_tau=tau,
            tta_flip=_TTA.value,
            tta_zoom=_ZOOM.value,
            input_size=_INPUT_SIZE.value,
            representative_samples=_REPRESENTATIVE.value,
            parity_samples=_PARITY_SAMPLES.value,
            seed=_SEED.value,
            tau_sweep=sweep if _TAU.value == "auto" else None,
        )
    except export_lib.ParityError as err:
        fail(str(err), 1)
    except (FileNotFoundError, FileExistsError) as err:  # a missing input or a bad --output
        fail(str(err), 2)
    except ValueError as err:  # e.g. a model.keras whose custom layers are not importable
        fail(str(err), 1)
    print_summary(metadata, _OUTPUT.value)


if __name__ == "__main__":
    launch.run(main)
