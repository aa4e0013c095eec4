"""Validates a converted dataset: TFDV statistics/schema/anomalies, duplicates, plots.

  python -m data_tools.validate --data=data/fer2013 [--output=data/fer2013/validation] [-- beam options]

Writes into the output directory:
  statistics/<split>.pb|.txt   TFDV DatasetFeatureStatisticsList per split
  schema.pbtxt                 schema inferred from train (label: categorical 0..K-1)
  anomalies/<split>.txt        each other split against the schema, plus label
                               drift against train (L-infinity, Jensen-Shannon)
  facets.html                  Facets Overview of train vs val (needs a browser online)
  leakage.json, leakage.md     exact/near-duplicate groups, cross-split twins,
                               conflicting labels, constant images
  class_distribution.png, samples_<split>.png, duplicates.png
  summary.json                 the dict `validate` returns
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import flags
from absl import logging as absl_logging

import launch
from data_tools import dedup, derive
from fer_tf import cli, outdir, report, schema

REFERENCE_SPLIT = "train"


def _label_schema_fix(tfdv_schema: Any, num_classes: int, linf: float, jsd: float) -> None:
    """Makes the label a categorical int in [0, K) with drift comparators.

    Inference gives a categorical int a string domain ("0".."6"), which TFDV
    then reports as DOMAIN_INVALID_FOR_TYPE on every split; an int domain is
    what the data means and also flags out-of-range labels.
    """
    import tensorflow_data_validation as tfdv

    label = tfdv.get_feature(tfdv_schema, schema.KEY_LABEL)
    if label.HasField("domain"):
        kept = [d for d in tfdv_schema.string_domain if d.name != label.domain]
        del tfdv_schema.string_domain[:]
        tfdv_schema.string_domain.extend(kept)
    label.ClearField("domain")
    label.int_domain.min = 0
    label.int_domain.max = num_classes - 1
    label.int_domain.is_categorical = True
    label.drift_comparator.infinity_norm.threshold = linf
    label.drift_comparator.jensen_shannon_divergence.threshold = jsd
    # Ids are unique and images are opaque bytes: a small train split would
    # otherwise get its ids inferred as the only allowed values.
    for key in (schema.KEY_ID, schema.KEY_IMAGE):
        feature = tfdv.get_feature(tfdv_schema, key)
        if feature.HasField("domain"):
            feature.ClearField("domain")


def generate_statistics(
    data_dir: str, splits: Sequence[str], stats_dir: str, pipeline_args: Sequence[str] = ()
) -> dict[str, Any]:
    """TFDV statistics of every split, computed in one Beam pipeline.

    The label is declared categorical up front so its statistics carry value
    counts (needed for the L-infinity drift comparator).

    Args:
      data_dir: shards + dataset_info.json.
      splits: the splits to describe.
      stats_dir: where the statistics are written.
      pipeline_args: Beam options, e.g. `--direct_num_workers=2
        --direct_running_mode=multi_processing` or a Dataflow runner
        (default: the DirectRunner in-process).

    Returns:
      {split: DatasetFeatureStatisticsList}; also written as
      `<stats_dir>/<split>.pb` (binary) and `.txt` (text proto).
    """
    import apache_beam as beam
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tfx_bsl.public import tfxio

    hint = schema_pb2.Schema()
    label = hint.feature.add(name=schema.KEY_LABEL, type=schema_pb2.INT)
    label.int_domain.is_categorical = True
    stats_options = tfdv.StatsOptions(schema=hint)
    os.makedirs(stats_dir, exist_ok=True)
    options = beam.options.pipeline_options.PipelineOptions(list(pipeline_args))
    with beam.Pipeline(options=options) as pipeline:
        for split in splits:
            source = tfxio.TFExampleRecord(
                file_pattern=schema.shard_pattern(data_dir, split),
                telemetry_descriptors=["fer_tf", "validate"],
            )
            _ = (
                pipeline
                | f"Read[{split}]" >> source.BeamSource()
                | f"Stats[{split}]" >> tfdv.GenerateStatistics(stats_options)
                | f"Write[{split}]"
                >> tfdv.WriteStatisticsToBinaryFile(os.path.join(stats_dir, f"{split}.pb"))
            )
    stats = {split: tfdv.load_stats_binary(os.path.join(stats_dir, f"{split}.pb")) for split in splits}
    for split, s in stats.items():
        tfdv.write_stats_text(s, os.path.join(stats_dir, f"{split}.txt"))
    return stats


def _anomaly_summary(anomalies: Any) -> dict[str, Any]:
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    measure = anomalies_pb2.DriftSkewInfo.Measurement.Type.Name
    reason = anomalies_pb2.AnomalyInfo.Type.Name
    problems = {
        name: [f"{reason(r.type)}: {r.description}" for r in info.reason] or [info.description]
        for name, info in sorted(anomalies.anomaly_info.items())
    }
    drift = {
        "/".join(d.path.step): {measure(m.type): round(m.value, 6) for m in d.drift_measurements}
        for d in anomalies.drift_skew_info
    }
    return {"anomalies": problems, "drift": drift}


def run_tfdv(
    data_dir: str,
    info: Mapping[str, Any],
    output_dir: str,
    label_drift_linf: float,
    label_drift_jsd: float,
    pipeline_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Statistics, schema from train, anomalies and label drift, Facets HTML.

    Every split is validated against the schema inferred from train; the other
    splits are also compared with train (TFDV drift, `previous_statistics`) on
    the label distribution.

    Returns:
      {split: {"anomalies": {feature: ["TYPE: description", ...]},
      "drift": {feature: {"L_INFTY": value, "JENSEN_SHANNON_DIVERGENCE": value}}}}.
    """
    import tensorflow_data_validation as tfdv
    from tensorflow_data_validation.utils import display_util

    splits = list(info["splits"])
    stats = generate_statistics(data_dir, splits, os.path.join(output_dir, "statistics"), pipeline_args)
    tfdv_schema = tfdv.infer_schema(stats[REFERENCE_SPLIT])
    _label_schema_fix(tfdv_schema, len(info["class_names"]), label_drift_linf, label_drift_jsd)
    tfdv.write_schema_text(tfdv_schema, os.path.join(output_dir, "schema.pbtxt"))
    os.makedirs(os.path.join(output_dir, "anomalies"), exist_ok=True)
    results = {}
    for split in splits:
        previous = stats[REFERENCE_SPLIT] if split != REFERENCE_SPLIT else None
        anomalies = tfdv.validate_statistics(stats[split], tfdv_schema, previous_statistics=previous)
        tfdv.write_anomalies_text(anomalies, os.path.join(output_dir, "anomalies", f"{split}.txt"))
        results[split] = _anomaly_summary(anomalies)
    other = next((s for s in splits if s != REFERENCE_SPLIT), None)
    html = display_util.get_statistics_html(
        lhs_statistics=stats[REFERENCE_SPLIT],
        rhs_statistics=stats[other] if other else None,
        lhs_name=REFERENCE_SPLIT,
        rhs_name=other or "",
    )
    with open(os.path.join(output_dir, "facets.html"), "w") as f:
        f.write(
            f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>Facets: {data_dir}</title></head>"
            f"<body>\n{html}\n</body></html>\n"
        )
    return results


def _load_all(data_dir: str, info: Mapping[str, Any]) -> dict[str, np.ndarray]:
    parts = {split: derive.read_split(data_dir, split, info) for split in info["splits"]}
    return {
        "images": np.concatenate([p.images for p in parts.values()]),
        "labels": np.concatenate([p.labels for p in parts.values()]),
        "ids": np.concatenate([p.ids for p in parts.values()]),
        "splits": np.concatenate([np.full(len(p.labels), s) for s, p in parts.items()]),
    }


def _plots(
    data: Mapping[str, np.ndarray], info: Mapping[str, Any], leakage: Mapping[str, Any], out: str
) -> list[str]:
    paths = [report.plot_class_distribution(info, os.path.join(out, "class_distribution.png"))]
    for split in info["splits"]:
        mine = data["splits"] == split
        paths.append(
            report.plot_sample_grid(
                data["images"][mine],
                data["labels"][mine],
                info["class_names"],
                os.path.join(out, f"samples_{split}.png"),
            )
        )
    # Side by side, a train image and its twin in another split: what leakage looks like.
    index = {
        (s, i): n for n, (s, i) in enumerate(zip(data["splits"].tolist(), data["ids"].tolist(), strict=True))
    }
    members = []
    for g in leakage["near"]["groups"]:
        rows = list(zip(g["splits"], g["ids"], g["labels"], strict=True))
        ref = [r for r in rows if r[0] == REFERENCE_SPLIT][:1]
        other = [r for r in rows if r[0] != REFERENCE_SPLIT][:1]
        members += [(index[(s, i)], f"{s}:{k}") for s, i, k in (ref + other if ref and other else [])]
        if len(members) >= 32:
            break
    if members:
        paths.append(
            report.plot_image_grid(
                [data["images"][n] for n, _ in members],
                [t for _, t in members],
                os.path.join(out, "duplicates.png"),
                cols=8,
            )
        )
    return paths


def validate(
    data_dir: str,
    output_dir: str | None = None,
    near_max_distance: int = 4,
    label_drift_linf: float = 0.05,
    label_drift_jsd: float = 0.01,
    with_tfdv: bool = True,
    pipeline_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Validates a converted dataset and writes the reports.

    Args:
      data_dir: shards + dataset_info.json.
      output_dir: where reports go (default `<data_dir>/validation`).
      near_max_distance: pHash Hamming threshold of near duplicates.
      label_drift_linf: L-infinity threshold of the label distribution of each
        split against train (largest difference in one class's share).
      label_drift_jsd: Jensen-Shannon divergence threshold of the same.
      with_tfdv: run the TFDV part (statistics, schema, anomalies, Facets).
      pipeline_args: Beam options of the TFDV statistics pipeline.

    Returns:
      The summary (also written to `summary.json`): image counts, duplicate and
      leakage counts, constant images, TFDV anomalies and drift per split,
      timings in seconds and the files written.

    Raises:
      ValueError: an unreadable dataset; TFDV on a dataset without a train
        split (its schema and drift baseline); an `output_dir` that is a file,
        or a folder holding files but no previous report (summary.json).
    """
    output_dir = os.path.normpath(output_dir or os.path.join(data_dir, "validation"))
    info = schema.read_dataset_info(data_dir)
    if with_tfdv and REFERENCE_SPLIT not in info["splits"]:
        raise ValueError(
            f"{data_dir} has no {REFERENCE_SPLIT} split, from which TFDV infers the schema and "
            "measures drift; validate without TFDV (--notfdv)"
        )
    check_report_dir(output_dir)
    # The reports are written aside and replace the previous ones only when complete: none of
    # an older run's files (a duplicates.png that no longer applies) can survive beside them.
    with outdir.staged(output_dir) as staging:
        summary = _write_reports(data_dir, info, staging, near_max_distance, label_drift_linf,
                                 label_drift_jsd, with_tfdv, pipeline_args)  # fmt: skip
        summary["output_dir"] = os.path.abspath(output_dir)
        _write_json(os.path.join(staging, "summary.json"), summary)
    return summary


def check_report_dir(output_dir: str) -> None:
    """Raises ValueError unless `output_dir` is absent, empty or a previous report (summary.json)."""
    if os.path.isfile(output_dir):
        raise ValueError(f"--output={output_dir} is a file; reports go to a folder")
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        if not os.path.exists(os.path.join(output_dir, "summary.json")):
            raise ValueError(
                f"--output={output_dir} holds other files and no previous report (summary.json); "
                "the reports replace their folder, so choose a new one"
            )


def _write_reports(
    data_dir: str,
    info: Mapping[str, Any],
    output_dir: str,
    near_max_distance: int,
    label_drift_linf: float,
    label_drift_jsd: float,
    with_tfdv: bool,
    pipeline_args: Sequence[str],
) -> dict[str, Any]:
    """Writes every report into `output_dir` and returns the summary (not yet written)."""
    timings = {}
    start = time.perf_counter()
    data = _load_all(data_dir, info)
    timings["read"] = time.perf_counter() - start
    start = time.perf_counter()
    dup = dedup.duplicate_report(
        data["images"],
        data["labels"],
        data["splits"],
        data["ids"],
        info["class_names"],
        max_distance=near_max_distance,
        reference_split=REFERENCE_SPLIT,
    )
    _write_json(os.path.join(output_dir, "leakage.json"), dup)
    with open(os.path.join(output_dir, "leakage.md"), "w") as f:
        f.write(dedup.report_markdown(dup))
    timings["duplicates"] = time.perf_counter() - start
    start = time.perf_counter()
    _plots(data, info, dup, output_dir)
    timings["plots"] = time.perf_counter() - start
    tfdv_results = None
    if with_tfdv:
        start = time.perf_counter()
        tfdv_results = run_tfdv(data_dir, info, output_dir, label_drift_linf, label_drift_jsd, pipeline_args)
        timings["tfdv"] = time.perf_counter() - start
    return _summary(data_dir, output_dir, dup, tfdv_results, timings)


def _summary(
    data_dir: str,
    output_dir: str,
    dup: Mapping[str, Any],
    tfdv_results: dict[str, Any] | None,
    timings: Mapping[str, float],
) -> dict[str, Any]:
    files = {
        os.path.relpath(os.path.join(root, name), output_dir)
        for root, _, names in os.walk(output_dir)
        for name in names
    }
    return {
        "data_dir": os.path.abspath(data_dir),
        "output_dir": os.path.abspath(output_dir),
        "num_images": dup["num_images"],
        "duplicates": {
            kind: {k: v for k, v in dup[kind].items() if k != "groups"} for kind in ("exact", "near")
        },
        "leakage": dup["leakage"],
        "constant_images": {s: c["count"] for s, c in dup["constant_images"].items()},
        "tfdv": tfdv_results,
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "files": sorted(files | {"summary.json"}),
    }


def _write_json(path: str, value: Any) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=1)
        f.write("\n")


def format_summary(summary: Mapping[str, Any]) -> str:
    """A few human-readable lines of `validate`'s summary."""
    lines = [f"images: {summary['num_images']}"]
    for kind, d in summary["duplicates"].items():
        lines.append(
            f"{kind} duplicates: {d['num_groups']} groups, {d['num_images']} images "
            f"({d['num_conflicting_label_groups']} groups with conflicting labels)"
        )
    for kind, per_split in summary["leakage"].items():
        for split, leak in per_split.items():
            lines.append(
                f"leakage ({kind}): {leak['with_twin']} of {leak['num_images']} {split} images have a "
                f"twin in {REFERENCE_SPLIT} ({leak['with_conflicting_twin']} with another label)"
            )
    lines.append(f"constant images: {summary['constant_images']}")
    for split, result in (summary["tfdv"] or {}).items():
        drift = result["drift"].get(schema.KEY_LABEL, {})
        problems = "; ".join(f"{f}: {' / '.join(r)}" for f, r in result["anomalies"].items()) or "none"
        lines.append(f"tfdv {split}: anomalies: {problems}" + (f"; label drift {drift}" if drift else ""))
    lines.append(f"timings (s): {summary['timings']}; reports in {summary['output_dir']}")
    return "\n".join(lines)


def define_flags() -> None:
    """Defines the CLI flags; called only when run as a script, so importing defines none."""
    flags.DEFINE_string("data", None, "Converted dataset directory (shards + dataset_info.json).")
    flags.DEFINE_string("output", None, "Report directory (default <data>/validation).")
    flags.DEFINE_integer(
        "near_max_distance", 4, "Near-duplicate pHash Hamming threshold (negative: no near search)."
    )
    flags.DEFINE_float("label_drift_linf", 0.05, "L-infinity threshold of label drift vs train.")
    flags.DEFINE_float("label_drift_jsd", 0.01, "Jensen-Shannon threshold of label drift vs train.")
    flags.DEFINE_bool("tfdv", True, "Run TFDV (statistics, schema, anomalies, Facets).")


def main(argv: Sequence[str]) -> None:
    from fer_tf.cli import fail

    f = flags.FLAGS
    if not f.data or not os.path.exists(os.path.join(f.data, schema.INFO_FILE)):
        fail(f"--data={f.data}: no {schema.INFO_FILE} there (convert the dataset first)")
    if f.output:
        cli.check_output_path("output", f.output)
    if not f["verbosity"].present:
        # Beam logs pipeline details at INFO on the root logger; the summary is what matters here.
        absl_logging.set_verbosity(absl_logging.WARNING)
    try:
        summary = validate(
            f.data, f.output, f.near_max_distance, f.label_drift_linf, f.label_drift_jsd, f.tfdv, argv[1:]
        )
    except ValueError as e:  # an incomplete or corrupt dataset (derive.read_split, schema.read_dataset_info)
        fail(str(e))
    print(format_summary(summary))


if __name__ == "__main__":
    define_flags()
    launch.run(main)
