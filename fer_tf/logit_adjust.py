"""Post-hoc logit adjustment (Menon et al. 2021): choose its strength tau for an export.

The export divides each class's probability by its training prior to the power
tau: `softmax(logits - tau * log_prior)`. `sweep_logit_adjust_tau` scores a grid
of tau on the run's validation split through the export's test-time views, and
`choose_logit_adjust_tau` picks one from the scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from fer_tf import data, metrics, runs

TAU_GRID = tuple(round(0.1 * i, 1) for i in range(21))  # 0.0, 0.1, ..., 2.0


def sweep_logit_adjust_tau(
    run_dir: str, tta_flip: bool = False, taus: Sequence[float] = TAU_GRID, tta_zoom: float = 0.0
) -> list[dict[str, float]]:
    """Scores post-hoc logit adjustment strengths on the run's validation split.

    The adjustment is the same as the export's: `softmax(logits - tau *
    log_prior)`, averaged over the export's test-time views (`data.tta_views`).

    Returns:
      One row per tau: tau, accuracy, balanced_accuracy, macro_f1 and
      min_recall (of the weakest class).
    """
    run = runs.open_run(run_dir, "export")
    size, channels = run.image_size, run.channels
    images, y_true = data.eval_arrays(run.data_dir, run.data_info, "val", image_size=size, channels=channels)
    x = data.preprocess_for_eval(tf.constant(images), size, channels).numpy()
    views = [
        run.model.predict(v, batch_size=256, verbose=0)
        for v in data.tta_views(tf.constant(x), tta_flip, tta_zoom)
    ]
    log_prior = runs.train_log_prior(run.info, run.data_info)
    rows = []
    for tau in taus:
        probs = np.mean([tf.nn.softmax(v - tau * log_prior, axis=-1).numpy() for v in views], axis=0)
        report = metrics.classification_report(y_true, probs.argmax(-1), run.class_names)
        rows.append({
            "tau": float(tau),
            "accuracy": report["accuracy"],
            "balanced_accuracy": report["balanced_accuracy"],
            "macro_f1": report["macro_f1"],
            "min_recall": min(c["recall"] for c in report["per_class"].values()),
        })  # fmt: skip
    return rows


def choose_logit_adjust_tau(rows: Sequence[Mapping[str, float]]) -> float:
    """The tau of `sweep_logit_adjust_tau` rows with the best mean of accuracy and balanced accuracy.

    Accuracy alone picks tau = 0 (the prior helps the head classes) and
    balanced accuracy alone gives away accuracy for a last tenth of a point;
    their mean values both. Ties go to the smaller tau, the smaller change.
    """
    best = max(rows, key=lambda r: (round(r["accuracy"] + r["balanced_accuracy"], 6), -r["tau"]))
    return float(best["tau"])
