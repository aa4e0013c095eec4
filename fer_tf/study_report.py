"""The outputs of a study (`fer_tf.study`): results.csv, summary.md and plots.

One row per cell goes to results.csv; summary.md has a Markdown table per
dataset with a row per method and mean ± sample std over seeds of accuracy,
balanced accuracy, macro-F1, the recall of each minority class (train count
below the median, from dataset_info.json) and, on datasets with vote shares,
the intensity scores. Below each table, every method's difference from the
cross-entropy baseline (else the first method) with Welch's t-test over seeds
says which differences are beyond seed-to-seed noise. Plots use the project's Agg canvas (`fer_tf.report`).
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fer_tf import metrics, report, schema


def flat_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """One results.csv row: scores, recall_<class> for each class, intensity, seconds."""
    rep = record["report"]
    row = {key: record[key] for key in ("dataset", "method", "seed", "split")}
    row.update({key: rep[key] for key in ("n", "accuracy", "balanced_accuracy", "macro_f1")})
    row.update({f"recall_{name}": scores["recall"] for name, scores in rep["per_class"].items()})
    if record.get("intensity"):
        row["intensity_mae"] = record["intensity"]["mae"]
        row["intensity_corr"] = record["intensity"]["mean_pearson"]
    row["train_seconds"] = round(float(record["train_seconds"]), 2)
    return row


def aggregate(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[tuple[str, str], dict]:
    """Mean ± std over seeds per (dataset, method), by `metrics.mean_std`.

    Args:
      rows: flat rows (`flat_row`).
      keys: columns to aggregate; a key missing from any row of a group is left out.

    Returns:
      {(dataset, method): {key: {"mean", "std", "n"}}}; std has ddof=1 (NaN for one seed).
    """
    groups: dict[tuple[str, str], list] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["method"]), []).append(row)
    return {
        group: metrics.mean_std(members, [k for k in keys if all(m.get(k, "") != "" for m in members)])
        for group, members in groups.items()
    }


def minority_classes(info: Mapping[str, Any]) -> list[str]:
    """Classes whose train count is below the median train count (dataset_info.json)."""
    counts = info["splits"]["train"]["class_counts"]
    median = float(np.median(list(counts.values())))
    return [name for name in info["class_names"] if counts[name] < median]


def write_outputs(
    study_dir: str,
    records: Sequence[Mapping[str, Any]],
    infos: Mapping[str, Mapping[str, Any]],
    methods: Sequence[str],
    *,
    base: Mapping[str, Any],
    seeds: Sequence[int],
    pending: int = 0,
    run_dirs: Mapping[tuple[str, str, int], str] | None = None,
) -> None:
    """Writes results.csv, summary.md and plots/<dataset>_{methods,recall}.png into `study_dir`.

    Args:
      study_dir: the study's directory.
      records: cell records (`fer_tf.study.run_cell`).
      infos: {dataset name: its dataset_info.json}.
      methods: method names, in table order.
      base: the study's base recipe, quoted in summary.md.
      seeds: the study's seeds, quoted in summary.md.
      pending: cells not run yet; summary.md then says the tables are partial.
      run_dirs: {(dataset, method, seed): run directory}; with it, summary.md names
        each method's best run (`best_runs`), whose checkpoint export.py takes.
    """
    os.makedirs(study_dir, exist_ok=True)
    rows = [flat_row(r) for r in records]
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns and key != "train_seconds"]
    with open(os.path.join(study_dir, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, columns + ["train_seconds"], restval="")
        writer.writeheader()
        writer.writerows(rows)
    keys = [c for c in columns if c not in ("dataset", "method", "seed", "split", "n")] + ["train_seconds"]
    stats = aggregate(rows, keys)
    sections = [_summary_header(base, seeds, methods)]
    if pending:
        sections.append(
            f"**Partial:** {len(records)} cells scored, {pending} not yet run. A method's n "
            "below the number of seeds means some of its seeds are still missing."
        )
    for dataset, info in infos.items():
        by_method = {m: stats[(dataset, m)] for m in methods if (dataset, m) in stats}
        if not by_method:
            continue
        split = next(r["split"] for r in rows if r["dataset"] == dataset)
        sections.append(_summary_table(dataset, info, split, by_method))
        # The baseline is cross-entropy, else the first method (e.g. hard_labels in a FER+ study).
        reference = BASELINE if BASELINE in by_method else next(iter(by_method))
        if len(by_method) > 1:
            comparison = compare_to_baseline(
                [r for r in rows if r["dataset"] == dataset], reference, minority_classes(info)
            )
            sections.append(_comparison_table(reference, comparison))
        if run_dirs:
            key = "balanced_accuracy" if "balanced" in str(base.get("monitor", "balanced")) else "accuracy"
            best = best_runs([r for r in rows if r["dataset"] == dataset], key)
            sections.append(_best_table(best, key, run_dirs))
        plots = os.path.join(study_dir, "plots")
        plot_method_bars(by_method, os.path.join(plots, f"{dataset}_methods.png"), title=dataset)
        plot_recall_heatmap(
            by_method,
            info["class_names"],
            os.path.join(plots, f"{dataset}_recall.png"),
            title=f"{dataset}: mean recall per class (%)",
        )
    with open(os.path.join(study_dir, "summary.md"), "w") as f:
        f.write("\n\n".join(sections) + "\n")


def _summary_header(base: Mapping[str, Any], seeds: Sequence[int], methods: Sequence[str]) -> str:
    recipe = ", ".join(f"{k}={v}" for k, v in sorted(base.items()))
    return (
        "# Study summary\n\n"
        f"Methods: {', '.join(methods)}. Seeds: {', '.join(map(str, seeds))}.  \n"
        f"Base recipe: {recipe}.  \n"
        "Cells are mean ± sample std over seeds in % (intensity MAE and correlation unscaled); "
        "n is the number of seeds. Every method gets the same small budget: compare rows "
        "with each other, not with published accuracies."
    )


def format_cell(stat: Mapping[str, float], scale: float = 100.0, digits: int = 2) -> str:
    """`71.23 ± 0.45` from a `mean_std` entry (`± n/a` for a single seed)."""
    std = "n/a" if math.isnan(stat["std"]) else f"{stat['std'] * scale:.{digits}f}"
    return f"{stat['mean'] * scale:.{digits}f} ± {std}"


def _summary_table(dataset: str, info: Mapping, split: str, by_method: Mapping[str, Mapping]) -> str:
    minority = minority_classes(info)
    counts = info["splits"]["train"]["class_counts"]
    columns = [
        ("accuracy", "accuracy", 100.0, 2),
        ("balanced_accuracy", "balanced acc.", 100.0, 2),
        ("macro_f1", "macro-F1", 100.0, 2),
    ]
    columns += [(f"recall_{name}", f"recall {name}", 100.0, 2) for name in minority]
    if info.get("has_soft_labels"):
        columns += [("intensity_mae", "intensity MAE", 1.0, 4), ("intensity_corr", "intensity r", 1.0, 3)]
    lines = [
        f"## {dataset}",
        "",
        f"Scored on the {split} split ({info['splits'][split]['num_examples']} images"
        + ("; it also picked each run's best epoch, so scores are optimistic" if split == "val" else "")
        + "). Train counts: "
        + ", ".join(f"{name} {counts[name]}" for name in info["class_names"])
        + f". Minority classes (below the median train count): {', '.join(minority) or 'none'}."
        + _longtail_note(info),
        "",
        "| method | " + " | ".join(title for _, title, _, _ in columns) + " | train s | n |",
        "|---" * (len(columns) + 3) + "|",
    ]
    for method, stat in by_method.items():
        cells = [
            format_cell(stat[key], scale, digits) if key in stat else "" for key, _, scale, digits in columns
        ]
        seconds = f"{stat['train_seconds']['mean']:.0f}"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {seconds} | {stat['accuracy']['n']} |")
    return "\n".join(lines)


def _longtail_note(info: Mapping[str, Any]) -> str:
    """The imbalance factor asked and the head/tail ratio of the counts, for a long-tail subset."""
    source = info.get("source") or {}
    if source.get("format") != "longtail":
        return ""
    asked, ratio = source["imbalance_factor"], schema.imbalance_ratio(schema.class_counts(info))
    note = f" A long-tail subset at imbalance factor {asked:g}"
    if round(ratio, 1) == round(asked, 1):
        return note + "."
    return note + f"; its real head/tail ratio is {ratio:.1f} (a class short of its target keeps all it has)."


BASELINE = "crossentropy"
COMPARED = (
    ("balanced_accuracy", "balanced acc."),
    ("macro_f1", "macro-F1"),
    ("minority_recall", "minority recall"),
)


def compare_to_baseline(
    rows: Sequence[Mapping[str, Any]], reference: str, minority: Sequence[str], alpha: float = 0.05
) -> list[dict[str, Any]]:
    """Each method's mean difference from `reference` and Welch's t-test over seeds.

    Args:
      rows: one dataset's flat rows (`flat_row`).
      reference: the baseline method.
      minority: classes whose mean recall is `minority_recall`.
      alpha: the level below which a difference counts as beyond seed noise.

    Returns:
      One dict per other method: {"method", and per compared key: {"diff", "p",
      "significant"}}; p is NaN when either side has fewer than 2 seeds.
    """
    from scipy import stats

    def values(method: str, key: str) -> np.ndarray:
        chosen = [r for r in rows if r["method"] == method]
        if key == "minority_recall":
            return np.array([np.mean([float(r[f"recall_{c}"]) for c in minority]) for r in chosen])
        return np.array([float(r[key]) for r in chosen])

    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        if method == reference:
            continue
        entry: dict[str, Any] = {"method": method}
        for key, _ in COMPARED:
            if key == "minority_recall" and not minority:
                continue
            a, b = values(method, key), values(reference, key)
            if min(len(a), len(b)) < 2:
                p = math.nan
            elif np.ptp(a) == 0 and np.ptp(b) == 0:  # no spread (e.g. a recall of 0 every seed)
                p = 1.0 if a[0] == b[0] else 0.0
            else:
                with warnings.catch_warnings():  # one constant side: scipy warns, the test still holds
                    warnings.simplefilter("ignore", RuntimeWarning)
                    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
            entry[key] = {"diff": float(a.mean() - b.mean()), "p": p, "significant": p < alpha}
        out.append(entry)
    return out


def _comparison_table(reference: str, comparison: Sequence[Mapping[str, Any]]) -> str:
    keys = [(k, t) for k, t in COMPARED if any(k in c for c in comparison)]
    lines = [
        f"Difference from {reference} in points (Welch's t-test over seeds; ** p < 0.05: beyond "
        "seed noise; with 3 seeds only large, steady differences reach it):",
        "",
        "| method | " + " | ".join(f"Δ {title} (p)" for _, title in keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    for entry in comparison:
        cells = []
        for key, _ in keys:
            c = entry.get(key)
            p = "n/a" if c is None or math.isnan(c["p"]) else f"{c['p']:.3f}"
            mark = "**" if c is not None and c["significant"] else ""
            cells.append("" if c is None else f"{mark}{c['diff'] * 100:+.2f}{mark} ({p})")
        lines.append(f"| {entry['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def best_runs(rows: Sequence[Mapping[str, Any]], key: str) -> dict[str, Mapping[str, Any]]:
    """{method: its row with the highest `key`} (FER-crossval keeps the best of its N runs)."""
    best: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        if row["method"] not in best or float(row[key]) > float(best[row["method"]][key]):
            best[row["method"]] = row
    return best


def _best_table(best: Mapping[str, Mapping[str, Any]], key: str, run_dirs: Mapping) -> str:
    lines = [
        f"Best run of each method by {key.replace('_', ' ')} (its run directory keeps that run's best "
        "epoch; `python export.py --run=<run>` turns it into a model):",
        "",
        "| method | seed | accuracy | balanced acc. | run |",
        "|---|---|---|---|---|",
    ]
    for method, row in best.items():
        run = run_dirs.get((row["dataset"], method, int(row["seed"])), "")
        lines.append(
            f"| {method} | {row['seed']} | {100 * float(row['accuracy']):.2f} | "
            f"{100 * float(row['balanced_accuracy']):.2f} | {run} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- plots


def plot_method_bars(by_method: Mapping[str, Mapping], path: str, title: str = "", dpi: int = 100) -> str:
    """Grouped bars of balanced accuracy and macro-F1 per method, error bars = std over seeds."""
    methods = list(by_method)
    fig = report._new_figure(max(6.0, 0.7 * len(methods) + 2.0), 4.5, dpi)
    ax = fig.add_subplot()
    x = np.arange(len(methods))
    for i, (key, label) in enumerate((("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro-F1"))):
        means = [by_method[m][key]["mean"] * 100 for m in methods]
        stds = np.nan_to_num([by_method[m][key]["std"] * 100 for m in methods])
        ax.bar(x + (i - 0.5) * 0.4, means, 0.4, yerr=stds, capsize=3, label=label)
    ax.set_xticks(x, labels=methods, rotation=40, ha="right")
    ax.set_ylabel("% (mean ± std over seeds)")
    ax.legend(fontsize=8)
    ax.set_title(title)
    return report._save(fig, path)


def plot_recall_heatmap(
    by_method: Mapping[str, Mapping], class_names: Sequence[str], path: str, title: str = "", dpi: int = 100
) -> str:
    """Heat map of mean per-class recall (%), methods x classes."""
    methods = list(by_method)
    values = np.array(
        [
            [by_method[m].get(f"recall_{name}", {"mean": math.nan})["mean"] * 100 for name in class_names]
            for m in methods
        ]
    )
    fig = report._new_figure(max(6.0, len(class_names) + 3.0), max(3.0, 0.45 * len(methods) + 2.0), dpi)
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=100.0, aspect="auto")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(np.arange(len(class_names)), labels=class_names, rotation=40, ha="right")
    ax.set_yticks(np.arange(len(methods)), labels=methods)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            colour = "black" if values[i, j] > 60 else "white"
            ax.text(j, i, f"{values[i, j]:.0f}", ha="center", va="center", color=colour, fontsize=8)
    ax.set_title(title)
    return report._save(fig, path)
