"""Plots: class distribution, confusion matrix, training curves, sample grids.

Figures are built with the object-oriented `matplotlib.figure.Figure` API on an
explicit Agg canvas, never through `pyplot`: nothing is registered in pyplot's
global figure list (so nothing leaks or needs closing), no global backend is
switched at import time, and plotting works headless in threads and tests.

Every `plot_*` function writes a PNG of a fixed pixel size (`figsize * dpi`, no
tight bounding box), creates the parent directories and returns the path.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Keras CSVLogger columns that are not train/val metric pairs.
_NON_METRIC_COLUMNS = ("epoch",)
_LR_COLUMNS = ("lr", "learning_rate")


def _new_figure(width: float, height: float, dpi: int, layout: str | None = "constrained") -> Figure:
    fig = Figure(figsize=(width, height), dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str) -> str:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fig.savefig(path, dpi=fig.dpi, format="png")
    fig.clear()
    return path


def _draw_confusion_matrix(
    fig: Figure, cm: np.ndarray, class_names: Sequence[str], normalize: bool, title: str | None
) -> None:
    cm = np.asarray(cm, dtype=np.float64)
    if normalize:
        # Row-normalised: the diagonal is per-class recall, which is what matters
        # under imbalance; raw counts would let "happy" dominate the colour scale.
        totals = cm.sum(axis=1, keepdims=True)
        values = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
    else:
        values = cm
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, labels=class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or ("confusion matrix (row-normalised)" if normalize else "confusion matrix"))
    # Text colour flips at half the colour scale so it stays readable on dark cells.
    threshold = 0.5 if normalize else (values.max() / 2.0 if values.size else 0.0)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            text = f"{values[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
            colour = "white" if values[i, j] > threshold else "black"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=8)


def plot_confusion_matrix(
    cm: np.ndarray | Sequence[Sequence[int]],
    class_names: Sequence[str],
    path: str,
    normalize: bool = True,
    title: str | None = None,
    dpi: int = 100,
) -> str:
    """Plots a confusion matrix (rows = true class, columns = predicted).

    Args:
      cm: [K, K] counts, e.g. `classification_report(...)["confusion_matrix"]`.
      class_names: the K class names in label order.
      path: output PNG path.
      normalize: divide each row by its total (per-class recall on the diagonal).
      title: optional title.
      dpi: pixels per inch; the PNG is square, max(6, K + 2) inches a side.

    Returns:
      `path`.
    """
    side = max(6.0, len(class_names) + 2.0)
    fig = _new_figure(side, side, dpi)
    _draw_confusion_matrix(fig, np.asarray(cm), class_names, normalize, title)
    return _save(fig, path)


def confusion_matrix_image(
    cm: np.ndarray | Sequence[Sequence[int]],
    class_names: Sequence[str],
    normalize: bool = True,
    dpi: int = 80,
) -> np.ndarray:
    """Renders a confusion-matrix figure to pixels, e.g. for `tf.summary.image`.

    Args:
      cm: [K, K] counts.
      class_names: the K class names in label order.
      normalize: as in `plot_confusion_matrix`.
      dpi: pixels per inch; the image is square, max(6, K + 2) inches a side.

    Returns:
      uint8 RGB image [H, W, 3].
    """
    side = max(6.0, len(class_names) + 2.0)
    fig = _new_figure(side, side, dpi)
    _draw_confusion_matrix(fig, np.asarray(cm), class_names, normalize, title=None)
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    fig.clear()
    return pixels


def imbalance_ratio(counts: Mapping[str, int] | Sequence[int]) -> float:
    """Returns max/min class count (inf when some class is empty)."""
    values = list(counts.values()) if isinstance(counts, Mapping) else list(counts)
    if not values or max(values) == 0:
        return float("nan")
    return max(values) / min(values) if min(values) > 0 else math.inf


def plot_class_distribution(
    info: Mapping[str, Any], path: str, log_scale: bool = False, dpi: int = 100
) -> str:
    """Bar chart of the per-class counts of every split in `dataset_info.json`.

    Bars are grouped by class, one colour per split, each annotated with its
    count; the legend gives each split's imbalance ratio (max/min count).

    Args:
      info: the dataset_info dict (`schema.read_dataset_info`).
      path: output PNG path.
      log_scale: logarithmic y axis (useful for long-tail subsets).
      dpi: pixels per inch; the PNG is 10x5 inches.

    Returns:
      `path`.
    """
    class_names = list(info["class_names"])
    splits = list(info["splits"])
    fig = _new_figure(10.0, 5.0, dpi)
    ax = fig.add_subplot()
    x = np.arange(len(class_names))
    width = 0.8 / max(1, len(splits))
    for s, split in enumerate(splits):
        counts = info["splits"][split]["class_counts"]
        heights = [counts.get(name, 0) for name in class_names]
        label = f"{split} (n={sum(heights)}, max/min={imbalance_ratio(heights):.1f})"
        bars = ax.bar(x + (s - (len(splits) - 1) / 2) * width, heights, width, label=label)
        ax.bar_label(bars, labels=[str(h) for h in heights], fontsize=7, rotation=90, padding=2)
    ax.set_xticks(x, labels=class_names)
    ax.set_ylabel("images")
    if log_scale:
        ax.set_yscale("log")
    ax.margins(y=0.15)
    ax.legend(fontsize=8)
    ax.set_title("class distribution per split")
    return _save(fig, path)


def _mosaic(
    cells: Sequence[np.ndarray | None], cols: int, band: int, pad: int
) -> tuple[np.ndarray, int, int]:
    """Tiles images into one uint8 RGB canvas (white gaps, `band` rows above each cell).

    One `imshow` of a mosaic renders in milliseconds where a grid of 50+ axes
    takes seconds, which matters for the per-epoch and per-dataset reports.

    Returns:
      (canvas [H, W, 3], cell height, cell width), cell sizes including gaps.
    """
    present = [np.asarray(c) for c in cells if c is not None]
    h = max((c.shape[0] for c in present), default=1)
    w = max((c.shape[1] for c in present), default=1)
    rows = max(1, math.ceil(len(cells) / cols))
    cell_h, cell_w = band + h + pad, w + pad
    canvas = np.full((rows * cell_h + pad, cols * cell_w + pad, 3), 255, np.uint8)
    for i, image in enumerate(cells):
        if image is None:
            continue
        image = np.asarray(image, np.uint8)
        image = image[..., None] if image.ndim == 2 else image
        top, left = (i // cols) * cell_h + pad + band, (i % cols) * cell_w + pad
        canvas[top : top + image.shape[0], left : left + image.shape[1]] = image[..., :3]
    return canvas, cell_h, cell_w


def plot_image_grid(
    images: Sequence[np.ndarray] | np.ndarray,
    titles: Sequence[str] | None,
    path: str,
    cols: int = 8,
    cell_inches: float = 1.2,
    dpi: int = 100,
) -> str:
    """Draws uint8 images (gray [H,W] / [H,W,1] or RGB [H,W,3]) in a grid.

    Args:
      images: the images; grey levels are shown as they are (no contrast
        stretch), so a constant image looks constant.
      titles: one short title per image, or None.
      path: output PNG path.
      cols: images per row (fewer when there are fewer images).
      cell_inches: width of one cell; the PNG is `cols * cell_inches` inches
        wide and as tall as the rows need (cells keep the images' aspect).
      dpi: pixels per inch.

    Returns:
      `path`.
    """
    n = len(images)
    cols = max(1, min(cols, n))
    size = max((np.asarray(im).shape[0] for im in images), default=1)
    band = size // 4 if titles is not None else 0
    canvas, cell_h, cell_w = _mosaic(list(images), cols, band, pad=max(1, size // 16))
    width = cols * cell_inches
    fig = _new_figure(width, width * canvas.shape[0] / canvas.shape[1], dpi, layout=None)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(canvas, interpolation="nearest", aspect="auto")
    ax.axis("off")
    for i in range(n if titles is not None else 0):
        x, y = (i % cols) * cell_w + cell_w / 2, (i // cols) * cell_h + band / 2 + 1
        ax.text(x, y, str(titles[i]), ha="center", va="center", fontsize=7, clip_on=True)
    return _save(fig, path)


def plot_misclassified(
    images: np.ndarray,
    y_true: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    path: str,
    limit: int = 32,
) -> str:
    """The `limit` most confident mistakes, titled `true>predicted p`, in a grid.

    The most confident mistakes come first: they show label noise and
    systematic confusions.
    """
    y_pred = probabilities.argmax(-1)
    wrong = np.flatnonzero(y_true != y_pred)
    wrong = wrong[np.argsort(-probabilities[wrong, y_pred[wrong]], kind="stable")][:limit]
    titles = [
        f"{class_names[y_true[i]]}>{class_names[y_pred[i]]} {probabilities[i, y_pred[i]]:.2f}" for i in wrong
    ]
    return plot_image_grid(images[wrong], titles, path)


def plot_sample_grid(
    images: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    path: str,
    per_class: int = 8,
    seed: int = 0,
    dpi: int = 100,
) -> str:
    """Draws `per_class` random images of every class, one row per class.

    Args:
      images: uint8 [N, H, W, C].
      labels: [N] class indices.
      class_names: the K class names; row i is class i, labelled with its count.
      path: output PNG path.
      per_class: columns; classes with fewer images leave cells empty.
      seed: which images are drawn.
      dpi: pixels per inch; the PNG is `(per_class + 1) * 1.2` inches wide
        and as tall as the K rows need.

    Returns:
      `path`.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    cells: list[np.ndarray | None] = []
    counts = []
    for k in range(len(class_names)):
        members = np.flatnonzero(labels == k)
        counts.append(members.size)
        chosen = np.sort(rng.choice(members, min(per_class, members.size), replace=False))
        cells += [images[i] for i in chosen] + [None] * (per_class - chosen.size)
    size = images.shape[1] if len(images) else 1
    canvas, cell_h, _ = _mosaic(cells, per_class, band=0, pad=max(1, size // 16))
    cell = 1.2
    width = (per_class + 1) * cell
    fig = _new_figure(width, per_class * cell * canvas.shape[0] / canvas.shape[1], dpi, layout=None)
    # The first cell's width is left for the class names.
    ax = fig.add_axes((1.0 / (per_class + 1), 0.0, per_class / (per_class + 1), 1.0))
    ax.imshow(canvas, interpolation="nearest", aspect="auto")
    ax.axis("off")
    for k, name in enumerate(class_names):
        ax.text(
            -size * 0.1,
            k * cell_h + cell_h / 2,
            f"{name}\n(n={counts[k]})",
            ha="right",
            va="center",
            fontsize=8,
        )
    return _save(fig, path)


def read_training_log(csv_path: str) -> dict[str, np.ndarray]:
    """Reads a Keras `CSVLogger` file into {column: float array}."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{csv_path}: no epochs logged")
    return {
        column: np.array([float(r[column]) if r[column] not in ("", None) else np.nan for r in rows])
        for column in rows[0]
    }


def plot_training_curves(csv_path: str, path: str, dpi: int = 100) -> str:
    """Plots loss and every metric of a Keras CSVLogger file, train vs `val_`.

    Args:
      csv_path: the `history.csv` written by `keras.callbacks.CSVLogger`.
      path: output PNG path.
      dpi: pixels per inch; one 4x3.2-inch panel per metric, up to 3 per row.

    Returns:
      `path`.
    """
    log = read_training_log(csv_path)
    epochs = log.get("epoch", np.arange(len(next(iter(log.values())))))
    metrics = [c for c in log if c not in _NON_METRIC_COLUMNS and not c.startswith("val_")]
    # Loss first, learning rate last: the order people read them in.
    metrics.sort(key=lambda c: (c != "loss", c in _LR_COLUMNS, c))
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig = _new_figure(4.0 * cols, 3.2 * rows, dpi)
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.plot(epochs, log[metric], label="train" if metric not in _LR_COLUMNS else metric)
        if f"val_{metric}" in log:
            ax.plot(epochs, log[f"val_{metric}"], linestyle="--", label="val")
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_per_class_recall(per_class: Mapping[str, Mapping[str, float]], path: str, dpi: int = 100) -> str:
    """Horizontal bars of per-class recall, annotated with support.

    Args:
      per_class: `classification_report(...)["per_class"]`, i.e.
        {name: {"recall": float, "support": int, ...}} in class order.
      path: output PNG path.
      dpi: pixels per inch; the PNG is 6 inches wide, 0.4 per class + 1.5 tall.

    Returns:
      `path`.
    """
    names = list(per_class)
    recalls = [float(per_class[n]["recall"]) for n in names]
    fig = _new_figure(6.0, 0.4 * len(names) + 1.5, dpi)
    ax = fig.add_subplot()
    bars = ax.barh(np.arange(len(names)), recalls)
    labels = [
        f"{r:.2f} (n={int(per_class[n].get('support', 0))})" for n, r in zip(names, recalls, strict=True)
    ]
    ax.bar_label(bars, labels=labels, fontsize=7, padding=2)
    ax.set_yticks(np.arange(len(names)), labels=names)
    ax.invert_yaxis()
    ax.set_xlim(0.0, 1.25)
    ax.set_xlabel("recall")
    ax.set_title(f"per-class recall (balanced accuracy {np.mean(recalls):.3f})")
    return _save(fig, path)


def write_evaluation(out: str, result: Mapping[str, Any], images, y_true, probs, class_names) -> None:
    """metrics.json, confusion_matrix.png and misclassified.png in `out`."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2)
    plot_confusion_matrix(result["confusion_matrix"], class_names, os.path.join(out, "confusion_matrix.png"))
    plot_misclassified(images, y_true, probs, class_names, os.path.join(out, "misclassified.png"))
