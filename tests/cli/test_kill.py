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


@pytest.mark.slow
@pytest.mark.parametrize("example", ["llava-1.5-7b-refcoco-klal",
                                     "qwen2.5-vl-7b-pixmo-points-klal"])
def test_training_killed_then_resumed_equals_uninterrupted(example, tmp_path):
    """``lookhere train`` on an example config (LoRA, bf16, activation checkpointing; a tiny
    model of its class and the fixture data of its format) killed after its second checkpoint,
    then ``--resume``: the same losses at every step and the same final adapter as one
    uninterrupted run."""
    import json

    import torch
    from conftest import FIXTURES
    from safetensors.torch import load_file

    from lookhere.models.tiny import build_tiny, save_tiny

    family, data = {
        "llava-1.5-7b-refcoco-klal": ("llava", ["--data-train", FIXTURES / "refer"]),
        "qwen2.5-vl-7b-pixmo-points-klal": ("qwen2_5_vl", [
            "--data-train", FIXTURES / "pixmo_points" / "data",
            "--data-images", FIXTURES / "pixmo_points" / "images",
            "--data-train-split", "all", "--data-eval-split", "all"])}[example]
    save_tiny(*build_tiny(family, "test", seed=0), tmp_path / "model")
    argv = ["train", "--config", str(ROOT / "examples" / f"{example}.yaml"), "--model-name",
            str(tmp_path / "model"), *map(str, data), "--lora-r", "4", "--max_steps", "40",
            "--save_steps", "5", "--per_device_train_batch_size", "2", "--logging_steps", "1",
            "--dataloader_num_workers", "0", "--data-eval-limit", "1", "--eval-max-new-tokens",
            "4", "--quiet"]
    assert main([*argv, "--output_dir", str(tmp_path / "whole")]) == 0
    out = tmp_path / "killed"
    _kill_when([*argv, "--output_dir", str(out)],
               lambda: (out / "checkpoint-10" / "trainer_state.json").is_file())
    assert not (out / "train.json").exists()  # killed before the end
    assert main([*argv, "--output_dir", str(out), "--resume"]) == 0

    def losses(folder):
        log = json.loads((folder / "train.json").read_text())["log"]
        return [(r["step"], r["loss"], r["klal_loss"]) for r in log]

    whole, resumed = losses(tmp_path / "whole"), losses(out)
    assert [s for s, *_ in resumed] == [s for s, *_ in whole] == list(range(1, 41))
    flat = [v for _, *vs in resumed for v in vs]
    assert flat == pytest.approx([v for _, *vs in whole for v in vs], rel=1e-5)
    name = "adapter_model.safetensors"
    a, b = load_file(tmp_path / "whole" / name), load_file(out / name)
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)
    assert json.loads((out / "eval.json").read_text())["scores"] == \
        json.loads((tmp_path / "whole" / "eval.json").read_text())["scores"]
