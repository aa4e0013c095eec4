"""Shared test setup: quiet TensorFlow, one small converted synthetic dataset, and helpers
that write tiny datasets (images, TFRecords + dataset_info.json) the way several test files need."""

import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> str:
    """A real TFRecord dataset converted from a synthetic FER2013-format CSV.

    700 train / 140 val / 140 test 48x48 gray images with FER2013-like class
    imbalance, written by the same converter users run. Shared by every test
    that needs a dataset; tests must not modify it.
    """
    from data_tools import fer2013, synthetic

    root = tmp_path_factory.mktemp("synthetic")
    csv_path = str(root / "synthetic.csv.gz")
    synthetic.write_fer2013_csv(csv_path, num_train=700, num_val=140, num_test=140, seed=0)
    data_dir = str(root / "tfrecords")
    fer2013.convert_fer2013(csv_path, data_dir, progress=False)
    return data_dir


# ---------------------------------------------------------------- helpers
# Plain functions, imported by test modules (`from conftest import write_records`),
# so that fixtures of any scope and module-level helpers can call them.


def write_image(path, image, ext=None):
    """Writes with imencode + tofile, so non-ASCII paths work as they do for users."""
    import cv2

    os.makedirs(os.path.dirname(path), exist_ok=True)
    ok, data = cv2.imencode(ext or os.path.splitext(path)[1], image)
    assert ok
    data.tofile(path)


def decode_all(source):
    """Decodes every item of a converter Source: {image_id: Record or skip reason}."""
    from data_tools.writer import Skip

    out = {}
    for item in source.items:
        try:
            out[item.image_id] = source.decode(item)
        except Skip as e:
            out[item.image_id] = e.reason
    return out


def _per_split(value, split):
    return value[split] if isinstance(value, dict) else value


def write_info(
    data_dir,
    class_names,
    labels,
    num_shards,
    *,
    image_shape=(48, 48, 1),
    has_soft_labels=False,
    source=None,
    skipped=None,
):
    """Writes dataset_info.json for shards already in `data_dir`.

    Args:
      data_dir: the dataset directory.
      class_names: ordered class names.
      labels: {split: label of every record}; class counts are counted from them.
      num_shards: shards of every split, or {split: shards}.
      image_shape: [H, W, C] of the stored images.
      has_soft_labels: whether the records carry vote shares.
      source: the `source` entry (default {"format": "test"}).
      skipped: bad inputs by reason (default none).

    Returns:
      The dataset_info that was written.
    """
    import numpy as np

    from fer_tf import schema

    splits = {}
    for split, split_labels in labels.items():
        counts = np.bincount(np.asarray(split_labels, np.int64), minlength=len(class_names))
        splits[split] = {
            "num_examples": len(split_labels),
            "class_counts": {name: int(n) for name, n in zip(class_names, counts, strict=True)},
            "num_shards": _per_split(num_shards, split),
            "num_synthetic": 0,
        }
    dataset_info = schema.make_dataset_info(
        class_names=class_names,
        image_shape=image_shape,
        encoding="raw",
        splits=splits,
        source={"format": "test"} if source is None else source,
        skipped=skipped or {},
        has_soft_labels=has_soft_labels,
    )
    schema.write_dataset_info(str(data_dir), dataset_info)
    return dataset_info


def write_records(data_dir, records, class_names, num_shards=1, **info):
    """A converted dataset from writer Records: the converter's shards and dataset_info.json.

    Args:
      data_dir: the dataset directory (created).
      records: {split: list of `data_tools.writer.Record`}.
      class_names: ordered class names.
      num_shards: shards of every split, or {split: shards}.
      **info: `write_info` keywords (source, skipped); image_shape and
        has_soft_labels come from the records.

    Returns:
      `data_dir` as a string.
    """
    from data_tools.writer import write_shards

    os.makedirs(data_dir, exist_ok=True)
    for split, split_records in records.items():
        write_shards(split_records, str(data_dir), split, _per_split(num_shards, split), "raw")
    first = next(iter(records.values()))[0]
    write_info(
        data_dir,
        class_names,
        {split: [r.label for r in split_records] for split, split_records in records.items()},
        num_shards,
        image_shape=first.image.shape,
        has_soft_labels=first.soft_label is not None,
        **info,
    )
    return str(data_dir)


def run_scripts_in_parallel(script: str, commands: dict[str, list[str]]) -> dict[str, tuple[int, str, str]]:
    """Runs `python <script> *args` for every named command at once; {name: (returncode, stdout, stderr)}.

    Each run pays TensorFlow's start-up; overlapping them keeps the CLI tests fast.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    procs = {
        name: subprocess.Popen([sys.executable, script, *args], cwd=root, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for name, args in commands.items()
    }  # fmt: skip
    outputs = {name: p.communicate(timeout=300) for name, p in procs.items()}
    return {name: (procs[name].returncode, *out) for name, out in outputs.items()}
