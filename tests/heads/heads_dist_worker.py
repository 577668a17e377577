"""torchrun worker of ``test_heads_distributed.py``: a sharded, resumable head search.

    torchrun --nproc_per_node 2 tests/heads/heads_dist_worker.py OUT

Each rank searches a fresh tiny LLaVA (seed 0, built identically everywhere) on the same Shapes
REC samples with ``scores_dir=OUT/scores``, then searches again (everything is on disk now).
It writes ``OUT/spec-<rank>.json`` (the first HeadSpec), ``OUT/again-<rank>.json`` (the second)
and ``OUT/calls-<rank>.json`` (the sample ids of every batch it ran a forward on, per search).
The test imports `search` to run the same configuration in a single process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from lookhere.data.synthetic import make_task  # noqa: E402
from lookhere.heads import search as search_module  # noqa: E402
from lookhere.heads.selection import HeadSpec  # noqa: E402
from lookhere.io import write_json  # noqa: E402
from lookhere.models import build_tiny, get_adapter  # noqa: E402

NUM_SAMPLES, BATCH_SIZE = 12, 5  # batches of 5, 5 and 2: rank 0 scores 0 and 2, rank 1 scores 1


def search(scores_dir: Path | None = None, progress: bool = False) -> HeadSpec:
    """Find heads on a fresh tiny LLaVA with 4 layers (layers 0-1 are skipped)."""
    model, processor = build_tiny("llava", {"layers": 4}, seed=0)
    task = make_task("shapes", seed=3, image_size=112)
    samples = [task.sample(i) for i in range(NUM_SAMPLES)]
    return search_module.find_heads(model, processor, get_adapter(model), samples,
                                    model_id="tiny-llava", per_sample=3, batch_size=BATCH_SIZE,
                                    scores_dir=scores_dir, progress=progress)


def record_calls() -> list[list[str]]:
    """Make the search's forward record the sample ids of each batch it runs."""
    calls, real = [], search_module.prefill_attention

    def prefill_attention(model, processor, adapter, batch, *args, **kwargs):
        calls.append([s.id for s in batch])
        return real(model, processor, adapter, batch, *args, **kwargs)

    search_module.prefill_attention = prefill_attention
    return calls


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank = dist.get_rank()
    calls = record_calls()
    spec = search(out / "scores", progress=True)
    first = list(calls)
    calls.clear()
    again = search(out / "scores")
    spec.save(out / f"spec-{rank}.json")
    again.save(out / f"again-{rank}.json")
    write_json({"world_size": dist.get_world_size(), "first": first, "again": calls},
               out / f"calls-{rank}.json")
    dist.barrier()  # every rank has written its files before the group goes away
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
