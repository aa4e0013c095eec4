"""Exact and near-duplicate images, cross-split leakage and constant images.

Exact duplicates share a hash of their raw pixels (and shape). Near
duplicates have 64-bit DCT perceptual hashes (pHash) within a Hamming distance
`t`: that catches what a byte hash misses, such as re-encoded copies (a JPEG
round trip moves pixels by a grey level or two) and slightly shifted, cropped or
contrast-changed copies of the same photo. On FER2013, sampled pairs at
distance 4 were all true twins; at 6 unrelated faces start to pair up.

The near search avoids the all-pairs comparison: split the 64 bits into t + 1
bands; two hashes within distance t agree exactly on at least one band
(pigeonhole), so only images sharing a band value are compared. On FER2013
(32k images, t = 4) that is 1.3M candidate pairs instead of 520M. Images with
equal hashes are compared once (`near_graph`), so a pile of identical or blank
images costs memory in proportion to its size, not its square.

Everything here is plain numpy on in-memory arrays; `data_tools/validate.py`
reads the splits and writes the report.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

HASH_NAME = "phash-dct-64"
# Popcount of every byte value, for Hamming distances of uint64 hashes.
_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def pixel_digests(images: np.ndarray) -> np.ndarray:
    """Returns a 16-byte digest of each image's raw pixels and shape.

    Args:
      images: uint8 [N, H, W, C].

    Returns:
      [N] array of dtype `S16`; equal digests mean identical pixels.
    """
    shape = repr(images.shape[1:]).encode()
    return np.array(
        [
            hashlib.blake2b(shape + np.ascontiguousarray(im).tobytes(), digest_size=16).digest()
            for im in images
        ],
        dtype="S16",
    )


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II basis: `D @ x` is the DCT of the column vector x."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


def phash(images: np.ndarray, hash_size: int = 8, dct_size: int = 32, batch: int = 4096) -> np.ndarray:
    """64-bit DCT perceptual hash of each image (Zauner 2010, as in `imagehash`).

    The image is converted to grey, resized to 32x32, transformed with a 2-D DCT;
    bit b is set when low-frequency coefficient b exceeds the median of the
    non-DC coefficients of the 8x8 low-frequency block.

    Args:
      images: uint8 [N, H, W, C], C in {1, 3}.
      hash_size: side of the low-frequency block (8 -> 64 bits).
      dct_size: side the image is resized to before the DCT.

      batch: images transformed at a time (the DCT works in float64: 8 KB an image).

    Returns:
      [N] uint64 hashes.
    """
    if len(images) > batch:
        return np.concatenate(
            [phash(images[i : i + batch], hash_size, dct_size, batch) for i in range(0, len(images), batch)]
        )
    if images.shape[-1] == 3:
        images = np.einsum("nhwc,c->nhw", images.astype(np.float32), np.float32([0.299, 0.587, 0.114]))
    else:
        images = images[..., 0].astype(np.float32)
    small = np.stack([cv2.resize(im, (dct_size, dct_size), interpolation=cv2.INTER_AREA) for im in images])
    d = _dct_matrix(dct_size).astype(np.float64)
    coeffs = d @ small.astype(np.float64) @ d.T
    low = coeffs[:, :hash_size, :hash_size].reshape(len(images), -1)
    median = np.median(low[:, 1:], axis=1, keepdims=True)
    # The tolerance keeps flat images (AC coefficients ~1e-13 of rounding
    # noise) from getting random bits: all constant images hash alike.
    bits = (low - median) > 1e-6
    packed = np.packbits(bits, axis=1)
    return packed.view(">u8")[:, 0].astype(np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise Hamming distance between two uint64 arrays."""
    x = np.bitwise_xor(np.asarray(a, np.uint64), np.asarray(b, np.uint64))
    return _POPCOUNT8[x.view(np.uint8).reshape(*x.shape, 8)].sum(axis=-1, dtype=np.int64)


def _near_distinct(hashes: np.ndarray, max_distance: int, block: int = 1 << 22) -> np.ndarray:
    """Pairs (i < j) of `hashes`, all distinct, within `max_distance` bits: [P, 2] int64.

    Banded (t + 1 bands, see the module docstring); the members of a band bucket
    are compared in blocks of at most `block` distances and only the pairs within
    `max_distance` are kept, so memory follows the answer, not the buckets.
    """
    n = len(hashes)
    edges = np.linspace(0, 64, max_distance + 2).astype(int)
    found = [np.zeros((0, 2), np.int64)]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        keys = (hashes >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        sizes = np.diff(np.r_[starts, n])
        for start, size in zip(starts[sizes > 1], sizes[sizes > 1], strict=True):
            members = np.sort(order[start : start + size]).astype(np.int64)
            step = max(1, block // size)
            for first in range(0, size - 1, step):
                rows = np.arange(first, min(first + step, size - 1))
                distances = hamming(hashes[members[rows]][:, None], hashes[members][None, :])
                r, c = np.nonzero((distances <= max_distance) & (np.arange(size)[None, :] > rows[:, None]))
                found.append(np.stack([members[rows[r]], members[c]], axis=1))
    return np.unique(np.concatenate(found), axis=0)


def near_graph(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """Edges whose connected components are the groups of hashes within `max_distance` bits.

    Not every such pair: an image whose hash another image already has is linked
    to that image only, and two distinct hashes within `max_distance` are linked
    through the first image of each. Listing every pair would take memory
    quadratic in the size of a group of equal hashes, and every flat image
    hashes alike: 20,000 blank frames in a scraped dataset are 200M pairs.

    Args:
      hashes: [N] uint64.
      max_distance: Hamming threshold t (0..63); negative: no near search (no edges).

    Returns:
      [E, 2] int64 node pairs, E <= N - 1 + (pairs of distinct hashes within t).
    """
    hashes = np.asarray(hashes, np.uint64).reshape(-1)
    if max_distance < 0:
        return np.zeros((0, 2), np.int64)
    distinct, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    repeats = np.flatnonzero(first[inverse] != np.arange(len(hashes)))
    same = np.stack([first[inverse[repeats]], repeats], axis=1)
    return np.concatenate([same, first[_near_distinct(distinct, max_distance)]]).astype(np.int64)


def components(num_nodes: int, pairs: np.ndarray) -> np.ndarray:
    """Connected-component id of every node of the graph with edges `pairs`."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    graph = coo_matrix(
        (np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(num_nodes, num_nodes)
    )
    return connected_components(graph, directed=False)[1]


def _groups(group_ids: np.ndarray) -> list[np.ndarray]:
    """Member indices of every group with more than one member, largest first."""
    order = np.argsort(group_ids, kind="stable")
    sorted_ids = group_ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    groups = [g for g in np.split(order, starts[1:]) if len(g) > 1]
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def _summarise_groups(
    groups: list[np.ndarray],
    splits: np.ndarray,
    labels: np.ndarray,
    ids: np.ndarray,
    class_names: Sequence[str],
) -> dict[str, Any]:
    split_names = list(dict.fromkeys(splits.tolist()))
    conflicting = [g for g in groups if len(set(labels[g].tolist())) > 1]
    within = {}
    for split in split_names:
        inside = [g[splits[g] == split] for g in groups]
        inside = [g for g in inside if len(g) > 1]
        within[split] = {"num_groups": len(inside), "num_images": int(sum(len(g) for g in inside))}
    return {
        "num_groups": len(groups),
        "num_images": int(sum(len(g) for g in groups)),
        # Images that could be dropped keeping one per group.
        "num_redundant": int(sum(len(g) - 1 for g in groups)),
        "num_cross_split_groups": sum(len(set(splits[g].tolist())) > 1 for g in groups),
        "num_conflicting_label_groups": len(conflicting),
        "num_conflicting_label_images": int(sum(len(g) for g in conflicting)),
        "within_split": within,
        "groups": [
            {
                "ids": ids[g].tolist(),
                "splits": splits[g].tolist(),
                "labels": [class_names[k] for k in labels[g]],
                "conflicting_labels": len(set(labels[g].tolist())) > 1,
            }
            for g in groups
        ],
    }


def _leakage(
    group_ids: np.ndarray, splits: np.ndarray, labels: np.ndarray, reference: str
) -> dict[str, dict[str, int]]:
    """Per non-reference split: images sharing a group with a `reference` image."""
    in_reference = splits == reference
    ref_labels: dict[int, set[int]] = {}
    for g, k in zip(group_ids[in_reference].tolist(), labels[in_reference].tolist(), strict=True):
        ref_labels.setdefault(g, set()).add(k)
    leak = {}
    for split in dict.fromkeys(splits.tolist()):
        if split == reference:
            continue
        mine = np.flatnonzero(splits == split)
        twin = np.isin(group_ids[mine], group_ids[in_reference])
        # A twin with another label: the same face taught one way, tested another.
        conflict = sum(
            bool(ref_labels.get(g, set()) - {k})
            for g, k in zip(group_ids[mine].tolist(), labels[mine].tolist(), strict=True)
        )
        leak[split] = {
            "num_images": int(len(mine)),
            "with_twin": int(twin.sum()),
            "with_conflicting_twin": conflict,
        }
    return leak


def duplicate_report(
    images: np.ndarray,
    labels: np.ndarray,
    splits: np.ndarray,
    ids: np.ndarray,
    class_names: Sequence[str],
    max_distance: int = 4,
    reference_split: str = "train",
) -> dict[str, Any]:
    """Finds exact/near-duplicate groups, cross-split leakage and constant images.

    Args:
      images: uint8 [N, H, W, C] of all splits together.
      labels: [N] class indices.
      splits: [N] split name of each image.
      ids: [N] record ids (`image/id`), used to name group members.
      class_names: names of the label indices.
      max_distance: near-duplicate pHash Hamming threshold t.
      reference_split: leakage is counted as images of other splits with a twin
        in this split.

    Returns:
      A JSON-serialisable dict with `num_images` per split, `exact` and `near`
      group summaries (groups listed largest first), `leakage` per split and
      kind, and `constant_images` per split.
    """
    labels, splits, ids = np.asarray(labels), np.asarray(splits).astype(str), np.asarray(ids).astype(str)
    exact_ids = np.unique(pixel_digests(images), return_inverse=True)[1].reshape(-1)
    hashes = phash(images)
    # Exact twins always have equal pHashes, so near groups contain exact groups.
    near_ids = components(len(images), near_graph(hashes, max_distance))
    flat = images.reshape(len(images), -1)
    constant = np.flatnonzero(flat.min(axis=1) == flat.max(axis=1))
    return {
        "num_images": {s: int((splits == s).sum()) for s in dict.fromkeys(splits.tolist())},
        "near_hash": HASH_NAME,
        "near_max_distance": int(max_distance),
        "reference_split": reference_split,
        "exact": _summarise_groups(_groups(exact_ids), splits, labels, ids, class_names),
        "near": _summarise_groups(_groups(near_ids), splits, labels, ids, class_names),
        "leakage": {
            "exact": _leakage(exact_ids, splits, labels, reference_split),
            "near": _leakage(near_ids, splits, labels, reference_split),
        },
        "constant_images": {
            s: {
                "count": int((splits[constant] == s).sum()),
                "ids": ids[constant][splits[constant] == s].tolist(),
                "values": [int(flat[i, 0]) for i in constant if splits[i] == s],
            }
            for s in dict.fromkeys(splits.tolist())
        },
    }


def report_markdown(report: Mapping[str, Any], max_groups: int = 20) -> str:
    """Renders `duplicate_report` output as a short Markdown leakage report."""
    lines = ["# Duplicate and leakage report", ""]
    lines.append(
        f"Images: {', '.join(f'{s} {n}' for s, n in report['num_images'].items())}. "
        f"Near duplicates: {report['near_hash']}, Hamming distance <= {report['near_max_distance']}."
    )
    lines += [
        "",
        "| kind | groups | images in groups | redundant | cross-split groups | conflicting-label groups |",
        "|---|---|---|---|---|---|",
    ]
    for kind in ("exact", "near"):
        r = report[kind]
        lines.append(
            f"| {kind} | {r['num_groups']} | {r['num_images']} | {r['num_redundant']} | "
            f"{r['num_cross_split_groups']} | {r['num_conflicting_label_groups']} |"
        )
    ref = report["reference_split"]
    lines += [
        "",
        f"## Leakage: images with a twin in `{ref}`",
        "",
        "| split | images | exact twin | exact twin, other label | near twin | near twin, other label |",
        "|---|---|---|---|---|---|",
    ]
    for split, exact in report["leakage"]["exact"].items():
        near = report["leakage"]["near"][split]
        lines.append(
            f"| {split} | {exact['num_images']} | {exact['with_twin']} | {exact['with_conflicting_twin']} | "
            f"{near['with_twin']} | {near['with_conflicting_twin']} |"
        )
    lines += ["", "## Constant (single grey level) images", "", "| split | count | ids |", "|---|---|---|"]
    for split, c in report["constant_images"].items():
        lines.append(f"| {split} | {c['count']} | {', '.join(c['ids'][:20])} |")
    for kind in ("exact", "near"):
        groups = report[kind]["groups"]
        lines += ["", f"## Largest {kind} groups (first {min(max_groups, len(groups))} of {len(groups)})", ""]
        for g in groups[:max_groups]:
            members = ", ".join(
                f"{i} ({s}, {k})" for i, s, k in zip(g["ids"], g["splits"], g["labels"], strict=True)
            )
            lines.append(f"- {'**conflicting** ' if g['conflicting_labels'] else ''}{members}")
    return "\n".join(lines) + "\n"
