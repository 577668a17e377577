"""Logit-lens segmentation of tiny VLMs trained with NTP and with NTP + LLL (issue 6's experiment).

For each condition a fresh tiny VLM (same seed, so the same initial weights) is trained from
scratch on the same Shapes VQA batches for the same steps:

- ``ntp``: next-token prediction only; the Logit Lens Loss is computed and logged (weight 0,
  monitored) but not trained on;
- ``lll``: NTP + mu * LLL at the same layer (methods.md section 2; the concept of a training
  sample is the word its question's objects share, `lookhere.collate.sample_concept`).

KLAL is off in both. Then on held-out Shapes images (a different data seed; never used for any
choice), for every concept word in each image (every shape word and every colour word of its
objects) and every reported layer, the lens heatmap ``p(word | h_s)`` on the image's first grid
is segmented (`lookhere.maps.segment`) and scored against the *union* mask of the
objects carrying that word:

- mIoU / cIoU of the pixel masks (`lookhere.eval.rec.ious_from_counts`, which equals
  `lookhere.eval.metrics.mask_ious`), per concept type (shape words, colour words, both);
- the pointing game: the peak cell's centre lies in that union mask (``pointing``); the peak
  cell overlaps it (``pointing_cell``: the patch holds part of the object, which matters for
  objects of one or two cells); and, as a control, the peak cell's centre lies in any object's
  mask (``pointing_object``: a map that finds objects but not the word's ones scores here and
  not above);
- ``p_in`` / ``p_out``: the mean lens probability inside / outside the region (cell weights =
  the fraction of the cell the region covers), to show how strong the maps are.

VQA accuracy on held-out questions (greedy) checks that LLL does not hurt the answers. A few
maps per condition are kept for the figure (image | NTP lens map | NTP+LLL lens map).

The ``ntp`` model can come from elsewhere (`run`'s ``trained``, as `Trained`): another experiment
whose NTP run has the same training settings (its `TrainSpec`) trains the very same model, since its
monitored auxiliary term (weight 0) changes no number. `make demo` reuses the heads part's.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lookhere.data.concepts import concept_ids, sample_concepts
from lookhere.data.dataset import SampleList
from lookhere.data.sample import Geometry, Sample
from lookhere.data.synthetic.shapes import object_mask
from lookhere.eval.rec import ious_from_counts, mask_counts
from lookhere.experiment.config import LENS_CONDITIONS as CONDITIONS  # noqa: F401
from lookhere.experiment.config import LENS_TRAIN as TRAIN  # noqa: F401
from lookhere.experiment.config import LensExperimentConfig
from lookhere.experiment.heads import TEST_SEED_OFFSET, VQAScore, vqa_accuracy
from lookhere.experiment.training import (
    ShapesExperiment,
    TrainRecord,
    TrainSpec,
    fit,
    training_args,
)
from lookhere.lens import lens_maps
from lookhere.losses.config import KLALConfig
from lookhere.maps import parse_threshold, peak_cell, pointing, segment
from lookhere.models.adapter import get_adapter
from lookhere.record import FlatRecord
from lookhere.targets import cell_coverage

KINDS = ("shape", "colour")  # concept types: the object attribute that gives the word
LABELS = {"ntp": "NTP", "lll": "NTP+LLL"}
# --------------------------------------------------------------------------- data


def train_split(config: LensExperimentConfig) -> SampleList:
    return SampleList(config.shapes_samples("vqa", config.train.data_seed,
                                            config.train.samples))


def held_out_splits(config: LensExperimentConfig) -> tuple[list[Sample], list[Sample]]:
    """(held-out VQA questions, held-out lens images), both from seed data_seed + 10000: the
    same scene stream, so the first images of the two coincide (both are held out)."""
    seed = config.train.data_seed + TEST_SEED_OFFSET
    return (config.shapes_samples("vqa", seed, config.vqa_samples),
            config.shapes_samples("vqa", seed, config.test_samples))


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class Trained:
    """A model trained elsewhere, given to `run` for the ``ntp`` condition.

    ``config`` is the Shapes experiment's config it was trained under (e.g. a
    `HeadsExperimentConfig`: its 'ntp' model is NTP with KLAL only monitored), which `run`
    checks against its own with
    `ntp_mismatches`; the caller vouches that the model was trained with NTP alone (auxiliary
    terms at weight 0). ``record`` is its training record (``steps``, ``seconds``, ``log``);
    ``source`` names where it comes from, for the results."""

    model: torch.nn.Module
    processor: Any
    record: TrainRecord
    config: ShapesExperiment
    source: str = ""


def ntp_mismatches(config: LensExperimentConfig, other: ShapesExperiment) -> list[str]:
    """The training settings in which ``other`` (another Shapes experiment's config) differs
    from ``config``, as ``"name: other's != config's"``; empty when NTP under ``other`` trains
    the same model on the same batches as this experiment's 'ntp' condition: the same
    `TrainSpec` (initial weights, batches and their order, optimiser and schedule) and Shapes
    VQA settings."""
    if not isinstance(other, ShapesExperiment):
        raise TypeError(f"trained config must be a Shapes experiment's config (heads or lens), "
                        f"got {type(other).__name__}")
    out = [f"{f.name}: {getattr(other.train, f.name)!r} != {getattr(config.train, f.name)!r}"
           for f in dataclasses.fields(TrainSpec)
           if getattr(other.train, f.name) != getattr(config.train, f.name)]
    theirs = other.shapes("vqa")
    if theirs != config.shapes("vqa"):
        out.append(f"Shapes VQA settings: {theirs!r} != {config.shapes('vqa')!r}")
    return out


def _check_trained(config: LensExperimentConfig, trained: dict[str, Trained]) -> None:
    for condition, given in trained.items():
        if condition not in config.conditions:
            raise ValueError(f"trained names condition {condition!r}, which is not in "
                             f"config.conditions {config.conditions}")
        if condition != "ntp":
            raise ValueError(f"trained can give only the 'ntp' model, got {condition!r}")
        bad = ntp_mismatches(config, given.config)
        if bad:
            raise ValueError(f"trained['ntp'] was trained under other settings than config: "
                             f"{'; '.join(bad)}")


def train_one(config: LensExperimentConfig, condition: str, train: SampleList, out_dir: Path,
              progress: bool = True) -> tuple[torch.nn.Module, Any, TrainRecord]:
    """The spec's model (fresh, or the ``init`` checkpoint) trained under one condition:
    (model, processor, training record).

    `lookhere.experiment.klal.train_one`'s recipe with the condition's `LLLConfig` given to both
    the collator and the trainer (KLAL off: weight 0, not monitored)."""
    from lookhere.collate import GroundingCollator
    from lookhere.train.trainer import GroundingTrainer

    model, processor = config.train.build_model()
    adapter = get_adapter(model)
    lll = config.lll_config(condition)
    trainer = GroundingTrainer(
        model=model, args=training_args(config.train, out_dir, progress), train_dataset=train,
        data_collator=GroundingCollator(processor, adapter, targets=False, lll=lll),
        klal=KLALConfig(weight=0.0), lll=lll,
    )
    record = fit(trainer, config.train.steps, progress)
    return trainer.model, processor, dataclasses.replace(record, lll=dataclasses.asdict(lll))


# --------------------------------------------------------------------------- evaluation


def concept_regions(sample: Sample) -> list[tuple[str, str, np.ndarray]]:
    """``(kind, word, union mask (H, W))`` for every shape word and colour word of the image's
    objects: the mask of all the objects carrying that word (the lens of a second circle
    rightly says "circle" too); the regions that LLL's ``scope="image"`` trains."""
    return [(kind, word, geometry.mask) for kind in KINDS
            for word, geometry in sample_concepts(sample, (kind,), scope="image")]


@dataclass(frozen=True)
class PairScore:
    """The lens map of one word on one image against the word's region (`lens_scores`)."""

    inter: int  # pixels of the segmentation inside the region
    union: int  # pixels in the segmentation or the region
    hit: bool  # the peak cell's centre lies in the region (pointing game)
    hit_cell: bool  # the peak cell overlaps the region
    hit_object: bool  # the peak cell's centre lies in any object
    p_in: float  # mean lens probability inside the region (cells weighted by coverage)
    p_out: float  # ... and outside it


@dataclass(frozen=True)
class LensScore:
    """One (layer, concept type): means over its (image, word) pairs. The field names are the
    results file's keys; each ``help`` is the label tables use (experiments/summarise_lens.py)."""

    mIoU: float = field(metadata={"help": "mIoU"})
    cIoU: float = field(metadata={"help": "cIoU"})
    pointing: float = field(metadata={"help": "pointing"})
    pointing_cell: float = field(metadata={"help": "peak cell touches the region"})
    pointing_object: float = field(metadata={"help": "peak on an object"})
    p_in: float = field(metadata={"help": "mean p inside"})
    p_out: float = field(metadata={"help": "mean p outside"})
    n: int = field(default=0, metadata={"help": "(image, word) pairs"})

    @classmethod
    def of(cls, pairs: Sequence[PairScore]) -> LensScore:
        if not pairs:
            raise ValueError("a LensScore needs at least one (image, word) pair")
        ious = ious_from_counts([p.inter for p in pairs], [p.union for p in pairs])
        mean = lambda name: float(np.mean([getattr(p, name) for p in pairs]))  # noqa: E731
        return cls(mIoU=ious["mIoU"], cIoU=ious["cIoU"], pointing=mean("hit"),
                   pointing_cell=mean("hit_cell"), pointing_object=mean("hit_object"),
                   p_in=mean("p_in"), p_out=mean("p_out"), n=len(pairs))


#: layer -> concept type ("shape", "colour", or "all" of both) -> score (None: no pair)
LayerScores = dict[int, dict[str, LensScore | None]]


def _summary(pairs: Mapping[tuple[int, str], list[PairScore]], layers: Sequence[int]
             ) -> LayerScores:
    """Per reported layer, per concept type and over both ("all"): the `LensScore`."""
    out: LayerScores = {}
    for layer in layers:
        per = {k: pairs.get((layer, k), []) for k in KINDS}
        per["all"] = [p for k in KINDS for p in per[k]]
        out[layer] = {k: LensScore.of(v) if v else None for k, v in per.items()}
    return out


@dataclass(frozen=True)
class LensMaps:
    """One figure image's lens maps of its `example_concept`."""

    extent: list[float]  # the grid's xyxy pixel extent
    maps: dict[int, list]  # layer -> (rows, cols) lens probabilities

    def to_json(self) -> dict[str, Any]:
        return {"extent": self.extent, "maps": {str(k): m for k, m in self.maps.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LensMaps:
        return cls(list(data["extent"]), {int(k): m for k, m in data["maps"].items()})


@dataclass(frozen=True)
class LensItem(FlatRecord):
    """A figure image: its id, the concept shown and the boxes of the objects carrying it."""

    id: str
    kind: str
    concept: str
    boxes: list[list[float]]


@dataclass(frozen=True)
class ReferenceScore(FlatRecord):
    """What the metrics give without a model (`reference_scores`)."""

    region_share: float  # the image share the word's region covers
    object_share: float  # the image share any object covers
    n: int  # (image, word) pairs


@dataclass(frozen=True)
class ConceptTable(FlatRecord):
    """The vocabulary, each word's token ids, and the words that share an id."""

    words: dict[str, list[str]]  # concept type -> words
    ids: dict[str, list[int]]  # word -> token ids (the token rule's)
    rule: str
    shared_ids: list[list[str]]  # groups of words with a token in common


@dataclass(frozen=True)
class LensCondition:
    """One model: its training, VQA accuracy, and the lens scores per layer and type."""

    train: TrainRecord
    vqa: VQAScore
    lens: LayerScores
    seconds: float

    def to_json(self) -> dict[str, Any]:
        lens = {str(layer): {k: dataclasses.asdict(s) if s else {"n": 0} for k, s in per.items()}
                for layer, per in self.lens.items()}
        return {"train": self.train.to_json(), "vqa": self.vqa.to_json(), "lens": lens,
                "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LensCondition:
        lens = {int(layer): {k: LensScore(**s) if s.get("n") else None for k, s in per.items()}
                for layer, per in data["lens"].items()}
        return cls(TrainRecord.from_json(data["train"]), VQAScore.from_json(data["vqa"]), lens,
                   data["seconds"])


@dataclass(frozen=True)
class LensResult:
    """`run`'s result. JSON: ``{"config", "layers", "conditions": {c: ...}, "reference": {type:
    ...}, "examples": {"items": [...], "maps": {c: [...]}}, "concepts"}``."""

    config: LensExperimentConfig
    layers: list[int]  # the reported layers, non-negative
    conditions: dict[str, LensCondition]
    reference: dict[str, ReferenceScore]  # concept type (and "all") -> no-model scores
    items: list[LensItem]  # the figure's images
    maps: dict[str, list[LensMaps]]  # condition -> per figure image
    concepts: ConceptTable | None = None  # from the first model's tokenizer

    def to_json(self) -> dict[str, Any]:
        out = {"config": self.config.to_json(), "layers": list(self.layers),
               "conditions": {c: e.to_json() for c, e in self.conditions.items()},
               "reference": {k: r.to_json() for k, r in self.reference.items()},
               "examples": {"items": [i.to_json() for i in self.items],
                            "maps": {c: [m.to_json() for m in ms] for c, ms in self.maps.items()}}}
        return out if self.concepts is None else out | {"concepts": self.concepts.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LensResult:
        ex = data["examples"]
        return cls(LensExperimentConfig.from_json(data["config"]), list(data["layers"]),
                   {c: LensCondition.from_json(e) for c, e in data["conditions"].items()},
                   {k: ReferenceScore.from_json(r) for k, r in data["reference"].items()},
                   [LensItem.from_json(i) for i in ex["items"]],
                   {c: [LensMaps.from_json(m) for m in ms] for c, ms in ex["maps"].items()},
                   ConceptTable.from_json(data["concepts"]) if "concepts" in data else None)


def lens_scores(config: LensExperimentConfig, model: torch.nn.Module, processor: Any,
                samples: Sequence[Sample]) -> tuple[LayerScores, list[LensMaps]]:
    """(scores per reported layer and concept type, the lens maps of `example_concept` on each
    of the first ``n_maps`` images)."""
    vocab = config.vocabulary()
    words = [w for kind in KINDS for w in vocab[kind]]
    layers = config.layers()
    result = lens_maps(model, processor, get_adapter(model), [s.image for s in samples], words,
                       layers, rule=config.lll.token_rule, batch_size=config.eval_batch_size)
    pairs: dict[tuple[int, str], list[PairScore]] = defaultdict(list)
    thr = parse_threshold(config.threshold)
    for i, s in enumerate(samples):
        geo = result.geometries[i][0]
        objects = np.logical_or.reduce([object_mask(o, s.image.size) for o in s.meta["objects"]])
        for kind, word, gold in concept_regions(s):
            cov = cell_coverage(geo, Geometry(mask=gold))  # (rows, cols) in [0, 1]
            for layer in layers:
                heat = result.map(i, layer, word).numpy()  # (rows, cols)
                seg = segment(heat, geo, thr, config.smooth_sigma, config.largest_component)
                inter, union = mask_counts(seg.pixel_mask, gold)
                peak = peak_cell(heat, geo, config.smooth_sigma)
                pairs[layer, kind].append(PairScore(
                    inter=int(inter), union=int(union),
                    hit=bool(pointing(heat, geo, gold, config.smooth_sigma)),
                    hit_cell=bool(cov[peak] > 0),
                    hit_object=bool(pointing(heat, geo, objects, config.smooth_sigma)),
                    p_in=_weighted_mean(heat, cov), p_out=_weighted_mean(heat, 1 - cov)))
    examples = []
    for i, s in enumerate(samples[: config.n_maps]):
        _, word, _ = example_concept(s, i)
        geo = result.geometries[i][0]
        extent = geo.grid_box_to_image((0, 0, geo.cols, geo.rows), clip=False)
        examples.append(LensMaps([float(v) for v in extent],
                                 {layer: result.map(i, layer, word).tolist()
                                  for layer in layers}))
    return _summary(pairs, layers), examples


def _weighted_mean(heat: np.ndarray, weight: np.ndarray) -> float:
    total = float(weight.sum())
    return float((heat * weight).sum() / total) if total > 0 else 0.0


def example_concept(sample: Sample, index: int) -> tuple[str, str, np.ndarray]:
    """The concept shown for the ``index``-th figure image: the first object's shape word on
    even rows, its colour word on odd rows (kind, word, union mask)."""
    kind = KINDS[index % len(KINDS)]
    word = sample.meta["objects"][0][kind]
    return next(r for r in concept_regions(sample) if r[:2] == (kind, word))


def reference_scores(samples: Sequence[Sample]) -> dict[str, ReferenceScore]:
    """What the metrics give without a model, per concept type, as means over (image, word):
    ``region_share``, the share of the image that the word's region covers (both the mIoU of a
    whole-image mask and the pointing game of a peak at a uniformly random pixel), and
    ``object_share``, the share covered by any object (``pointing_object`` of a random peak)."""
    rows: dict[str, dict[str, list[float]]] = {k: {"region_share": [], "object_share": []}
                                               for k in (*KINDS, "all")}
    for s in samples:
        objects = np.logical_or.reduce([object_mask(o, s.image.size) for o in s.meta["objects"]])
        for kind, _, gold in concept_regions(s):
            for k in (kind, "all"):
                rows[k]["region_share"].append(float(gold.mean()))
                rows[k]["object_share"].append(float(objects.mean()))
    return {k: ReferenceScore(**{name: float(np.mean(v)) if v else 0.0
                                 for name, v in row.items()}, n=len(row["region_share"]))
            for k, row in rows.items()}


# --------------------------------------------------------------------------- the run


def run(config: LensExperimentConfig, out_dir: str | Path, progress: bool = True,
        on_result: Callable[[str, LensCondition], None] | None = None,
        trained: Mapping[str, Trained] | None = None) -> LensResult:
    """Every condition: training, VQA accuracy, lens segmentation and pointing.

    ``trained={"ntp": Trained(...)}`` uses that model instead of training one (ValueError when
    its config differs in a training setting, see `ntp_mismatches`); its entry's ``train`` is
    the given record with ``reused_from`` (the source) and the LLL config (weight 0, not
    monitored: its log has no ``lll_loss``)."""
    out_dir = Path(out_dir)
    trained = dict(trained or {})
    _check_trained(config, trained)
    train = train_split(config) if set(config.conditions) - set(trained) else None
    vqa_test, lens_test = held_out_splits(config)
    result = LensResult(config, list(config.layers()), {}, reference_scores(lens_test),
                        [_example_item(s, i) for i, s in enumerate(lens_test[: config.n_maps])],
                        {})
    for condition in config.conditions:
        start = time.perf_counter()
        model, processor, record = _prepare(config, condition, train, trained, out_dir,
                                            progress)
        model.eval()
        if result.concepts is None:
            result = dataclasses.replace(result,
                                         concepts=concept_table(config, processor.tokenizer))
        if config.save_models and condition not in trained:
            from lookhere.models.tiny import save_tiny

            save_tiny(model, processor, out_dir / "models" / condition)
        vqa = vqa_accuracy(model, processor, vqa_test, config, progress)
        scores, result.maps[condition] = lens_scores(config, model, processor, lens_test)
        entry = LensCondition(record, vqa, scores, time.perf_counter() - start)
        result.conditions[condition] = entry
        if on_result is not None:
            on_result(condition, entry)
        if progress:
            print(f"[lens] {condition}: {summary_line(condition, entry)}", flush=True)
    return result


def _prepare(config: LensExperimentConfig, condition: str, train: SampleList | None,
             trained: dict[str, Trained], out_dir: Path, progress: bool
             ) -> tuple[torch.nn.Module, Any, TrainRecord]:
    """The condition's model: the given one, or trained here."""
    if condition in trained:
        given = trained[condition]
        if progress:
            print(f"[lens] {condition}: reusing the model from {given.source or 'the caller'}",
                  flush=True)
        lll = dataclasses.replace(config.lll_config(condition), monitor=False)
        return given.model, given.processor, dataclasses.replace(
            given.record, lll=dataclasses.asdict(lll), reused_from=given.source)
    if progress:
        print(f"[lens] {condition}: training ({config.train.steps} steps)", flush=True)
    return train_one(config, condition, train, out_dir / "runs" / condition, progress)


def concept_table(config: LensExperimentConfig, tokenizer: Any) -> ConceptTable:
    """The vocabulary with each word's token ids, and the words that share an id (their maps
    then overlap or coincide: the lens cannot tell them apart)."""
    vocab = config.vocabulary()
    ids = {w: concept_ids(tokenizer, w, config.lll.token_rule)
           for kind in KINDS for w in vocab[kind]}
    owners: dict[int, list[str]] = {}
    for w, group in ids.items():
        for t in group:
            owners.setdefault(t, []).append(w)
    shared = sorted({tuple(ws) for ws in owners.values() if len(ws) > 1})
    return ConceptTable({k: list(v) for k, v in vocab.items()}, ids, config.lll.token_rule,
                        [list(ws) for ws in shared])


def _example_item(sample: Sample, index: int) -> LensItem:
    kind, word, _ = example_concept(sample, index)
    boxes = [list(map(float, o["box"])) for o in sample.meta["objects"] if o[kind] == word]
    return LensItem(sample.id, kind, word, boxes)


def summary_line(condition: str, entry: LensCondition) -> str:
    parts = []
    for layer, per in entry.lens.items():
        cells = ", ".join(f"{k} {100 * per[k].mIoU:.1f}/{100 * per[k].pointing:.1f}"
                          for k in (*KINDS, "all") if per[k])
        parts.append(f"L{layer}: {cells}")
    return (f"VQA {100 * entry.vqa.accuracy:.1f}%; lens mIoU/pointing "
            f"{'; '.join(parts)}")
