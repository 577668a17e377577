"""Evaluation loop: generate answers, score them, and measure where the answer token looks.

`evaluate` runs greedy generation on the chat prompts of a list of samples and scores the
answers per task (`lookhere.eval.scoring`). With ``attention=True`` it also runs one
teacher-forced forward per batch (prompt + gold answer, the same batch as in training) under the
probe and measures the KLAL paper's figure 4 quantity per sample:

    ratio = mean attention on target tokens / mean attention on all visual tokens

from the answer query (``last_answer`` by default), where the attention is each layer's head
average of the rows renormalised over visual tokens (the distribution KLAL supervises), then
averaged over layers. Target tokens are those the sample's geometry touches. Above 1 means the
target gets more than its share. The probe cannot read cached decoding steps, hence the
separate teacher-forced forward.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lookhere.collate import GroundingCollator, prompt_batch, split_aux, to_device
from lookhere.data.dataset import chunks
from lookhere.data.sample import Sample
from lookhere.eval.metrics import attention_ratio, bootstrap_ci
from lookhere.eval.scoring import TaskScores, score_predictions
from lookhere.losses.config import KLALConfig
from lookhere.losses.klal import head_mean
from lookhere.models.adapter import Adapter
from lookhere.train.objective import klal_probe

#: the default answer length cap: a normalised box "[0.12, 0.34, 0.56, 0.78]" is 24 tokens in the
#: tiny and shipped tokenizers (and about as many in LLaMA's), which split numbers digit by digit;
#: 16 cut such boxes short, so they parsed as nothing
MAX_NEW_TOKENS = 32


@dataclass(frozen=True)
class RatioSummary:
    """One task's attention ratios: the finite per-sample ``values``, their mean with a
    bootstrap ``ci95`` (seed 0) and median."""

    n: int
    mean: float
    median: float
    ci95: tuple[float, float]
    values: list[float] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "median": self.median, "ci95": list(self.ci95),
                "values": self.values, "n": self.n}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RatioSummary:
        return cls(data["n"], data["mean"], data["median"], tuple(data["ci95"]),
                   list(data["values"]))


@dataclass(frozen=True)
class AttentionMap:
    """The answer's head-averaged attention over image 0's first grid, ``map`` (rows, cols),
    and the pixel ``extent`` (x0, y0, x1, y1) the grid covers."""

    map: np.ndarray
    extent: tuple[float, float, float, float]

    def to_json(self) -> dict[str, Any]:
        return {"map": self.map.tolist(), "extent": list(self.extent)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AttentionMap:
        return cls(np.asarray(data["map"]), tuple(data["extent"]))


@dataclass
class EvalResult:
    """Predictions, scores, attention ratios (per task) and a few attention maps (by id)."""

    predictions: dict[str, str]
    scores: TaskScores
    attention_ratio: dict[str, RatioSummary] = field(default_factory=dict)
    maps: dict[str, AttentionMap] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"scores": self.scores.to_json(),
                "attention_ratio": {k: r.to_json() for k, r in self.attention_ratio.items()},
                "predictions": self.predictions}


@torch.no_grad()
def generate_answers(model: nn.Module, processor: Any, adapter: Adapter,
                     samples: Sequence[Sample], batch_size: int = 16,
                     max_new_tokens: int = MAX_NEW_TOKENS,
                     progress: bool = True) -> dict[str, str]:
    """Greedy answers, id -> text (special tokens and surrounding space stripped)."""
    _check_args(samples, batch_size, max_new_tokens)
    if len({s.id for s in samples}) != len(samples):  # answers are keyed by id
        raise ValueError("sample ids must be unique: answers are returned by id")
    tok = processor.tokenizer
    device = next(model.parameters()).device
    out: dict[str, str] = {}
    for chunk in _progress(samples, batch_size, progress, "generate"):
        batch = to_device(prompt_batch(adapter, processor, chunk), device)
        ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        new = ids[:, batch["input_ids"].shape[1]:]
        for s, text in zip(chunk, tok.batch_decode(new, skip_special_tokens=True), strict=True):
            out[s.id] = text.strip()
    return out


@torch.no_grad()
def answer_attention(model: nn.Module, processor: Any, adapter: Adapter,
                     samples: Sequence[Sample], query: str = "last_answer",
                     layers: Sequence[int] | None = None, batch_size: int = 16,
                     n_maps: int = 0, progress: bool = True
                     ) -> tuple[list[float], dict[str, AttentionMap]]:
    """Per-sample attention ratios (NaN where a sample has no target) and the maps of the first
    ``n_maps`` samples (image 0's first grid)."""
    _check_args(samples, batch_size, 1)
    collate = GroundingCollator(processor, adapter)
    cfg = KLALConfig(weight=0.0, monitor=True, query=query, layers=layers)
    device = next(model.parameters()).device
    ratios: list[float] = []
    maps: dict[str, AttentionMap] = {}
    for chunk in _progress(samples, batch_size, progress, "attention"):
        batch = collate(chunk)
        inputs, aux = split_aux(to_device(batch, device))
        with klal_probe(model, inputs, aux, cfg) as probe:
            model(**inputs)
        q = _head_average(probe)  # (B, K)
        r = attention_ratio(q, aux["target_cells"], probe.key_mask)
        r = torch.where(aux["has_target"], r, float("nan"))
        ratios += r.tolist()
        if len(maps) < n_maps:
            layout = adapter.layout(inputs, [[s.image] for s in chunk], processor)
            for b, s in enumerate(chunk[: n_maps - len(maps)]):
                grid = layout.samples[b].images[0].grids[0]
                maps[s.id] = AttentionMap(grid.to_grid(q[b].cpu()).numpy(), _extent(grid))
    return ratios, maps


def evaluate(model: nn.Module, processor: Any, adapter: Adapter, samples: Sequence[Sample],
             batch_size: int = 16, max_new_tokens: int = MAX_NEW_TOKENS, style: str = "plain",
             attention: bool = True, query: str = "last_answer", n_maps: int = 0,
             progress: bool = True) -> EvalResult:
    """Generate, score, and (optionally) measure the answer's attention ratio per task."""
    was_training = model.training
    model.eval()
    try:
        preds = generate_answers(model, processor, adapter, samples, batch_size,
                                 max_new_tokens, progress)
        result = EvalResult(preds, score_predictions(samples, preds, style=style))
        if attention:
            ratios, result.maps = answer_attention(model, processor, adapter, samples, query,
                                                   batch_size=batch_size, n_maps=n_maps,
                                                   progress=progress)
            result.attention_ratio = _ratio_summary(samples, ratios)
    finally:
        model.train(was_training)
    return result


def _head_average(probe: Any) -> torch.Tensor:
    """(B, K): per layer, KLAL's Q (`head_mean`: rows renormalised over the visual keys and
    averaged over the heads that see one) averaged over the valid queries; then over layers."""
    per_layer = []
    for rows in probe.rows.values():  # (B, H, Q, K) log-probs
        log_q, ok = head_mean(rows, probe.key_mask)  # (B, Q, K), (B, Q)
        use = ok & probe.query_mask
        q = torch.where(use[..., None] & probe.key_mask[:, None, :], log_q.exp(), 0.0)
        per_layer.append(q.sum(1) / use.sum(1, keepdim=True).clamp(min=1))
    return torch.stack(per_layer).mean(0)


def _ratio_summary(samples: Sequence[Sample], ratios: list[float]) -> dict[str, RatioSummary]:
    by_task: dict[str, list[float]] = {}
    for s, r in zip(samples, ratios, strict=True):
        by_task.setdefault(s.task, []).append(r)
    out = {}
    for task, values in by_task.items():
        v = [x for x in values if np.isfinite(x)]
        if not v:
            continue
        mean, lo, hi = bootstrap_ci(v)
        out[task] = RatioSummary(len(v), mean, float(np.median(v)), (lo, hi), v)
    return out


def _extent(grid: Any) -> tuple[float, float, float, float]:
    boxes = np.asarray(grid.geometry.cell_boxes()).reshape(-1, 4)
    w, h = grid.geometry.image_size
    return (max(0.0, float(boxes[:, 0].min())), max(0.0, float(boxes[:, 1].min())),
            min(float(w), float(boxes[:, 2].max())), min(float(h), float(boxes[:, 3].max())))


def _progress(samples: Sequence[Sample], size: int, progress: bool, desc: str
              ) -> Iterator[list[Sample]]:
    """`chunks` of ``size`` samples under a progress bar."""
    return tqdm(chunks(samples, size), desc=desc, disable=not progress, leave=False,
                total=-(-len(samples) // size))


def _check_args(samples: Sequence[Sample], batch_size: int, max_new_tokens: int) -> None:
    if not samples:
        raise ValueError("samples must not be empty")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
