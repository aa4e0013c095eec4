"""The conventions `launch.run` gives every entry script: flag errors and SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every command a user runs, as argv after the interpreter.
ENTRY_POINTS = [
    ["train.py"], ["evaluate.py"], ["export.py"], ["soup.py"], ["study.py"], ["webcam.py"],
    ["-m", "data_tools.convert"], ["-m", "data_tools.validate"], ["-m", "data_tools.longtail"],
    ["-m", "data_tools.smote"], ["-m", "data_tools.teacher_mix"], ["-m", "data_tools.ferplus_mix"],
    ["data_tools/synthetic.py"], ["recover.py"],
]  # fmt: skip

# A script that stages a folder the way export and conversion do, and waits to be killed.
STAGING_SCRIPT = """
import os, shutil, sys, time
from absl import flags
import launch

_DIR = flags.DEFINE_string("dir", None, "Folder to stage.")

def main(argv):
    os.makedirs(_DIR.value)
    try:
        print("staged", flush=True)
        time.sleep(120)
    except BaseException:
        shutil.rmtree(_DIR.value)
        raise

launch.run(main)
"""


def test_every_entry_point_reports_a_bad_flag_in_one_line_with_exit_code_2():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    procs = [
        subprocess.Popen([sys.executable, *argv, "--no_such_flag=1"], cwd=ROOT, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for argv in ENTRY_POINTS
    ]  # fmt: skip
    for argv, proc in zip(ENTRY_POINTS, procs, strict=True):
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 2, (argv, stderr)
        # The last line is the error; lines above it can only be TensorFlow's start-up log.
        assert stderr.strip().splitlines()[-1] == "error: Unknown command line flag 'no_such_flag'", argv
        assert "FATAL" not in stderr and "Traceback" not in stderr, argv


def test_sigterm_unwinds_so_cleanups_run(tmp_path):
    staged = tmp_path / "staging"
    proc = subprocess.Popen(
        [sys.executable, "-c", STAGING_SCRIPT, f"--dir={staged}"],
        cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "staged"
    assert staged.is_dir()
    proc.terminate()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert not staged.exists()


@pytest.mark.parametrize("value", ["abc", "1.5.2"])
def test_a_bad_flag_value_names_the_flag(value):
    proc = subprocess.run(
        [sys.executable, "-m", "data_tools.longtail", f"--imbalance_factor={value}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: flag --imbalance_factor={value}: ")
