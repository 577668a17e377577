"""The NTP vs NTP+KLAL experiment on synthetic tasks (the KLAL paper's tables 1-2, figures 3-4).

Tasks: the paper's three synthetic benchmarks (Grid Patch, Line Intersection, Line Tracing)
and analogues of its two real datasets: ``rec`` (RefCOCO: Shapes referring expressions answered
with a box, the KLAL target the box) and ``point`` (PixMo-Points: "Point to ..." on Scenes,
answered with a point, the KLAL target the gold point's cell; scored by the point falling inside
the object's mask).

For each task and each condition, the same initial weights (a fresh tiny VLM of one seed, or the
checkpoint of ``TrainSpec.init``) are trained on the same training samples for the same number
of steps, then evaluated on a held-out test split drawn from a different seed and never used
for any choice:

- accuracy (greedy generation, parsed answers) with a bootstrap 95% interval, parse failures;
- the attention ratio of the answer token (target tokens / all visual tokens), per sample;
- the answer token's attention maps on a few test images, for the figure.

Conditions: ``ntp`` (KLAL weight 0, but measured and logged) and ``klal`` (weight lambda). The
compute is equal: both run the same steps on the same batches; KLAL adds the probe's rows only.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lookhere.collate import GroundingCollator
from lookhere.data.dataset import SampleList, TaskDataset
from lookhere.data.sample import Geometry, Sample
from lookhere.data.synthetic import make_task
from lookhere.eval.runner import AttentionMap, RatioSummary, evaluate
from lookhere.experiment.config import (  # noqa: F401 (the config, named here too)
    BENCHMARKS,
    TASKS,
    KLALExperimentConfig,
    klal_task_defaults,
)
from lookhere.experiment.config import KLAL_CONDITIONS as CONDITIONS  # noqa: F401
from lookhere.experiment.training import (
    TEST_SEED_OFFSET,
    TrainRecord,
    fit,
    training_args,
)
from lookhere.models.adapter import get_adapter

#: the generator of each task whose name is not its generator's
GENERATORS = {"rec": "shapes", "point": "scenes"}
#: Scenes trains the shipped checkpoint from seed 0: fine-tuning draws from seed data_seed +
#: this, a stream pretraining never used (test: data_seed + TEST_SEED_OFFSET, as its eval)
FINETUNE_SEED_OFFSET = 20_000
# Longest answer in tokens (content + end), so generation stops early: "row 8, column 8</s>";
# a box or point is written digit by digit (the pretrained evaluation's budget).
ANSWER_TOKENS = {"grid_patch": 10, "line_intersection": 3, "line_tracing": 3, "rec": 32,
                 "point": 32}


def generator(task: str) -> str:
    """The synthetic generator of ``task`` (the name its samples and scores carry)."""
    return GENERATORS.get(task, task)


@dataclass(frozen=True)
class KLALEntry:
    """One (task, condition): held-out accuracy (with its 95% bootstrap interval and the share
    of unparsable answers), the answer token's attention ratio, the training record and the
    first 20 predictions."""

    accuracy: float
    ci95: list[float]  # [low, high]
    parse_failure_rate: float
    n: int
    attention_ratio: RatioSummary | None  # None: no sample had a target (JSON: {})
    train: TrainRecord
    predictions: dict[str, str]  # sample id -> answer, the first 20

    def to_json(self) -> dict[str, Any]:
        ratio = self.attention_ratio
        return {"accuracy": self.accuracy, "ci95": self.ci95,
                "parse_failure_rate": self.parse_failure_rate, "n": self.n,
                "attention_ratio": ratio.to_json() if ratio is not None else {},
                "train": self.train.to_json(), "predictions": self.predictions}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KLALEntry:
        ratio = data["attention_ratio"]
        return cls(data["accuracy"], data["ci95"], data["parse_failure_rate"], data["n"],
                   RatioSummary.from_json(ratio) if ratio else None,
                   TrainRecord.from_json(data["train"]), data["predictions"])


@dataclass(frozen=True)
class KLALExamples:
    """A task's figure: its first test samples' ids and each condition's answer-token maps."""

    ids: list[str]
    maps: dict[str, dict[str, AttentionMap]]  # condition -> sample id -> map

    def to_json(self) -> dict[str, Any]:
        return {"ids": self.ids, "maps": {c: {i: m.to_json() for i, m in per.items()}
                                          for c, per in self.maps.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KLALExamples:
        return cls(list(data["ids"]), {c: {i: AttentionMap.from_json(m) for i, m in per.items()}
                                       for c, per in data["maps"].items()})


@dataclass(frozen=True)
class KLALResult:
    """`run`'s result, per task (in the config's order): a `KLALEntry` per condition and the
    `KLALExamples`. JSON: ``{"tasks": {task: {condition: ...}}, "examples": {task: ...}}``, the
    report's schema (`lookhere.report.page`)."""

    tasks: dict[str, dict[str, KLALEntry]]
    examples: dict[str, KLALExamples]

    def to_json(self) -> dict[str, Any]:
        return {"tasks": {t: {c: e.to_json() for c, e in per.items()}
                          for t, per in self.tasks.items()},
                "examples": {t: ex.to_json() for t, ex in self.examples.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KLALResult:
        return cls({t: {c: KLALEntry.from_json(e) for c, e in per.items()}
                    for t, per in data["tasks"].items()},
                   {t: KLALExamples.from_json(ex) for t, ex in data["examples"].items()})


def task_config(config: KLALExperimentConfig, task: str) -> dict[str, Any]:
    """The generator settings of ``task``: defaults at the image size, then the overrides."""
    defaults = klal_task_defaults(config.train.image_size)[task]
    return {**defaults, **config.task_options.get(task, {})}


def train_split(config: KLALExperimentConfig, task: str) -> SampleList:
    seed = config.train.data_seed + (FINETUNE_SEED_OFFSET if generator(task) == "scenes" else 0)
    t = make_task(generator(task), seed=seed, **task_config(config, task))
    samples = TaskDataset(t, config.train.samples).materialise()
    if task == "point" and config.point_target == "point":
        # PixMo-Points has points only: the target is the gold point's cell ("mask" keeps the
        # object's mask that Scenes draws, the region the test scores a point inside)
        samples = SampleList([_point_target(s) for s in samples.samples])
    return samples


def _point_target(sample: Sample) -> Sample:
    points = [(float(x), float(y)) for x, y in sample.structured["points"]]
    return dataclasses.replace(sample, geometry=Geometry(points=points))


def held_out_split(config: KLALExperimentConfig, task: str) -> list[Sample]:
    t = make_task(generator(task), seed=config.train.data_seed + TEST_SEED_OFFSET,
                  **task_config(config, task))
    return list(TaskDataset(t, config.test_samples).materialise().samples)


def train_one(config: Any, condition: str, train: SampleList, out_dir: Path,
              progress: bool = True) -> tuple[torch.nn.Module, Any, TrainRecord]:
    """The spec's model (fresh, or the ``init`` checkpoint) trained under one condition:
    (model, processor, training record).
    ``config``: any experiment config with ``train``, ``target`` and ``klal_config``."""
    from lookhere.train.trainer import GroundingTrainer

    model, processor = config.train.build_model()
    adapter = get_adapter(model)
    trainer = GroundingTrainer(
        model=model, args=training_args(config.train, out_dir, progress), train_dataset=train,
        data_collator=GroundingCollator(processor, adapter, target_config=config.target),
        klal=config.klal_config(condition),
    )
    return trainer.model, processor, fit(trainer, config.train.steps, progress)


def run(config: KLALExperimentConfig, out_dir: str | Path, progress: bool = True,
        on_result: Callable[[str, str, KLALEntry], None] | None = None) -> KLALResult:
    """Train and evaluate every (task, condition)."""
    out_dir = Path(out_dir)
    result = KLALResult({}, {})
    for task in config.tasks:
        train = train_split(config, task)
        test = held_out_split(config, task)
        result.tasks[task] = {}
        examples = result.examples[task] = KLALExamples([s.id for s in test[: config.n_maps]],
                                                        {})
        for condition in config.conditions:
            if progress:
                print(f"[klal] {task}: training {condition} ({config.train.steps} steps)",
                      flush=True)
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
                           n_maps=config.n_maps, query=config.klal.query, progress=progress)
            score = res.scores.tasks[generator(task)]
            entry = KLALEntry(score.accuracy, list(score.ci95), score.parse_failure_rate,
                              score.n, res.attention_ratio.get(generator(task)), record,
                              dict(list(res.predictions.items())[:20]))
            result.tasks[task][condition] = entry
            examples.maps[condition] = dict(res.maps)
            if on_result is not None:
                on_result(task, condition, entry)
            if progress:
                r = entry.attention_ratio.mean if entry.attention_ratio else float("nan")
                print(f"[klal] {task} {condition}: accuracy {entry.accuracy:.3f} "
                      f"{entry.ci95}, attention ratio {r:.2f}", flush=True)
    return result


def summary_line(result: KLALResult) -> str:
    return json.dumps({t: {c: round(e.accuracy, 3) for c, e in conds.items()}
                       for t, conds in result.tasks.items()})
