"""torchrun worker of ``test_heads_distributed.py``: ``lookhere heads find`` sharded and resumed.

    torchrun --nproc_per_node 2 tests/heads/heads_dist_worker.py OUT MODEL DATA

Each rank runs the command on the saved model and REC folder with ``--scores-dir OUT/scores``
(rank 0 alone reports and writes ``OUT/heads.json``), then the library's search again on the
same scores (everything is on disk now), whose HeadSpec every rank returns: it writes
``OUT/again-<rank>.json`` and ``OUT/calls-<rank>.json`` (the sample ids of every batch it ran a
forward on, per search).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from lookhere.cli import main as cli  # noqa: E402
from lookhere.data.disk import read_samples  # noqa: E402
from lookhere.heads import search as search_module  # noqa: E402
from lookhere.io import write_json  # noqa: E402
from lookhere.models.loading import load_model  # noqa: E402

BATCH_SIZE, PER_SAMPLE = 5, 3  # 12 samples in batches of 5, 5, 2: rank 0 scores 0 and 2


def record_calls() -> list[list[str]]:
    """Make the search's forward record the sample ids of each batch it runs."""
    calls, real = [], search_module.prefill_attention

    def prefill_attention(model, processor, adapter, batch, *args, **kwargs):
        calls.append([s.id for s in batch])
        return real(model, processor, adapter, batch, *args, **kwargs)

    search_module.prefill_attention = prefill_attention
    return calls


def main() -> None:
    out, model_dir, data = (Path(a) for a in sys.argv[1:4])
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank = dist.get_rank()
    calls = record_calls()
    assert cli(["heads", "find", "--model", str(model_dir), "--data", str(data), "--out",
                str(out / "heads.json"), "--batch-size", str(BATCH_SIZE), "--per-sample",
                str(PER_SAMPLE), "--scores-dir", str(out / "scores"), "--device", "cpu"]) == 0
    first = list(calls)
    calls.clear()
    model, processor, adapter = load_model(str(model_dir))
    again = search_module.find_heads(model, processor, adapter, list(read_samples(data)),
                                     model_id=str(model_dir), per_sample=PER_SAMPLE,
                                     batch_size=BATCH_SIZE, scores_dir=out / "scores",
                                     progress=False)
    again.save(out / f"again-{rank}.json")
    write_json({"world_size": dist.get_world_size(), "first": first, "again": calls},
               out / f"calls-{rank}.json")
    dist.barrier()  # every rank has written its files before the group goes away
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
