"""torchrun worker of ``test_train_distributed.py::test_fsdp2_gradients_match_single_process``.

    torchrun --nproc_per_node 2 tests/train/fsdp_worker.py OUT

accelerate (1.16) runs the Trainer's FSDP only on accelerators (on CPUs it falls back to DDP),
so this checks what lookhere adds to an FSDP step on CPUs, with torch's FSDP2 (`fully_shard`,
gloo): the probe and the hidden-state capture on sharded decoder layers, and the NTP + KLAL +
LLL objective of `lookhere.train.objective`. Each rank shards a tiny LLaVA (every decoder layer,
then the root) and takes half of a 4-sample Shapes batch; its loss is scaled so that FSDP's
gradient average over ranks is the gradient of the single-process loss on the whole batch:
``ntp_sum_rank / tokens_all * world + klal_rank + lll_rank`` (each term a mean over the
rank's samples). Rank 0 writes ``OUT/grads.safetensors``, the full (unsharded) gradients.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from lookhere.collate import GroundingCollator, split_aux  # noqa: E402
from lookhere.data.synthetic import make_task  # noqa: E402
from lookhere.losses.config import KLALConfig, LLLConfig  # noqa: E402
from lookhere.models import build_tiny, get_adapter  # noqa: E402
from lookhere.train.objective import klal_probe, klal_term, lll_capture, lll_term  # noqa: E402

KLAL, LLL = KLALConfig(weight=1.0), LLLConfig(weight=1.0)


def batch_loss(model, batch, tokens_all: int, world: int) -> torch.Tensor:
    """NTP (summed over this batch's answer tokens, over all ranks' tokens, times the world
    size) + KLAL + LLL (means over this batch's samples)."""
    inputs, aux = split_aux(batch)
    labels = inputs.pop("labels")
    with klal_probe(model, inputs, aux, KLAL) as probe, lll_capture(model, inputs, LLL) as cap:
        logits = model(**inputs).logits
        ntp = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), reduction="sum")
        return ntp / tokens_all * world + klal_term(probe, aux, KLAL) + lll_term(cap, aux, LLL)


def samples_and_collator():
    model, processor = build_tiny("llava", "test", seed=0)
    task = make_task("shapes", seed=0, image_size=112)
    collate = GroundingCollator(processor, get_adapter(model), lll=LLL)
    return model, [task.sample(i) for i in range(4)], collate


def main() -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    from torch.distributed.fsdp import fully_shard

    model, samples, collate = samples_and_collator()
    tokens_all = int((collate(samples)["labels"][:, 1:] != -100).sum())
    for layer in model.model.language_model.layers:
        fully_shard(layer)
    fully_shard(model)
    mine = samples[rank * 2:(rank + 1) * 2]
    batch_loss(model, collate(mine), tokens_all, world).backward()
    grads = {n: p.grad.full_tensor().contiguous() for n, p in model.named_parameters()
             if p.grad is not None}
    if rank == 0:
        save_file(grads, str(Path(sys.argv[1]) / "grads.safetensors"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
