"""Shapes task: determinism, config checks, and independent checks of every answer, expression,
VQA pair and mask. The checkers below re-derive everything from meta with their own code (their
own expression parser, their own box arithmetic); only object_mask, the public mask recipe, is
shared, and it is checked against the image pixels and the stored boxes."""

import json
import re

import numpy as np
import pytest

from lookhere.data.sample import Geometry
from lookhere.data.synthetic import make_task
from lookhere.data.synthetic import shapes as shapes_mod
from lookhere.data.synthetic.base import TASKS
from lookhere.data.synthetic.shapes import ShapesConfig, ShapesTask, object_mask

SIZE = 112
N = 1000
SIZES = ("small", "medium", "large")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown")
SHAPE_NAMES = ("circle", "square", "triangle", "star", "diamond", "hexagon", "cross")
PLURAL = {"crosses": "cross"} | {s + "s": s for s in SHAPE_NAMES if s != "cross"}

_S, _C, _H = "|".join(SIZES), "|".join(COLOURS), "|".join(SHAPE_NAMES)
NP = rf"the (?:({_S}) )?(?:({_C}) )?({_H})"
EXPR_RE = re.compile(rf"^{NP}(?: (left of|right of|above|below) {NP})?$")


@pytest.fixture(scope="module")
def rec_samples():
    task = ShapesTask(seed=7, image_size=SIZE)
    return [task.sample(i) for i in range(N)]


@pytest.fixture(scope="module")
def vqa_samples():
    task = ShapesTask(seed=11, image_size=SIZE, mode="vqa", num_sizes=3)
    return [task.sample(i) for i in range(N)]


# ---------------------------------------------------------------- independent helpers

def _filter(objs, size, colour, shape, noun_is_shape=True):
    return [o for o in objs
            if (size is None or o["size"] == size) and (colour is None or o["colour"] == colour)
            and (not noun_is_shape or o["shape"] == shape)]


def _centre(o):
    x0, y0, x1, y1 = o["box"]
    return (x0 + x1) / 2, (y0 + y1) / 2


def _along(o, anchor, rel):
    (x, y), (ax, ay) = _centre(o), _centre(anchor)
    return {"left of": ax - x, "right of": x - ax, "above": ay - y, "below": y - ay}[rel]


def resolve(expr, objs):
    """Objects an expression denotes: attribute filter, then (if any) a relation to the anchor."""
    m = EXPR_RE.match(expr)
    assert m, f"unparseable expression {expr!r}"
    size, colour, shape, rel, a_size, a_colour, a_shape = m.groups()
    cands = _filter(objs, size, colour, shape)
    if rel is None:
        return cands, None
    anchors = _filter(objs, a_size, a_colour, a_shape)
    assert len(anchors) == 1, f"anchor of {expr!r} is not unique"
    anchor = anchors[0]
    return [o for o in cands if o is not anchor and _along(o, anchor, rel) > 0], (anchor, rel)


def tight_box(mask):
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def vqa_answer(question, objs):
    """(answer, subject objects) recomputed from the question text and the objects."""
    if m := re.match(rf"^What colour is the (?:({_S}) )?({_H})\?$", question):
        subj = _filter(objs, m[1], None, m[2])
        assert len(subj) == 1, question
        return subj[0]["colour"], subj
    if m := re.match(rf"^What shape is the (?:({_S}) )?(?:({_C}) )?object\?$", question):
        subj = _filter(objs, m[1], m[2], None, noun_is_shape=False)
        assert len(subj) == 1, question
        return subj[0]["shape"], subj
    if m := re.match(rf"^What size is the (?:({_C}) )?({_H})\?$", question):
        subj = _filter(objs, None, m[1], m[2])
        assert len(subj) == 1, question
        return subj[0]["size"], subj
    if m := re.match(r"^How many (\w+) are there\?$", question):
        subj = [o for o in objs if o["shape"] == PLURAL[m[1]]]
        return str(len(subj)), subj
    if m := re.match(rf"^How many ({_C}) objects are there\?$", question):
        subj = [o for o in objs if o["colour"] == m[1]]
        return str(len(subj)), subj
    raise AssertionError(f"unknown question form {question!r}")


# ---------------------------------------------------------------- determinism and config

def test_deterministic_and_order_independent():
    a, b = ShapesTask(seed=3, image_size=SIZE), ShapesTask(seed=3, image_size=SIZE)
    fwd = [a.sample(i) for i in range(20)]
    back = [b.sample(i) for i in reversed(range(20))][::-1]
    for s, t in zip(fwd, back, strict=True):
        assert s.image.tobytes() == t.image.tobytes()
        assert (s.question, s.answer, s.meta, s.structured) == (t.question, t.answer, t.meta,
                                                                t.structured)
        assert np.array_equal(s.geometry.mask, t.geometry.mask)
    other = ShapesTask(seed=4, image_size=SIZE).sample(0)
    assert other.image.tobytes() != fwd[0].image.tobytes()


@pytest.mark.parametrize("kwargs, field", [
    ({"mode": "seg"}, "mode"),
    ({"image_size": 20}, "image_size"),
    ({"min_objects": 0}, "min_objects"),
    ({"min_objects": 5, "max_objects": 3}, "max_objects"),
    ({"max_objects": 9}, "max_objects"),
    ({"shapes": ("circle", "blob")}, "shapes"),
    ({"shapes": ()}, "shapes"),
    ({"colours": ("red", "red")}, "colours"),
    ({"num_sizes": 4}, "num_sizes"),
    ({"small_radius": 0.1, "large_radius": 0.09}, "large_radius"),
    ({"small_radius": 0.1, "large_radius": 0.11}, "large_radius"),
    ({"image_size": 56, "small_radius": 0.05}, "small_radius"),
    ({"min_gap": -0.1}, "min_gap"),
    ({"share_prob": 1.5}, "share_prob"),
    ({"relation_margin": 0.5}, "relation_margin"),
    ({"texture_contrast": 80}, "texture_contrast"),
    ({"vqa_types": ("colour", "why")}, "vqa_types"),
])
def test_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ShapesConfig(**kwargs)


def test_config_fields_have_help():
    from dataclasses import fields
    assert all(f.metadata.get("help") for f in fields(ShapesConfig))


# ---------------------------------------------------------------- REC

def test_rec_answers_and_expressions(rec_samples):
    for s in rec_samples:
        objs, t = s.meta["objects"], s.structured["object"]
        # The answer: the target's mask box, normalised, recomputed here.
        x0, y0, x1, y1 = tight_box(object_mask(objs[t], SIZE))
        want = f"[{x0 / SIZE:.2f}, {y0 / SIZE:.2f}, {x1 / SIZE:.2f}, {y1 / SIZE:.2f}]"
        assert s.answer == want
        assert s.structured["box"] == [x0, y0, x1, y1]
        expr = s.question.removeprefix("Where is ").removesuffix("?")
        assert expr == objs[t]["expression"]
        # Every expression of the image names exactly its own object.
        listed = {e["object"] for e in s.meta["expressions"]}
        assert listed == {o["index"] for o in objs if o["expression"] is not None}
        for e in s.meta["expressions"]:
            found, rel = resolve(e["text"], objs)
            assert [o["index"] for o in found] == [e["object"]], e["text"]
            if rel is not None:  # the intended object is clearly on that side
                anchor, r = rel
                margin = s.meta["relation_margin_px"]
                assert _along(objs[e["object"]], anchor, r) >= margin


def test_expressions_are_shortest(rec_samples):
    combos = [("shape",), ("colour", "shape"), ("size", "shape"), ("size", "colour", "shape")]
    for s in rec_samples[:300]:
        objs = s.meta["objects"]
        for o in objs:
            unique = [c for c in combos
                      if sum(all(p[a] == o[a] for a in c) for p in objs) == 1]
            if unique:  # the first unique combo, in the documented order
                words = [o[a] for a in ("size", "colour") if a in unique[0]] + [o["shape"]]
                assert o["expression"] == "the " + " ".join(words)
            elif o["expression"] is not None:
                assert EXPR_RE.match(o["expression"]).group(4) is not None


def test_spatial_expressions_occur(rec_samples):
    kinds = [e["kind"] for s in rec_samples for e in s.meta["expressions"]]
    assert kinds.count("spatial") >= 20
    lengths = {len(s.question.split()) for s in rec_samples}
    assert len(lengths) >= 4  # 2-word to spatial expressions


def test_degenerate_vocabulary_forces_relations():
    task = ShapesTask(seed=0, image_size=SIZE, shapes=("circle",), colours=("red",))
    for i in range(150):
        s = task.sample(i)
        for e in s.meta["expressions"]:
            found, _ = resolve(e["text"], s.meta["objects"])
            assert [o["index"] for o in found] == [e["object"]], e["text"]


# ---------------------------------------------------------------- VQA

def test_vqa_answers(vqa_samples):
    types = set()
    for s in vqa_samples:
        objs = s.meta["objects"]
        ans, subj = vqa_answer(s.question, objs)
        assert s.answer == ans
        assert s.structured["objects"] == [o["index"] for o in subj]
        assert [list(b) for b in s.geometry.boxes] == [o["box"] for o in subj]
        union = np.zeros((SIZE, SIZE), bool)
        for o in subj:
            union |= object_mask(o, SIZE)
        assert np.array_equal(s.geometry.mask, union)
        types.add(s.structured["type"])
        for p in s.meta["vqa"]:  # every listed pair is well-defined and right
            a, sub = vqa_answer(p["question"], objs)
            assert (p["answer"], p["objects"]) == (a, [o["index"] for o in sub])
    assert types == {"colour", "shape", "size", "count"}


def test_vqa_types_knob():
    task = ShapesTask(seed=0, image_size=SIZE, mode="vqa", vqa_types=("count",))
    assert all(task.sample(i).question.startswith("How many") for i in range(50))


# ---------------------------------------------------------------- masks and pixels

def _check_masks(s):
    objs, img = s.meta["objects"], np.asarray(s.image)
    assert img.shape == (SIZE, SIZE, 3)
    taken = np.zeros((SIZE, SIZE), bool)
    for o in objs:
        m = object_mask(o, SIZE)
        assert m.shape == (SIZE, SIZE) and m.any()
        assert np.abs(np.array(tight_box(m)) - np.array(o["box"])).max() <= 1
        assert not (taken & m).any(), "masks overlap"
        taken |= m
        # The object's pixels carry its colour, and no pixel outside it does.
        is_col = (img == np.array(o["rgb"], np.uint8)).all(axis=2)
        assert is_col[m].mean() >= 0.95
        same = np.logical_or.reduce([object_mask(p, SIZE) for p in objs if p["rgb"] == o["rgb"]])
        assert not (is_col & ~same).any()
    return taken


@pytest.mark.slow
def test_masks_boxes_colours(rec_samples, vqa_samples):
    for s in rec_samples + vqa_samples[:200]:
        _check_masks(s)
    for s in rec_samples:
        t = s.meta["objects"][s.structured["object"]]
        assert np.array_equal(s.geometry.mask, object_mask(t, SIZE))
        assert [list(b) for b in s.geometry.boxes] == [t["box"]]
        assert t["concepts"] == [t["colour"], t["shape"]]


def test_geometry_inside_image_and_json(rec_samples, vqa_samples):
    for s in rec_samples + vqa_samples:
        for x0, y0, x1, y1 in s.geometry.boxes:
            assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
        assert s.geometry.mask.shape == (SIZE, SIZE) and s.geometry.mask.any()
        json.dumps(s.meta)
        json.dumps(s.structured)
    g = rec_samples[0].geometry
    assert np.array_equal(Geometry.from_json(json.loads(json.dumps(g.to_json()))).mask, g.mask)


def test_background_not_flat_and_objects_spread(rec_samples):
    s = rec_samples[0]
    img = np.asarray(s.image).astype(int)
    free = ~np.logical_or.reduce([object_mask(o, SIZE) for o in s.meta["objects"]])
    assert img[free].std(axis=0).max() > 1.0  # textured
    counts = {s.meta["num_objects"] for s in rec_samples}
    assert counts == {2, 3, 4, 5, 6}


def test_sample_identity():
    s = ShapesTask(seed=2, image_size=SIZE).sample(5)
    assert s.task == "shapes" and s.id == "shapes-s2-0000005"
    assert TASKS["shapes"] is shapes_mod.ShapesTask


@pytest.mark.parametrize(("key", "value", "kind"), [
    ("image_size", "abc", "int"), ("image_size", 56.5, "int"), ("image_size", True, "int"),
    ("small_radius", "0.1", "float"), ("shapes", "circle", "tuple")])
def test_settings_of_the_wrong_type_are_named(key, value, kind):
    """`--set image_size=abc` once failed deep in the generator ('<=' not supported between
    int and str); now the setting and the type it needs are named before any sample."""
    with pytest.raises(ValueError, match=f"shapes setting '{key}' must be of type {kind}"):
        make_task("shapes", **{key: value})
    make_task("shapes", image_size=np.int64(112), small_radius=np.float64(0.08))  # numpy ok
