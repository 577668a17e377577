"""kill -9 in the middle of a long command, then a rerun: the final outputs are byte-identical
to an uninterrupted run's and no temporary folder is left (issue 17, point 2)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

from lookhere.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _kill_when(argv: list[str], ready, timeout: float = 120.0) -> None:
    """Run ``lookhere argv`` in a subprocess and kill -9 it once ``ready()`` is true; fails if
    the command ends first (then nothing was interrupted)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lookhere.cli", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"ended before the kill: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "not ready in time"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()


def test_data_make_killed_then_rerun_is_identical(tmp_path):
    argv = ["data", "make", "shapes", "--n", "300", "--set", "image_size=112", "--seed", "5"]
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    out = tmp_path / "killed"

    def halfway() -> bool:  # the hidden temporary folder holds some images
        return any(len(list(t.glob("images/*.png"))) >= 20 for t in tmp_path.glob(".killed.*"))

    _kill_when([*argv, "--out", str(out)], halfway)
    assert not out.exists() and list(tmp_path.glob(".killed.*"))  # killed mid-run
    assert main([*argv, "--out", str(out)]) == 0  # the rerun is not blocked
    assert _files(out) == _files(tmp_path / "whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed", "whole"]  # no temp left
