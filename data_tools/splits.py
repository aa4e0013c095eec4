"""Stratified, seeded train/val/test splits for the converters.

A split is drawn per class, so every split keeps the class proportions, and is
deterministic for a given input order and seed. Groups (e.g. the subject of
CK+ frames, from `group_of`) never span two splits, so near-identical images
cannot leak from train into test.
"""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Sequence

import numpy as np

from fer_tf import schema


def assign_splits(
    labels: Sequence[int],
    fractions: Sequence[float],
    seed: int,
    groups: Sequence[str] | None = None,
    names: Sequence[str] = schema.SPLITS,
) -> list[str]:
    """Draws a stratified, seeded split; deterministic for a given input order and seed.

    Args:
      labels: class index per example.
      fractions: one fraction per split name, summing to 1.
      seed: the random seed.
      groups: optional group per example (e.g. a subject); a group never spans two splits.
      names: the split names, in the order of `fractions`.

    Returns:
      The split name of each example.
    """
    labels = np.asarray(labels, dtype=np.int64)
    out = np.empty(len(labels), dtype=object)
    if groups is None:
        for label in np.unique(labels):
            index = np.flatnonzero(labels == label)
            index = index[np.random.default_rng([seed, int(label)]).permutation(len(index))]
            cuts = np.floor(np.cumsum(fractions) * len(index) + 0.5).astype(int)
            for name, part in zip(names, np.split(index, cuts[:-1]), strict=True):
                out[part] = name
        return list(out)
    # Greedy: each group, in seeded order (largest first), goes to the split whose
    # per-class quota it fills best, so classes stay near `fractions` in every split.
    members = collections.defaultdict(list)
    for i, group in enumerate(groups):
        members[group].append(i)
    order = [sorted(members)[i] for i in np.random.default_rng(seed).permutation(len(members))]
    order.sort(key=lambda g: -len(members[g]))  # stable: equal sizes keep the seeded order
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    need = np.outer(fractions, np.bincount(labels, minlength=num_classes)).astype(float)
    for group in order:
        hist = np.bincount(labels[members[group]], minlength=num_classes)
        # Ties (common in small sets) go to the split that is furthest from its size.
        best = int(np.argmax(need @ hist + 1e-6 * need.sum(axis=1)))
        need[best] -= hist
        out[members[group]] = names[best]
    return list(out)


def draw_splits(
    splits: Sequence[str | None],
    labels: Sequence[int],
    groups: Sequence[str] | None,
    fractions: Sequence[float],
    val_fraction: float,
    seed: int,
) -> list[str]:
    """Draws the splits a layout leaves open, then moves part of train to val.

    Args:
      splits: the split of each example; None where the layout gives none.
      labels: class index per example.
      groups: group per example (see `assign_splits`), or None.
      fractions: train/val/test fractions for the examples without a split.
      val_fraction: fraction of train (stratified, seeded) moved to val; 0 moves none.
      seed: the random seed of both draws.

    Returns:
      The split name of each example.

    Raises:
      ValueError: val_fraction > 0 and the layout already has a val split.
    """
    splits = list(splits)

    def draw(indices, fractions, names):
        subset = None if groups is None else [groups[i] for i in indices]
        drawn = assign_splits([labels[i] for i in indices], fractions, seed, subset, names)
        for i, s in zip(indices, drawn, strict=True):
            splits[i] = s

    draw([i for i, s in enumerate(splits) if s is None], fractions, schema.SPLITS)
    if val_fraction > 0:
        if "val" in splits:
            raise ValueError("val_fraction needs a layout without a val split; this one has one")
        draw(
            [i for i, s in enumerate(splits) if s == "train"],
            (1.0 - val_fraction, val_fraction),
            ("train", "val"),
        )
    return splits


def group_of(image_id: str, pattern: str) -> str:
    """The group of an image: the first regex group (or match) of `pattern` in its file name.

    Files the pattern does not match form a group of their own.
    """
    match = re.search(pattern, os.path.basename(image_id))
    if match is None:
        return image_id
    return match.group(1) if match.groups() else match.group(0)
