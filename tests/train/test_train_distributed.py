"""DDP: two gloo processes under torchrun (per-device batch 2) against one process (batch 4).

Both train a fresh tiny LLaVA with NTP + KLAL for a few steps on the same samples, with plain
SGD (no clipping), so the same logged losses and the same final parameters mean the trainer
averages NTP, KLAL and their gradients over processes exactly like one process over the batch.
"""

import json
from pathlib import Path

import pytest
import torch
from conftest import torchrun
from dist_train_worker import STEPS, final_params, train
from safetensors.torch import load_file

from lookhere.models import build_tiny

WORKER = Path(__file__).with_name("dist_train_worker.py")


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.distributed]


def test_ddp_matches_single_process(tmp_path):
    torchrun([WORKER, tmp_path / "ddp"], nproc=2)
    ranks = [json.loads((tmp_path / "ddp" / f"samples-{r}.json").read_text()) for r in (0, 1)]
    ddp_logs = json.loads((tmp_path / "ddp" / "logs.json").read_text())
    ddp_params = load_file(tmp_path / "ddp" / "params.safetensors")

    trainer, seen = train(tmp_path / "single", batch_size=4)
    logs = [e for e in trainer.state.log_history if "loss" in e]
    params = final_params(trainer)

    # two processes, each on half of every single-process batch
    assert [r["world_size"] for r in ranks] == [2, 2]
    # (the data loader may build one batch ahead of the last step)
    assert len(seen) >= STEPS and all(len(r["batches"]) >= STEPS for r in ranks)
    for step, batch in enumerate(seen[:STEPS]):
        halves = [r["batches"][step] for r in ranks]
        assert [len(h) for h in halves] == [2, 2]
        assert sorted(halves[0] + halves[1]) == sorted(batch), step

    assert [e["step"] for e in ddp_logs] == [e["step"] for e in logs] == list(range(1, STEPS + 1))
    for a, b in zip(ddp_logs, logs, strict=True):
        for k in ("loss", "ntp_loss", "klal_loss"):
            assert a[k] == pytest.approx(b[k], rel=1e-4), (k, a, b)
        assert a["loss"] == pytest.approx(a["ntp_loss"] + a["klal_loss"], rel=1e-5)

    # the same updates from the same start (compared as updates: -lr * averaged gradient)
    start = dict(build_tiny("llava", "test", seed=0)[0].named_parameters())
    assert ddp_params.keys() == params.keys() == start.keys()
    moved = []
    for n, p in params.items():
        update, ddp_update = p - start[n].detach(), ddp_params[n] - start[n].detach()
        torch.testing.assert_close(ddp_update, update, rtol=1e-4, atol=1e-7,
                                   msg=lambda m, n=n: f"{n}: {m}")
        if update.abs().max() > 0:
            moved.append(n)
    assert len(moved) > len(params) // 2, moved


def test_fsdp2_gradients_match_single_process(tmp_path):
    """FSDP2 (`fully_shard`, 2 gloo processes, half the batch each) gives the single process's
    gradients of NTP + KLAL + LLL on the whole batch (see fsdp_worker.py)."""
    from fsdp_worker import batch_loss, samples_and_collator

    torchrun([Path(__file__).with_name("fsdp_worker.py"), tmp_path], nproc=2)
    sharded = load_file(tmp_path / "grads.safetensors")
    model, samples, collate = samples_and_collator()
    batch = collate(samples)
    tokens = int((batch["labels"][:, 1:] != -100).sum())
    batch_loss(model, batch, tokens, 1).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert sharded.keys() == grads.keys() and len(grads) > 20
    for name, g in grads.items():
        torch.testing.assert_close(sharded[name], g, rtol=1e-4, atol=1e-6,
                                   msg=lambda m, n=name: f"{n}: {m}")
    assert all(g.abs().max() > 0 for n, g in grads.items() if "language_model.layers" in n)
