"""Long-tail training subsets by imbalance factor (DICC), for imbalance benchmarks.

Class i keeps `n_i = round(n_max * IF ** (-rank_i / (K - 1)))` training images,
where rank_i orders the classes by parent train count, largest first (ties by
class index) and n_max is the largest count: the head keeps everything and
the tail class keeps n_max / IF. A class never keeps more than it has: then
the subset's real head/tail ratio differs from IF, and `dataset_info.json`
records it (`achieved_imbalance_factor`, `short_of_target`).
Which images are kept is drawn with `seed`; val/test are copied unchanged.

  python -m data_tools.longtail --data=data/fer2013 --output=data/fer2013_if50 \
      --imbalance_factor=50
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import flags

import launch
from data_tools import derive
from fer_tf import schema


def check_imbalance_factor(imbalance_factor: float) -> None:
    """Raises ValueError unless the imbalance factor is >= 1 (1: no change)."""
    if not imbalance_factor >= 1:
        raise ValueError(f"imbalance_factor must be >= 1, got {imbalance_factor}")


def longtail_targets(counts: Sequence[int], imbalance_factor: float) -> np.ndarray:
    """Training images each class should keep for an imbalance factor, before clipping.

    Args:
      counts: parent train count of each class, in class order.
      imbalance_factor: IF >= 1, the ratio between the head and tail targets.

    Returns:
      int64 [K]: round(n_max * IF ** (-rank_i / (K - 1))).
    """
    counts = [int(c) for c in counts]
    if len(counts) < 2:
        raise ValueError("a long-tail subset needs at least two classes")
    check_imbalance_factor(imbalance_factor)
    order = sorted(range(len(counts)), key=lambda k: (-counts[k], k))
    rank = {k: r for r, k in enumerate(order)}
    n_max = max(counts)
    return np.array(
        [round(n_max * imbalance_factor ** (-rank[k] / (len(counts) - 1))) for k in range(len(counts))],
        np.int64,
    )


def longtail_counts(counts: Sequence[int], imbalance_factor: float) -> np.ndarray:
    """Training images kept per class: int64 [K] min(count_i, `longtail_targets`_i)."""
    return np.minimum(longtail_targets(counts, imbalance_factor), np.array(counts, np.int64))


def shortfall(source: Mapping[str, Any]) -> str | None:
    """A line on the classes kept below their target (a long-tail `source`), or None."""
    if not source["short_of_target"]:
        return None
    short = ", ".join(f"{name} (target {n})" for name, n in source["short_of_target"].items())
    return f"  real head/tail ratio {source['achieved_imbalance_factor']:g}: {short} kept all it had\n"


def choose_indices(labels: np.ndarray, keep: Sequence[int], seed: int) -> np.ndarray:
    """Draws `keep[k]` indices of every class k without replacement.

    Each class has its own random stream (seeded by `seed` and the class), so
    a class's subset does not depend on the other classes' targets.

    Returns:
      The chosen indices, sorted (records keep their parent order).
    """
    chosen = []
    for k, n in enumerate(keep):
        members = np.flatnonzero(labels == k)
        rng = np.random.default_rng([seed, k])
        chosen.append(rng.choice(members, int(n), replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def make_longtail(
    input_dir: str,
    output_dir: str,
    imbalance_factor: float,
    seed: int = 0,
    num_shards: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Writes a long-tail copy of a converted dataset (only train is subsampled).

    Args:
      input_dir: the parent dataset (shards + dataset_info.json).
      output_dir: the new dataset directory (written atomically).
      imbalance_factor: IF, head count / tail count of the subset.
      seed: which images each class keeps.
      num_shards: train shards (default: as many as the parent's).
      overwrite: replace an existing `output_dir`.

    Returns:
      The new dataset_info; `source` records the parent, IF, seed, the counts kept,
      the head/tail ratio achieved and the classes that fell short of their target.
    """
    info = schema.read_dataset_info(input_dir)
    class_names = info["class_names"]
    parent_counts = schema.class_counts(info, derive.TRAIN)
    targets = longtail_targets(parent_counts, imbalance_factor)
    keep = longtail_counts(parent_counts, imbalance_factor)
    train = derive.read_split(input_dir, derive.TRAIN, info)
    indices = choose_indices(train.labels, keep, seed)
    source = {
        "format": "longtail",
        "imbalance_factor": float(imbalance_factor),
        "seed": int(seed),
        "parent_train_counts": {n: int(c) for n, c in zip(class_names, parent_counts, strict=True)},
        "target_counts": {n: int(c) for n, c in zip(class_names, keep, strict=True)},
        # A class with fewer images than its target keeps them all, so the subset's real
        # head/tail ratio can exceed IF (FER2013 at IF 10: disgust has 436 < 721, ratio 16.5).
        "achieved_imbalance_factor": round(schema.imbalance_ratio(keep), 2),
        "short_of_target": {
            n: int(target)
            for n, target, c in zip(class_names, targets, parent_counts, strict=True)
            if c < target
        },
    }
    records = derive.records_of(train, indices, keep_soft_labels=info.get("has_soft_labels", False))
    return derive.write_derived(input_dir, output_dir, info, records, source, num_shards, overwrite)


def define_flags() -> None:
    """Defines the CLI flags; called only when run as a script, so importing defines none."""
    derive.define_flags()
    flags.DEFINE_float("imbalance_factor", 10.0, "Head/tail ratio IF of the subset (>= 1).")
    flags.DEFINE_integer("seed", 0, "Which images each class keeps.")


def main(argv: Sequence[str]) -> None:
    del argv
    f = flags.FLAGS
    info = derive.run_cli(
        lambda: make_longtail(f.data, f.output, f.imbalance_factor, f.seed, f.num_shards, f.overwrite)
    )
    print(shortfall(info["source"]) or "", end="")


if __name__ == "__main__":
    define_flags()
    launch.run(main)
