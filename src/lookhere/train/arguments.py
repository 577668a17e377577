"""The `TrainingArguments` every lookhere run uses: AdamW without weight decay, a cosine schedule
with linear warm-up, on the GPU when there is one. The experiments (`experiment.training`) and
the pretraining recipe (`pretrain.recipe`) differ only in logging and checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def trainer_args(out_dir: str | Path, *, steps: int, batch_size: int, lr: float,
                 warmup_ratio: float, seed: int, data_seed: int, progress: bool = True,
                 log_points: int = 30, save_steps: int | None = None, workers: int = 0,
                 bf16: bool = False) -> Any:
    """``TrainingArguments`` for ``steps`` optimiser steps of ``batch_size`` samples per process;
    about ``log_points`` logged losses per run; a checkpoint every ``save_steps`` (only the last
    kept, for resuming) or none."""
    from transformers import TrainingArguments

    saving = ({"save_strategy": "steps", "save_steps": save_steps, "save_total_limit": 1}
              if save_steps else {"save_strategy": "no"})
    return TrainingArguments(
        output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=batch_size,
        learning_rate=lr, warmup_steps=max(0, round(warmup_ratio * steps)),
        lr_scheduler_type="cosine", weight_decay=0.0, logging_steps=max(1, steps // log_points),
        report_to=[], seed=seed, data_seed=data_seed, remove_unused_columns=False,
        disable_tqdm=not progress, dataloader_num_workers=workers, bf16=bf16,
        use_cpu=not torch.cuda.is_available(), **saving,
    )
