"""Scoring a finished run's model on a converted dataset, over the classes both know.

`evaluate_run` scores a run directory (`model.keras`) on one split of any
dataset, optionally with post-hoc logit adjustment. Classes are matched by
name: images of classes the model lacks are left out and counted, and the
model's classes that the dataset lacks are removed from its predictions, so
a 7-class FER2013 model is scored fairly on a 6-class set. On a dataset with
vote distributions (FER+ `soft_label`) it also reports how well the predicted
probabilities track the vote shares, an estimate of expression intensity.
`cross_dataset_matrix` scores several trained models on several datasets;
`intensity_report` is the vote-share part alone.
"""

from __future__ import annotations

import collections
import csv
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fer_tf import data, losses, metrics, schema
from fer_tf import runs as run_dirs


def resolve_split(info: Mapping[str, Any], split: str) -> str:
    """`split` when the dataset has images in it, otherwise "val"."""
    return split if info["splits"].get(split, {}).get("num_examples", 0) > 0 else "val"


def map_to_shared(
    logits: np.ndarray, labels: np.ndarray, model_classes: Sequence[str], target_classes: Sequence[str]
) -> dict[str, Any]:
    """Restricts model outputs and dataset labels to the classes they share, by name.

    Args:
      logits: [N, K_model] model outputs.
      labels: [N] labels in the dataset's class order.
      model_classes: the model's K_model class names.
      target_classes: the dataset's class names.

    Returns:
      {class_names: shared names (model order), logits: [M, S] of the kept
      images and shared classes, labels: [M] in shared order, keep: bool [N],
      target_columns: dataset class index of each shared class, model_only:
      model classes the dataset lacks (never predicted), target_only: {dataset
      class the model lacks: images left out}}.
    """
    labels = np.asarray(labels, np.int64)
    target = set(target_classes)
    shared = [name for name in model_classes if name in target]
    to_shared = np.array([shared.index(n) if n in shared else -1 for n in target_classes], np.int64)
    mapped = to_shared[labels] if labels.size else labels
    keep = mapped >= 0
    columns = [list(model_classes).index(name) for name in shared]
    left_out = collections.Counter(target_classes[k] for k in labels[~keep])
    return {
        "class_names": shared,
        "logits": np.asarray(logits)[keep][:, columns],
        "labels": mapped[keep],
        "keep": keep,
        "target_columns": [list(target_classes).index(name) for name in shared],
        "model_only": [name for name in model_classes if name not in target],
        "target_only": dict(sorted(left_out.items())),
    }


def intensity_metrics(
    probabilities: np.ndarray, vote_shares: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """How well predicted probabilities track annotator vote shares.

    Args:
      probabilities: [N, K] predicted class probabilities.
      vote_shares: [N, K] vote distributions (rows sum to 1).
      class_names: the K names.

    Returns:
      {n, mae: mean |p - v| over images and classes, pearson: {class: Pearson
      r of p[:, k] and v[:, k] over images, NaN when either is constant},
      mean_pearson: mean of the finite r (NaN if none)}.
    """
    p, v = np.asarray(probabilities, np.float64), np.asarray(vote_shares, np.float64)
    if p.shape != v.shape or p.ndim != 2 or p.shape[1] != len(class_names):
        raise ValueError(
            f"probabilities {p.shape} and vote shares {v.shape} must both be [N, {len(class_names)}]"
        )
    dp, dv = p - p.mean(axis=0), v - v.mean(axis=0)
    denominator = np.sqrt((dp**2).sum(axis=0) * (dv**2).sum(axis=0))
    r = np.divide(
        (dp * dv).sum(axis=0), denominator, out=np.full(len(class_names), np.nan), where=denominator > 0
    )
    finite = r[np.isfinite(r)]
    return {
        "n": int(p.shape[0]),
        "mae": float(np.abs(p - v).mean()) if p.size else math.nan,
        "pearson": {name: float(value) for name, value in zip(class_names, r, strict=True)},
        "mean_pearson": float(finite.mean()) if finite.size else math.nan,
    }


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _vote_shares(data_dir: str, info: Mapping[str, Any], split: str) -> np.ndarray:
    height, _, channels = info["image_shape"]
    ds = data.make_eval_dataset(
        data_dir, info, split, batch_size=1024, image_size=height, channels=min(channels, 3), soft_labels=True
    )
    return np.concatenate([np.asarray(targets) for _, targets in ds])


def evaluate_run(
    run_dir: str, data_dir: str, split: str = "test", *, posthoc_tau: float | None = None
) -> dict[str, Any]:
    """Scores a run's `model.keras` on a dataset split over the shared classes.

    Args:
      run_dir: a finished training run directory.
      data_dir: any converted dataset (its own or another one).
      split: the split to score ("val" when the dataset has no such split).
      posthoc_tau: if set, logits - tau * log prior of the run's train counts
        (Menon et al. 2021) before scoring.

    Returns:
      {split, report: `classification_report` over the shared classes (None
      when no image has a shared class), intensity: `intensity_metrics` on a
      dataset with vote shares (else None), model_only, target_only (see
      `map_to_shared`)}.
    """
    run_info = run_dirs.read_run_info(run_dir)
    model = run_dirs.load_run_model(run_dir, run_info)
    info = schema.read_dataset_info(data_dir)
    split = resolve_split(info, split)
    ds = data.make_eval_dataset(
        data_dir,
        info,
        split,
        batch_size=256,
        image_size=int(run_info["image_size"]),
        channels=int(run_info["channels"]),
    )
    labels, logits = metrics.predict_labels(model, ds)
    model_classes = list(run_info["class_names"])
    if posthoc_tau is not None:
        counts = run_info["train_class_counts"]
        counts = [counts[name] for name in model_classes] if isinstance(counts, Mapping) else counts
        logits = losses.posthoc_logit_adjustment(logits, counts, posthoc_tau)
    shared = map_to_shared(logits, labels, model_classes, info["class_names"])
    result = {
        "split": split,
        "report": None,
        "intensity": None,
        "model_only": shared["model_only"],
        "target_only": shared["target_only"],
    }
    if not shared["labels"].size:
        return result
    result["report"] = metrics.classification_report(
        shared["labels"], shared["logits"], shared["class_names"]
    )
    if info.get("has_soft_labels"):
        votes = _vote_shares(data_dir, info, split)[shared["keep"]][:, shared["target_columns"]]
        total = votes.sum(axis=1)
        # Shares over the shared classes only; images with no vote among them say nothing.
        voted = total > 0
        result["intensity"] = intensity_metrics(
            _softmax(shared["logits"][voted]), votes[voted] / total[voted, None], shared["class_names"]
        )
    return result


def intensity_report(run_dir: str, data_dir: str, split: str = "test") -> dict[str, Any]:
    """Predicted probabilities vs FER+ vote shares of a run's model on a soft-label dataset.

    Returns:
      `intensity_metrics` plus the split scored.

    Raises:
      ValueError: when the dataset carries no vote distributions.
    """
    info = schema.read_dataset_info(data_dir)
    if not info.get("has_soft_labels"):
        raise ValueError(f"{data_dir} has no soft labels (vote shares); convert FER+ with its votes")
    result = evaluate_run(run_dir, data_dir, split)
    if result["intensity"] is None:
        raise ValueError(f"no image of {data_dir} ({result['split']}) has a class of the model")
    return {"split": result["split"], **result["intensity"]}


def cross_dataset_matrix(
    runs: Mapping[str, str],
    datasets: Mapping[str, str],
    split: str = "test",
    output_dir: str | None = None,
) -> list[dict[str, Any]]:
    """Scores every trained model on every dataset, over the classes they share.

    Args:
      runs: {name of the training dataset: finished run directory}.
      datasets: {name: converted dataset dir} to score on (val when a dataset
        has no `split`).
      split: the split to score.
      output_dir: if set, writes cross_dataset.csv and cross_dataset.md there.

    Returns:
      One row per (train, eval) pair: train, eval, split, n, accuracy,
      balanced_accuracy, macro_f1 (NaN when no class is shared), model_only
      (model classes the dataset lacks, `;`-joined), target_only (left-out
      images, `class:count;...`).
    """
    rows = []
    for train_name, run_dir in runs.items():
        for eval_name, data_dir in datasets.items():
            result = evaluate_run(run_dir, data_dir, split)
            rep = result["report"] or {
                "n": 0,
                "accuracy": math.nan,
                "balanced_accuracy": math.nan,
                "macro_f1": math.nan,
            }
            rows.append(
                {
                    "train": train_name,
                    "eval": eval_name,
                    "split": result["split"],
                    "n": rep["n"],
                    **{key: rep[key] for key in ("accuracy", "balanced_accuracy", "macro_f1")},
                    "model_only": ";".join(result["model_only"]),
                    "target_only": ";".join(f"{k}:{v}" for k, v in result["target_only"].items()),
                }
            )
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "cross_dataset.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        with open(os.path.join(output_dir, "cross_dataset.md"), "w") as f:
            f.write(cross_dataset_markdown(rows) + "\n")
    return rows


def cross_dataset_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """Accuracy and balanced-accuracy matrices (rows: trained on, columns: scored on), plus exclusions."""
    trains = list(dict.fromkeys(r["train"] for r in rows))
    evals = list(dict.fromkeys(r["eval"] for r in rows))
    cell = {(r["train"], r["eval"]): r for r in rows}
    lines = []
    for key, title in (("accuracy", "Accuracy"), ("balanced_accuracy", "Balanced accuracy")):
        lines += [
            f"### {title} (%), rows: trained on, columns: scored on",
            "",
            "| trained on | " + " | ".join(evals) + " |",
            "|---" * (len(evals) + 1) + "|",
        ]
        for t in trains:
            values = [cell[(t, e)][key] * 100 if (t, e) in cell else math.nan for e in evals]
            lines.append(
                f"| {t} | " + " | ".join("n/a" if math.isnan(v) else f"{v:.2f}" for v in values) + " |"
            )
        lines.append("")
    notes = [
        f"- {r['train']} on {r['eval']} ({r['split']}, n={r['n']}): "
        + "; ".join(
            filter(
                None,
                [
                    r["model_only"] and f"model classes absent from the data: {r['model_only']}",
                    r["target_only"] and f"images left out: {r['target_only']}",
                ],
            )
        )
        for r in rows
        if r["model_only"] or r["target_only"]
    ]
    lines += ["Shared classes are matched by name."] + (["Excluded:"] + notes if notes else [])
    return "\n".join(lines)
