"""Shared fixtures: tiny models per registered family, a padded two-sample batch, and a
torchrun launcher for the multi-process tests."""

import os
import socket
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from lookhere.models import adapter_class, build_tiny, families  # noqa: E402

FAMILIES = families()
_CACHE: dict = {}
ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"  # shared by the test folders


def torchrun(args: list, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run`` on one node (``nproc`` CPU processes, gloo, a free
    port, one thread each) with the given script and arguments; skips without gloo, fails with
    the processes' output when the launch fails."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                        env.get("PYTHONPATH")])))
    for _ in range(3):  # the free port can be taken before torchrun binds it (parallel tests)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
               "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1", "--master_port",
               str(port), *[str(a) for a in args]]
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode == 0 or "EADDRINUSE" not in proc.stderr:
            break
    if proc.returncode != 0:
        print(proc.stdout[-5000:])
        print(proc.stderr[-20000:], file=sys.stderr)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stderr[-5000:]}"
    return proc


def tiny(family: str):
    """(model, processor) for a family, built once per test session, fp32, eval mode."""
    if family not in _CACHE:
        _CACHE[family] = build_tiny(family, size="test", seed=0)
    return _CACHE[family]


def noise_image(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def make_batch(family: str, processor, answer_tokens: int = 3):
    """Two prompts, left padded; sample 1 holds 2 images where the family allows it.

    Returns (batch, images) with labels marking the last ``answer_tokens`` tokens as the answer.
    """
    cls = adapter_class(family)
    n2 = 2 if cls.multi_image else 1
    images = [[noise_image(97, 61, 0)], [noise_image(45, 83, 1), noise_image(70, 70, 2)][:n2]]
    texts = [
        cls.tiny_prompt(processor, "what colour is the small square on the left", 1),
        cls.tiny_prompt(processor, "find the star", n2),
    ]
    processor.tokenizer.padding_side = "left"
    batch = cls.process(processor, texts, images, padding=True)
    labels = batch["input_ids"].clone()
    labels[:, :-answer_tokens] = -100
    batch["labels"] = labels
    return batch, images


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture
def seeded():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train several times faster on one thread, most of all on a shared machine;
    modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture
def cli_error(capsys):
    """``cli_error(argv)``: run the CLI on bad input, which must exit 2 with one error line and no
    traceback; returns that line."""
    from lookhere.cli import main

    def run(argv):
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            main([str(a) for a in argv])
        err = capsys.readouterr().err.strip()
        assert stop.value.code == 2, (stop.value.code, err)
        lines = [x for x in err.splitlines() if x.startswith("lookhere")]
        assert "Traceback" not in err and lines, err
        return lines[-1]

    return run
