"""Localization heads on the embedded tiny VLM (issue 5's experiment, the paper's tables 1-2 and
figure 1 in miniature).

For each condition a tiny VLM (same seed, so the same initial weights) is prepared:

- ``untrained``: random weights, the control (no head can know where anything is);
- ``ntp``: trained from scratch with next-token prediction only on Shapes VQA (colour, shape,
  size and count questions), so answering needs the objects' content;
- ``klal``: the same steps on the same batches with NTP + KLAL (the answer token's attention
  pulled toward the objects the question is about).

Then, training-free: the localization heads are searched on ``search_samples`` Shapes REC
samples (the prefill prompt ``Where is <expression>?``), the search is repeated on disjoint
sample sets to measure how stable the heads are, and held-out REC expressions are grounded with
the heads and with the baselines (all heads' mean, random heads, a centre box, the box written as
text). VQA accuracy on held-out questions says what the model learned. All splits come from
different seeds of the generator and none was used for any choice.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lookhere.data.dataset import SampleList
from lookhere.data.sample import Sample
from lookhere.eval.rec import RecResult, evaluate_rec
from lookhere.eval.runner import evaluate
from lookhere.experiment.config import HEADS_CONDITIONS as CONDITIONS  # noqa: F401
from lookhere.experiment.config import HEADS_TRAIN as TRAIN  # noqa: F401
from lookhere.experiment.config import HeadsExperimentConfig
from lookhere.experiment.klal import train_one
from lookhere.experiment.training import (  # noqa: F401 (TEST_SEED_OFFSET: named here too)
    TEST_SEED_OFFSET,
    TrainRecord,
)
from lookhere.heads.locate import head_maps, locate
from lookhere.heads.search import find_heads
from lookhere.heads.selection import HeadSpec
from lookhere.models.adapter import get_adapter
from lookhere.record import FlatRecord

SEARCH_SEED_OFFSET = 20_000  # the search's REC samples come from seed data_seed + this
VQA_ANSWER_TOKENS = 4  # "purple</s>" and the like


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class VQAScore(FlatRecord):
    """Accuracy on held-out Shapes VQA: overall, with its 95% bootstrap interval, and per
    question type (colour, shape, size, count)."""

    accuracy: float
    ci95: list[float]  # [low, high]
    n: int
    by_type: dict[str, float]


@dataclass(frozen=True)
class Stability(FlatRecord):
    """Agreement of the top-k of repeated searches on disjoint samples (`stability`)."""

    heads: list[list[list[int]]]  # per search, its heads as [layer, head]
    mean_overlap: float  # mean pairwise |A & B| / k
    identical: bool  # every search found the same set


@dataclass(frozen=True)
class HeadExample(FlatRecord):
    """The found heads on one held-out expression, for the figures."""

    maps: list  # per found head, its (rows, cols) map
    heatmap: list  # (rows, cols): the smoothed maps summed, as `ground` reads them
    box: list[float]  # the predicted box, xyxy pixels
    extent: list[int]  # [0, 0, width, height] of the image


@dataclass(frozen=True)
class HeadsCondition:
    """One model's results: its training, VQA, the heads found, their stability, REC."""

    train: TrainRecord
    vqa: VQAScore
    spec: HeadSpec  # the first search's heads (the ones used)
    stability: Stability
    rec: RecResult
    seconds: float  # the condition's wall time, training included

    def to_json(self) -> dict[str, Any]:
        return {"train": self.train.to_json(), "vqa": self.vqa.to_json(),
                "spec": self.spec.to_json(), "stability": self.stability.to_json(),
                "rec": self.rec.to_json(), "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HeadsCondition:
        return cls(TrainRecord.from_json(data["train"]), VQAScore.from_json(data["vqa"]),
                   HeadSpec.from_json(data["spec"]), Stability.from_json(data["stability"]),
                   RecResult.from_json(data["rec"]), data["seconds"])


@dataclass(frozen=True)
class HeadsResult:
    """`run`'s result: per condition (in the config's order) its `HeadsCondition` and its
    examples. JSON: ``{"config", "conditions": {c: ...}, "examples": {"ids": [...], c: {id:
    HeadExample}}}``."""

    config: HeadsExperimentConfig
    conditions: dict[str, HeadsCondition]
    example_ids: list[str]  # the held-out expressions of the figures
    examples: dict[str, dict[str, HeadExample]]  # condition -> sample id -> example

    def to_json(self) -> dict[str, Any]:
        examples: dict[str, Any] = {"ids": list(self.example_ids)}
        for c, per in self.examples.items():
            examples[c] = {i: e.to_json() for i, e in per.items()}
        return {"config": self.config.to_json(),
                "conditions": {c: e.to_json() for c, e in self.conditions.items()},
                "examples": examples}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HeadsResult:
        ex = data["examples"]
        return cls(HeadsExperimentConfig.from_json(data["config"]),
                   {c: HeadsCondition.from_json(e) for c, e in data["conditions"].items()},
                   list(ex["ids"]),
                   {c: {i: HeadExample.from_json(e) for i, e in per.items()}
                    for c, per in ex.items() if c != "ids"})


def train_split(config: HeadsExperimentConfig) -> SampleList:
    return SampleList(config.shapes_samples("vqa", config.train.data_seed, config.train.samples))


def held_out_splits(config: HeadsExperimentConfig) -> tuple[list[Sample], list[Sample]]:
    """(held-out VQA, held-out REC), from the test seed."""
    seed = config.train.data_seed + TEST_SEED_OFFSET
    return (config.shapes_samples("vqa", seed, config.vqa_samples),
            config.shapes_samples("rec", seed, config.test_samples))


def search_split(config: HeadsExperimentConfig, repeat: int) -> list[Sample]:
    """The ``repeat``-th disjoint set of REC samples for the head search."""
    n = config.search_samples
    return config.shapes_samples("rec", config.train.data_seed + SEARCH_SEED_OFFSET, n,
                                 repeat * n)


def prepare_model(config: HeadsExperimentConfig, condition: str, train: SampleList | None,
                  out_dir: Path, progress: bool) -> tuple[torch.nn.Module, Any, TrainRecord]:
    """The condition's model: random weights, or trained from them on ``train``."""
    if condition == "untrained":
        model, processor = config.train.build_model()
        return model, processor, TrainRecord(steps=0)
    return train_one(config, condition, train, out_dir / "runs" / condition, progress)


def stability(head_sets: list[list[tuple[int, int]]]) -> Stability:
    """Agreement of the top-k found by repeated searches: mean pairwise overlap |A & B| / k."""
    k = max(len(h) for h in head_sets)
    pairs = list(itertools.combinations([set(map(tuple, h)) for h in head_sets], 2))
    overlap = float(np.mean([len(a & b) / k for a, b in pairs])) if pairs else 1.0
    return Stability([[list(h) for h in hs] for hs in head_sets], overlap,
                     all(a == b for a, b in pairs))


def search_and_ground(config: HeadsExperimentConfig, model: torch.nn.Module, processor: Any,
                      rec_test: list[Sample], progress: bool
                      ) -> tuple[HeadSpec, Stability, RecResult]:
    """Head searches (the first gives the heads), their stability, and the REC table."""
    adapter = get_adapter(model)
    specs = []
    for r in range(config.search_repeats):
        specs.append(find_heads(model, processor, adapter, search_split(config, r),
                                model_id=config.train.model_name,
                                top_k=config.top_k, per_sample=config.per_sample,
                                batch_size=config.eval_batch_size, progress=progress))
    rec = evaluate_rec(model, processor, adapter, rec_test, specs[0], config.baselines,
                       seed=config.train.seed, batch_size=config.eval_batch_size,
                       progress=progress, sigma=config.ground_sigma)
    return specs[0], stability([s.heads for s in specs]), rec


def vqa_accuracy(model: torch.nn.Module, processor: Any, vqa_test: list[Sample],
                 config: Any, progress: bool) -> VQAScore:
    """Accuracy on held-out VQA, overall and per question type."""
    res = evaluate(model, processor, get_adapter(model), vqa_test,
                   batch_size=config.eval_batch_size, max_new_tokens=VQA_ANSWER_TOKENS,
                   attention=False, progress=progress)
    score = res.scores.tasks["shapes"].to_json()
    per_type: dict[str, list[bool]] = {}
    for s in vqa_test:
        ok = res.predictions.get(s.id, "").strip().lower() == s.answer.lower()
        per_type.setdefault(s.structured["type"], []).append(ok)
    return VQAScore(score["accuracy"], score["ci95"], score["n"],
                    {t: float(np.mean(v)) for t, v in sorted(per_type.items())})


def example_maps(config: HeadsExperimentConfig, model: torch.nn.Module, processor: Any,
                 spec: HeadSpec, rec_test: list[Sample]) -> dict[str, HeadExample]:
    """The found heads' maps and the grounding on the first ``n_maps`` held-out expressions."""
    adapter = get_adapter(model)
    samples = rec_test[: config.n_maps]
    maps = head_maps(model, processor, adapter, samples, spec.heads, batch_size=config.n_maps)
    found = locate(model, processor, adapter, spec, samples, batch_size=config.n_maps,
                   sigma=config.ground_sigma)
    return {s.id: HeadExample(m.tolist(), g.heatmap.tolist(), list(g.box),
                              [0, 0, *s.image.size])
            for s, (m, _), g in zip(samples, maps, found, strict=True)}


def run(config: HeadsExperimentConfig, out_dir: str | Path, progress: bool = True,
        on_result: Callable[[str, HeadsCondition], None] | None = None) -> HeadsResult:
    """Every condition: model, VQA accuracy, head searches, REC table."""
    out_dir = Path(out_dir)
    train = train_split(config) if set(config.conditions) - {"untrained"} else None
    vqa_test, rec_test = held_out_splits(config)
    result = HeadsResult(config, {}, [s.id for s in rec_test[: config.n_maps]], {})
    for condition in config.conditions:
        start = time.perf_counter()
        if progress:
            print(f"[heads] {condition}: preparing the model", flush=True)
        model, processor, record = prepare_model(config, condition, train, out_dir, progress)
        model.eval()
        if config.save_models and condition != "untrained":
            from lookhere.models.tiny import save_tiny

            save_tiny(model, processor, out_dir / "models" / condition)
        vqa = vqa_accuracy(model, processor, vqa_test, config, progress)
        spec, stable, rec = search_and_ground(config, model, processor, rec_test, progress)
        result.examples[condition] = example_maps(config, model, processor, spec, rec_test)
        entry = HeadsCondition(record, vqa, spec, stable, rec, time.perf_counter() - start)
        result.conditions[condition] = entry
        if on_result is not None:
            on_result(condition, entry)
        if progress:
            print(f"[heads] {condition}: {summary_line(condition, entry)}", flush=True)
    return result


def summary_line(condition: str, entry: HeadsCondition) -> str:
    accs = ", ".join(f"{k} {100 * v.acc_at_iou:.1f}/{100 * v.pointing:.1f}"
                     for k, v in entry.rec.methods.items())
    return (f"VQA {100 * entry.vqa.accuracy:.1f}%; heads {entry.spec.heads} "
            f"(overlap {entry.stability.mean_overlap:.2f}); Acc@0.5/pointing: {accs}")
