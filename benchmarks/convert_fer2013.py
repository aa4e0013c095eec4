"""FER2013 CSV -> TFRecords: the Beam converter against plain Python loops, in one run.

    .venv/bin/python benchmarks/convert_fer2013.py [--csv=PATH] [--multiprocess]

Times (after imports, which are the same for all):
  naive     csv.reader over gzip, np.array(pixels.split()), one TFRecordWriter: the
            usual hand-written converter; the baseline of the ratios.
  loop      the converter's own reader and row decoder in a single plain loop:
            what Beam costs on top of the work itself.
  beam      data_tools.writer.convert, in-process DirectRunner (the default).
  beam x2   the same with 2 DirectRunner worker processes (--multiprocess).
Each prints rows/s, wall and CPU seconds (CPU includes worker processes: the
machine may be shared, and CPU time is what load does not inflate).
Skips cleanly when the real data is absent.
"""

import csv
import gzip
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import app, flags

DEFAULT_CSV = (
    Path(__file__).resolve().parents[1].parent / "shared/data/fer2013/fer2013_train_publictest.csv.gz"
)
flags.DEFINE_string("csv", str(DEFAULT_CSV), "FER2013 CSV (.csv or .csv.gz).")
flags.DEFINE_bool("multiprocess", False, "Also time the DirectRunner with 2 worker processes.")
FLAGS = flags.FLAGS


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def naive(csv_path: str, output_dir: str) -> int:
    import numpy as np
    import tensorflow as tf

    from fer_tf import schema

    opener = gzip.open if csv_path.endswith(".gz") else open
    n = 0
    with (
        opener(csv_path, "rt", newline="") as f,
        tf.io.TFRecordWriter(os.path.join(output_dir, "all.tfrecord")) as w,
    ):
        reader = csv.reader(f)
        next(reader)  # the header
        for row_index, (emotion, pixels, _) in enumerate(reader):
            image = np.array(pixels.split(), dtype=np.uint8).reshape(48, 48, 1)
            w.write(schema.make_example(image, int(emotion), f"row-{row_index:06d}").SerializeToString())
            n += 1
    return n


def loop(csv_path: str, output_dir: str) -> int:
    import tensorflow as tf

    from data_tools import fer2013, writer
    from fer_tf import schema

    source = fer2013.fer2013_source(csv_path, progress=False)
    n = 0
    with tf.io.TFRecordWriter(os.path.join(output_dir, "all.tfrecord")) as w:
        for item in source.items:
            try:
                r = source.decode(item)
            except writer.Skip:
                continue
            w.write(schema.make_example(r.image, r.label, r.image_id).SerializeToString())
            n += 1
    return n


def beam(csv_path: str, output_dir: str, pipeline_args: tuple[str, ...] = ()) -> int:
    from data_tools import fer2013

    info = fer2013.convert_fer2013(
        csv_path, os.path.join(output_dir, "ds"), progress=False, pipeline_args=list(pipeline_args)
    )
    return sum(split["num_examples"] for split in info["splits"].values())


def main(argv):
    del argv
    if not os.path.exists(FLAGS.csv):
        print(f"skipped: {FLAGS.csv} not found (the real FER2013 CSV is needed)")
        return
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    import apache_beam  # noqa: F401  (imports are not timed)
    import tensorflow  # noqa: F401

    runs = [("naive", naive, ()), ("loop", loop, ()), ("beam", beam, ())]
    if FLAGS.multiprocess:
        runs.append(
            ("beam x2", beam, (("--direct_num_workers=2", "--direct_running_mode=multi_processing"),))
        )
    print(f"{FLAGS.csv}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    baseline = None
    for name, fn, extra in runs:
        with tempfile.TemporaryDirectory() as out:
            wall, cpu = time.perf_counter(), _cpu_seconds()
            n = fn(FLAGS.csv, out, *extra)
            wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
        rate = n / wall
        baseline = baseline or rate
        print(
            f"{name:8s} {n} rows  {rate:8.0f} rows/s  wall {wall:6.2f} s  cpu {cpu:6.2f} s  x{rate / baseline:.2f} vs naive"
        )


if __name__ == "__main__":
    app.run(main)
