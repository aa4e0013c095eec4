"""Train an expression classifier: `python train.py --flagfile=fer2013.flags`.

Flagfiles live in configs/ and record each experiment. Re-running the same
command resumes an interrupted run from runs/<name>/backup/.

study.py imports this module for its recipe flags (`define_recipe_flags`,
`recipe_from_flags`), so flags are defined by functions, not at import.
"""

import os
import sys
from typing import Any

from absl import flags

import launch
from fer_tf import cli

F = flags.FLAGS
RAW_FORMATS = ["fer2013", "ferplus", "folder", "rafdb", "expw", "sfew", "ckplus"]
RECIPE_FLAGS: list[str] = []  # filled by define_recipe_flags, in definition order
LOSSES = [
    "crossentropy",
    "focal",
    "class_balanced",
    "class_balanced_focal",
    "logit_adjusted",
    "balanced_softmax",
]


def define_recipe_flags(epochs: int = 30) -> None:
    """Defines the training-recipe flags: the TrainConfig fields runs of a study share.

    Args:
      epochs: the default of --epochs (study.py's cells default to fewer).
    """
    before = set(F)
    flags.DEFINE_string("model", "fernet", "Registered model name (fer_tf.models.MODELS).")
    flags.DEFINE_float("width", None, "Model width multiplier, if the model has one.")
    flags.DEFINE_float("dropout", None, "Model dropout rate, if the model has one.")
    flags.DEFINE_list(
        "model_kw", [], "Other model keywords as key=value, e.g. depth=0.5,activation=hard_silu."
    )
    flags.DEFINE_integer("image_size", 48, "Side of the square model input.")
    flags.DEFINE_integer("channels", 1, "1 (grayscale) or 3.")
    flags.DEFINE_string("init_weights", "", "Weights file to load by layer name (mismatched head skipped).")
    flags.DEFINE_boolean(
        "init_widen",
        False,
        "Embed a narrower --init_weights model (lower --width), computing the same function.",
    )
    flags.DEFINE_boolean(
        "init_slim",
        False,
        "Slim a FERNet --init_weights model with more expanded channels (higher expansion_scale): "
        "each block keeps its most important ones (fer_tf.model_tools.slim_weights).",
    )
    flags.DEFINE_integer("batch_size", 64, "Global batch size.")
    flags.DEFINE_integer("epochs", epochs, "Epochs; one epoch = train examples // batch size steps.")
    flags.DEFINE_integer("steps_per_epoch", 0, "Override the steps of one epoch (0: from the data).")
    flags.DEFINE_enum(
        "sampling", "instance", ["instance", "balanced", "sqrt", "progressive"], "Class sampling."
    )
    flags.DEFINE_integer("progressive_epochs", 0, "Epochs to go from instance to balanced (0: all).")
    flags.DEFINE_list("augment", [], "Augmentations by name (empty: the default recipe).")
    flags.DEFINE_float("aug_strength", 1.0, "Scales every augmentation's magnitude.")
    flags.DEFINE_float("mixup", 0.0, "Mixup alpha (0: off).")
    flags.DEFINE_float("cutmix", 0.0, "CutMix alpha (0: off).")
    flags.DEFINE_boolean("soft_labels", False, "Train on image/class/soft_label votes (FER+).")
    flags.DEFINE_string(
        "teacher",
        "",
        "Distil from this run directory or .keras model; several, comma-separated, are averaged.",
    )
    flags.DEFINE_float("distill_weight", 0.5, "Share of the teacher's predictions in the targets, in (0, 1].")
    flags.DEFINE_float("distill_temperature", 1.0, "Softmax temperature of the teacher's predictions.")
    flags.DEFINE_boolean("teacher_flip", True, "Average the teacher over each image and its mirror.")
    flags.DEFINE_float(
        "teacher_zoom", 0.0, "Also average the teacher over each image's centre zoomed this much (0: off)."
    )
    flags.DEFINE_float(
        "teacher_tau",
        0.0,
        "Logit-adjust the teacher by tau * log training prior, to teach balanced (0: off).",
    )
    flags.DEFINE_enum("loss", "crossentropy", LOSSES, "Loss function.")
    flags.DEFINE_float("label_smoothing", 0.0, "Label smoothing.")
    flags.DEFINE_float("focal_gamma", 2.0, "Focal loss gamma.")
    flags.DEFINE_list("focal_alpha", [], "Per-class focal alpha (K values; empty: none).")
    flags.DEFINE_float("cb_beta", 0.9999, "Effective-number beta (class-balanced loss/weights).")
    flags.DEFINE_float("la_tau", 1.0, "Logit-adjustment tau.")
    flags.DEFINE_enum(
        "class_weight", "none", ["none", "inverse", "sqrt_inverse", "effective"], "fit(class_weight=) mode."
    )
    flags.DEFINE_enum("optimizer", "adamw", ["adamw", "sgd"], "Optimizer.")
    flags.DEFINE_float("lr", 1e-3, "Peak learning rate.")
    flags.DEFINE_float("weight_decay", 1e-4, "Decoupled weight decay.")
    flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
    flags.DEFINE_enum("schedule", "cosine", ["cosine", "onecycle", "step", "constant"], "LR schedule.")
    flags.DEFINE_float("warmup_epochs", 1.0, "Linear warmup epochs.")
    flags.DEFINE_float("clipnorm", 0.0, "Gradient clipping by norm (0: off).")
    flags.DEFINE_string("monitor", "val_balanced_accuracy", "Metric for the best checkpoint.")
    flags.DEFINE_integer("early_stopping", 0, "Early-stopping patience in epochs (0: off).")
    flags.DEFINE_boolean("deterministic", False, "Enable TF op determinism (slower).")
    flags.DEFINE_enum(
        "mixed_precision",
        "float32",
        ["float32", "mixed_float16", "mixed_bfloat16"],
        "Keras precision policy; logits and loss stay float32. On a 2-core AVX-512 CPU mixed_bfloat16 "
        "trained FERNet 0.82x as fast (benchmarks/train_settings.py); it is for GPUs.",
    )
    flags.DEFINE_boolean(
        "jit_compile",
        False,
        "Compile the train step with XLA (10x slower on CPU: benchmarks/train_settings.py).",
    )
    flags.DEFINE_enum("strategy", "auto", ["auto", "mirrored", "multi_worker"], "tf.distribute strategy.")
    flags.DEFINE_integer("verbose", 2, "Keras fit verbosity (1: progress bar, 2: one line per epoch).")
    RECIPE_FLAGS[:] = [name for name in F if name not in before]


def define_run_flags() -> None:
    """Defines where a run and its data are (study.py shares them, so train.py flagfiles run there)."""
    flags.DEFINE_string("name", None, "Run name; the run directory is <runs_dir>/<name>.")
    flags.DEFINE_string("runs_dir", "runs", "Parent directory of run directories.")
    flags.DEFINE_string("data_dir", None, "Converted TFRecord dataset (with dataset_info.json).")
    flags.DEFINE_string("raw_data", None, "Raw source to convert into --data_dir when it is missing.")
    flags.DEFINE_enum("raw_format", "fer2013", RAW_FORMATS, "Format of --raw_data.")
    flags.DEFINE_float(
        "val_fraction", 0.0, "Share of train carved out as val when converting a dataset without one."
    )


def define_flags() -> None:
    """Defines train.py's flags: where the run and its data are, then the recipe."""
    define_run_flags()
    flags.DEFINE_string("crt_from", "", "cRT: run directory whose backbone is frozen and head re-fit.")
    flags.DEFINE_integer("seed", 0, "Random seed.")
    define_recipe_flags()
    flags.mark_flags_as_required(["name", "data_dir"])


# Recipe flags whose TrainConfig field has another name, and flags that become tuples.
FIELD_NAMES = {"augment": "augmentations", "mixup": "mixup_alpha", "cutmix": "cutmix_alpha",
               "lr": "learning_rate", "early_stopping": "early_stopping_patience"}  # fmt: skip
TUPLES = {"augment": str, "focal_alpha": float}
MODEL_FLAGS = ("model_kw", "width", "dropout")


def recipe_from_flags() -> dict[str, Any]:
    """TrainConfig fields from the recipe flags: all but run_dir, data_dir, crt_from and seed."""
    model_kwargs = {k: v for k, v in (("width", F.width), ("dropout", F.dropout)) if v is not None}
    model_kwargs.update(cli.parse_model_kw(F.model_kw))
    recipe = {"model_kwargs": model_kwargs}
    for name in RECIPE_FLAGS:
        if name not in MODEL_FLAGS:
            value = F[name].value
            recipe[FIELD_NAMES.get(name, name)] = tuple(map(TUPLES[name], value)) if name in TUPLES else value
    return recipe


def prepare_data(data_dir: str) -> None:
    """Converts --raw_data into `data_dir` when its TFRecords are missing."""
    if os.path.exists(os.path.join(data_dir, "dataset_info.json")):
        return
    if not F.raw_data:
        cli.fail(f"no dataset at {data_dir} and no --raw_data to convert it from")
    from data_tools import convert, writer

    try:
        convert.prepare_dataset(
            F.raw_data,
            data_dir,
            F.raw_format,
            image_size=F.image_size,
            channels=F.channels,
            val_fraction=F.val_fraction,
        )
    except (FileNotFoundError, ValueError, writer.ConversionError) as e:
        cli.fail(f"--raw_data={F.raw_data}: {e}" if F.raw_data not in str(e) else str(e))


def main(argv):
    del argv
    import tensorflow as tf

    from fer_tf import callbacks, train_lib

    prepare_data(F.data_dir)
    config = train_lib.TrainConfig(
        run_dir=os.path.join(F.runs_dir, F.name),
        data_dir=F.data_dir,
        crt_from=F.crt_from,
        seed=F.seed,
        **recipe_from_flags(),
    )
    tf.get_logger().setLevel("ERROR")
    try:
        own = F.get_key_flags_for_module(sys.modules[__name__])
        train_lib.train(config, flags_text="".join(f.serialize() + "\n" for f in own if f.serialize()))
    except callbacks.NanLossError as e:
        cli.fail(str(e), code=1)
    except (FileNotFoundError, ValueError) as e:  # a bad run request: --init_weights, --teacher, ...
        cli.fail(str(e))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    define_flags()
    launch.run(main, argv=cli.resolve_flagfiles(sys.argv))
