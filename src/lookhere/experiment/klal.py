"""The NTP vs NTP+KLAL experiment on synthetic tasks (the KLAL paper's tables 1-2, figures 3-4).

For each task and each condition, a fresh tiny VLM (same seed, so the same initial weights) is
trained from scratch on the same training samples for the same number of steps, then evaluated
on a held-out test split drawn from a different seed and never used for any choice:

- accuracy (greedy generation, parsed answers) with a bootstrap 95% interval, parse failures;
- the attention ratio of the answer token (target tokens / all visual tokens), per sample;
- the answer token's attention maps on a few test images, for the figure.

Conditions: ``ntp`` (KLAL weight 0, but measured and logged) and ``klal`` (weight lambda). The
compute is equal: both run the same steps on the same batches; KLAL adds the probe's rows only.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lookhere.data.collate import GroundingCollator
from lookhere.data.dataset import SampleList, TaskDataset
from lookhere.data.sample import Sample
from lookhere.data.synthetic import make_task
from lookhere.eval.runner import evaluate
from lookhere.models.adapter import get_adapter
from lookhere.models.tiny import build_tiny, resolve_size
from lookhere.targets import TargetConfig
from lookhere.train.config import KLAL_QUERIES, KLALConfig

TASKS = ("grid_patch", "line_intersection", "line_tracing")
CONDITIONS = ("ntp", "klal")
TEST_SEED_OFFSET = 10_000  # test samples come from seed data_seed + this: disjoint streams
# Longest answer in tokens (content + end), so generation stops early: "row 8, column 8</s>".
ANSWER_TOKENS = {"grid_patch": 10, "line_intersection": 3, "line_tracing": 3}


def _task_defaults(image_size: int) -> dict[str, dict[str, Any]]:
    """Task settings at the model's input size (docs/results.md says how they were chosen).

    Grid Patch is scaled to what a ~1M-parameter model trained from scratch can learn in minutes:
    cells of 2x2 patches (4x4 at 112 px) and 2 distractors, without the grid preamble (a short
    question). The line tasks keep their generators' defaults.
    """
    grid = max(1, image_size // 28)
    return {
        "grid_patch": {"image_size": image_size, "grid_rows": grid, "grid_cols": grid,
                       "num_distractors": 2, "describe_grid": False},
        "line_intersection": {"image_size": image_size},
        "line_tracing": {"image_size": image_size},
    }


@dataclass(frozen=True)
class KLALExperimentConfig:
    """One NTP vs NTP+KLAL comparison (defaults: `make demo`)."""

    family: str = field(default="llava", metadata={"help": "model family (architecture)"})
    size: str = field(default="demo", metadata={"help": "tiny size preset (models.tiny)"})
    tasks: tuple[str, ...] = field(default=TASKS, metadata={"help": "synthetic tasks to run"})
    conditions: tuple[str, ...] = field(default=CONDITIONS, metadata={
        "help": "'ntp' (KLAL weight 0, monitored) and/or 'klal' (weight = `weight`)"})
    image_size: int = field(default=112, metadata={
        "help": "image side in px; must equal the tiny model's input size"})
    steps: int = field(default=1000, metadata={"help": "optimizer steps per run"})
    batch_size: int = field(default=8, metadata={"help": "samples per step"})
    lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "linear warm-up share"})
    weight: float = field(default=1.0, metadata={"help": "lambda of the 'klal' condition"})
    query: str = field(default="last_answer", metadata={"help": f"KLAL query: {KLAL_QUERIES}"})
    target: TargetConfig = field(default_factory=TargetConfig, metadata={
        "help": "target-map weights (target, neighbour ring, floor)"})
    test_samples: int = field(default=500, metadata={"help": "held-out test samples per task"})
    seed: int = field(default=0, metadata={"help": "model init and training seed"})
    data_seed: int = field(default=0, metadata={
        "help": "training data seed; the test split uses data_seed + 10000"})
    eval_batch_size: int = field(default=50, metadata={"help": "evaluation batch size"})
    max_new_tokens: int = field(default=16, metadata={
        "help": "generation budget per answer (capped by the task's longest answer)"})
    n_maps: int = field(default=3, metadata={"help": "test images per task in the map figure"})
    task_options: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={
        "help": "per-task generator overrides, e.g. {'grid_patch': {'num_distractors': 1}}"})
    save_models: bool = field(default=False, metadata={
        "help": "save each trained model under out/models/<task>/<condition>"})

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "test_samples", "eval_batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {self.tasks}")
        bad = [c for c in self.conditions if c not in CONDITIONS]
        if bad or not self.conditions:
            raise ValueError(f"conditions must be a non-empty subset of {CONDITIONS}, "
                             f"got {self.conditions}")
        KLALConfig(weight=self.weight, query=self.query)  # validates both
        for task in self.task_options:
            if task not in TASKS:
                raise ValueError(f"task_options names unknown task {task!r}; tasks: {TASKS}")
        side = resolve_size(self.size).image_size
        if side != self.image_size:
            raise ValueError(f"image_size {self.image_size} must equal the {self.size!r} model's "
                             f"input size {side}")

    def klal_config(self, condition: str) -> KLALConfig:
        if condition == "ntp":
            return KLALConfig(weight=0.0, monitor=True, query=self.query)
        return KLALConfig(weight=self.weight, query=self.query)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def task_config(config: KLALExperimentConfig, task: str) -> dict[str, Any]:
    """The generator settings of ``task``: defaults at the image size, then the overrides."""
    return {**_task_defaults(config.image_size)[task], **config.task_options.get(task, {})}


def train_split(config: KLALExperimentConfig, task: str) -> SampleList:
    t = make_task(task, seed=config.data_seed, **task_config(config, task))
    return TaskDataset(t, config.steps * config.batch_size).materialise()


def held_out_split(config: KLALExperimentConfig, task: str) -> list[Sample]:
    t = make_task(task, seed=config.data_seed + TEST_SEED_OFFSET, **task_config(config, task))
    return list(TaskDataset(t, config.test_samples).materialise().samples)


def train_one(config: KLALExperimentConfig, condition: str, train: SampleList, out_dir: Path,
              progress: bool = True) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """A fresh tiny model trained under one condition: (model, processor, training record)."""
    from lookhere.train.trainer import GroundingTrainer

    model, processor = build_tiny(config.family, config.size, seed=config.seed)
    adapter = get_adapter(model)
    trainer = GroundingTrainer(
        model=model, args=training_args(config, out_dir, progress), train_dataset=train,
        data_collator=GroundingCollator(processor, adapter, target_config=config.target),
        klal=config.klal_config(condition),
    )
    return trainer.model, processor, fit(trainer, config.steps)


def training_args(config: Any, out_dir: Path, progress: bool = True) -> Any:
    """The experiments' `TrainingArguments` (AdamW, cosine with warm-up, no checkpoints) from a
    config with ``steps``, ``batch_size``, ``lr``, ``warmup_ratio``, ``seed`` and ``data_seed``."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out_dir), max_steps=config.steps,
        per_device_train_batch_size=config.batch_size, learning_rate=config.lr,
        warmup_steps=max(0, round(config.warmup_ratio * config.steps)),
        lr_scheduler_type="cosine", weight_decay=0.0, logging_steps=max(1, config.steps // 30),
        save_strategy="no", report_to=[], seed=config.seed, data_seed=config.data_seed,
        remove_unused_columns=False, disable_tqdm=not progress, dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )


def fit(trainer: Any, steps: int) -> dict[str, Any]:
    """Train; the record: steps, seconds, and the logged losses."""
    start = time.perf_counter()
    trainer.train()
    return {"steps": steps, "seconds": time.perf_counter() - start,
            "log": [r for r in trainer.state.log_history if "loss" in r]}


def run(config: KLALExperimentConfig, out_dir: str | Path, progress: bool = True,
        on_result: Callable[[str, str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train and evaluate every (task, condition); returns the results dict (report schema)."""
    out_dir = Path(out_dir)
    results: dict[str, Any] = {"tasks": {}, "examples": {}}
    for task in config.tasks:
        train = train_split(config, task)
        test = held_out_split(config, task)
        results["tasks"][task] = {}
        examples = [s.id for s in test[: config.n_maps]]
        results["examples"][task] = {"ids": examples, "maps": {}}
        for condition in config.conditions:
            if progress:
                print(f"[klal] {task}: training {condition} ({config.steps} steps)", flush=True)
            model, processor, record = train_one(config, condition, train,
                                                 out_dir / "runs" / task / condition, progress)
            if config.save_models:
                from lookhere.models.tiny import save_tiny

                path = out_dir / "models" / task / condition
                if path.exists():
                    raise FileExistsError(f"{path} exists; choose a new output folder")
                save_tiny(model, processor, path)
            res = evaluate(model, processor, get_adapter(model), test,
                           batch_size=config.eval_batch_size,
                           max_new_tokens=min(config.max_new_tokens, ANSWER_TOKENS[task]),
                           n_maps=config.n_maps, query=config.query, progress=progress)
            score = res.scores.to_json()["tasks"][task]
            entry = {**{k: score[k] for k in ("accuracy", "ci95", "parse_failure_rate", "n")},
                     "attention_ratio": res.attention_ratio.get(task, {}), "train": record,
                     "predictions": dict(list(res.predictions.items())[:20])}
            results["tasks"][task][condition] = entry
            results["examples"][task]["maps"][condition] = {
                i: {"map": m["map"].tolist(), "extent": list(m["extent"])}
                for i, m in res.maps.items()}
            if on_result is not None:
                on_result(task, condition, entry)
            if progress:
                r = entry["attention_ratio"].get("mean", float("nan"))
                print(f"[klal] {task} {condition}: accuracy {entry['accuracy']:.3f} "
                      f"{entry['ci95']}, attention ratio {r:.2f}", flush=True)
    return results


def summary_line(results: dict[str, Any]) -> str:
    return json.dumps({t: {c: round(v["accuracy"], 3) for c, v in conds.items()}
                       for t, conds in results["tasks"].items()})
