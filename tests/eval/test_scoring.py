"""Answer scoring per task, aggregation, and predictions files."""

import itertools
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from lookhere.data.sample import Geometry, Sample
from lookhere.data.synthetic import make_task
from lookhere.eval.metrics import bootstrap_ci
from lookhere.eval.scoring import (
    SUPPORTED_TASKS,
    Outcome,
    TaskScore,
    perfect_matching,
    read_predictions,
    score_answer,
    score_predictions,
    write_predictions,
)


def _sample(task, structured, geometry=None, size=(200, 100), sid="x", answer=""):
    return Sample(image=Image.new("RGB", size), question="q", answer=answer,
                  structured=structured, geometry=geometry or Geometry(), task=task, id=sid)


def _xywh(b):
    return [b[0], b[1], b[2] - b[0], b[3] - b[1]]


# ------------------------------------------------------------------------- synthetic tasks

@pytest.mark.parametrize("name,kw", [("grid_patch", {}), ("line_intersection", {}),
                                     ("line_tracing", {}), ("shapes", {"mode": "vqa"}),
                                     ("shapes", {"mode": "rec"})])
def test_gold_answers_score_correct(name, kw):
    task = make_task(name, seed=3, image_size=112 if name == "shapes" else 336, **kw)
    for i in range(6):
        s = task.sample(i)
        out = score_answer(s, s.answer)
        assert out.correct and not out.parse_failed, (s.answer, out)


def test_grid_patch_formats():
    s = _sample("grid_patch", {"row": 3, "col": 4})
    for text in ("row 3, column 4", "Row 3, column 4.", "(3, 4)", "It is in ROW 3 col 4"):
        out = score_answer(s, text)
        assert out == Outcome({"row": 3, "col": 4}, True, False, None), text
    wrong = score_answer(s, "row 4, column 3")
    assert (wrong.correct, wrong.parse_failed, wrong.parsed) == (False, False, {"row": 4, "col": 3})
    failed = score_answer(s, "the top left corner")
    assert (failed.correct, failed.parse_failed, failed.parsed) == (False, True, None)


def test_grid_patch_generated_sample_wrong_cell():
    s = make_task("grid_patch", seed=0).sample(0)
    r, c = s.structured["row"], s.structured["col"]
    assert score_answer(s, f"Row {r}, column {c}.").correct
    assert not score_answer(s, f"row {r + 1}, column {c}").correct


def test_line_intersection():
    yes, no = _sample("line_intersection", {"intersect": True}), \
        _sample("line_intersection", {"intersect": False})
    assert score_answer(yes, "Yes, they cross.").correct
    assert not score_answer(no, "YES").correct
    assert score_answer(no, "No.").parsed == {"intersect": False}
    assert score_answer(no, "No.").correct
    assert score_answer(yes, "they might").parse_failed


def test_line_tracing():
    s = _sample("line_tracing", {"start": "C", "end": "3"})
    assert score_answer(s, "The curve ends at 3.").correct
    assert score_answer(s, "3").parsed == {"end": "3"}
    assert not score_answer(s, "4").correct
    assert score_answer(s, "I cannot tell").parse_failed


def test_shapes_vqa_words_and_counts():
    colour = _sample("shapes", {"answer": "red", "type": "colour"})
    assert score_answer(colour, "It is Red.").correct
    assert score_answer(colour, "red").correct
    assert not score_answer(colour, "blue").correct
    assert score_answer(colour, "crimson").parse_failed
    shape = _sample("shapes", {"answer": "square", "type": "shape"})
    assert score_answer(shape, "the red object is a square").correct  # colour word is ignored
    size = _sample("shapes", {"answer": "small", "type": "size"})
    assert not score_answer(size, "Large").correct
    count = _sample("shapes", {"answer": "3", "type": "count"})
    assert score_answer(count, "There are three.").correct
    assert score_answer(count, "3 stars").parsed == {"count": 3}
    assert not score_answer(count, "two").correct
    assert score_answer(count, "several").parse_failed


def test_scenes_read_takes_glyphs_in_their_case():
    """A marker's glyph is a capital or a digit: the article "a" is not the letter A."""
    read = _sample("scenes", {"skill": "read", "answer": "B"})
    assert score_answer(read, "It is a B.").correct
    assert score_answer(read, "B").correct
    assert not score_answer(read, "a").correct and score_answer(read, "a").parse_failed
    letter_a = _sample("scenes", {"skill": "read", "answer": "A"})
    assert not score_answer(letter_a, "It is a B.").correct
    colour = _sample("scenes", {"skill": "colour", "answer": "red"})
    assert score_answer(colour, "Red").correct  # other skills' words keep ignoring case


# ------------------------------------------------------------------------- boxes

def test_box_iou_matches_pycocotools_and_threshold():
    gold = (20.0, 10.0, 120.0, 60.0)
    s = _sample("refcoco", {"box": [0.1, 0.1, 0.6, 0.6]}, Geometry(boxes=[gold]))
    rng = np.random.default_rng(0)
    for _ in range(100):
        x = np.sort(rng.uniform(0, 200, 2))
        y = np.sort(rng.uniform(0, 100, 2))
        box = (x[0], y[0], x[1], y[1])
        text = f"[{box[0] / 200:.4f}, {box[1] / 100:.4f}, {box[2] / 200:.4f}, {box[3] / 100:.4f}]"
        out = score_answer(s, text)
        parsed = out.parsed["box"]
        ref = mask_utils.iou([_xywh(parsed)], [_xywh(gold)], [0])[0, 0]
        assert out.iou == pytest.approx(ref, abs=1e-9)
        assert out.correct == (ref >= 0.5)


def test_box_threshold_is_inclusive():
    s = _sample("shapes", {"box": [0, 0, 100, 100]}, Geometry(boxes=[(0.0, 0.0, 100.0, 100.0)]),
                size=(200, 200))
    half = score_answer(s, "[0.00, 0.00, 0.50, 0.25]")  # (0, 0, 100, 50): IoU 0.5 exactly
    assert half.iou == 0.5 and half.correct
    assert not score_answer(s, "[0.00, 0.00, 0.50, 0.24]").correct  # IoU 0.48


def test_box_styles():
    # 640x480 image, box (64, 96, 320, 144); LLaVA pads to 640x640, 80 px on top.
    gold = (64.0, 96.0, 320.0, 144.0)
    s = _sample("refcoco+", {"box": [0.1, 0.2, 0.5, 0.3]}, Geometry(boxes=[gold]), size=(640, 480))
    texts = {"plain": "[0.10, 0.20, 0.50, 0.30]", "llava": "[0.100, 0.275, 0.500, 0.350]",
             "qwen": '```json\n[{"bbox_2d": [64, 96, 320, 144], "label": "dog"}]\n```'}
    for style, text in texts.items():
        out = score_answer(s, text, style=style)
        assert out.correct and out.iou == pytest.approx(1.0), style
    # Plain read as LLaVA's: (64, 48, 320, 112); rows overlap in 96..112, union 48..144.
    wrong = score_answer(s, texts["plain"], style="llava")
    assert not wrong.correct and wrong.iou == pytest.approx(16 / 96)
    failed = score_answer(s, "the dog on the left")
    assert failed == Outcome(None, False, True, 0.0)


def test_box_needs_one_gold_box():
    s = _sample("refcoco", {"box": [0, 0, 1, 1]}, Geometry(boxes=[]))
    with pytest.raises(ValueError, match="exactly one gold box"):
        score_answer(s, "[0, 0, 1, 1]")


# ------------------------------------------------------------------------- points

def test_points_match_gold_points_one_to_one():
    # 200x100 image: a point within 0.05 * 200 = 10 px of a gold point hits it.
    s = _sample("pixmo_points", {"points": [[0.25, 0.5], [0.75, 0.5]], "count": 2},
                Geometry(points=[(50.0, 50.0), (150.0, 50.0)]))
    assert score_answer(s, "[[0.25, 0.50], [0.75, 0.50]]").correct
    assert score_answer(s, "[[0.79, 0.55], [0.23, 0.42]]").correct  # any order, within 10 px
    assert not score_answer(s, "[[0.25, 0.50], [0.81, 0.50]]").correct  # 12 px off
    assert not score_answer(s, "[[0.25, 0.50]]").correct  # one missed
    assert not score_answer(s, "[[0.25, 0.50], [0.26, 0.50]]").correct  # both on one object
    assert not score_answer(s, "[[0.25, 0.5], [0.75, 0.5], [0.5, 0.5]]").correct  # an extra
    out = score_answer(s, "[[0.25, 0.50], [0.75, 0.50]]")
    assert out.parsed == {"points": [[50.0, 50.0], [150.0, 50.0]]}
    assert score_answer(s, "there are none").parse_failed


def test_points_in_box_and_mask_regions():
    mask = np.zeros((100, 200), bool)
    mask[10:30, 10:30] = True
    s = _sample("pixmo_points", {"points": [[0.1, 0.2]], "count": 1},
                Geometry(boxes=[(0.0, 0.0, 40.0, 40.0)], mask=mask))
    assert score_answer(s, "[0.10, 0.20]").correct  # (20, 20): in the box and the mask
    assert not score_answer(s, "[0.175, 0.35]").correct  # (35, 35): in the box, not the mask
    only_mask = _sample("pixmo_points", {"points": [[0.1, 0.2]], "count": 1}, Geometry(mask=mask))
    assert score_answer(only_mask, "[0.10, 0.20]").correct
    assert not score_answer(only_mask, "[0.50, 0.20]").correct


def test_points_count_mode_and_no_target():
    count = _sample("pixmo_points", {"count": 4})
    assert score_answer(count, "4").correct and not score_answer(count, "five").correct
    empty = _sample("pixmo_points", {"points": [], "count": 0})
    assert score_answer(empty, "There are none.").correct
    assert not score_answer(empty, "[0.5, 0.5]").correct


def test_perfect_matching_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 6))
        hits = (rng.random((n, n)) < rng.uniform(0.2, 0.8)).tolist()
        brute = any(all(hits[i][p[i]] for i in range(n)) for p in itertools.permutations(range(n)))
        assert perfect_matching(hits) == brute


# ------------------------------------------------------------------------- bad input

def test_score_answer_bad_input():
    with pytest.raises(ValueError, match="supported tasks: .*grid_patch"):
        score_answer(_sample("vqav2", {}), "yes")
    with pytest.raises(ValueError, match="style"):
        score_answer(_sample("grid_patch", {"row": 1, "col": 1}), "row 1, column 1", style="x")
    with pytest.raises(TypeError, match="text"):
        score_answer(_sample("grid_patch", {"row": 1, "col": 1}), None)
    assert set(SUPPORTED_TASKS) >= {"grid_patch", "line_intersection", "line_tracing", "shapes",
                                    "refcoco", "pixmo_points"}


# ------------------------------------------------------------------------- aggregation

def _mixed():
    grid = make_task("grid_patch", seed=0)
    box = (0.0, 0.0, 100.0, 50.0)
    samples = [grid.sample(i) for i in range(4)] + [
        _sample("refcoco", {"box": [0, 0, 0.5, 0.5]}, Geometry(boxes=[box]), sid="r0"),
        _sample("refcoco", {"box": [0, 0, 0.5, 0.5]}, Geometry(boxes=[box]), sid="r1"),
    ]
    preds = {samples[0].id: samples[0].answer, samples[1].id: samples[1].answer,
             samples[2].id: "row 99, column 99", samples[3].id: "no idea",
             "r0": "[0.00, 0.00, 0.50, 0.50]",  # IoU 1
             "r1": "[0.00, 0.00, 0.25, 0.50]"}  # (0, 0, 50, 50): IoU 0.5
    return samples, preds


def test_score_predictions_aggregates():
    samples, preds = _mixed()
    scores = score_predictions(samples, preds)
    grid = scores.tasks["grid_patch"]
    assert grid.n == 4 and grid.accuracy == 0.5 and grid.parse_failure_rate == 0.25
    assert grid.missing == 0 and grid.mean_iou is None and "mean_iou" not in grid.to_json()
    mean, lo, hi = bootstrap_ci([1.0, 1.0, 0.0, 0.0], seed=0)
    assert grid.ci95 == (lo, hi) and lo <= 0.5 <= hi
    assert TaskScore.from_json(json.loads(json.dumps(grid.to_json()))) == grid
    ref = scores.tasks["refcoco"]
    assert ref.accuracy == 1.0 and ref.mean_iou == pytest.approx(0.75)
    assert list(scores.outcomes) == [s.id for s in samples]
    assert scores.outcomes["r1"].iou == pytest.approx(0.5)
    js = json.loads(json.dumps(scores.to_json()))
    assert js["tasks"]["grid_patch"]["accuracy"] == 0.5
    assert js["samples"]["r0"]["correct"] is True and "samples" not in scores.to_json(False)


def test_score_predictions_missing():
    samples, preds = _mixed()
    del preds["r0"], preds[samples[0].id]
    with pytest.raises(ValueError, match="2 of 6 samples have no prediction.*r0"):
        score_predictions(samples, preds)
    scores = score_predictions(samples, preds, missing="wrong")
    assert scores.tasks["grid_patch"].accuracy == 0.25
    assert scores.tasks["grid_patch"].parse_failure_rate == 0.5
    assert scores.tasks["refcoco"].missing == 1
    assert scores.outcomes["r0"] == Outcome(None, False, True, 0.0)
    assert scores.tasks["refcoco"].mean_iou == pytest.approx(0.25)


def test_score_predictions_errors():
    samples, preds = _mixed()
    with pytest.raises(ValueError, match="match no sample.*'ghost'"):
        score_predictions(samples, {**preds, "ghost": "yes"})
    with pytest.raises(ValueError, match="supported tasks"):
        score_predictions([*samples, _sample("ocr", {}, sid="o")], {**preds, "o": "x"})
    with pytest.raises(ValueError, match="unique.*r0"):
        score_predictions([*samples, samples[4]], preds)
    with pytest.raises(ValueError, match="missing"):
        score_predictions(samples, preds, missing="skip")
    with pytest.raises(ValueError, match="empty"):
        score_predictions([], {})
    with pytest.raises(TypeError, match="'r0'"):
        score_predictions(samples, {**preds, "r0": 3})


# ------------------------------------------------------------------------- predictions files

def test_write_read_round_trip(tmp_path):
    preds = {"a": "row 1, column 2", "b": 'quote " and newline\n and ünïcode', "c": ""}
    path = write_predictions(tmp_path / "p.jsonl", preds)
    assert read_predictions(path) == preds
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(x) for x in lines][0] == {"id": "a", "answer": "row 1, column 2"}
    assert [p.name for p in tmp_path.iterdir()] == ["p.jsonl"]  # no temp file left
    with pytest.raises(TypeError, match="str"):
        write_predictions(tmp_path / "q.jsonl", {"a": 1})


def test_read_other_forms(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"id": "a", "prediction": "yes", "task": "x"}\n\n{"id": "b", "answer": "no"}\n')
    assert read_predictions(p) == {"a": "yes", "b": "no"}
    p.write_text('{"id": "a", "answer": "yes"}\n')  # one line of JSONL, not a mapping
    assert read_predictions(p) == {"a": "yes"}
    p.write_text(json.dumps({"a": "yes", "b": "row 1, column 1"}, indent=2))
    assert read_predictions(p) == {"a": "yes", "b": "row 1, column 1"}
    p.write_text("")
    assert read_predictions(p) == {}


@pytest.mark.parametrize("text,match", [
    ('{"id": "a", "answer": "x"}\n{"id": "b", "answer": "y"\n', r"p.jsonl:2: not valid JSON"),
    ('{"id": "a", "answer": "x"}\n{"id": "b"}\n', r":2: expected keys 'id' and one of"),
    ('{"id": "a", "answer": "x"}\n{"id": "b", "answer": 3}\n', r":2: 'answer' must be a string"),
    ('{"id": "a", "answer": "x"}\n{"id": 7, "answer": "y"}\n', r":2: 'id' must be a string"),
    ('{"id": "a", "answer": "x"}\n{"id": "a", "answer": "y"}\n', r":2: duplicate id 'a'"),
    ('{"id": "a", "answer": "x"}\n["a", "y"]\n', r":2: expected a JSON object"),
    ('{"id": "a", "answer": "x", "prediction": "y"}\n', r":1: expected keys"),
    ('{"a": "x", "b": 2}', r"answers must be strings.*'b'"),
    ('["a", "b"]', r"expected JSONL objects or one JSON object"),
])
def test_read_errors(tmp_path, text, match):
    p = tmp_path / "p.jsonl"
    p.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_predictions(p)


# ------------------------------------------------------------------------- garbage vs answers

def test_random_model_garbage_is_a_parse_failure(family):
    """A random-weight tiny model writes token soup; at most 1 reply in 20 reads as an answer
    (issue 17: "parse fail 0%" on such soup). Every scorer's parser is exercised: boxes, words,
    counts, numbers, yes/no, grid cells."""
    from conftest import tiny

    from lookhere.eval.runner import generate_answers
    from lookhere.models import get_adapter

    model, processor = tiny(family)
    kinds = [("shapes", {"mode": "rec"}), ("shapes", {"mode": "vqa"}), ("line_tracing", {}),
             ("line_intersection", {}), ("grid_patch", {"grid_rows": 4, "grid_cols": 4})]
    samples = [make_task(name, seed=3 + k, image_size=112, **kw).sample(i)  # unique ids
               for k, (name, kw) in enumerate(kinds) for i in range(4)]
    answers = generate_answers(model, processor, get_adapter(model), samples,
                               batch_size=len(samples), progress=False)
    parsed = {s.id: answers[s.id] for s in samples
              if not score_answer(s, answers[s.id]).parse_failed}
    assert len(parsed) <= len(samples) // 20, parsed


def test_shipped_checkpoint_answers_still_parse():
    """The answers the shipped checkpoint wrote in its stored evaluation (eval.json, every
    question type and skill; 0% parse failures there) still parse, to the same verdict as
    reading the reply as the answer text itself."""
    from lookhere.experiment.heads import TEST_SEED_OFFSET
    from lookhere.experiment.pretrained import (
        SCENES_SKILLS,
        SHAPES_TYPES,
        scenes_split,
        shapes_split,
    )
    from lookhere.models.pretrained import WEIGHTS

    evaluation = json.loads((WEIGHTS / "llava-mini" / "eval.json").read_text())
    seed = evaluation["config"]["seed"] + TEST_SEED_OFFSET
    size, patch = 96, 8  # the checkpoint's image and patch size (its config.json)
    n = 0
    for group in (*SHAPES_TYPES, *SCENES_SKILLS):
        shapes = group in SHAPES_TYPES
        stored = evaluation["vqa" if shapes else "skills"][group]["examples"]
        samples = (shapes_split("vqa", size, seed, len(stored), vqa_types=(group,)) if shapes
                   else scenes_split(group, size, patch, seed, len(stored)))
        for s in samples:
            question, gold, reply = stored[s.id]
            assert (s.question, s.answer) == (question, gold)
            out = score_answer(s, reply)
            assert not out.parse_failed, (group, reply)
            if out.iou is None and group not in ("point",):
                assert out.correct == (reply.lower() == gold.lower()), (group, reply, gold)
            n += 1
    assert n >= 30
