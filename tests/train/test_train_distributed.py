"""FSDP2: two gloo processes under torchrun, each on half the batch, against one process.

DDP is checked end to end where users meet it: ``lookhere train`` under torchrun and accelerate
launch against one process (tests/cli/test_cli_train.py::test_two_processes_match_one: the
logged NTP, KLAL and LLL losses and the weights after two SGD steps).
"""

from pathlib import Path

import pytest
import torch
from conftest import torchrun
from safetensors.torch import load_file

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.distributed]


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
