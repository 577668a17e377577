"""REC evaluation: metrics against pycocotools, each method's wiring with a faked locate and
generation, the centre box by hand, and one real run on a tiny model."""

import importlib
import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from torch import nn

import lookhere.eval.runner as runner
from lookhere.data.sample import Geometry, Sample
from lookhere.data.synthetic import make_task
from lookhere.eval.metrics import mask_ious
from lookhere.eval.rec import (
    DEFAULT_BASELINES,
    RecResult,
    box_mask,
    centre_box,
    evaluate_rec,
    random_heads,
)
from lookhere.heads.selection import HeadSpec
from lookhere.models.layout import GridGeometry
from lookhere.report.tables import rec_table

pytestmark = pytest.mark.usefixtures("one_thread")
locate_module = importlib.import_module("lookhere.heads.locate")  # the package exports the function

W, H = 100, 60
SPEC = HeadSpec("fake", [(2, 1), (3, 0), (3, 3)], 0.2, 8, [], [], [])


def _sample(i, box, mask=True, size=(W, H)):
    geometry = Geometry(boxes=[box], mask=box_mask(box, size) if mask else None)
    return Sample(image=Image.new("RGB", size), question=f"Where is thing {i}?", answer="",
                  structured={"box": list(box)}, geometry=geometry, task="shapes",
                  id=f"s{i}")


def _xywh(b):
    return [b[0], b[1], b[2] - b[0], b[3] - b[1]]


def _rle(mask):
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


class FakeModel(nn.Module):
    """Only the training flag matters: locate and generation are faked."""


FAKE_ADAPTER = SimpleNamespace(num_layers=4, num_heads=4)
GEOMETRY = GridGeometry(6, 10, (10.0, 10.0), (1.0, 1.0), (0.0, 0.0), (W, H))  # 10 px cells


def _peak_at(box):
    """A (6, 10) heatmap peaking at the cell holding the box's centre."""
    heat = np.zeros((6, 10))
    heat[int((box[1] + box[3]) / 20), int((box[0] + box[2]) / 20)] = 1.0
    return heat


@pytest.fixture
def fake_locate(monkeypatch):
    """locate returns, per sample, the box (and pixel mask) queued for the spec's heads; it
    records the heads each call asked for."""
    calls, queued = [], {}

    def fake(model, processor, adapter, spec, samples, batch_size=8, **kw):
        calls.append(list(spec.heads))
        boxes = queued.get(tuple(spec.heads), [s.geometry.boxes[0] for s in samples])
        return [SimpleNamespace(box=b, image_mask=lambda b=b, s=s: box_mask(b, s.image.size),
                                heatmap=_peak_at(b), geometry=GEOMETRY)
                for b, s in zip(boxes, samples, strict=True)]

    monkeypatch.setattr(locate_module, "locate", fake)
    return calls, queued


@pytest.fixture
def fake_text(monkeypatch):
    answers = {}

    def fake(model, processor, adapter, samples, batch_size=16, max_new_tokens=16,
             progress=True):
        return {s.id: answers.get(s.id, "[0.25, 0.25, 0.75, 0.75]") for s in samples}

    monkeypatch.setattr(runner, "generate_answers", fake)
    return answers


def test_metrics_match_pycocotools(fake_locate):
    rng = np.random.default_rng(0)
    samples, preds = [], []
    for i in range(12):
        x0, x1 = sorted(rng.integers(0, W - 10, 2) + [0, 10])
        y0, y1 = sorted(rng.integers(0, H - 10, 2) + [0, 10])
        samples.append(_sample(i, (float(x0), float(y0), float(x1), float(y1))))
        if i % 2:  # the gold box moved by a few pixels: IoU near the 0.5 line, both sides
            d = rng.uniform(-6, 6, 4)
            preds.append(tuple(float(np.clip(v + e, 0, lim)) for v, e, lim
                               in zip((x0, y0, x1, y1), d, (W, H, W, H), strict=True)))
        else:  # anywhere
            px0, py0 = rng.integers(0, W - 5), rng.integers(0, H - 5)
            preds.append((float(px0), float(py0), float(rng.integers(px0 + 1, W + 1)),
                          float(rng.integers(py0 + 1, H + 1))))
    _, queued = fake_locate
    queued[tuple(SPEC.heads)] = preds
    r = evaluate_rec(FakeModel(), None, FAKE_ADAPTER, samples, SPEC, baselines=(),
                     progress=False).to_json()
    m = r["methods"]["heads"]
    golds = [s.geometry.boxes[0] for s in samples]
    ious = [mask_utils.iou([_xywh(p)], [_xywh(g)], [0])[0, 0]
            for p, g in zip(preds, golds, strict=True)]
    assert list(r["methods"]) == ["heads"] and m["n"] == 12
    assert m["mean_iou"] == pytest.approx(np.mean(ious))
    assert m["acc@0.5"] == pytest.approx(np.mean(np.array(ious) >= 0.5))
    assert 0 < m["acc@0.5"] < 1  # the check above can tell hits from misses
    assert [m["ious"][s.id] for s in samples] == pytest.approx(ious)
    pm = [_rle(box_mask(p, (W, H))) for p in preds]
    gm = [_rle(s.geometry.mask) for s in samples]
    mask_ref = [mask_utils.iou([p], [g], [0])[0, 0] for p, g in zip(pm, gm, strict=True)]
    pairs = list(zip(pm, gm, strict=True))
    inter = sum(mask_utils.area(mask_utils.merge([p, g], intersect=1)) for p, g in pairs)
    union = sum(mask_utils.area(mask_utils.merge([p, g])) for p, g in pairs)
    assert m["mIoU"] == pytest.approx(np.mean(mask_ref))
    assert m["cIoU"] == pytest.approx(inter / union)
    assert m["n_masks"] == 12 and m["boxes"]["s0"] == list(preds[0])


def test_chunks_and_iterators_change_nothing(fake_locate, fake_text):
    """Chunked scoring of a generator equals one chunk of a list, and the mask metrics equal
    `mask_ious` on the whole lists."""
    rng = np.random.default_rng(1)
    samples = []
    for i in range(7):
        x0, y0 = rng.integers(0, 50, 2)
        samples.append(_sample(i, (float(x0), float(y0), float(x0 + 30), float(y0 + 10)),
                               mask=i != 3))  # one sample without a gold mask
    whole = evaluate_rec(FakeModel(), None, FAKE_ADAPTER, samples, SPEC,
                         progress=False).to_json()
    parts = evaluate_rec(FakeModel(), None, FAKE_ADAPTER, iter(samples), SPEC, chunk_size=3,
                         progress=False).to_json()
    assert parts == whole and whole["ids"] == [s.id for s in samples]
    with_mask = [s for s in samples if s.geometry.mask is not None]
    c = whole["methods"]["centre"]
    ref = mask_ious([box_mask(centre_box(s.image.size), s.image.size) for s in with_mask],
                    [s.geometry.mask for s in with_mask])
    assert c["n_masks"] == 6 and c["n"] == 7
    assert {k: c[k] for k in ref} == pytest.approx(ref)
    with pytest.raises(ValueError, match="unique"):
        evaluate_rec(FakeModel(), None, FAKE_ADAPTER, iter(samples + samples[:1]), SPEC,
                     chunk_size=3, progress=False)


def test_centre_box_by_hand(fake_locate, fake_text):
    samples = [_sample(0, (25.0, 15.0, 75.0, 45.0)), _sample(1, (0.0, 0.0, 50.0, 30.0)),
               _sample(2, (50.0, 30.0, 100.0, 60.0))]
    r = evaluate_rec(FakeModel(), None, FAKE_ADAPTER, samples, SPEC, baselines=("centre",),
                     progress=False).to_json()
    c = r["methods"]["centre"]
    assert centre_box((W, H)) == (25, 15, 75, 45)
    # IoU 1, then 25x15 = 375 shared of 1500 + 1500 - 375 = 2625, twice
    assert c["ious"] == pytest.approx({"s0": 1.0, "s1": 1 / 7, "s2": 1 / 7})
    assert c["acc@0.5"] == pytest.approx(1 / 3)
    assert c["mean_iou"] == pytest.approx((1 + 2 / 7) / 3)
    assert c["cIoU"] == pytest.approx((1500 + 375 + 375) / (1500 + 2625 + 2625))
    assert c["mIoU"] == pytest.approx((1 + 2 / 7) / 3)
    # the point is the box centre (50, 30): inside s0 and s2, not s1 (x1 = 50 is exclusive)
    assert c["pointing"] == pytest.approx(2 / 3)


def test_text_baseline_parses_the_answer(fake_locate, fake_text):
    samples = [_sample(i, (10.0 * i, 5.0, 10.0 * i + 30, 35.0)) for i in range(4)]
    for s in samples[:3]:  # the gold box as text, normalised like the Shapes answers
        x0, y0, x1, y1 = s.geometry.boxes[0]
        fake_text[s.id] = f"[{x0 / W:.2f}, {y0 / H:.2f}, {x1 / W:.2f}, {y1 / H:.2f}]"
    fake_text["s3"] = "somewhere on the left"
    r = evaluate_rec(FakeModel(), None, FAKE_ADAPTER, samples, SPEC, baselines=("text",),
                     progress=False).to_json()
    t = r["methods"]["text"]
    assert t["acc@0.5"] == pytest.approx(3 / 4)
    assert t["ious"]["s0"] == pytest.approx(1.0, abs=0.02) and t["ious"]["s3"] == 0.0
    assert t["parse_failures"] == 1 and t["parse_failure_rate"] == 0.25
    assert t["boxes"]["s3"] is None and t["answers"]["s3"] == "somewhere on the left"
    assert t["mIoU"] < 1 and t["n_masks"] == 4  # the unparsed answer's empty mask scores 0
    x0, y0, x1, y1 = samples[3].geometry.boxes[0]
    fake_text["s3"] = f"The box is [{x0 / W:.3f}, {y0 / H:.3f}, {x1 / W:.3f}, {y1 / H:.3f}]."
    r = evaluate_rec(FakeModel(), None, FAKE_ADAPTER, samples, SPEC, baselines=("text",),
                     progress=False).to_json()
    assert r["methods"]["text"]["acc@0.5"] == 1.0


def test_head_methods_wiring(fake_locate, fake_text):
    calls, _ = fake_locate
    samples = [_sample(i, (10.0, 10.0, 40.0, 40.0)) for i in range(2)]
    spec = HeadSpec("fake", [(2, 1), (3, 0)], 0.2, 8, [], [], [], {"skip_layers": [0]})
    res = evaluate_rec(FakeModel(), None, FAKE_ADAPTER, samples, spec, seed=3, progress=False)
    r = res.to_json()
    assert RecResult.from_json(json.loads(json.dumps(r))) == res
    assert res.methods["heads"].acc_at_iou == r["methods"]["heads"]["acc@0.5"]
    assert list(r["methods"]) == ["heads", *DEFAULT_BASELINES]
    allowed = [(layer, h) for layer in (1, 2, 3) for h in range(4)]
    assert calls[0] == [(2, 1), (3, 0)] and calls[1] == allowed
    drawn = [tuple(h) for h in r["methods"]["random_heads"]["heads"]]
    assert calls[2] == drawn == random_heads(allowed, 2, seed=3)
    assert len(set(drawn)) == 2 and set(drawn) <= set(allowed)
    # the draw is numpy's: the same indices as default_rng(3).choice
    idx = np.random.default_rng(3).choice(len(allowed), size=2, replace=False)
    assert drawn == sorted(allowed[i] for i in idx)
    assert r["settings"]["skip_layers"] == [0] and r["settings"]["seed"] == 3
    assert r["methods"]["heads"]["acc@0.5"] == 1.0  # fake locate answered the gold box
    table = rec_table(res).splitlines()
    assert table[0].startswith("| method |") and len(table) == 2 + 5
    assert table[2].split("|")[1:4] == [" heads ", " 2 ", " 100.0 "]


def _smooth_by_hand(a, sigma, radius=3):
    """float64 Gaussian smoothing, 7 taps, mirrored borders (d c b | a b c d | c b a)."""
    k = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma ** 2))
    k /= k.sum()
    p = np.pad(a, radius, mode="reflect")
    rows = np.array([[p[i, j:j + 2 * radius + 1] @ k for j in range(a.shape[1])]
                     for i in range(p.shape[0])])
    return np.array([[rows[i:i + 2 * radius + 1, j] @ k for j in range(a.shape[1])]
                     for i in range(a.shape[0])])


@pytest.mark.parametrize("sigma", [0.0, 0.5, 1.0])
def test_ceiling_is_the_rule_on_the_objects_own_map(sigma, monkeypatch):
    """``ceiling``: the heads' rule at ``sigma`` on the referred object's own cell coverage (a
    box on cell edges here: a block of ones), against smoothing, thresholding and boxing by
    hand; ``sigma`` also reaches the heads' locate."""
    seen = []

    def fake(model, processor, adapter, spec, samples, batch_size=8, sigma=1.0, **kw):
        seen.append(sigma)
        return [SimpleNamespace(box=(0.0, 0.0, 10.0, 10.0), heatmap=_peak_at((0, 0, 10, 10)),
                                image_mask=lambda s=s: box_mask(None, s.image.size),
                                geometry=GEOMETRY) for s in samples]

    monkeypatch.setattr(locate_module, "locate", fake)
    gold = (20.0, 10.0, 50.0, 40.0)  # cells: rows 1-3, columns 2-4
    res = evaluate_rec(FakeModel(), None, FAKE_ADAPTER, [_sample(0, gold)], SPEC,
                       baselines=("ceiling",), sigma=sigma, progress=False).to_json()
    assert seen == [sigma] and res["settings"]["sigma"] == sigma
    cover = np.zeros((6, 10))
    cover[1:4, 2:5] = 1.0
    heat = cover if sigma == 0 else _smooth_by_hand(cover, sigma)
    rows, cols = np.nonzero(heat > heat.mean())  # one blob here: its own largest component
    box = [10.0 * cols.min(), 10.0 * rows.min(), 10.0 * (cols.max() + 1), 10.0 * (rows.max() + 1)]
    ceiling = res["methods"]["ceiling"]
    assert ceiling["boxes"]["s0"] == pytest.approx(box)
    iou = mask_utils.iou([_xywh(box)], [_xywh(gold)], [0])[0, 0]
    assert ceiling["ious"]["s0"] == pytest.approx(iou)
    assert ceiling["pointing"] == 1.0  # the map peaks on the object
    # sigma 0 gives the gold box back; at sigma 1 the box is the 5 x 5 ring around it
    assert (iou == 1.0) == (sigma == 0.0) and (sigma < 1 or box == [10.0, 0.0, 60.0, 50.0])
    with pytest.raises(ValueError, match="sigma"):
        evaluate_rec(FakeModel(), None, FAKE_ADAPTER, [_sample(0, gold)], SPEC, sigma=-1.0)


def test_rejects_bad_input(fake_locate):
    good = _sample(7, (1.0, 1.0, 5.0, 5.0))
    vqa = make_task("shapes", seed=0, mode="vqa", image_size=112).sample(0)
    grid = make_task("grid_patch", seed=0, image_size=56, grid_rows=4, grid_cols=4).sample(1)
    with pytest.raises(ValueError, match="REC samples") as err:
        evaluate_rec(FakeModel(), None, FAKE_ADAPTER, [good, vqa, grid], SPEC, progress=False)
    assert vqa.id in str(err.value) and grid.id in str(err.value)
    assert "'s7'" not in str(err.value)
    with pytest.raises(ValueError, match="baselines"):
        evaluate_rec(FakeModel(), None, FAKE_ADAPTER, [good], SPEC, baselines=("oracle",))
    with pytest.raises(ValueError, match="empty"):
        evaluate_rec(FakeModel(), None, FAKE_ADAPTER, [], SPEC)


def test_box_mask_pixel_centres():
    m = box_mask((1.2, 0.0, 3.6, 2.0), (5, 3))  # centres 1.5, 2.5, 3.5
    assert m.tolist() == [[False, True, True, True, False]] * 2 + [[False] * 5]
    assert not box_mask(None, (5, 3)).any()


def test_tiny_model_run():
    from lookhere.heads.grounding import ground
    from lookhere.heads.locate import locate
    from lookhere.heads.search import prefill_attention
    from lookhere.models import build_tiny, get_adapter

    model, processor = build_tiny("llava", {"layers": 4}, seed=0)
    adapter = get_adapter(model)
    samples = [make_task("shapes", seed=1, image_size=112).sample(i) for i in range(4)]
    spec = HeadSpec("tiny", [(2, 0), (3, 1), (3, 2)], 0.1, 4, [], [], [])
    r = evaluate_rec(model, processor, adapter, samples, spec, batch_size=2, progress=False,
                     max_new_tokens=4).to_json()
    assert r["n"] == 4 and list(r["methods"]) == ["heads", *DEFAULT_BASELINES]
    assert json.loads(json.dumps(r)) == r
    found = locate(model, processor, adapter, spec, samples)
    assert [r["methods"]["heads"]["boxes"][s.id] for s in samples] == \
        [pytest.approx(list(g.box)) for g in found]
    # all heads: the mean of every map of layers 2-3 grounds to the same box as their sum
    rows, layout = prefill_attention(model, processor, adapter, samples[:1])
    grid = layout.samples[0].images[0].primary
    maps = np.stack([grid.to_grid(rows[layer][0, h]).numpy() for layer in (2, 3)
                     for h in range(adapter.num_heads)])
    mean_box = ground(maps.mean(0), grid.geometry).box
    assert r["methods"]["all_heads"]["boxes"][samples[0].id] == pytest.approx(list(mean_box))
    for name, m in r["methods"].items():
        assert m["n"] == 4 and 0 <= m["acc@0.5"] <= 1 and m["n_masks"] == 4
        for s in samples:
            box = m["boxes"][s.id]
            ref = 0.0 if box is None else mask_utils.iou(
                [_xywh(box)], [_xywh(s.geometry.boxes[0])], [0])[0, 0]
            assert m["ious"][s.id] == pytest.approx(ref), name
    assert r["methods"]["text"]["parse_failures"] == 4  # random weights write no box
    # pointing: the centre of the summed map's highest cell, from the grid's own cell boxes
    hits = []
    for s, g in zip(samples, found, strict=True):
        r_, c_ = np.unravel_index(np.argmax(g.heatmap), g.heatmap.shape)
        x0, y0, x1, y1 = g.geometry.cell_boxes()[r_, c_]
        gx0, gy0, gx1, gy1 = s.geometry.boxes[0]
        hits.append(gx0 <= (x0 + x1) / 2 < gx1 and gy0 <= (y0 + y1) / 2 < gy1)
    assert r["methods"]["heads"]["pointing"] == pytest.approx(np.mean(hits))
