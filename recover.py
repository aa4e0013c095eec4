"""Rebuilds the Keras model of an export as a .keras file or a run directory (fer_tf/recover.py).

    python recover.py --export=models/fer2013 --output=runs/release_fer2013_v23

The rebuilt model is checked against the export's own answers before it is
written; a directory also gets the run files (run_info.json, flags.txt,
metrics.json) that export.py and soup.py read. An existing model is never
replaced, nor given to a run still training.
"""

from __future__ import annotations

from absl import flags

import launch
from fer_tf import cli

_EXPORT = flags.DEFINE_string("export", None, "Export directory (metadata.json, saved_model/).")
_OUTPUT = flags.DEFINE_string("output", None, "A .keras file, or a run directory to hold model.keras.")
flags.mark_flags_as_required(["export", "output"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    output = _OUTPUT.value
    cli.check_output_path("output", output, folder=not output.endswith(".keras"))  # before the rebuild
    # Imported after the argument checks: a typo fails at once, without TensorFlow's start-up.
    from fer_tf import recover

    try:
        path = recover.write_model(_EXPORT.value, output)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        cli.fail(str(e))
    print(f"wrote {path}")


if __name__ == "__main__":
    launch.run(main)
