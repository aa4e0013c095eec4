"""Studies: imbalance methods x datasets x seeds, run with the one training loop.

A study trains every cell `<study_dir>/runs/<dataset>/<method>/seed<k>` with
`train_lib.train` (an interrupted cell resumes, a finished one is skipped),
scores each cell's model once on the evaluation split (`study_eval.json` in the
cell), and writes `results.csv` (one row per cell), `summary.md` (mean ± std
over seeds, per dataset and method) and bar / heat-map plots under `plots/`.

A method (`METHODS`) is TrainConfig overrides; or a derived training set
(SMOTE), built once per dataset by a builder the caller passes in (fer_tf does
not depend on data_tools); or a second stage on another method's run of the
same dataset and seed (cRT); or a post-hoc evaluation of that run's model
(logit adjustment: no training). `fer_tf.study_report` writes the outputs;
`fer_tf.scoring` scores models on other datasets and against FER+ vote shares
(`cross_dataset_matrix`, `intensity_report` are re-exported here).

Study numbers compare methods under one small, equal budget: read the
differences between rows, not the absolute accuracies.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import keras

from fer_tf import schema, scoring, study_report, train_lib

# Scoring on other datasets and against vote shares, re-exported as part of the study API.
from fer_tf.scoring import cross_dataset_matrix, intensity_metrics, intensity_report  # noqa: F401

EVAL_FILE = "study_eval.json"
# (parent data dir, output dir) -> None; writes a derived dataset, e.g. SMOTE.
VariantBuilder = Callable[[str, str], Any]


@dataclasses.dataclass(frozen=True)
class Method:
    """One way of handling class imbalance.

    Attributes:
      overrides: TrainConfig fields that differ from the study's base recipe.
      data_variant: name of a derived training set (a key of the `variants`
        given to `run_study`), built once per dataset; val/test stay the parent's.
      base: the method whose run (same dataset and seed) this one builds on:
        cRT re-fits its head (`crt_from`), post-hoc methods score its model.
      posthoc_tau: no training: score `base`'s model with logits - tau * log prior.
      needs_soft_labels: run only on datasets whose records carry vote shares.
    """

    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    data_variant: str = ""
    base: str = ""
    posthoc_tau: float | None = None
    needs_soft_labels: bool = False


METHODS: dict[str, Method] = {
    "crossentropy": Method(),
    "class_weight": Method({"class_weight": "inverse"}),
    "focal": Method({"loss": "focal"}),
    "cb_focal": Method({"loss": "class_balanced_focal"}),
    "logit_adjusted": Method({"loss": "logit_adjusted"}),
    "balanced_softmax": Method({"loss": "balanced_softmax"}),
    "balanced_sampling": Method({"sampling": "balanced"}),
    "sqrt_sampling": Method({"sampling": "sqrt"}),
    "progressive_sampling": Method({"sampling": "progressive"}),
    "smote": Method(data_variant="smote"),
    "mixup": Method({"mixup_alpha": 0.2}),
    "cutmix": Method({"cutmix_alpha": 1.0}),
    "crt": Method({"sampling": "balanced"}, base="crossentropy"),
    "posthoc_la": Method(base="crossentropy", posthoc_tau=1.0),
    # FER+ intensity: the same recipe on majority labels vs on the vote distributions.
    "hard_labels": Method({"soft_labels": False}),
    "soft_labels": Method({"soft_labels": True}, needs_soft_labels=True),
}


@dataclasses.dataclass(frozen=True)
class Study:
    """A base recipe x methods x datasets x seeds.

    Attributes:
      study_dir: where runs/, data/, results.csv, summary.md and plots/ go.
      base: TrainConfig fields shared by every cell (model, model_kwargs,
        epochs, batch_size, ...), without run_dir, data_dir and seed.
      methods: names in `METHODS`; a method's `base` is added when missing.
      datasets: {name: converted dataset directory}.
      seeds: one cell per seed.
      eval_split: the split results are measured on ("val" when a dataset lacks it).
    """

    study_dir: str
    base: Mapping[str, Any]
    methods: Sequence[str]
    datasets: Mapping[str, str]
    seeds: Sequence[int] = (0, 1, 2)
    eval_split: str = "test"


def cell_dir(study_dir: str, dataset: str, method: str, seed: int) -> str:
    """The run directory of one cell."""
    return os.path.join(study_dir, "runs", dataset, method, f"seed{seed}")


def export_source(study: Study, record: Mapping[str, Any]) -> str:
    """The run a cell's model comes from, with the export.py option a post-hoc method adds."""
    method = METHODS[record["method"]]
    if method.posthoc_tau is None:
        return cell_dir(study.study_dir, record["dataset"], record["method"], record["seed"])
    run = cell_dir(study.study_dir, record["dataset"], method.base, record["seed"])
    return f"{run} --logit_adjust_tau={method.posthoc_tau:g}"


def expand_methods(names: Sequence[str]) -> list[str]:
    """Methods in run order: each after the method it builds on (added when missing).

    Raises:
      ValueError: for a name that is not in `METHODS`.
    """
    ordered: list[str] = []

    def add(name: str) -> None:
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; expected one of {sorted(METHODS)}")
        if METHODS[name].base:
            add(METHODS[name].base)
        if name not in ordered:
            ordered.append(name)

    for name in names:
        add(name)
    return ordered


def check_train_datasets(datasets: Collection[str], train_datasets: Collection[str] | None) -> None:
    """Raises ValueError naming the `train_datasets` that are not among the study's `datasets`."""
    unknown = sorted(set(train_datasets or ()) - set(datasets))
    if unknown:
        raise ValueError(
            f"--train_datasets {','.join(unknown)}: the study's datasets are {','.join(datasets)}"
        )


def run_study(
    study: Study,
    variants: Mapping[str, VariantBuilder] | None = None,
    log: Callable[[str], Any] = print,
    report_only: bool = False,
    train_datasets: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """Runs (or resumes) every cell, then writes results.csv, summary.md and plots.

    Args:
      study: what to run.
      variants: {data_variant name: builder(parent_dir, output_dir)} for
        methods with a derived training set; it is written once per dataset
        to `<study_dir>/data/<dataset>_<variant>`.
      log: progress messages.
      report_only: train nothing: write the outputs from the cells scored so
        far (between sittings of a long study); summary.md counts the others.
      train_datasets: train only these datasets' cells in this sitting (the
        others are reported when finished, else counted as pending); None
        trains every dataset.

    Returns:
      One record per cell: dataset, method, seed, split, train_seconds,
      report (`classification_report`) and intensity (or None).
    """
    fixed = {"run_dir", "data_dir", "seed"} & set(study.base)
    if fixed:
        raise ValueError(f"the base recipe must not set {sorted(fixed)}: the study sets them per cell")
    fields = {f.name for f in dataclasses.fields(train_lib.TrainConfig)}
    methods = expand_methods(study.methods)
    unknown = (set(study.base) | {k for m in methods for k in METHODS[m].overrides}) - fields
    if unknown:
        raise ValueError(f"not TrainConfig fields: {sorted(unknown)}")
    check_train_datasets(study.datasets, train_datasets)
    infos = {name: schema.read_dataset_info(path) for name, path in study.datasets.items()}
    records, pending = [], 0
    # Seed-major order: every method's first seed is done before any second seed.
    for dataset in study.datasets:
        train_here = not report_only and (train_datasets is None or dataset in train_datasets)
        for seed in study.seeds:
            for name in methods:
                if METHODS[name].needs_soft_labels and not infos[dataset].get("has_soft_labels"):
                    log(f"skip {dataset}/{name}: the dataset has no soft labels")
                    continue
                if not train_here and not os.path.exists(
                    os.path.join(cell_dir(study.study_dir, dataset, name, seed), EVAL_FILE)
                ):
                    pending += 1
                    continue
                train_dir = _variant_dir(study, dataset, METHODS[name].data_variant, variants or {}, log)
                records.append(run_cell(study, dataset, name, seed, train_dir, log))
    if pending:
        log(f"{len(records)} cells scored, {pending} not yet run")
    run_dirs = {(r["dataset"], r["method"], r["seed"]): export_source(study, r) for r in records}
    study_report.write_outputs(
        study.study_dir,
        records,
        infos,
        methods,
        base=study.base,
        seeds=study.seeds,
        pending=pending,
        run_dirs=run_dirs,
    )
    return records


def _variant_dir(study: Study, dataset: str, variant: str, variants, log) -> str:
    if not variant:
        return study.datasets[dataset]
    if variant not in variants:
        raise ValueError(f"no builder for data variant {variant!r}; given: {sorted(variants)}")
    path = os.path.join(study.study_dir, "data", f"{dataset}_{variant}")
    if not os.path.exists(os.path.join(path, schema.INFO_FILE)):
        log(f"building {path} ({variant} of {study.datasets[dataset]})")
        variants[variant](study.datasets[dataset], path)
    return path


def run_cell(
    study: Study, dataset: str, method: str, seed: int, train_dir: str, log: Callable[[str], Any] = print
) -> dict[str, Any]:
    """Trains (resumes, or skips) one cell and scores it once; a scored cell is only read.

    Args:
      study: the study.
      dataset: a key of `study.datasets` (the cell is scored on its eval split).
      method: a key of `METHODS`; its `base` cell must be finished.
      seed: the cell's seed.
      train_dir: the dataset the cell trains on (the dataset or its variant).
      log: progress messages.

    Returns:
      The cell's record (see `run_study`), also in `<cell>/study_eval.json`.
    """
    cell = cell_dir(study.study_dir, dataset, method, seed)
    if os.path.exists(os.path.join(cell, EVAL_FILE)):
        with open(os.path.join(cell, EVAL_FILE)) as f:
            return json.load(f)
    spec, data_dir = METHODS[method], study.datasets[dataset]
    base_cell = cell_dir(study.study_dir, dataset, spec.base, seed) if spec.base else ""
    # Each cell builds new models: drop the previous cells' graphs and layer names.
    keras.utils.clear_session()
    log(f"cell {dataset}/{method}/seed{seed}")
    start = time.perf_counter()
    if spec.posthoc_tau is None:
        options = {**study.base, **spec.overrides, "crt_from": base_cell}
        config = train_lib.TrainConfig(run_dir=cell, data_dir=train_dir, seed=seed, **options)
        train_lib.train(config)
        scored, tau = cell, None
    else:
        scored, tau = base_cell, spec.posthoc_tau
        os.makedirs(cell, exist_ok=True)
        # Like a trained cell: metrics.json holds the validation metrics.
        val = scoring.evaluate_run(base_cell, data_dir, "val", posthoc_tau=tau)
        _write_json(os.path.join(cell, "metrics.json"), val["report"])
    seconds = time.perf_counter() - start
    result = scoring.evaluate_run(scored, data_dir, study.eval_split, posthoc_tau=tau)
    record = {"dataset": dataset, "method": method, "seed": seed, "train_seconds": seconds, **result}
    _write_json(os.path.join(cell, EVAL_FILE), record)
    return record


def _write_json(path: str, value: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
    os.replace(tmp, path)


def study_cross_dataset(study: Study, methods: Sequence[str], log: Callable[[str], Any] = print) -> None:
    """Cross-dataset matrices of each trained method's first-seed models.

    Writes `<study_dir>/cross_dataset/<method>/cross_dataset.{csv,md}`: the
    model trained on each dataset, scored on every dataset's eval split.
    """
    seed = study.seeds[0]
    for name in expand_methods(methods):
        if METHODS[name].posthoc_tau is not None:
            continue  # no model of its own
        trained = {d: cell_dir(study.study_dir, d, name, seed) for d in study.datasets}
        trained = {d: run for d, run in trained.items() if os.path.exists(os.path.join(run, "model.keras"))}
        if trained:
            log(f"cross-dataset matrix of {name} (seed {seed})")
            keras.utils.clear_session()
            cross_dataset_matrix(
                trained,
                study.datasets,
                study.eval_split,
                output_dir=os.path.join(study.study_dir, "cross_dataset", name),
            )
