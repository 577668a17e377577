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
            str(tmp_path / "model"), *map(str, data), "--lora-r", "4", "--max_steps", "20",
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
    assert [s for s, *_ in resumed] == [s for s, *_ in whole] == list(range(1, 21))
    flat = [v for _, *vs in resumed for v in vs]
    assert flat == pytest.approx([v for _, *vs in whole for v in vs], rel=1e-5)
    name = "adapter_model.safetensors"
    a, b = load_file(tmp_path / "whole" / name), load_file(out / name)
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)
    assert json.loads((out / "eval.json").read_text())["scores"] == \
        json.loads((tmp_path / "whole" / "eval.json").read_text())["scores"]


# -- heads find and ground --data (issue 17, point 2) ------------------------------------------
N_REC = 48  # batches of 1: enough work after the first files for the kill to land mid-run


@pytest.fixture(scope="module")
def heads_env(tmp_path_factory):
    """A saved 4-layer tiny LLaVA, a Shapes REC folder and a HeadSpec found on it."""
    from lookhere.models import build_tiny
    from lookhere.models.tiny import save_tiny

    root = tmp_path_factory.mktemp("kill_heads")
    model, processor = build_tiny("llava", {"layers": 4}, seed=0)  # heads skip layers 0-1
    save_tiny(model, processor, root / "model")
    assert main(["data", "make", "shapes", "--n", str(N_REC), "--out", str(root / "rec"),
                 "--set", "image_size=112", "--set", "mode=rec"]) == 0
    assert main(["heads", "find", "--model", str(root / "model"), "--data", str(root / "rec"),
                 "--out", str(root / "heads.json"), "--quiet"]) == 0
    return root


def _forwards(monkeypatch, module, name: str) -> list[list[str]]:
    """Record the sample ids of every call to ``module.name`` (a forward of the command)."""
    calls, real = [], getattr(module, name)

    def counted(*args, **kwargs):
        calls.append([s.id for s in args[4 if name == "locate" else 3]])
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.slow
def test_heads_find_killed_then_rerun_is_identical(heads_env, tmp_path, monkeypatch):
    """kill -9 after some batch files are saved: none of them is torn (atomic writes), the
    rerun scores only the other batches (the saved files are not rewritten), a torn file left by
    a non-atomic writer is scored again, and the spec and every score file equal an
    uninterrupted run's, byte for byte, with no temporary file left."""
    from lookhere.heads import search
    from lookhere.heads.scoring import HeadScores

    root = heads_env
    argv = ["heads", "find", "--model", str(root / "model"), "--data", str(root / "rec"),
            "--batch-size", "1", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "whole.json"),
                 "--scores-dir", str(tmp_path / "whole")]) == 0
    scores, out = tmp_path / "killed", tmp_path / "killed.json"
    _kill_when([*argv, "--out", str(out), "--scores-dir", str(scores)],
               lambda: len(list(scores.glob("batch_*.npz"))) >= 3)
    saved = {p.name: p.stat().st_mtime_ns for p in sorted(scores.glob("batch_*.npz"))}
    assert not out.exists() and 3 <= len(saved) < N_REC - 1  # killed mid-run
    assert sorted(saved) == [f"batch_{b:06d}.npz" for b in range(len(saved))]
    for name in saved:  # no file under its final name is cut short
        assert len(HeadScores.load(scores / name)) == 1
    torn = f"batch_{len(saved):06d}.npz"
    (scores / torn).write_bytes((tmp_path / "whole" / torn).read_bytes()[:300])
    calls = _forwards(monkeypatch, search, "prefill_attention")
    assert main([*argv, "--out", str(out), "--scores-dir", str(scores)]) == 0
    assert len(calls) == N_REC - len(saved)  # the torn batch and the unsaved ones only
    assert {n: (scores / n).stat().st_mtime_ns for n in saved} == saved
    assert out.read_bytes() == (tmp_path / "whole.json").read_bytes()
    assert _files(scores) == _files(tmp_path / "whole")  # same names: no temporary file left


@pytest.mark.slow
def test_ground_data_killed_then_rerun_is_identical(heads_env, tmp_path, monkeypatch):
    """kill -9 after the first chunk's records are appended to the hidden partial file: a
    rerun with the same arguments grounds only the rest, after refusing (one line, exit 2) while
    the data folder holds other pixels under the same path and ids; the JSONL and the masks
    equal an uninterrupted run's, byte for byte, and the partial file is gone."""
    import importlib
    import shutil

    locate_module = importlib.import_module("lookhere.heads.locate")  # the package re-exports
    root = heads_env
    data = tmp_path / "rec"
    shutil.copytree(root / "rec", data)
    argv = ["ground", "--model", str(root / "model"), "--heads", str(root / "heads.json"),
            "--data", str(data), "--batch-size", "1"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main([*argv, "--out", str(whole / "g.jsonl"), "--masks-dir",
                 str(whole / "masks")]) == 0
    run = [*argv, "--out", str(killed / "g.jsonl"), "--masks-dir", str(killed / "masks")]
    partial = killed / ".g.jsonl.partial"

    def one_chunk() -> bool:  # the header and a chunk of 8 batches of 1
        return partial.exists() and partial.read_text().count("\n") >= 1 + 8

    _kill_when(run, one_chunk)
    done = partial.read_text().count("\n") - 1  # whole lines: the records kept
    assert not (killed / "g.jsonl").exists() and 8 <= done < N_REC - 1  # killed mid-run
    images = sorted((data / "images").glob("*.png"))
    first, last = images[0].read_bytes(), images[-1].read_bytes()
    images[0].write_bytes(last)  # same path, same ids, other pixels: another dataset
    with pytest.raises(SystemExit) as stop:
        main(run)
    assert stop.value.code == 2 and partial.exists()
    images[0].write_bytes(first)
    calls = _forwards(monkeypatch, locate_module, "locate")
    assert main(run) == 0
    assert sum(len(c) for c in calls) == N_REC - done
    files = _files(killed)  # the records name their masks' paths: killed/masks/...
    files["g.jsonl"] = files["g.jsonl"].replace(str(killed).encode(), str(whole).encode())
    assert files == _files(whole)  # same names: no partial or temporary file left
