"""torchrun worker of ``test_train_distributed.py``: trains a fresh tiny LLaVA with NTP + KLAL.

    torchrun --nproc_per_node 2 tests/train/dist_train_worker.py OUT

Every rank writes ``OUT/samples-<rank>.json`` (the sample ids of each of its micro-batches);
rank 0 also writes ``OUT/logs.json`` (the per-step log entries, averaged over the ranks by the
trainer) and ``OUT/params.safetensors`` (the final parameters). The test imports `train` to
run the same configuration in a single process.
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import TrainingArguments  # noqa: E402

from lookhere.collate import GroundingCollator  # noqa: E402
from lookhere.data.dataset import TaskDataset  # noqa: E402
from lookhere.data.synthetic import make_task  # noqa: E402
from lookhere.io import atomic_path, write_json  # noqa: E402
from lookhere.models import build_tiny, get_adapter  # noqa: E402
from lookhere.train import GroundingTrainer, KLALConfig  # noqa: E402

STEPS = 3
# Plain SGD without clipping: a parameter's change is -lr * grad, so the runs agree only if the
# averaged gradients agree in scale too.
ARGS = {"max_steps": STEPS, "learning_rate": 0.5, "optim": "sgd", "max_grad_norm": 0.0,
        "train_sampling_strategy": "sequential", "logging_steps": 1, "use_cpu": True,
        "report_to": [], "save_strategy": "no", "disable_tqdm": True,
        "remove_unused_columns": False, "seed": 0}


class RecordingCollator(GroundingCollator):
    """`GroundingCollator` that remembers the sample ids of every batch it builds."""

    def __call__(self, samples):
        self.seen.append([s.id for s in samples])
        return super().__call__(samples)


def train(out: Path, batch_size: int, **overrides) -> tuple[GroundingTrainer, list[list[str]]]:
    """Train a fresh tiny LLaVA (seed 0) for `STEPS` steps of ``batch_size`` per process."""
    model, processor = build_tiny("llava", "test", seed=0)
    task = make_task("grid_patch", seed=0, image_size=56, grid_rows=4, grid_cols=4)
    collator = RecordingCollator(processor, get_adapter(model))
    collator.seen = []
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=batch_size,
                             **{**ARGS, **overrides})
    trainer = GroundingTrainer(model=model, args=args, train_dataset=TaskDataset(task, 64),
                               data_collator=collator, klal=KLALConfig(weight=1.0))
    trainer.train()
    return trainer, collator.seen


def final_params(trainer: GroundingTrainer) -> dict[str, torch.Tensor]:
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {n: p.detach().clone().contiguous() for n, p in model.named_parameters()}


def main() -> None:
    out = Path(sys.argv[1])
    trainer, seen = train(out / "run", batch_size=2, ddp_backend="gloo")
    rank = trainer.args.process_index
    write_json({"world_size": trainer.args.world_size, "batches": seen},
               out / f"samples-{rank}.json")
    if trainer.is_world_process_zero():
        write_json([e for e in trainer.state.log_history if "loss" in e], out / "logs.json")
        with atomic_path(out / "params.safetensors") as tmp:
            save_file(final_params(trainer), str(tmp))
    # every rank waits until rank 0 has written its files before the process group goes away
    torch.distributed.barrier()
    del trainer
    gc.collect()  # drop DDP's reducer (and its hold on the group) before destroying the group
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
