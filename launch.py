"""Starts every entry script under absl with the toolkit's two conventions.

    if __name__ == "__main__":
        launch.run(main)

A bad flag is a one-line usage error with exit code 2, like `fer_tf.cli.fail`:
absl's own handler prints two lines and exits 1, the code of a refused result
(an export that fails parity). SIGTERM (`kill`, a job scheduler's time limit)
unwinds like an error, raising SystemExit(143), so `finally` and
`except BaseException` cleanups run: a killed export or conversion removes its
hidden staging folder, and a video being written is closed.

It lives beside the scripts, not in fer_tf/, because it parses the flags
(STYLE.md: fer_tf/ never imports absl.flags).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags

from fer_tf.cli import fail


def run(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> None:
    """Runs an entry script's `main` like `absl.app.run`, with the conventions above."""

    def parse(args: list[str]) -> list[str]:
        try:
            return flags.FLAGS(args)
        except flags.Error as err:
            fail(" ".join(str(err).split()))

    signal.signal(signal.SIGTERM, _exit_on_signal)
    app.run(main, argv=list(argv) if argv is not None else None, flags_parser=parse)


def _exit_on_signal(signum: int, frame: Any) -> None:
    del frame
    raise SystemExit(128 + signum)
