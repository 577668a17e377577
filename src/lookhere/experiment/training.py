"""What the experiments share at run time: the Trainer plumbing of a `TrainSpec`
(`training_args`, `sampler_seed`, `fit` -> `TrainRecord`). The configs themselves (`TrainSpec`,
`ExperimentConfig`, `ShapesExperiment`, `shapes_defaults`) live in the torch-free
`lookhere.experiment.config` and are named here too."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lookhere.experiment.config import (  # noqa: F401 (named here too, their first home)
    ExperimentConfig,
    ModelShape,
    ShapesExperiment,
    TrainSpec,
    checkpoint_shape,
    shapes_defaults,
)
from lookhere.train.arguments import trainer_args


def training_args(spec: TrainSpec, out_dir: Path, progress: bool = True) -> Any:
    """The experiments' `TrainingArguments` (AdamW, cosine with warm-up, no checkpoints)."""
    return trainer_args(out_dir, steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr,
                        warmup_ratio=spec.warmup_ratio, seed=spec.seed,
                        data_seed=sampler_seed(spec), progress=progress, log_points=30)


def sampler_seed(spec: TrainSpec) -> int:
    """The Trainer's ``data_seed`` (the order of the batches). A fresh model's seed already
    changes its initial weights, and its runs keep the data seed's order (as before ``init``
    existed); a checkpoint's weights are fixed, so there the seed shuffles the batches, or
    every seed would repeat the same run."""
    return spec.data_seed + spec.seed if spec.init else spec.data_seed


#: every experiment's held-out data come from seed data_seed + this: a stream disjoint from
#: training (and, for Scenes, from pretraining, which used seed 0)
TEST_SEED_OFFSET = 10_000


@dataclass(frozen=True)
class TrainRecord:
    """How a model of an experiment was trained, as its results file records it (``train``):
    a field that is None is left out of the JSON (an untrained control is ``{"steps": 0}``)."""

    steps: int  # optimizer steps
    seconds: float | None = None  # wall time of the training
    log: list[dict[str, float]] | None = None  # the Trainer's logged records with a loss
    lll: dict[str, Any] | None = None  # the condition's `LLLConfig` (the lens experiment)
    reused_from: str | None = None  # where a model trained elsewhere comes from

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainRecord:
        return cls(**data)


def fit(trainer: Any, steps: int, progress: bool = True, resume: str | None = None
        ) -> TrainRecord:
    """Train (from the checkpoint folder ``resume``, if given); the record: steps, seconds, and
    the logged losses (printed only with ``progress``: without its bar, the Trainer would print
    every logged dict)."""
    if not progress:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    return TrainRecord(steps, time.perf_counter() - start,
                       [r for r in trainer.state.log_history if "loss" in r])
