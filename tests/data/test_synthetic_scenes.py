"""Scenes (the pretraining generator): determinism, every skill's answer re-derived from meta and
pixels with independent code, the dense labels against a per-cell brute force, and the rules
that keep later experiments honest (no benchmark task, no test split in pretraining data)."""

import hashlib
import re

import numpy as np
import pytest

from lookhere.data.synthetic import make_task
from lookhere.data.synthetic.scenes import (
    BOX_BINS,
    BOX_EDGES,
    COLOUR_CLASSES,
    GLYPH_CLASSES,
    MARKER_INK,
    SKILLS,
    ScenesConfig,
    patch_labels,
)
from lookhere.eval.scoring import score_answer

N = 400


@pytest.fixture(scope="module")
def instruct():
    task = make_task("scenes", seed=3)
    return [task.sample(i) for i in range(N)]


def test_deterministic_and_seeded():
    a, b = make_task("scenes", seed=1), make_task("scenes", seed=1)
    for i in (0, 5, 17):
        sa, sb = a.sample(i), b.sample(i)
        assert sa.question == sb.question and sa.answer == sb.answer
        assert np.array_equal(np.asarray(sa.image), np.asarray(sb.image))
    other = make_task("scenes", seed=2).sample(0)
    assert not np.array_equal(np.asarray(other.image), np.asarray(a.sample(0).image))


def test_every_skill_occurs(instruct):
    seen = {s.structured["skill"] for s in instruct}
    assert seen == set(SKILLS)


def _box(text):
    return [float(v) for v in re.findall(r"\d\.\d\d", text)]


def test_answers_follow_from_meta(instruct):
    """Each answer re-derived from the scene (not from the generator's own helpers)."""
    for s in instruct:
        k, objs, size = s.structured["skill"], s.meta["objects"], s.image.size[0]
        if k == "rec":
            o = objs[s.structured["object"]]
            assert _box(s.answer) == pytest.approx([v / size for v in o["box"]], abs=0.006)
        elif k == "point":
            o = objs[s.structured["object"]]
            assert _box(s.answer) == pytest.approx([o["cx"] / size, o["cy"] / size], abs=0.006)
        elif k == "read":
            chars = {m["char"] for m in s.meta["markers"]}
            assert s.answer in chars
            if len(chars) == 1:
                assert "the marker" in s.question
        elif k == "find_marker":
            m = next(m for m in s.meta["markers"] if m["char"] == s.structured["marker"])
            assert _box(s.answer) == pytest.approx([v / size for v in m["box"]], abs=0.006)
        elif k == "follow":
            curve = next(c for c in s.meta["curves"] if f"marker {c['marker']}" in s.question)
            attr = "colour" if s.question.startswith("What colour") else "shape"
            assert s.answer == objs[curve["object"]][attr]
        elif k == "position":
            o = objs[s.structured["objects"][0]]
            x, y = (o["box"][0] + o["box"][2]) / 2, (o["box"][1] + o["box"][3]) / 2
            want = {"left": x < size / 2, "right": x > size / 2, "top": y < size / 2,
                    "bottom": y > size / 2}
            assert want[s.answer]
        elif k == "relation":
            i, j = s.structured["objects"]
            ci = np.mean(np.reshape(objs[i]["box"], (2, 2)), 0)
            cj = np.mean(np.reshape(objs[j]["box"], (2, 2)), 0)
            rel = re.search(r"(left of|right of|above|below)", s.question).group(1)
            holds = {"left of": ci[0] < cj[0], "right of": ci[0] > cj[0],
                     "above": ci[1] < cj[1], "below": ci[1] > cj[1]}[rel]
            assert s.answer == ("yes" if holds else "no")
        elif k == "count" and s.question.startswith("How many") and "objects" in s.question:
            colour = s.question.split()[2]
            assert int(s.answer) == sum(o["colour"] == colour for o in objs)


def test_gold_answers_score_correct(instruct):
    for s in instruct:
        assert score_answer(s, s.answer).correct, (s.question, s.answer)


def test_markers_and_curves_are_drawn(instruct):
    """The glyph's ink is in the image where the marker is, and a curve's middle is dark."""
    for s in instruct[:100]:
        arr = np.asarray(s.image).astype(int)
        for m in s.meta["markers"]:
            x0, y0, x1, y1 = m["box"]
            tile = arr[y0 + 1:y1 - 1, x0 + 1:x1 - 1]
            assert (np.abs(tile - MARKER_INK).sum(-1) == 0).sum() >= 5
        for c in s.meta["curves"]:
            x, y = c["points"][len(c["points"]) // 2]
            patch = arr[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2]
            assert patch.sum(-1).min() < 3 * 120


def test_patch_labels_brute_force():
    rng = np.random.default_rng(0)
    labels = {"colour": rng.integers(0, 4, (16, 24)), "glyph": np.zeros((16, 24), int)}
    labels["glyph"][0:5, 0:8] = 3  # 40 of 64 pixels of cell (0, 0)
    got = patch_labels(labels, 8, min_cover=0.25)
    for name, m in labels.items():
        want = []
        for r in range(2):
            for c in range(3):
                cell = m[8 * r:8 * r + 8, 8 * c:8 * c + 8].ravel()
                counts = {v: int((cell == v).sum()) for v in set(cell.tolist()) if v != 0}
                best = max(counts, key=lambda v: (counts[v], -v)) if counts else 0
                want.append(best if counts and counts[best] >= 16 else 0)
        assert got[name] == want
    assert got["glyph"][0] == 3


def test_vision_labels_match_pixels():
    s = make_task("scenes", seed=0, mode="vision").sample(4)
    labels = s.meta["patch_labels"]
    assert len(labels["colour"]) == 144
    arr = np.asarray(s.image)
    for o in s.meta["objects"]:  # the cell under each object's centre carries its colour
        r, c = int(o["cy"]) // 8, int(o["cx"]) // 8
        cell = arr[8 * r:8 * r + 8, 8 * c:8 * c + 8].reshape(-1, 3)
        if (cell == o["rgb"]).all(-1).mean() > 0.5:
            assert COLOUR_CLASSES[labels["colour"][12 * r + c]] == o["colour"]
    for m in s.meta["markers"]:
        cx, cy = int(m["cx"]) // 8, int(m["cy"]) // 8
        assert GLYPH_CLASSES[labels["glyph"][12 * cy + cx]] in (m["char"], "none")


def test_vision_box_labels_are_the_object_boxes():
    """Each cell under an object's centre predicts that object's box: every edge in its bin,
    recomputed here from the pixel box; cells on nothing carry class 0."""
    task = make_task("scenes", seed=0, mode="vision")
    for i in range(6):
        s = task.sample(i)
        labels = s.meta["patch_labels"]
        for o in s.meta["objects"]:
            r, c = int(o["cy"]) // 8, int(o["cx"]) // 8
            for e, v in zip(BOX_EDGES, o["box"], strict=True):
                want = 1 + min(BOX_BINS - 1, int(BOX_BINS * v / 96))
                assert labels[f"box_{e}"][12 * r + c] == want
        empty = [k for k in range(144) if labels["colour"][k] == 0]
        assert empty and all(labels["box_x0"][k] == 0 for k in empty)


def test_caption_names_every_object_in_both_orders():
    """Every object once, with its box, named colour-then-shape or shape-then-colour; over a
    few scenes both orders occur (the colour and the shape lookups are both trained)."""
    orders = set()
    for i in range(12):
        s = make_task("scenes", seed=0, mode="caption").sample(i)
        side = s.image.size[0]
        for o in s.meta["objects"]:
            box = "[" + ", ".join(f"{v / side:.2f}" for v in o["box"]) + "]"
            first = f"a {o['size']} {o['colour']} {o['shape']} at {box}"
            second = f"a {o['size']} {o['shape']}, {o['colour']}, at {box}"
            assert (first in s.answer) != (second in s.answer)
            orders.add(first in s.answer)
        assert s.answer.count(" at [") == len(s.meta["objects"]) + len(s.meta["markers"])
    assert orders == {True, False}


def _centres(text):
    """x centres of the boxes of a caption, in the caption's order."""
    return [float(a) + float(b) for a, _, b, _ in
            re.findall(r"at \[(\d\.\d\d), (\d\.\d\d), (\d\.\d\d), (\d\.\d\d)\]", text)]


def test_caption_order_is_random_not_left_to_right():
    """Alignment captions list the objects in a random order (a left-to-right scan would let the
    model read the next object's words off its position instead of looking them up); without an
    rng, `caption` keeps the left-to-right order."""
    from lookhere.data.synthetic.scenes import caption

    task = make_task("scenes", seed=0, mode="caption", marker_prob=0.0)
    sorted_count = 0
    for i in range(40):
        s = task.sample(i)
        xs = _centres(s.answer)
        sorted_count += xs == sorted(xs)
        plain = _centres(caption(s.meta["objects"], [], s.image.size[0]))
        assert len(plain) == len(s.meta["objects"]) and plain == sorted(plain)
    assert sorted_count < 30  # 2-5 objects in a random order: sorted well under 3 times in 4


def test_config_errors():
    with pytest.raises(ValueError, match="mode"):
        ScenesConfig(mode="klal")
    with pytest.raises(ValueError, match="skills"):
        ScenesConfig(skills=("grid_patch",))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ScenesConfig(image_size=100, patch_size=8)


def _digest(sample):
    return hashlib.sha256(np.asarray(sample.image).tobytes()).hexdigest()


@pytest.mark.slow
def test_pretraining_never_sees_test_splits():
    """Images of the pretraining stream (each stage's start) against the experiments' held-out
    splits at the same image size: none shared."""
    from lookhere.experiment.heads import TEST_SEED_OFFSET
    from lookhere.experiment.pretrained import scenes_split, shapes_split
    from lookhere.pretrain.recipe import STAGES, PretrainConfig, stage_dataset

    cfg = PretrainConfig()
    seen = set()
    for stage in STAGES:
        data = stage_dataset(cfg, stage)
        seen |= {_digest(data[i]) for i in range(150)}
        assert data.task.name == "scenes"
    held = shapes_split("vqa", 96, TEST_SEED_OFFSET, 150) + \
        shapes_split("rec", 96, TEST_SEED_OFFSET, 150) + \
        scenes_split("read", 96, 8, TEST_SEED_OFFSET, 150)
    assert seen.isdisjoint({_digest(s) for s in held})


@pytest.mark.parametrize("skill", sorted(SKILLS))
def test_a_single_skill_poses_only_that_skill(skill):
    task = make_task("scenes", seed=10_000, skills=(skill,), max_objects=4)
    for i in range(30):
        s = task.sample(i)
        assert s.structured["skill"] == skill
        assert score_answer(s, s.answer).correct


def test_conversations_keep_the_first_question_and_pose_distinct_ones():
    """``turns``: the sample's own question is the one turns=1 poses for the same index; the
    further questions are distinct and their colour/shape answers follow from the objects."""
    one, four = make_task("scenes", seed=3), make_task("scenes", seed=3, turns=4)
    lengths = []
    for i in range(60):
        a, b = one.sample(i), four.sample(i)
        assert (a.question, a.answer) == (b.question, b.answer)
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        turns = b.meta["turns"]
        assert turns[0] == {"question": b.question, "answer": b.answer,
                            "skill": b.structured["skill"]}
        assert len({t["question"] for t in turns}) == len(turns) <= 4
        lengths.append(len(turns))
        for t in turns:
            m = re.fullmatch(r"What (colour|shape) is the (\w+)( object)?\?", t["question"])
            if m:
                kind, word = m.group(1), m.group(2)
                named = [o for o in b.meta["objects"]
                         if word in (o["colour"], o["shape"], o["size"])]
                assert [o[kind] for o in named] == [t["answer"]]
    assert max(lengths) == 4 and a.meta["turns"] == [{"question": a.question,
                                                     "answer": a.answer,
                                                     "skill": a.structured["skill"]}]
    with pytest.raises(ValueError, match="turns"):
        make_task("scenes", turns=0)
