"""Scoring answers: parse a model's text per task, judge it against the sample, aggregate per task.

What counts as correct, per task (``sample.task``):

- ``grid_patch``: the parsed (row, column) equals the gold cell (``parse_grid_cell``).
- ``line_intersection``: the first yes/no equals the gold ``intersect``.
- ``line_tracing``: the first number equals the gold end number.
- ``shapes``, REC mode (``"box"`` in structured), and ``refcoco`` / ``refcoco+`` / ``refcocog``:
  the first box (``parse_box`` in ``style``) has IoU >= 0.5 with the one gold box
  (``geometry.boxes[0]``); its IoU is kept for the mean IoU.
- ``shapes``, VQA mode: the first word of the question type's vocabulary (colours, shapes, sizes)
  equals the gold word; counts take the first number, in digits or words.
- ``custom`` (a user's data, `lookhere.data.jsonl`), by ``structured["kind"]``: ``box`` as
  REC, ``points`` as PixMo-Points' point mode, ``text`` the answer text (case, surrounding
  space and a final full stop ignored).
- ``pixmo_points``, point mode: the predicted points match the gold objects one to one, a point
  matching an object when it lies in its region (`point_in_region` on its box, and its mask if
  there is one); gold given only as points (PixMo-Points) counts a point within `POINT_RADIUS` of
  the gold point. Count mode: the first number equals the count.

Parsers never raise on model text: no answer found is a parse failure, which is also wrong. An
answer counts only where a person would read it (`lookhere.data.formats.reads_as_answer`): at the
start of the reply or after a few plain words, standing alone, in legible text; a box, number or
word inside token soup is a parse failure.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lookhere.data.formats import (
    STYLES,
    parse_box,
    parse_count,
    parse_grid_cell,
    parse_number,
    parse_points,
    parse_word,
    parse_yes_no,
)
from lookhere.data.sample import Box, Point, Sample
from lookhere.data.synthetic.shapes import PALETTE, SHAPES
from lookhere.eval.metrics import bootstrap_ci, box_iou
from lookhere.io import atomic_path
from lookhere.maps import point_in_region

IOU_THRESHOLD = 0.5  # Acc@0.5, the usual REC accuracy
POINT_RADIUS = 0.05  # a point within this fraction of the image's longer side hits a gold point
MISSING = ("error", "wrong")
REC_TASKS = ("refcoco", "refcoco+", "refcocog")
SHAPES_VOCAB: dict[str, tuple[str, ...]] = {
    "colour": tuple(PALETTE), "shape": SHAPES, "size": ("small", "medium", "large")}
#: the answer vocabulary of each word-answer skill of Scenes
SCENES_WORDS: dict[str, tuple[str, ...]] = {
    **SHAPES_VOCAB, "follow": (*PALETTE, *SHAPES), "position": ("left", "right", "top", "bottom"),
    "read": tuple("ABCDEFGH12345678")}


@dataclass(frozen=True)
class Outcome:
    """One scored answer. ``iou`` is a float for box answers (0 when none parsed), else None."""

    parsed: dict[str, Any] | None  # the answer as structured data, None when nothing parsed
    correct: bool
    parse_failed: bool
    iou: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"parsed": self.parsed, "correct": self.correct,
                "parse_failed": self.parse_failed, "iou": self.iou}


@dataclass(frozen=True)
class TaskScore:
    """One task's aggregate: ``accuracy`` with its ``ci95`` ((low, high), percentile bootstrap,
    seed 0), ``parse_failure_rate`` (missing answers count as failures), ``missing`` (samples
    without an answer), and for box answers ``mean_iou`` (over the task's box samples, failures
    as 0; None for other tasks)."""

    n: int
    accuracy: float
    ci95: tuple[float, float]
    parse_failure_rate: float
    missing: int = 0
    mean_iou: float | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"n": self.n, "accuracy": self.accuracy, "ci95": list(self.ci95),
               "parse_failure_rate": self.parse_failure_rate, "missing": self.missing}
        return out if self.mean_iou is None else out | {"mean_iou": self.mean_iou}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskScore:
        return cls(int(data["n"]), float(data["accuracy"]), tuple(data["ci95"]),
                   float(data["parse_failure_rate"]), int(data.get("missing", 0)),
                   data.get("mean_iou"))


@dataclass(frozen=True)
class TaskScores:
    """Per-task aggregates (`TaskScore`, by task name) and the per-sample outcomes of one
    evaluation."""

    tasks: dict[str, TaskScore]
    outcomes: dict[str, Outcome] = field(repr=False)  # sample id -> outcome, in sample order
    style: str = "plain"

    def to_json(self, per_sample: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"style": self.style,
                               "tasks": {k: t.to_json() for k, t in self.tasks.items()}}
        if per_sample:
            out["samples"] = {i: o.to_json() for i, o in self.outcomes.items()}
        return out


# ---------------------------------------------------------------------------------------------
# One answer


def score_answer(sample: Sample, text: str, style: str = "plain") -> Outcome:
    """Parse ``text`` as an answer to ``sample`` and judge it (boxes and points in ``style``)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    _check_style(style)
    return _scorer(sample.task)(sample, text, style)


def _grid_patch(sample: Sample, text: str, style: str) -> Outcome:
    cell = parse_grid_cell(text)
    if cell is None:
        return _failed()
    parsed = {"row": cell[0], "col": cell[1]}
    gold = sample.structured
    return _judged(parsed, parsed == {"row": int(gold["row"]), "col": int(gold["col"])})


def _line_intersection(sample: Sample, text: str, style: str) -> Outcome:
    yes = parse_yes_no(text)
    if yes is None:
        return _failed()
    return _judged({"intersect": yes}, yes == bool(sample.structured["intersect"]))


def _line_tracing(sample: Sample, text: str, style: str) -> Outcome:
    end = parse_number(text)
    if end is None:
        return _failed()
    return _judged({"end": str(end)}, end == int(sample.structured["end"]))


def _shapes(sample: Sample, text: str, style: str) -> Outcome:
    if "box" in sample.structured:  # REC mode
        return _box_answer(sample, text, style)
    kind, gold = sample.structured.get("type"), sample.structured.get("answer")
    if kind == "count":
        return _count_answer(text, int(gold))
    if kind not in SHAPES_VOCAB:
        raise ValueError(f"sample {sample.id!r}: shapes structured needs 'box' (REC) or a VQA "
                         f"'type' in {[*SHAPES_VOCAB, 'count']}, got {sample.structured!r}")
    word = parse_word(text, list(SHAPES_VOCAB[kind]))
    if word is None:
        return _failed()
    return _judged({"answer": word}, word == str(gold).lower())


def _rec(sample: Sample, text: str, style: str) -> Outcome:
    return _box_answer(sample, text, style)


def _scenes(sample: Sample, text: str, style: str) -> Outcome:
    """Scenes (the pretraining mix), by ``structured["skill"]``: boxes by IoU, a point inside
    the object's mask, counts, yes/no, and words (colour, shape, size, position, glyph)."""
    skill = sample.structured.get("skill")
    if skill in ("rec", "find_marker"):
        return _box_answer(sample, text, style)
    if skill == "point":
        points = parse_points(text, sample.image.size, style)
        if points is None:
            return _failed()
        ok = point_in_region(points[0], mask=sample.geometry.mask)
        return _judged({"points": [[float(x), float(y)] for x, y in points[:1]]}, ok)
    gold = str(sample.structured.get("answer", ""))
    if skill == "count":
        return _count_answer(text, int(gold))
    if skill == "relation":
        yes = parse_yes_no(text)
        return _failed() if yes is None else _judged({"answer": yes}, yes == (gold == "yes"))
    if skill not in SCENES_WORDS:
        raise ValueError(f"sample {sample.id!r}: unknown scenes skill {skill!r}")
    # a marker's glyph is a capital letter or a digit: "a" is an article, not the letter A
    word = parse_word(text, list(SCENES_WORDS[skill]), ignore_case=skill != "read")
    if word is None:
        return _failed()
    return _judged({"answer": word}, word.lower() == gold.lower())


def _pixmo_points(sample: Sample, text: str, style: str) -> Outcome:
    if "points" not in sample.structured:  # count mode
        return _count_answer(text, int(sample.structured["count"]))
    targets = _point_targets(sample)
    points = parse_points(text, sample.image.size, style)
    if not targets:  # nothing to point at: right when no point is given
        pts = points or []
        return _judged({"points": [list(p) for p in pts]}, not pts)
    if points is None:
        return _failed()
    hits = [[hit(p) for hit in targets] for p in points]
    ok = len(points) == len(targets) and perfect_matching(hits)
    return _judged({"points": [[float(x), float(y)] for x, y in points]}, ok)


def _custom(sample: Sample, text: str, style: str) -> Outcome:
    kind = sample.structured.get("kind", "text")
    if kind == "box":
        return _box_answer(sample, text, style)
    if kind == "points":
        return _pixmo_points(sample, text, style)
    got, gold = _plain_text(text), _plain_text(sample.answer)
    return _judged({"answer": got}, got == gold) if got else _failed()


def _plain_text(text: str) -> str:
    return " ".join(text.strip().removesuffix(".").lower().split())


_SCORERS: dict[str, Callable[[Sample, str, str], Outcome]] = {
    "custom": _custom, "grid_patch": _grid_patch, "line_intersection": _line_intersection,
    "line_tracing": _line_tracing, "shapes": _shapes, "pixmo_points": _pixmo_points,
    "scenes": _scenes,
    **{t: _rec for t in REC_TASKS},
}
SUPPORTED_TASKS = tuple(sorted(_SCORERS))


def _scorer(task: str) -> Callable[[Sample, str, str], Outcome]:
    if task not in _SCORERS:
        raise ValueError(f"unknown task {task!r}; supported tasks: {', '.join(SUPPORTED_TASKS)}")
    return _SCORERS[task]


def _is_box_task(sample: Sample) -> bool:
    return sample.task in REC_TASKS or (sample.task in ("shapes", "scenes")
                                        and "box" in sample.structured) \
        or (sample.task == "custom" and sample.structured.get("kind") == "box")


def _box_answer(sample: Sample, text: str, style: str) -> Outcome:
    gold = _gold_box(sample)
    box = parse_box(text, sample.image.size, style)
    if box is None:
        return Outcome(None, False, True, 0.0)
    iou = box_iou(box, gold)
    return Outcome({"box": [float(v) for v in box]}, iou >= IOU_THRESHOLD, False, iou)


def _gold_box(sample: Sample) -> Box:
    boxes = sample.geometry.boxes
    if len(boxes) != 1:
        raise ValueError(f"sample {sample.id!r}: a box answer needs exactly one gold box in "
                         f"geometry.boxes, got {len(boxes)}")
    return tuple(float(v) for v in boxes[0])


def _count_answer(text: str, gold: int) -> Outcome:
    count = parse_count(text)
    if count is None:
        return _failed()
    return _judged({"count": count}, count == gold)


def _point_targets(sample: Sample) -> list[Callable[[Point], bool]]:
    """One hit test per gold object: its box (within the mask if any), else a disc around its
    point, else the mask as one region."""
    g = sample.geometry
    mask = g.mask
    if g.boxes:
        return [lambda p, b=tuple(b): point_in_region(p, box=b)
                and (mask is None or point_in_region(p, mask=mask)) for b in g.boxes]
    if g.points:
        r = POINT_RADIUS * max(sample.image.size)
        return [lambda p, q=q: math.dist(p, q) <= r for q in g.points]
    if mask is not None and mask.any():
        return [lambda p: point_in_region(p, mask=mask)]
    return []


def perfect_matching(hits: list[list[bool]]) -> bool:
    """Whether each row can take a distinct column it hits (Kuhn's augmenting paths).

    ``hits[i][j]``: predicted point i lies in gold object j; all rows have the same length.
    """
    n_cols = len(hits[0]) if hits else 0
    owner = [-1] * n_cols  # column -> the row holding it

    def augment(i: int, seen: list[bool]) -> bool:
        for j in range(n_cols):
            if hits[i][j] and not seen[j]:
                seen[j] = True
                if owner[j] < 0 or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return all(augment(i, [False] * n_cols) for i in range(len(hits)))


def _failed(iou: float | None = None) -> Outcome:
    return Outcome(None, False, True, iou)


def _judged(parsed: dict[str, Any], correct: bool) -> Outcome:
    return Outcome(parsed, bool(correct), False, None)


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")


# ---------------------------------------------------------------------------------------------
# Many answers


def score_predictions(samples: Iterable[Sample], predictions: Mapping[str, str],
                      style: str = "plain", missing: str = "error") -> TaskScores:
    """Score ``predictions`` (sample id -> answer text) against ``samples``, per task.

    Every prediction id must be a sample's. A sample without a prediction is an error
    (``missing="error"``) or a wrong answer and a parse failure (``missing="wrong"``).
    """
    if missing not in MISSING:
        raise ValueError(f"missing must be one of {MISSING}, got {missing!r}")
    _check_style(style)
    samples = list(samples)
    _check_samples(samples)
    ids = {s.id for s in samples}
    unknown = [k for k in predictions if k not in ids]
    if unknown:
        raise ValueError(f"{len(unknown)} prediction id(s) match no sample, e.g. {unknown[:5]}")
    absent = [s.id for s in samples if s.id not in predictions]
    if absent and missing == "error":
        raise ValueError(f"{len(absent)} of {len(samples)} samples have no prediction, e.g. "
                         f"{absent[:5]} (missing='wrong' counts them as wrong)")
    outcomes: dict[str, Outcome] = {}
    for s in samples:
        if s.id in predictions:
            text = predictions[s.id]
            if not isinstance(text, str):
                raise TypeError(f"prediction for {s.id!r} must be a str, got {type(text).__name__}")
            outcomes[s.id] = score_answer(s, text, style)
        else:
            outcomes[s.id] = _failed(0.0 if _is_box_task(s) else None)
    return TaskScores(_aggregate(samples, outcomes, set(absent)), outcomes, style)


def _check_samples(samples: list[Sample]) -> None:
    if not samples:
        raise ValueError("samples is empty")
    bad = sorted({s.task for s in samples} - set(_SCORERS))
    if bad:
        raise ValueError(f"unknown task(s) {bad}; supported tasks: {', '.join(SUPPORTED_TASKS)}")
    dups = sorted(k for k, c in Counter(s.id for s in samples).items() if c > 1)
    if dups:
        raise ValueError(f"sample ids must be unique; repeated: {dups[:5]}")


def _aggregate(samples: list[Sample], outcomes: dict[str, Outcome], absent: set[str]
               ) -> dict[str, TaskScore]:
    by_task: dict[str, list[str]] = {}
    for s in samples:
        by_task.setdefault(s.task, []).append(s.id)
    out = {}
    for task, ids in sorted(by_task.items()):
        res = [outcomes[i] for i in ids]
        acc, lo, hi = bootstrap_ci([float(o.correct) for o in res], seed=0)
        ious = [o.iou for o in res if o.iou is not None]
        out[task] = TaskScore(len(res), acc, (lo, hi),
                              float(np.mean([o.parse_failed for o in res])),
                              sum(i in absent for i in ids),
                              float(np.mean(ious)) if ious else None)
    return out


# ---------------------------------------------------------------------------------------------
# Predictions files


def read_predictions(path: str | Path) -> dict[str, str]:
    """Sample id -> answer text from JSONL (``{"id", "answer"}`` or ``{"id", "prediction"}`` per
    line; other keys are ignored) or from one JSON object mapping id -> answer."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None  # JSONL with more than one line (or broken: the line reader says where)
    if whole is not None and not isinstance(whole, dict):
        raise ValueError(f"{path}: expected JSONL objects or one JSON object mapping id -> "
                         f"answer, got a {type(whole).__name__}")
    if isinstance(whole, dict) and _is_record(whole):  # JSONL of one line (or pretty-printed)
        key, answer = _check_record(whole, f"{path}:1")
        return {key: answer}
    if isinstance(whole, dict):
        bad = [k for k, v in whole.items() if not isinstance(v, str)]
        if bad:
            raise ValueError(f"{path}: answers must be strings; not so for id(s) {bad[:5]}")
        return dict(whole)
    out: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({err.msg})") from None
        key, answer = _check_record(rec, where)
        if key in out:
            raise ValueError(f"{where}: duplicate id {key!r}")
        out[key] = answer
    return out


def _is_record(obj: dict[str, Any]) -> bool:
    return "id" in obj and ("answer" in obj or "prediction" in obj)


def _check_record(rec: Any, where: str) -> tuple[str, str]:
    """(id, answer) of one JSONL record; errors say ``where``."""
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    keys = [k for k in ("answer", "prediction") if k in rec]
    if "id" not in rec or len(keys) != 1:
        raise ValueError(f"{where}: expected keys 'id' and one of 'answer' or 'prediction', "
                         f"got {sorted(rec)}")
    if not isinstance(rec["id"], str):
        raise ValueError(f"{where}: 'id' must be a string, got {type(rec['id']).__name__}")
    answer = rec[keys[0]]
    if not isinstance(answer, str):
        raise ValueError(f"{where}: {keys[0]!r} must be a string, got {type(answer).__name__}")
    return rec["id"], answer


def write_predictions(path: str | Path, predictions: Mapping[str, str]) -> Path:
    """JSONL, one ``{"id", "answer"}`` per line in mapping order, written atomically."""
    bad = [k for k, v in predictions.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"predictions must map str ids to str answers; not so for {bad[:5]}")
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for key, answer in predictions.items():
            f.write(json.dumps({"id": key, "answer": answer}, ensure_ascii=False) + "\n")
    return Path(path)
