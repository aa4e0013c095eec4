"""SMOTE oversampling of the training split, written as extra synthetic records.

SMOTE (imbalanced-learn) interpolates between an image and one of its k
nearest same-class neighbours in flattened pixel space. It runs on the train
split ONLY: `apply_smote` decodes nothing but train, and val/test shards are
copied byte for byte by `derive.write_derived`. Oversampling before splitting
lets interpolated copies of test images into training (how a seed project
reported 97.5% on FER2013); here there is no code path that could do it.

New records keep the originals and add `synthetic=1` records with ids
`smote/<class>/<n>`; dataset_info counts them in `num_synthetic`.

  python -m data_tools.smote --data=data/fer2013 --output=data/fer2013_smote \
      --targets=disgust:2000,surprise:4000      # or --targets=balance
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from absl import flags

import launch
from data_tools import derive
from data_tools.writer import Record
from fer_tf import schema

# Named target rules: every class below the reference count is raised to it.
TARGET_RULES = ("balance", "max", "median", "mean")


def parse_targets(text: str) -> dict[str, int] | str:
    """Parses `--targets`: a rule name, or `class:count,class:count`."""
    text = text.strip()
    if text in TARGET_RULES:
        return text
    targets = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, count = item.partition(":")
        if not sep or not count.strip().isdigit():
            raise ValueError(f"bad --targets item {item!r}: expected class:count or one of {TARGET_RULES}")
        targets[name.strip().lower()] = int(count)
    if not targets:
        raise ValueError(f"empty --targets: expected class:count,... or one of {TARGET_RULES}")
    return targets


def resolve_targets(counts: Mapping[str, int], targets: Mapping[str, int] | str) -> dict[str, int]:
    """Turns targets into the final train count of every class SMOTE grows.

    Args:
      counts: current train count by class name.
      targets: {class: final count}, or a rule: "balance"/"max" (every class up
        to the largest count), "median" or "mean" (classes below it up to it).

    Returns:
      {class: final count} for the classes that gain images.

    Raises:
      ValueError: unknown class, or a target below the current count (SMOTE
        only adds images; subsample with data_tools.longtail instead).
    """
    if isinstance(targets, str):
        if targets not in TARGET_RULES:
            raise ValueError(f"unknown targets rule {targets!r}; expected one of {TARGET_RULES}")
        values = np.array(list(counts.values()))
        reference = {
            "balance": values.max(),
            "max": values.max(),
            "median": np.median(values),
            "mean": values.mean(),
        }[targets]
        targets = {n: int(round(reference)) for n, c in counts.items() if c < reference}
    resolved = {}
    for name, target in targets.items():
        if name not in counts:
            raise ValueError(f"unknown class {name!r} in targets; classes: {list(counts)}")
        if target < counts[name]:
            raise ValueError(
                f"target {name}:{target} is below its {counts[name]} train images; SMOTE only adds"
            )
        if target > counts[name]:
            resolved[name] = int(target)
    return resolved


def smote_images(
    images: np.ndarray, labels: np.ndarray, targets: Mapping[int, int], k_neighbors: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Runs imbalanced-learn SMOTE on flattened pixels; returns only the new images.

    Args:
      images: uint8 [N, H, W, C] training images.
      labels: [N] class indices.
      targets: {class index: final count}, each >= the current count.
      k_neighbors: SMOTE neighbours (lowered to the smallest grown class size - 1).
      seed: SMOTE random state.

    Returns:
      (uint8 [M, H, W, C] synthetic images, [M] labels), grouped by class.
    """
    from imblearn.over_sampling import SMOTE

    if not targets:
        return np.zeros((0, *images.shape[1:]), np.uint8), np.zeros(0, np.int64)
    # float32: SMOTE interpolates in the input dtype and uint8 differences wrap.
    flat = images.reshape(len(images), -1).astype(np.float32)
    sampler = SMOTE(sampling_strategy=dict(targets), k_neighbors=k_neighbors, random_state=seed)
    resampled, new_labels = sampler.fit_resample(flat, labels)
    new = np.clip(np.rint(resampled[len(images) :]), 0, 255).astype(np.uint8)
    return new.reshape(-1, *images.shape[1:]), np.asarray(new_labels[len(images) :], np.int64)


def _synthetic_records(
    images: np.ndarray, labels: np.ndarray, class_names: Sequence[str], with_soft_labels: bool
) -> Iterator[Record]:
    index = {k: 0 for k in range(len(class_names))}
    for image, label in zip(images, labels.tolist(), strict=True):
        one_hot = tuple(np.eye(len(class_names))[label].tolist()) if with_soft_labels else None
        yield Record(
            split=derive.TRAIN,
            image_id=f"smote/{class_names[label]}/{index[label]}",
            image=image,
            label=label,
            soft_label=one_hot,
            synthetic=True,
        )
        index[label] += 1


def apply_smote(
    input_dir: str,
    output_dir: str,
    targets: Mapping[str, int] | str,
    k_neighbors: int = 5,
    seed: int = 0,
    num_shards: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Writes a copy of a dataset whose train split gains SMOTE images.

    Args:
      input_dir: the parent dataset (shards + dataset_info.json).
      output_dir: the new dataset directory (written atomically).
      targets: {class name: final train count} or a rule (see `resolve_targets`).
      k_neighbors: SMOTE neighbours.
      seed: SMOTE random state.
      num_shards: train shards (default: as many as the parent's).
      overwrite: replace an existing `output_dir`.

    Returns:
      The new dataset_info: originals kept, synthetic records counted in
      `num_synthetic`, val/test entries and shards unchanged.
    """
    info = schema.read_dataset_info(input_dir)
    class_names = info["class_names"]
    counts = info["splits"][derive.TRAIN]["class_counts"]
    resolved = resolve_targets(counts, targets)
    grown = {class_names.index(n): t for n, t in resolved.items()}
    k = min([k_neighbors] + [counts[n] - 1 for n in resolved])
    if resolved and k < 1:
        raise ValueError(f"SMOTE needs at least 2 train images in every grown class: {counts}")
    # The only split this function decodes: val/test are never read.
    train = derive.read_split(input_dir, derive.TRAIN, info)
    new_images, new_labels = smote_images(train.images, train.labels, grown, k, seed)
    soft = info.get("has_soft_labels", False)
    records = [
        derive.records_of(train, range(len(train.labels)), keep_soft_labels=soft),
        _synthetic_records(new_images, new_labels, class_names, soft),
    ]
    source = {
        "format": "smote",
        "targets": resolved,
        "k_neighbors": int(k),
        "seed": int(seed),
        "parent_train_counts": dict(counts),
    }
    chained = (record for part in records for record in part)
    return derive.write_derived(input_dir, output_dir, info, chained, source, num_shards, overwrite)


def define_flags() -> None:
    """Defines the CLI flags; called only when run as a script, so importing defines none."""
    derive.define_flags()
    flags.DEFINE_string(
        "targets", "balance", f"class:count,... (final train counts) or one of {TARGET_RULES}."
    )
    flags.DEFINE_integer("k_neighbors", 5, "SMOTE nearest neighbours.")
    flags.DEFINE_integer("seed", 0, "SMOTE random state.")


def main(argv: Sequence[str]) -> None:
    del argv
    f = flags.FLAGS
    derive.run_cli(
        lambda: apply_smote(
            f.data, f.output, parse_targets(f.targets), f.k_neighbors, f.seed, f.num_shards, f.overwrite
        )
    )


if __name__ == "__main__":
    define_flags()
    launch.run(main)
