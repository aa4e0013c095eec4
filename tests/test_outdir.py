"""fer_tf.outdir: a folder is replaced whole, only when its successor is complete."""

import os
import stat

import pytest

from fer_tf import outdir


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _read(path):
    with open(path) as f:
        return f.read()


def test_staged_creates_a_missing_folder_and_leaves_no_sibling(tmp_path):
    out = tmp_path / "sub" / "out"
    with outdir.staged(str(out)) as stage:
        assert os.path.dirname(stage) == str(tmp_path / "sub")
        assert os.path.basename(stage).startswith(".out.tmp-")
        _write(os.path.join(stage, "a.txt"), "new")
    assert sorted(os.listdir(tmp_path / "sub")) == ["out"]
    assert _read(out / "a.txt") == "new"


def test_replacing_drops_old_files_and_carries_only_the_chosen_ones(tmp_path):
    out = tmp_path / "out"
    _write(str(out / "stale.png"), "old plot")
    _write(str(out / "MODEL_CARD.md"), "card")
    _write(str(out / "notes" / "n.md"), "nested")
    _write(str(out / "README.md"), "old readme")
    os.symlink("MODEL_CARD.md", out / "link.md")
    with outdir.staged(str(out), carry=lambda name: name.endswith(".md") or name == "notes") as stage:
        _write(os.path.join(stage, "README.md"), "new readme")
    assert sorted(os.listdir(out)) == ["MODEL_CARD.md", "README.md", "link.md", "notes"]
    assert _read(out / "README.md") == "new readme"  # the new folder's own file wins
    assert _read(out / "notes" / "n.md") == "nested"
    assert os.readlink(out / "link.md") == "MODEL_CARD.md"  # a link stays a link
    assert sorted(os.listdir(tmp_path)) == ["out"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt, SystemExit])
def test_a_failure_inside_the_block_keeps_the_old_folder(tmp_path, error):
    out = tmp_path / "out"
    _write(str(out / "a.txt"), "old")
    with pytest.raises(error):
        with outdir.staged(str(out)) as stage:
            _write(os.path.join(stage, "a.txt"), "half")
            raise error()
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert os.listdir(out) == ["a.txt"] and _read(out / "a.txt") == "old"


def test_a_failed_swap_puts_the_old_folder_back(tmp_path):
    out = tmp_path / "out"
    _write(str(out / "a.txt"), "old")
    with pytest.raises(FileNotFoundError):
        outdir.swap_in(str(tmp_path / ".out.tmp-gone"), str(out))
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert _read(out / "a.txt") == "old"


def test_the_new_folder_follows_the_umask_not_owner_only(tmp_path):
    old_mask = os.umask(0o022)
    try:
        with outdir.staged(str(tmp_path / "out")):
            pass
    finally:
        os.umask(old_mask)
    assert stat.S_IMODE(os.stat(tmp_path / "out").st_mode) == 0o755
