"""Weight averaging of training runs ("model soups", Wortsman et al., ICML 2022).

Runs fine-tuned from the same weights (for example two seeds of a fine-tune of
one release run) usually end in one loss basin, where the average of their
weights is itself a model, and often a better one than each run: a single
network, at no inference cost. `make_soup` averages a set of runs into a new
run directory that export.py takes like any other:

- `uniform`: the average of every run;
- `greedy`: runs sorted by their own validation score, each added only when
  the soup's score does not drop (the first run always stays).

Each run contributes its best epoch (model.keras) or, with `checkpoint="last"`,
its final epoch: the fine-tunes of the original soups, and weights that no
validation score picked, so only the recipe's own choice looks at validation.

BatchNorm moving statistics of an average are not the statistics of the
averaged network; `recalibrate_batchnorm` can re-estimate them on clean
training images (as stochastic weight averaging does), but by default the
averaged statistics are kept. Measured on FER2013 with two FERNet x1.0 fine-tunes
of release v3 (PublicTest accuracy 68.57% and 68.60%): their soup reached 68.90%
with averaged statistics and 65.14% with statistics re-estimated on 200 clean
training batches. The network was trained under augmentation (erasing, contrast,
affine), and its later layers expect activations normalised by the statistics of
augmented images.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

from fer_tf import data, metrics, report, runs, schema

RECIPES = ("uniform", "greedy")
MONITORS = ("accuracy", "balanced_accuracy", "macro_f1")
# Which weights of a run go into a soup, by file: the best epoch on validation,
# or the final epoch, which no validation score chose.
CHECKPOINTS = {"best": "model.keras", "last": runs.LAST_CHECKPOINT}


def average_weights(models: Sequence[keras.Model]) -> list[np.ndarray]:
    """The element-wise mean of the weights of models with one architecture.

    Raises:
      ValueError: when there are no models or their weight shapes differ.
    """
    if not models:
        raise ValueError("a soup needs at least one model")
    shapes = [[tuple(w.shape) for w in model.weights] for model in models]
    for model, model_shapes in zip(models[1:], shapes[1:], strict=True):
        if model_shapes != shapes[0]:
            raise ValueError(
                f"{model.name} has other weights than {models[0].name}: a soup needs one architecture"
            )
    return [np.mean(group, axis=0) for group in zip(*(m.get_weights() for m in models), strict=True)]


def recalibrate_batchnorm(model: keras.Model, images: Any, batches: int) -> int:
    """Re-estimates every BatchNorm layer's moving mean and variance on `images`.

    The estimate is the plain average over `batches` batches: each forward pass
    in training mode updates the moving statistics with momentum (t-1)/t. The
    trainable weights are untouched (no gradient step is taken).

    Args:
      model: modified in place.
      images: an iterable of float image batches [B,S,S,C] in the model's input range.
      batches: at most this many batches are used.

    Returns:
      The number of batches used (0 when the model has no BatchNorm layer or
      `batches` is 0).
    """
    norms = _batch_norms(model)
    if not norms or batches < 1:
        return 0  # without reading a batch: the loop below pulls one before it can stop
    momenta = [layer.momentum for layer in norms]
    used = 0
    try:
        for batch in images:
            if used == batches:
                break
            used += 1
            for layer in norms:
                layer.momentum = (used - 1) / used
            model(batch, training=True)
    finally:
        for layer, momentum in zip(norms, momenta, strict=True):
            layer.momentum = momentum
    return used


def _batch_norms(layer: keras.layers.Layer) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer in `layer`, nested models included."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return [layer]
    return [norm for inner in getattr(layer, "layers", []) for norm in _batch_norms(inner)]


def _score(model: keras.Model, val_ds, class_names: Sequence[str]) -> dict[str, Any]:
    y_true, logits = metrics.predict_labels(model, val_ds)
    return metrics.classification_report(y_true, logits, class_names)


def split_ingredient(entry: str, checkpoint: str = "best") -> tuple[str, str]:
    """The run directory and model file (relative to it) of one soup ingredient.

    Args:
      entry: a run directory, whose `checkpoint` file goes in, or a `.keras`
        file inside a run directory (e.g. runs/a/checkpoints/last.keras), which
        goes in as it is: its run is the nearest directory above it that holds
        a run_info.json.
      checkpoint: a key of `CHECKPOINTS`, for run directories.

    Raises:
      FileNotFoundError: when a `.keras` entry has no run_info.json above it.
    """
    if not entry.endswith(".keras"):
        return entry, CHECKPOINTS[checkpoint]
    path = os.path.normpath(entry)
    run_dir = os.path.dirname(path)
    while not os.path.exists(os.path.join(run_dir, "run_info.json")):
        if run_dir in ("", os.sep):
            raise FileNotFoundError(f"{entry}: no run_info.json above it; an ingredient must belong to a run")
        run_dir = os.path.dirname(run_dir)
    return run_dir, os.path.relpath(path, run_dir)


def _check_runs(run_dirs: Sequence[str]) -> list[dict[str, Any]]:
    infos = [runs.read_run_info(run_dir) for run_dir in run_dirs]
    for run_dir, info in zip(run_dirs[1:], infos[1:], strict=True):
        # `params` tells apart widths and depths of one model family, before any model loads.
        for key in ("class_names", "image_size", "channels", "model", "params"):
            if info.get(key) != infos[0].get(key):
                raise ValueError(
                    f"{run_dir} differs from {run_dirs[0]} in {key} "
                    f"({info.get(key)!r} vs {infos[0].get(key)!r}): a soup needs one architecture and dataset"
                )
    return infos


def check_output(output_dir: str) -> None:
    """Raises FileExistsError unless `output_dir` is absent or an empty folder.

    A soup writes a whole run (model.keras, run_info.json, flags.txt, ...): into
    a run still training it would overwrite the files it resumes from.
    """
    if os.path.isfile(output_dir):
        raise FileExistsError(f"--output={output_dir} is a file; a soup is a run directory")
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        raise FileExistsError(f"--output={output_dir} is not empty; a soup needs a new run directory")


def _log(message: str) -> None:
    print(message, flush=True)


def make_soup(
    run_dirs: Sequence[str],
    output_dir: str,
    *,
    recipe: str = "greedy",
    monitor: str = "accuracy",
    bn_batches: int = 0,
    checkpoint: str = "best",
    batch_size: int = 128,
    flags_text: str = "",
    log: Callable[[str], None] = _log,
) -> dict[str, Any]:
    """Averages the `model.keras` of finished runs into a new run directory.

    Args:
      run_dirs: finished runs of one model and dataset (run_info.json, model.keras),
        or `.keras` files inside such runs (see `split_ingredient`).
      output_dir: the soup's run directory; it gets model.keras, run_info.json
        (with a `soup` record), flags.txt (the first ingredient's training
        flags), soup_flags.txt (`flags_text`), metrics.json, cost.json and a
        confusion-matrix plot, so export.py and evaluate.py take it as a run.
      recipe: "uniform" or "greedy".
      monitor: validation metric that orders and admits ingredients.
      bn_batches: clean training batches for BatchNorm re-estimation (0: keep
        the averaged statistics, the default; see the module docstring).
      checkpoint: which weights of each run go in: "best" (model.keras, the
        epoch its monitor chose on validation) or "last" (the final epoch,
        checkpoints/last.keras), as in Wortsman et al.'s soups of fine-tunes.
      batch_size: batch size of scoring and re-estimation.
      flags_text: the calling command's flags, written to soup_flags.txt.
      log: progress messages.

    Returns:
      The soup's validation metrics, as written to metrics.json.

    Raises:
      ValueError: on an unknown recipe or monitor, fewer than two runs, or runs
        that differ in architecture or dataset.
      FileExistsError: when `output_dir` is a file or a folder that is not empty.
      FileNotFoundError: when a run or its model file is missing.
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe {recipe!r}: expected one of {', '.join(RECIPES)}")
    if monitor not in MONITORS:
        raise ValueError(f"monitor {monitor!r}: expected one of {', '.join(MONITORS)}")
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint {checkpoint!r}: expected one of {', '.join(CHECKPOINTS)}")
    if len(run_dirs) < 2:
        raise ValueError(f"a soup needs at least two runs, got {len(run_dirs)}")
    check_output(output_dir)
    start_wall, start_cpu = time.time(), time.process_time()
    entries = list(run_dirs)
    run_dirs, files = zip(*(split_ingredient(entry, checkpoint) for entry in entries), strict=True)
    seen = set()
    for entry, run_dir, filename in zip(entries, run_dirs, files, strict=True):
        key = os.path.realpath(os.path.join(run_dir, filename))
        if key in seen:  # one model twice would weigh double in the average
            raise ValueError(f"{entry} is in the soup twice")
        seen.add(key)
    infos = _check_runs(run_dirs)
    info0 = infos[0]
    data_dir = runs.resolve_data_dir(info0["data_dir"], run_dirs[0], "soup")
    dataset_info = schema.read_dataset_info(data_dir)
    class_names = list(info0["class_names"])
    size, channels = int(info0["image_size"]), int(info0["channels"])
    val_ds = data.make_eval_dataset(
        data_dir, dataset_info, "val", batch_size=batch_size, image_size=size, channels=channels
    )
    train_images = data.make_eval_dataset(
        data_dir, dataset_info, "train", batch_size=batch_size, image_size=size, channels=channels
    ).map(lambda images, targets: images)

    models = [
        runs.load_run_model(run_dir, info, filename)
        for run_dir, info, filename in zip(run_dirs, infos, files, strict=True)
    ]
    scores = [_score(model, val_ds, class_names) for model in models]
    for entry, score in zip(entries, scores, strict=True):
        log(f"ingredient {entry}: val {monitor} {score[monitor]:.4f}")
    order = sorted(range(len(models)), key=lambda i: -scores[i][monitor])
    soup = keras.models.clone_model(models[order[0]])

    def cook(members: list[int]) -> dict[str, Any]:
        soup.set_weights(average_weights([models[i] for i in members]))
        recalibrate_batchnorm(soup, train_images, bn_batches)
        return _score(soup, val_ds, class_names)

    if recipe == "uniform":
        members = order
        result = cook(members)
    else:
        members, result, weights = [order[0]], scores[order[0]], models[order[0]].get_weights()
        for i in order[1:]:
            trial = cook(members + [i])
            kept = trial[monitor] >= result[monitor]
            log(
                f"greedy: + {entries[i]} -> val {monitor} {trial[monitor]:.4f} ({'kept' if kept else 'dropped'})"
            )
            if kept:
                members, result, weights = members + [i], trial, soup.get_weights()
        soup.set_weights(weights)  # the soup may hold the last, dropped trial
    log(
        f"soup of {len(members)}/{len(models)} runs: val accuracy {result['accuracy']:.4f}  "
        f"balanced accuracy {result['balanced_accuracy']:.4f}  macro-F1 {result['macro_f1']:.4f}"
    )
    _write_soup_run(
        output_dir, soup, result, info0, flags_text,
        record={
            "recipe": recipe, "monitor": monitor, "bn_batches": bn_batches, "checkpoint": checkpoint,
            "ingredients": [
                {"run_dir": run_dir, "model_file": files[i], f"val_{monitor}": scores[i][monitor],
                 "in_soup": i in members}
                for i, run_dir in enumerate(run_dirs)
            ],
        },
        cost={"wall_seconds": round(time.time() - start_wall, 1),
              "cpu_seconds": round(time.process_time() - start_cpu, 1)},
        first_run=run_dirs[0],
    )  # fmt: skip
    return result


def _write_soup_run(output_dir, model, result, info0, flags_text, record, cost, first_run) -> None:
    os.makedirs(output_dir, exist_ok=True)
    model.save(os.path.join(output_dir, "model.keras"))
    run_info = {key: value for key, value in info0.items() if key != "config"}
    run_info["params"] = int(model.count_params())
    run_info["soup"] = record
    with open(os.path.join(output_dir, "run_info.json"), "w") as f:
        json.dump(run_info, f, indent=2)
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(output_dir, "cost.json"), "w") as f:
        json.dump(cost, f, indent=2)
    # flags.txt keeps the training flags of the first ingredient (the architecture the weights fit,
    # which export.py records and fer_tf.recover rebuilds from); the soup's own command goes beside it.
    if os.path.exists(os.path.join(first_run, "flags.txt")):
        shutil.copy(os.path.join(first_run, "flags.txt"), os.path.join(output_dir, "flags.txt"))
    with open(os.path.join(output_dir, "soup_flags.txt"), "w") as f:
        f.write(flags_text)
    report.plot_confusion_matrix(
        result["confusion_matrix"],
        list(info0["class_names"]),
        os.path.join(output_dir, "confusion_matrix.png"),
    )
