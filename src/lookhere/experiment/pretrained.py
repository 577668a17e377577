"""Evaluation of a pretrained miniature (`lookhere pretrain eval`): what the model can see.

On held-out data only, none of it drawn from the pretraining stream:

- **VQA on Shapes** (the experiments' scenes: 2-4 objects at the model's input size, seed
  ``seed + TEST_SEED_OFFSET``, the heads experiment's test seed): colour, shape, size and count
  questions about named objects, accuracy per type with 95% bootstrap intervals;
- **the other skills on held-out Scenes** (seed ``seed + TEST_SEED_OFFSET``, never a
  pretraining seed): position, relation, reading and locating markers, following a curve, and
  pointing (the point must fall inside the object's mask);
- **REC** on held-out Shapes expressions: the box written as text (Acc@0.5), and the
  training-free localization heads of the frozen model (`find_heads` on the search seed's
  expressions, then `evaluate_rec`) against every baseline: all heads, random heads, the centre
  box; Acc@0.5, pointing and mask mIoU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from lookhere.data.dataset import TaskDataset
from lookhere.data.sample import Sample
from lookhere.data.synthetic import make_task
from lookhere.eval.rec import DEFAULT_BASELINES, RecScore, evaluate_rec
from lookhere.eval.runner import generate_answers
from lookhere.eval.scoring import TaskScore, score_predictions
from lookhere.experiment.config import PretrainedEvalConfig
from lookhere.experiment.heads import SEARCH_SEED_OFFSET, TEST_SEED_OFFSET
from lookhere.experiment.training import shapes_defaults
from lookhere.heads.search import find_heads
from lookhere.models.adapter import get_adapter
from lookhere.tables import pct

SHAPES_TYPES = ("colour", "shape", "size", "count")
SCENES_SKILLS = ("position", "relation", "read", "find_marker", "follow", "point")
#: generation budget per answer kind: a word, or a box / point written digit by digit
WORD_TOKENS, BOX_TOKENS = 6, 32


@dataclass(frozen=True)
class QuestionScore:
    """One question type's (or skill's) score, and its first answers as stored examples
    (sample id -> [question, gold answer, generated answer])."""

    score: TaskScore
    examples: dict[str, list[str]]

    def to_json(self) -> dict[str, Any]:
        return self.score.to_json() | {"examples": self.examples}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QuestionScore:
        return cls(TaskScore.from_json(data), dict(data["examples"]))


@dataclass(frozen=True)
class PretrainedEval:
    """`evaluate_pretrained`'s result: Shapes VQA by question type, Scenes skills by skill, the
    localization heads found and REC per method (`RecScore` JSON, without per-sample values)."""

    config: PretrainedEvalConfig
    model: str
    vqa: dict[str, QuestionScore]
    skills: dict[str, QuestionScore]
    heads: list[list[int]]
    head_settings: dict[str, Any]
    rec_n: int
    rec: dict[str, RecScore]

    def to_json(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "model": self.model,
                "vqa": {k: v.to_json() for k, v in self.vqa.items()},
                "skills": {k: v.to_json() for k, v in self.skills.items()},
                "heads": {"heads": self.heads, "settings": self.head_settings},
                "rec": {"n": self.rec_n,
                        "methods": {k: m.to_json(per_sample=False) for k, m in self.rec.items()}}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PretrainedEval:
        return cls(PretrainedEvalConfig(**data["config"]), data["model"],
                   {k: QuestionScore.from_json(v) for k, v in data["vqa"].items()},
                   {k: QuestionScore.from_json(v) for k, v in data["skills"].items()},
                   data["heads"]["heads"], data["heads"].get("settings", {}), data["rec"]["n"],
                   {k: RecScore.from_json(m) for k, m in data["rec"]["methods"].items()})


def shapes_split(mode: str, image_size: int, seed: int, n: int, **extra: Any) -> list[Sample]:
    task = make_task("shapes", seed=seed, mode=mode, **shapes_defaults(image_size), **extra)
    return list(TaskDataset(task, n).materialise().samples)


def scenes_split(skill: str, image_size: int, patch_size: int, seed: int, n: int
                 ) -> list[Sample]:
    task = make_task("scenes", seed=seed, mode="instruct", image_size=image_size,
                     patch_size=patch_size, max_objects=4, skills=(skill,))
    return list(TaskDataset(task, n).materialise().samples)


def question_accuracy(model: nn.Module, processor: Any, samples: list[Sample], key: str,
                      max_new_tokens: int, batch_size: int, progress: bool
                      ) -> dict[str, QuestionScore]:
    """Accuracy (95% CI), parse failures and IoU of generated answers, grouped by
    ``structured[key]`` (the question type or skill), with the first 3 answers of each."""
    preds = generate_answers(model, processor, get_adapter(model), samples, batch_size,
                             max_new_tokens, progress)
    out = {}
    for group in dict.fromkeys(s.structured[key] for s in samples):
        part = [s for s in samples if s.structured[key] == group]
        scores = score_predictions(part, {s.id: preds[s.id] for s in part})
        (agg,) = scores.tasks.values()
        out[group] = QuestionScore(agg, {s.id: [s.question, s.answer, preds[s.id]]
                                         for s in part[:3]})
    return out


def evaluate_pretrained(model: nn.Module, processor: Any, config: PretrainedEvalConfig,
                        model_id: str = "", progress: bool = True) -> PretrainedEval:
    """The whole evaluation (module doc)."""
    vision = model.config.vision_config
    size, patch = vision.image_size, vision.patch_size
    test_seed = config.seed + TEST_SEED_OFFSET
    model.eval()
    vqa_res: dict[str, QuestionScore] = {}
    for kind in SHAPES_TYPES:  # one split per type: their ids repeat across types
        vqa = shapes_split("vqa", size, test_seed, config.vqa_samples, vqa_types=(kind,))
        vqa_res.update(question_accuracy(model, processor, vqa, "type", WORD_TOKENS,
                                         config.batch_size, progress))
    skills: dict[str, QuestionScore] = {}
    for skill in SCENES_SKILLS:
        samples = scenes_split(skill, size, patch, test_seed, config.skill_samples)
        budget = BOX_TOKENS if skill in ("find_marker", "point") else WORD_TOKENS
        skills.update(question_accuracy(model, processor, samples, "skill", budget,
                                        config.batch_size, progress))
    adapter = get_adapter(model)
    search = shapes_split("rec", size, config.seed + SEARCH_SEED_OFFSET, config.search_samples)
    spec = find_heads(model, processor, adapter, search, model_id=model_id, top_k=config.top_k,
                      per_sample=config.per_sample, batch_size=config.batch_size,
                      progress=progress)
    rec_test = shapes_split("rec", size, test_seed, config.rec_samples)
    rec = evaluate_rec(model, processor, adapter, rec_test, spec, DEFAULT_BASELINES,
                       seed=config.seed,
                       batch_size=config.batch_size, progress=progress,
                       max_new_tokens=BOX_TOKENS)
    return PretrainedEval(config, model_id, vqa_res, skills, [list(h) for h in spec.heads],
                          spec.settings, rec.n, rec.methods)


def summary_table(result: PretrainedEval) -> str:
    """Markdown tables of a result: questions, then REC."""
    lines = ["| questions | n | accuracy | 95% CI | parse failures |", "|---|---|---|---|---|"]
    for group, res in [*result.vqa.items(), *result.skills.items()]:
        s = res.score
        lines.append(f"| {group} | {s.n} | {100 * s.accuracy:.1f} | {100 * s.ci95[0]:.1f}-"
                     f"{100 * s.ci95[1]:.1f} | {100 * s.parse_failure_rate:.1f} |")
    lines += ["", f"Localization heads (layer, head): {result.heads}", "",
              "| REC method | Acc@0.5 | pointing | mIoU | mean IoU |", "|---|---|---|---|---|"]
    for name, m in result.rec.items():
        lines.append(f"| {name} | {100 * m.acc_at_iou:.1f} | {pct(m.pointing)} | "
                     f"{pct(m.miou)} | {100 * m.mean_iou:.1f} |")
    return "\n".join(lines)
