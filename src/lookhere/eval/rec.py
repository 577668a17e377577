"""Referring-expression comprehension (REC) with localization heads, against baselines.

`evaluate_rec` grounds every sample's expression with each method and scores the boxes against
the one gold box (``sample.geometry.boxes[0]``), and the masks against the gold mask where the
samples carry one (``sample.geometry.mask``, as Shapes and RefCOCO do). Methods:

- ``heads``: the HeadSpec's heads, through `lookhere.heads.locate` (smooth, sum, binarise above
  the mean, largest component, box);
- ``all_heads``: every head of every layer outside ``spec.settings["skip_layers"]`` (default
  [0, 1]), grounded the same way. Binarising above the mean makes the sum of the maps and their
  mean the same, so this is "the mean attention of all heads";
- ``random_heads``: as many heads as the spec has (3 by default), drawn with
  ``numpy.random.default_rng(seed)`` from those same layers, recorded in the result;
- ``centre``: the centred box of half the image's width and height, the same for every sample.
  It uses no label and no model: the floor a method must beat;
- ``text``: the model writes the box as text (greedy, `lookhere.eval.runner.generate_answers` on
  the sample's question), parsed by `lookhere.eval.scoring.score_answer` in ``style``. An answer
  without a box is IoU 0 and a parse failure;
- ``ceiling`` (asked for, not a default): the heads' grounding rule at the same ``sigma`` fed
  the best map there is, the referred object's own cell coverage (`targets.cell_coverage` of
  its gold box and mask on the heads' grid): what any attention map can reach on this grid. On
  a coarse grid with small objects the paper's sigma of 1 cell inflates every box, and the
  ceiling's Acc@0.5 falls to 0 (docs/results.md 7.5).

Metrics per method: Acc@0.5 (`acc_at_iou`), mean box IoU, the pointing game (whether the
method's point lies in the gold box: the centre of the highest cell of the summed smoothed map
for attention methods, the box centre for box-only ones; it credits a map that peaks on the
object even when its box is too large), and with gold masks cIoU and mIoU
(as `mask_ious` defines them, from per-sample intersection and union counts, so no mask outlives
its chunk of samples). The predicted mask of an attention method is its pixel mask (the
pseudo-mask upsampled to the image, or the refiner's); the box-only methods (centre, text)
predict the filled box, pixels whose centre lies inside it (an unparsed answer: the empty mask).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from lookhere.data.dataset import chunks
from lookhere.data.sample import Box, Geometry, Sample
from lookhere.eval.methods import (
    ATTENTION_METHODS,
    BASELINES,
    DEFAULT_BASELINES,
    METHODS,  # noqa: F401 (named here too, its first home)
)
from lookhere.eval.metrics import Tally, acc_at_iou, box_iou, mean_box_iou
from lookhere.eval.scoring import IOU_THRESHOLD, REC_TASKS
from lookhere.heads.selection import HeadSpec
from lookhere.maps import point_in_region
from lookhere.models.adapter import Adapter

DEFAULT_SKIP_LAYERS = (0, 1)


@dataclass(frozen=True)
class RecScore:
    """One method's scores on ``n`` samples. ``acc_at_iou``: Acc@0.5 (``IOU_THRESHOLD``);
    ``ious`` and ``boxes`` by sample id (a box is ``[x0, y0, x1, y1]`` image pixels, or None).
    ``ciou``, ``miou`` and ``n_masks`` where the samples have gold masks; ``heads`` for the
    attention methods with their own heads; ``parse_failures``, ``parse_failure_rate`` and
    ``answers`` for ``text``. The JSON keys are the papers' names (``acc@0.5``, ``cIoU``)."""

    n: int
    acc_at_iou: float
    mean_iou: float
    pointing: float
    ious: dict[str, float] = field(repr=False)
    boxes: dict[str, list[float] | None] = field(repr=False)
    ciou: float | None = None
    miou: float | None = None
    n_masks: int | None = None
    heads: list[list[int]] | None = None
    parse_failures: int | None = None
    parse_failure_rate: float | None = None
    answers: dict[str, str] | None = field(default=None, repr=False)

    _JSON_NAMES = {"acc_at_iou": "acc@0.5", "ciou": "cIoU", "miou": "mIoU"}

    def to_json(self, per_sample: bool = True) -> dict[str, Any]:
        """The set fields under their JSON names; ``per_sample=False`` drops ious, boxes and
        answers."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or (not per_sample and f.name in ("ious", "boxes", "answers")):
                continue
            out[self._JSON_NAMES.get(f.name, f.name)] = value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RecScore:
        back = {v: k for k, v in cls._JSON_NAMES.items()}
        return cls(**{"ious": {}, "boxes": {}} | {back.get(k, k): v for k, v in data.items()})


@dataclass(frozen=True)
class RecResult:
    """`evaluate_rec`'s result: the sample ids in order, the settings, a `RecScore` by method."""

    n: int
    ids: list[str]
    settings: dict[str, Any]
    methods: dict[str, RecScore]

    def to_json(self, per_sample: bool = True) -> dict[str, Any]:
        return {"n": self.n, "ids": self.ids, "settings": self.settings,
                "methods": {k: m.to_json(per_sample) for k, m in self.methods.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RecResult:
        return cls(data["n"], list(data.get("ids", [])), dict(data.get("settings", {})),
                   {k: RecScore.from_json(m) for k, m in data["methods"].items()})


def is_rec_sample(sample: Sample) -> bool:
    """A REC sample: a RefCOCO-family task or Shapes in REC mode, with exactly one gold box."""
    rec_task = sample.task in REC_TASKS or (sample.task == "shapes"
                                            and "box" in sample.structured)
    return rec_task and len(sample.geometry.boxes) == 1


def check_rec_samples(samples: Sequence[Sample]) -> None:
    """ValueError naming the samples that are not REC samples (and their tasks)."""
    if not samples:
        raise ValueError("samples must not be empty")
    bad = [s for s in samples if not is_rec_sample(s)]
    if bad:
        tasks = sorted({s.task or "?" for s in bad})
        raise ValueError(
            f"samples must be REC samples (Shapes with mode='rec', or {', '.join(REC_TASKS)}) "
            f"with one gold box; {len(bad)} are not, e.g. {[s.id for s in bad[:5]]} "
            f"(task(s) {tasks})")
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        raise ValueError("sample ids must be unique")


def centre_box(size: tuple[int, int]) -> Box:
    """The centred box of half the image's width and height, ``size = (width, height)``."""
    w, h = size
    return (w / 4, h / 4, 3 * w / 4, 3 * h / 4)


def box_mask(box: Box | None, size: tuple[int, int]) -> np.ndarray:
    """``(height, width)`` bool: pixels whose centre lies in the xyxy box (None: all False)."""
    w, h = size
    out = np.zeros((h, w), dtype=bool)
    if box is None:
        return out
    xs, ys = np.arange(w) + 0.5, np.arange(h) + 0.5
    cols = (xs >= box[0]) & (xs < box[2])
    rows = (ys >= box[1]) & (ys < box[3])
    out[np.ix_(rows, cols)] = True
    return out


def allowed_heads(spec: HeadSpec, num_layers: int, num_heads: int) -> list[tuple[int, int]]:
    """Every (layer, head) of the model outside the spec's skip_layers (default [0, 1])."""
    skip = set(spec.settings.get("skip_layers", DEFAULT_SKIP_LAYERS))
    heads = [(layer, h) for layer in range(num_layers) if layer not in skip
             for h in range(num_heads)]
    if not heads:
        raise ValueError(f"skip_layers {sorted(skip)} leaves no head of the {num_layers}-layer "
                         "model")
    return heads


def random_heads(candidates: Sequence[tuple[int, int]], k: int, seed: int = 0
                 ) -> list[tuple[int, int]]:
    """``k`` distinct heads drawn with ``numpy.random.default_rng(seed)``, sorted."""
    if not 1 <= k <= len(candidates):
        raise ValueError(f"cannot draw {k} random heads from {len(candidates)}")
    idx = np.random.default_rng(seed).choice(len(candidates), size=k, replace=False)
    return sorted(tuple(candidates[i]) for i in idx)


def evaluate_rec(model: nn.Module, processor: Any, adapter: Adapter, samples: Iterable[Sample],
                 spec: HeadSpec, baselines: Sequence[str] = DEFAULT_BASELINES, seed: int = 0,
                 batch_size: int = 8, refiner: Any = None, progress: bool = True,
                 grid: str | int = "primary", style: str = "plain", max_new_tokens: int = 32,
                 chunk_size: int = 256, sigma: float = 1.0) -> RecResult:
    """Ground ``samples`` with the spec's heads and each of ``baselines``: a `RecScore` per
    method (``heads`` and ``random_heads`` record their heads, ``text`` its answers and parse
    failures; mask metrics over the samples that have a gold mask). ``refiner`` (e.g.
    a `SamRefiner`) and ``grid`` go to `locate`; ``style`` and ``max_new_tokens`` concern the
    text baseline only.

    Samples are read and scored ``chunk_size`` at a time, every method on a chunk before the
    next, so an iterator (e.g. `RefCoco.iter_samples`) never holds more than a chunk of images,
    masks and maps. A sequence is checked whole before any forward.
    """
    if isinstance(samples, Sequence):
        check_rec_samples(samples)
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"baselines must be among {BASELINES}, got {unknown}")
    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size and chunk_size must be >= 1, got {batch_size}, "
                         f"{chunk_size}")
    if not 0 <= sigma < float("inf"):
        raise ValueError(f"sigma must be finite and >= 0, got {sigma}")
    methods = ["heads", *dict.fromkeys(baselines)]
    candidates = allowed_heads(spec, adapter.num_layers, adapter.num_heads)
    specs = {"heads": spec,
             "all_heads": dataclasses.replace(spec, heads=candidates),
             "random_heads": dataclasses.replace(
                 spec, heads=random_heads(candidates, len(spec.heads), seed))}
    tallies = {name: _Predictions(specs[name].heads if name in specs and name != "all_heads"
                                  else None) for name in methods}
    ids: list[str] = []
    was_training = model.training
    model.eval()
    total = len(samples) if isinstance(samples, Sequence) else None
    bar = tqdm(total=total, desc="eval rec", unit="sample", disable=not progress, leave=False)
    try:
        for chunk in chunks(samples, chunk_size):
            heads_found: list[Any] = []
            check_rec_samples(chunk)
            if any(s.id in tallies["heads"].boxes for s in chunk):
                raise ValueError("sample ids must be unique")
            ids += [s.id for s in chunk]
            for name in methods:
                if name in ATTENTION_METHODS or name == "ceiling":
                    if name == "ceiling":  # on the heads' grids ("heads" comes first)
                        found = [ceiling(s, g.geometry, sigma)
                                 for s, g in zip(chunk, heads_found, strict=True)]
                    else:
                        found = _locate(model, processor, adapter, chunk, specs[name],
                                        batch_size, refiner, grid, sigma)
                    if name == "heads":
                        heads_found = found
                    tallies[name].add(chunk, [g.box for g in found],
                                      [g.image_mask() for g in found],
                                      [peak_point(g) for g in found])
                elif name == "centre":
                    boxes = [centre_box(s.image.size) for s in chunk]
                    tallies[name].add(chunk, boxes, [box_mask(b, s.image.size)
                                                     for b, s in zip(boxes, chunk, strict=True)])
                else:
                    _add_text(tallies[name], model, processor, adapter, chunk, batch_size,
                              max_new_tokens, style)
            bar.update(len(chunk))
    finally:
        bar.close()
        model.train(was_training)
    if not ids:
        raise ValueError("samples must not be empty")
    settings = {"baselines": list(baselines), "seed": seed, "batch_size": batch_size,
                "grid": grid, "refiner": None if refiner is None else type(refiner).__name__,
                "skip_layers": sorted(spec.settings.get("skip_layers", DEFAULT_SKIP_LAYERS)),
                "text_style": style, "max_new_tokens": max_new_tokens, "sigma": sigma,
                "iou_threshold": IOU_THRESHOLD, "spec_model": spec.model,
                "centre": "centred box of half the image's width and height (no label used)",
                "box_only_masks": "the filled predicted box (centre, text)",
                **({"ceiling": "the grounding rule on the referred object's own cell coverage"}
                   if "ceiling" in methods else {})}
    return RecResult(len(ids), ids, settings,
                     {name: tallies[name].summary() for name in methods})


def _locate(model: nn.Module, processor: Any, adapter: Adapter, samples: list[Sample],
            spec: HeadSpec, batch_size: int, refiner: Any, grid: str | int,
            sigma: float) -> list[Any]:
    from lookhere.heads.locate import locate

    return locate(model, processor, adapter, spec, samples, batch_size=batch_size, grid=grid,
                  refiner=refiner, sigma=sigma)


def ceiling(sample: Sample, geometry: Any, sigma: float = 1.0) -> Any:
    """The `Grounding` the heads' rule makes of the best possible map: the referred object's
    own cell coverage (its gold box, and its mask where it has one) on ``geometry``'s grid."""
    from lookhere.heads.grounding import ground
    from lookhere.targets import cell_coverage

    gold = Geometry(boxes=[sample.geometry.boxes[0]], mask=sample.geometry.mask)
    return ground(cell_coverage(geometry, gold), geometry, sigma=sigma)


def _add_text(tally: _Predictions, model: nn.Module, processor: Any, adapter: Adapter,
              samples: list[Sample], batch_size: int, max_new_tokens: int, style: str) -> None:
    from lookhere.eval.runner import generate_answers
    from lookhere.eval.scoring import score_answer

    answers = generate_answers(model, processor, adapter, samples, batch_size=batch_size,
                               max_new_tokens=max_new_tokens, progress=False)
    boxes: list[Box | None] = []
    for s in samples:
        outcome = score_answer(s, answers[s.id], style)
        boxes.append(None if outcome.parsed is None else tuple(outcome.parsed["box"]))
    tally.add(samples, boxes, [box_mask(b, s.image.size) for b, s in zip(boxes, samples,
                                                                         strict=True)])
    tally.answers.update(answers)


@dataclass
class _Predictions:
    """One method's predictions so far: boxes, and per sample the pointing game's ``hit`` and,
    with a gold mask, the masks' ``inter`` and ``union`` counts (the masks themselves are
    dropped after each chunk)."""

    heads: list[tuple[int, int]] | None = None
    boxes: dict[str, Box | None] = field(default_factory=dict)
    golds: list[Box] = field(default_factory=list)
    scores: Tally = field(default_factory=Tally)
    answers: dict[str, str] = field(default_factory=dict)  # the text method's

    def add(self, samples: list[Sample], boxes: Sequence[Box | None],
            masks: Sequence[np.ndarray],
            points: Sequence[tuple[float, float] | None] | None = None) -> None:
        points = points or [None if b is None else ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
                            for b in boxes]
        for s, b, m, p in zip(samples, boxes, masks, points, strict=True):
            self.boxes[s.id] = None if b is None else tuple(float(v) for v in b)
            self.golds.append(tuple(float(v) for v in s.geometry.boxes[0]))
            self.scores.add(hit=point_in_region(p, self.golds[-1]))
            if s.geometry.mask is not None:
                inter, union = mask_counts(m, s.geometry.mask)
                self.scores.add(inter=inter, union=union)

    def summary(self) -> RecScore:
        boxes = list(self.boxes.values())
        inter, union = self.scores["inter"], self.scores["union"]
        masks = ious_from_counts(inter, union) if inter else {}
        failures = sum(b is None for b in boxes) if self.answers else None
        return RecScore(
            n=len(boxes), acc_at_iou=acc_at_iou(boxes, self.golds, IOU_THRESHOLD),
            mean_iou=mean_box_iou(boxes, self.golds), pointing=self.scores.mean("hit"),
            ious={i: 0.0 if b is None else box_iou(b, g)
                  for (i, b), g in zip(self.boxes.items(), self.golds, strict=True)},
            boxes={i: None if b is None else list(b) for i, b in self.boxes.items()},
            ciou=masks.get("cIoU"), miou=masks.get("mIoU"),
            n_masks=len(inter) if inter else None,
            heads=None if self.heads is None else [list(h) for h in self.heads],
            parse_failures=failures,
            parse_failure_rate=None if failures is None else failures / len(boxes),
            answers=self.answers or None)


def peak_point(grounding: Any) -> tuple[float, float]:
    """Image-pixel centre of the grid cell where a grounding's summed smoothed map peaks (the
    first such cell, row-major; clipped to the image)."""
    r, c = np.unravel_index(int(np.argmax(grounding.heatmap)), grounding.heatmap.shape)
    x0, y0, x1, y1 = grounding.geometry.cell_boxes()[r, c]
    return float((x0 + x1) / 2), float((y0 + y1) / 2)


def mask_counts(pred: np.ndarray, gold: np.ndarray) -> tuple[int, int]:
    """(intersection, union) pixel counts of two (H, W) masks of the same shape."""
    p, g = np.asarray(pred, dtype=bool), np.asarray(gold, dtype=bool)
    if p.shape != g.shape:
        raise ValueError(f"mask shapes differ: predicted {p.shape}, gold {g.shape}")
    return int((p & g).sum()), int((p | g).sum())


def ious_from_counts(inter: Sequence[int], union: Sequence[int]) -> dict[str, float]:
    """``{"cIoU", "mIoU"}`` from per-sample counts, as `lookhere.eval.metrics.mask_ious` gives
    them from the masks (a sample with an empty union has IoU 1)."""
    total = sum(union)
    ious = [i / u if u else 1.0 for i, u in zip(inter, union, strict=True)]
    return {"cIoU": sum(inter) / total if total else 1.0,
            "mIoU": float(np.mean(ious)) if ious else 0.0}
