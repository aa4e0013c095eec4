"""Averages the weights of finished runs into one model (a "model soup"; fer_tf/soup.py).

    python soup.py --runs=runs/a,runs/b[,...] --output=runs/soup [--recipe=greedy|uniform]
        [--monitor=accuracy] [--bn_batches=0] [--checkpoint=best|last]

The runs must share a model and dataset and, to average well, start from the
same weights (e.g. `train.py --init_weights=` fine-tunes with different seeds).
Each run contributes its best epoch (model.keras) or, with --checkpoint=last,
its final epoch (checkpoints/last.keras); an entry may also name a .keras file
inside a run, e.g. --runs=runs/a,runs/b/checkpoints/last.keras.
The output is a run directory (model.keras, run_info.json, metrics.json, ...)
that export.py and evaluate.py take like a trained run.
"""

from __future__ import annotations

import os

from absl import flags

import launch
from fer_tf.cli import fail

F = flags.FLAGS
_RUNS = flags.DEFINE_list(
    "runs",
    None,
    "Finished run directories to average (at least two), or .keras files inside them "
    "(e.g. runs/a/checkpoints/last.keras), which go in as they are.",
)
_OUTPUT = flags.DEFINE_string("output", None, "Run directory of the soup (must not hold a model yet).")
_RECIPE = flags.DEFINE_enum("recipe", "greedy", ["greedy", "uniform"], "Which runs go into the soup.")
_MONITOR = flags.DEFINE_enum(
    "monitor", "accuracy", ["accuracy", "balanced_accuracy", "macro_f1"], "Val metric that admits runs."
)
_BN_BATCHES = flags.DEFINE_integer(
    "bn_batches",
    0,
    "Clean training batches that re-estimate BatchNorm statistics (0: keep the averaged ones; "
    "re-estimating cost FERNet 3.8 points of accuracy, see fer_tf/soup.py).",
)
_CHECKPOINT = flags.DEFINE_enum(
    "checkpoint",
    "best",
    ["best", "last"],
    "Weights of each run: best (model.keras, its best validation epoch) or last (its final epoch, "
    "checkpoints/last.keras, which runs trained by train.py keep).",
)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 128, "Batch size of scoring and re-estimation.", lower_bound=1
)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}", 2)
    if not _RUNS.value or len(_RUNS.value) < 2:
        fail("--runs needs at least two run directories, e.g. --runs=runs/a,runs/b", 2)
    if not _OUTPUT.value:
        fail("--output is required (the soup's run directory, e.g. runs/soup)", 2)
    for entry in _RUNS.value:  # each model file is checked by make_soup (a missing one exits 2)
        if entry.endswith(".keras"):
            if not os.path.exists(entry):
                fail(f"{entry} not found", 2)
        elif not os.path.exists(os.path.join(entry, "run_info.json")):
            fail(f"{os.path.join(entry, 'run_info.json')} not found: is {entry} a training run?", 2)
    if _BN_BATCHES.value < 0:
        fail(f"--bn_batches={_BN_BATCHES.value}: expected 0 or more", 2)
    # Imported after the argument checks: a typo fails at once, without TensorFlow's start-up.
    from fer_tf import soup

    try:
        soup.check_output(_OUTPUT.value)  # before averaging, not after
    except FileExistsError as err:
        fail(str(err), 2)

    try:
        soup.make_soup(
            _RUNS.value,
            _OUTPUT.value,
            recipe=_RECIPE.value,
            monitor=_MONITOR.value,
            bn_batches=_BN_BATCHES.value,
            checkpoint=_CHECKPOINT.value,
            batch_size=_BATCH_SIZE.value,
            flags_text=F.flags_into_string(),
        )
    except (FileExistsError, FileNotFoundError) as err:
        fail(str(err), 2)
    except ValueError as err:  # runs of different models or datasets
        fail(str(err), 1)
    print(f"-> {_OUTPUT.value}")


if __name__ == "__main__":
    launch.run(main)
