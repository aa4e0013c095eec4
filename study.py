"""Compare imbalance methods: `python study.py --flagfile=imbalance_study.flags`.

Every (dataset, method, seed) cell is one training run under
<study_dir>/runs/<dataset>/<method>/seed<k>; re-running the same command
skips finished cells and resumes an interrupted one; a sitting with other
recipe flags (recorded in recipe.json) is refused, so one summary never mixes
two recipes. Results: results.csv, summary.md (mean ± std over seeds) and
plots/ in --study_dir.

Repeated runs of one training recipe: give train.py's flagfile and a number of
seeds, e.g. `python study.py --flagfile=fer2013.flags --seeds=10`. Its --name and
--data_dir become the study's one dataset and <runs_dir>/<name>_seeds.
"""

import json
import math
import os
import sys

from absl import flags

import launch
import train
from fer_tf import cli

F = flags.FLAGS
flags.DEFINE_string("study_dir", None, "Output directory of the study (default: <runs_dir>/<name>_seeds).")
flags.DEFINE_list("methods", ["crossentropy"], "Method names (fer_tf.study.METHODS).")
flags.DEFINE_list("datasets", None, "name=path pairs of converted datasets; the first is the reference.")
flags.DEFINE_list("imbalance_factors", [], "Also study long-tail versions of the first dataset at these IFs.")
flags.DEFINE_integer("seeds", 3, "Seeds per cell (0..seeds-1).", lower_bound=1)
flags.DEFINE_enum("eval_split", "test", ["test", "val"], "Split scored (val when a dataset has no test).")
flags.DEFINE_boolean("cross_dataset", False, "Also score each method's models on every dataset.")
flags.DEFINE_boolean("report_only", False, "Train nothing: tables and plots of the cells finished so far.")
flags.DEFINE_list(
    "train_datasets",
    None,
    "Train only these datasets' cells in this sitting (e.g. fer2013_if100); the others are "
    "reported when finished. Default: every dataset.",
)
flags.DEFINE_string("smote_targets", "balance", "SMOTE targets of the smote method (data_tools.smote).")
# train.py's run flags: --raw_data/--raw_format convert the first dataset; --name and --data_dir
# make a train.py flagfile's dataset the study's one dataset when --datasets is not given.
train.define_run_flags()
# The base recipe every cell shares: train.py's recipe flags, recorded in flags.txt as this script's own.
train.define_recipe_flags(epochs=10)
flags.adopt_module_key_flags(train)


def parse_datasets(items: list[str] | None) -> dict[str, str]:
    """--datasets name=path pairs, else the one dataset --name=--data_dir of a train.py flagfile."""
    if not items:
        if not F.data_dir:
            cli.fail("give --datasets=name=path[,...] (or a train.py flagfile with --data_dir)")
        return {F.name or os.path.basename(os.path.normpath(F.data_dir)): F.data_dir}
    datasets = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            cli.fail(f"--datasets item {item!r}: expected name=path")
        if name.strip() in datasets:
            cli.fail(f"--datasets names {name.strip()!r} twice")
        datasets[name.strip()] = path.strip()
    return datasets


def prepare_datasets(datasets: dict[str, str]) -> dict[str, str]:
    """Converts the first dataset from --raw_data if needed; adds its long-tail versions."""
    first, first_dir = next(iter(datasets.items()))
    if F.raw_data:
        train.prepare_data(first_dir)
    for name, path in datasets.items():
        if not os.path.exists(os.path.join(path, "dataset_info.json")):
            cli.fail(f"dataset {name}: no dataset_info.json in {path} (convert it, or pass --raw_data)")
    factors = []
    for text in F.imbalance_factors:
        try:
            factors.append(float(text))
        except ValueError:
            factors.append(math.nan)
        if not factors[-1] >= 1:  # also NaN
            cli.fail(f"--imbalance_factors: {text!r} is not a number >= 1")
    if factors:
        from data_tools import longtail  # imports Beam: only when needed
    for factor in factors:
        path = os.path.join(F.study_dir, "data", f"{first}_if{factor:g}")
        if not os.path.exists(os.path.join(path, "dataset_info.json")):
            print(f"building {path} (long-tail IF {factor:g} of {first_dir})", flush=True)
            info = longtail.make_longtail(first_dir, path, factor, seed=0, overwrite=True)
            print(longtail.shortfall(info["source"]) or "", end="")
        datasets[f"{first}_if{factor:g}"] = path
    return datasets


def make_smote(parent_dir: str, output_dir: str) -> None:
    from data_tools import smote

    smote.apply_smote(parent_dir, output_dir, smote.parse_targets(F.smote_targets), seed=0, overwrite=True)


RECIPE_FILE = "recipe.json"


def check_same_recipe(study_dir: str, recipe: dict, *, write: bool) -> None:
    """Fails when `study_dir` was run with another base recipe, else records it.

    A study resumes by reusing finished cells: a later sitting with other
    recipe flags (--epochs, --lr, ...) would mix two recipes under one summary.
    Methods, seeds and datasets may change between sittings; the recipe may not.
    """
    path = os.path.join(study_dir, RECIPE_FILE)
    recipe = json.loads(json.dumps(recipe, sort_keys=True))  # tuples -> lists, as stored
    if os.path.exists(path):
        from fer_tf import schema

        try:
            previous = schema.read_json_object(path, "delete it to record this sitting's recipe")
        except ValueError as e:
            cli.fail(str(e))
        changed = sorted(k for k in set(previous) | set(recipe) if previous.get(k) != recipe.get(k))
        if changed:
            details = ", ".join(f"{k} {previous.get(k)!r} -> {recipe.get(k)!r}" for k in changed)
            cli.fail(
                f"--study_dir={study_dir} was run with another recipe ({details}): "
                "its finished cells would mix recipes; use a new --study_dir"
            )
    elif write:
        os.makedirs(study_dir, exist_ok=True)
        with open(path, "w") as f:
            json.dump(recipe, f, indent=2, sort_keys=True)


def main(argv):
    del argv
    if not F.study_dir:
        if not F.name:
            cli.fail("give --study_dir (or a train.py flagfile with --name)")
        F.study_dir = os.path.join(F.runs_dir, f"{F.name}_seeds")
    cli.check_output_path("study_dir", F.study_dir)
    datasets = prepare_datasets(parse_datasets(F.datasets))
    import tensorflow as tf

    from fer_tf import callbacks
    from fer_tf import study as fer_study

    try:
        fer_study.expand_methods(F.methods)
        fer_study.check_train_datasets(datasets, F.train_datasets)
    except ValueError as e:
        cli.fail(str(e))
    base = train.recipe_from_flags()
    study = fer_study.Study(
        F.study_dir, base, tuple(F.methods), datasets, tuple(range(F.seeds)), F.eval_split
    )
    os.makedirs(F.study_dir, exist_ok=True)
    check_same_recipe(F.study_dir, base, write=not F.report_only)
    if not F.report_only:
        with open(os.path.join(F.study_dir, "flags.txt"), "w") as f:
            own = F.get_key_flags_for_module(sys.modules[__name__])
            f.write("".join(flag.serialize() + "\n" for flag in own if flag.serialize()))
    tf.get_logger().setLevel("ERROR")
    try:
        fer_study.run_study(
            study,
            variants={"smote": make_smote},
            report_only=F.report_only,
            train_datasets=F.train_datasets,
        )
        if F.cross_dataset and not F.report_only:
            fer_study.study_cross_dataset(study, study.methods)
    except callbacks.NanLossError as e:
        cli.fail(str(e), code=1)
    print(f"wrote {os.path.join(F.study_dir, 'results.csv')} and summary.md", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    launch.run(main, argv=cli.resolve_flagfiles(sys.argv))
