"""Writing a folder of results so that a failure never leaves half of it, nor loses the old one.

Every tool that writes a folder (export.py, the dataset converters and derive,
data_tools.validate) builds it in a hidden sibling and swaps it in only when it
is complete:

    with outdir.staged(output_dir, carry=lambda name: name.endswith(".md")) as stage:
        write_everything_into(stage)

An exception, Ctrl-C or SIGTERM inside the block removes the sibling and leaves
`output_dir` as it was. On success the previous `output_dir` is replaced as a
whole, so none of its files can survive beside the new ones, except those the
caller chooses to `carry` over (a hand-written model card, a user's notes).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator


def sibling(output_dir: str, kind: str) -> str:
    """A fresh hidden folder beside `output_dir` (`.<name>.<kind>-<random>`).

    On the same filesystem as `output_dir`, so that the final rename is atomic.
    Made with makedirs rather than mkdtemp, whose owner-only mode would survive
    the rename into a folder meant to be shared.
    """
    parent, name = os.path.split(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    path = os.path.join(parent, f".{name}.{kind}-{uuid.uuid4().hex[:8]}")
    os.makedirs(path)
    return path


def swap_in(staging: str, output_dir: str, carry: Callable[[str], bool] | None = None) -> None:
    """Moves the complete folder `staging` to `output_dir`, replacing an old one only at the end.

    Args:
      staging: the finished folder, a sibling of `output_dir` (see `sibling`).
      output_dir: where it goes; any previous folder there is removed.
      carry: given the name of an entry of the previous folder that `staging`
        does not have, says whether to copy it over (symlinks stay links).
    """
    if not os.path.exists(output_dir):
        os.rename(staging, output_dir)
        return
    for name in sorted(os.listdir(output_dir)) if carry else ():
        source, target = os.path.join(output_dir, name), os.path.join(staging, name)
        if os.path.lexists(target) or not carry(name):
            continue
        if os.path.isdir(source) and not os.path.islink(source):
            shutil.copytree(source, target, symlinks=True)
        else:
            shutil.copy2(source, target, follow_symlinks=False)
    old = sibling(output_dir, "old")
    previous = os.path.join(old, "previous")
    os.rename(output_dir, previous)
    try:
        os.rename(staging, output_dir)
    except BaseException:
        os.rename(previous, output_dir)  # the old folder stays where the user left it
        os.rmdir(old)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged(output_dir: str, carry: Callable[[str], bool] | None = None) -> Iterator[str]:
    """Yields an empty staging folder that replaces `output_dir` when the block completes.

    If the block raises (SystemExit and KeyboardInterrupt included), the staging
    folder is removed and `output_dir` is left untouched.
    """
    staging = sibling(output_dir, "tmp")
    try:
        yield staging
        swap_in(staging, output_dir, carry)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
