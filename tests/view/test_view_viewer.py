"""The viewer's model side against independent references, for every family: token maps from
eager ``output_attentions``, ratios by the figure-4 formula in float64, lens maps from
`lens_maps`' own forward, head boxes from `locate`, overlays pixel by pixel."""

import copy

import numpy as np
import pytest
import torch
from conftest import noise_image, tiny
from PIL import Image

from lookhere.collate import GroundingCollator, split_aux
from lookhere.data.sample import Geometry, Sample
from lookhere.eval.runner import answer_attention, generate_answers
from lookhere.heads.locate import locate
from lookhere.heads.selection import HeadSpec
from lookhere.lens import lens_maps
from lookhere.models import get_adapter
from lookhere.models.layout import GridGeometry
from lookhere.view import Viewer, ViewError, example_samples
from lookhere.view.examples import model_image_size, task_settings
from lookhere.view.overlay import cell_index, display_size, heat_overlay

pytestmark = pytest.mark.usefixtures("one_thread")

QUESTION = "what colour is the small square on the left"
ANSWER = "red square"
BOX = (10.0, 8.0, 50.0, 40.0)  # the target of the ratio tests, image pixels


def viewer(family, **kwargs):
    model, processor = tiny(family)
    return Viewer(model, processor, max_new_tokens=4, **kwargs)


def asked(family, geometry=None):
    v = viewer(family)
    image = noise_image(97, 61, 0)
    return v, image, v.answer(image, QUESTION, geometry, given=ANSWER)


def eager_rows(family, image, geometry=None):
    """(L, H, Q, K) float64: eager attention of the answer's content tokens over the visual
    tokens, on the collator's teacher-forced batch; and the primary grid."""
    model, processor = tiny(family)
    adapter = get_adapter(model)
    sample = Sample(image=image, question=QUESTION, answer=ANSWER, structured={},
                    geometry=geometry or Geometry(), id="x")
    inputs, aux = split_aux(GroundingCollator(processor, adapter)([sample]))
    ref = copy.deepcopy(model)
    ref.set_attn_implementation("eager")
    with torch.no_grad():
        att = ref(**inputs, output_attentions=True).attentions  # L x (1, H, S, S)
    q = torch.nonzero(aux["answer_mask"][0]).flatten()
    k = adapter.visual_positions(inputs["input_ids"])[0]
    rows = torch.stack([a[0][:, q][:, :, k] for a in att]).double().numpy()
    layout = adapter.layout(inputs, [[image]], processor)
    return rows, layout.samples[0].images[0].grids


def renormalised_mean(rows):
    """(l, h, K) rows -> (K,): each row over the image sums to 1, then the mean over the heads
    that see the image at all (Gemma3's sliding windows hide it from some), then over layers (a
    layer where none does counts as zeros, as in the evaluation)."""
    out = np.zeros(rows.shape[-1])
    for layer in rows:
        seen = [r / r.sum() for r in layer if r.sum() > 0]
        out += np.mean(seen, 0) if seen else 0.0
    return out / len(rows)


def test_answer_tokens_are_the_answer(family):
    v, _, ans = asked(family)
    assert ans.text == ANSWER and len(ans.tokens) == len(ans.positions) >= 2
    assert "".join(t for t in ans.tokens if t != "\u2423") == ANSWER.replace(" ", "")


@pytest.mark.parametrize("layer, head", [(None, None), (-1, None), (0, 1), (None, 0)])
def test_token_map_matches_eager_attention(family, layer, head):
    v, image, ans = asked(family)
    rows, (grid, *_) = eager_rows(family, image)
    n_layers = rows.shape[0]
    layers = range(n_layers) if layer is None else [layer % n_layers]
    heads = range(rows.shape[1]) if head is None else [head]
    for token in (0, len(ans.tokens) - 1):
        got = v.token_map(token, layer, head)
        sel = rows[np.ix_(list(layers), list(heads), [token])][:, :, 0]  # (l, h, K)
        want = grid.to_grid(torch.from_numpy(renormalised_mean(sel))).numpy()
        np.testing.assert_allclose(got.map, want, atol=1e-5)
        assert got.image_share == pytest.approx(sel.sum(-1).mean(), abs=1e-5)
        assert got.ratio is None  # no target geometry
        assert got.map.shape == (got.geometry.rows, got.geometry.cols)
        assert got.overlay.size == display_size(image.size)


def test_ratio_is_the_figure_4_formula_and_the_runners(family):
    geometry = Geometry(boxes=[BOX])
    v, image, ans = asked(family, geometry)
    rows, grids = eager_rows(family, image, geometry)
    last = len(ans.tokens) - 1
    got = v.token_map(last)
    q = renormalised_mean(rows[:, :, last])  # (K,)
    target = np.zeros(q.shape, bool)  # the cells the box touches, on every grid of the image
    for grid in grids:
        target[grid.key_index.numpy()] = grid.geometry.box_coverage(BOX).reshape(-1) > 0
    assert target.any() and not target.all()
    assert got.ratio == pytest.approx(q[target].mean() / q.mean(), rel=1e-4)
    # the evaluation's figure-4 map and ratio of the same answer (its last answer token)
    model, processor = tiny(family)
    sample = Sample(image=image, question=QUESTION, answer=ANSWER, structured={},
                    geometry=geometry, id="x")
    ratios, maps = answer_attention(model, processor, get_adapter(model), [sample], n_maps=1,
                                    progress=False)
    assert got.ratio == pytest.approx(ratios[0], rel=1e-4)
    np.testing.assert_allclose(got.map, maps["x"].map, atol=1e-6)


@pytest.mark.parametrize("layer", [0, -1])
def test_lens_map_matches_lens_maps(family, layer):
    model, processor = tiny(family)
    image = noise_image(70, 45, 3)
    def want(prompt=None):  # PaliGemma's prefix attends both ways: the question matters
        maps = lens_maps(model, processor, get_adapter(model), [image], ["circle"], [layer],
                         prompt=prompt)
        return maps.map(0, layer, "circle").numpy()

    v = viewer(family)
    v.set_image(image)
    before = v.lens_map("circle", layer)  # no question yet: the lens's own forward
    v.answer(None, QUESTION, given=ANSWER)
    after = v.lens_map(" circle ", layer)  # the answer's cached forward
    for got, expected in ((before, want()), (after, want(QUESTION))):
        np.testing.assert_allclose(got.map, expected, atol=1e-6)
        assert got.info["word"] == "circle" and got.info["layer"] == layer % v.num_layers


def test_answer_is_the_runners_greedy_answer(family):
    model, processor = tiny(family)
    image = noise_image(64, 64, 4)
    sample = Sample(image=image, question=QUESTION, answer="", structured={},
                    geometry=Geometry(), id="x")
    want = generate_answers(model, processor, get_adapter(model), [sample], max_new_tokens=4,
                            progress=False)["x"]
    v = viewer(family)
    ans = v.answer(image, QUESTION)
    assert ans.text == want
    if not want:  # a random model may say nothing: then there is no token to click
        with pytest.raises(ViewError, match="empty"):
            v.token_map(0)


def test_heads_box_is_locates(family):
    model, processor = tiny(family)
    adapter = get_adapter(model)
    heads = [(adapter.num_layers - 1, 0), (0, adapter.num_heads - 1)]
    spec = HeadSpec("tiny", heads, 0.0, 0, [], [], [])
    image = noise_image(90, 60, 5)
    sample = Sample(image=image, question="the red one", answer="", structured={},
                    geometry=Geometry(), id="x")
    (want,) = locate(model, processor, adapter, spec, [sample])
    v = viewer(family, spec=spec)
    v.set_image(image)
    got = v.heads_box("  the red   one ")
    assert got.box == pytest.approx(want.box)
    np.testing.assert_array_equal(got.mask, want.pixel_mask)
    np.testing.assert_allclose(got.map, want.heatmap)
    assert v.heads_box("the red one") is got  # cached per expression
    # the box is outlined in cyan on the overlay, at the display scale
    k = got.overlay.width / image.width
    x0, y0 = round(got.box[0] * k), round(got.box[1] * k)
    assert np.asarray(got.overlay)[y0 + 1, x0 + 1].tolist() == [0, 255, 255]


def test_bad_requests_say_what_to_do():
    family = "llava"
    v = viewer(family)
    with pytest.raises(ViewError, match="upload or pick an image"):
        v.answer(None, QUESTION)
    v.set_image(noise_image(40, 40, 0))
    with pytest.raises(ViewError, match="ask a question first"):
        v.token_map(0)
    with pytest.raises(ViewError, match="type a question"):
        v.answer(None, "  ")
    with pytest.raises(ViewError, match="no HeadSpec"):
        v.heads_box("the cat")
    with pytest.raises(ViewError, match="type a word"):
        v.lens_map("")
    ans = v.answer(None, QUESTION, given=ANSWER)
    n, layers, heads = len(ans.tokens), v.num_layers, v.num_heads
    with pytest.raises(ViewError, match=rf"token must be an index in \[0, {n}\)"):
        v.token_map(n)
    with pytest.raises(ViewError, match="layer must be in"):
        v.token_map(0, layer=layers)
    with pytest.raises(ViewError, match="head must be in"):
        v.token_map(0, head=heads)
    with pytest.raises(ViewError, match=r"heads \[\(0, 99\)\] do not fit"):
        v.set_spec(HeadSpec("m", [(0, 99)], 0.0, 0, [], [], []))
    counts = [[0] * (heads + 1)] * layers
    with pytest.raises(ViewError, match="found on a model of"):
        v.set_spec(HeadSpec("m", [(0, 0)], 0.0, 0, counts, [], []))
    with pytest.raises(ViewError, match="must be a PIL image"):
        v.set_image(np.zeros((4, 4, 3)))
    v.set_image(noise_image(40, 40, 1))  # a new image drops the answer
    with pytest.raises(ViewError, match="ask a question first"):
        v.token_map(0)


def test_map_json_places_the_map():
    v, image, ans = asked("llava", Geometry(boxes=[BOX]))
    data = v.token_map(0, 1, 0).to_json()
    assert data["kind"] == "attention" and data["token"] == 0 and data["layer"] == 1
    assert data["head"] == 0 and data["answer"] == ANSWER and data["ratio"] is not None
    g = data["grid"]
    assert np.shape(data["map"]) == (g["rows"], g["cols"]) and g["image_size"] == [97, 61]


# -- overlays ------------------------------------------------------------------------------------
def test_overlay_paints_each_cell_where_its_box_is():
    """A grid that crops the image's sides and pads above and below (a centre crop, then a
    letterbox): every output pixel takes the colour of the cell whose image box holds its centre
    (found by brute force), and pixels outside every cell keep the image."""
    geo = GridGeometry(rows=3, cols=3, cell_size=(10.0, 10.0), scale=(0.5, 0.5),
                       offset=(-5.0, 5.0), image_size=(80, 40))  # cells cover x in [10, 70)
    heat = np.arange(9, dtype=float).reshape(3, 3)
    image = Image.new("RGB", (80, 40), (10, 200, 30))
    out = np.asarray(heat_overlay(image, heat, geo, size=160))  # 2x: (80, 160, 3)
    rows, cols = cell_index(geo, (160, 80))
    boxes = geo.cell_boxes(clip=False)  # (rows, cols, 4) image pixels
    colour = {}
    for yy in range(0, 80, 3):
        for xx in range(0, 160, 5):
            x, y = (xx + 0.5) / 2, (yy + 0.5) / 2
            hit = [(r, c) for r in range(3) for c in range(3)
                   if boxes[r, c, 0] <= x < boxes[r, c, 2] and boxes[r, c, 1] <= y < boxes[r, c, 3]]
            assert (rows[yy, xx], cols[yy, xx]) == (hit[0] if hit else (-1, -1))
            if not hit:
                assert out[yy, xx].tolist() == [10, 200, 30]
            else:
                colour.setdefault(hit[0], set()).add(tuple(out[yy, xx]))
    assert (rows == -1).any() and sorted(colour) == [(r, c) for r in range(3) for c in range(3)]
    assert all(len(c) == 1 for c in colour.values())  # one colour per cell
    assert len({next(iter(c)) for c in colour.values()}) == 9  # nine levels, nine colours


def test_overlay_checks_the_map_shape():
    geo = GridGeometry(2, 2, (1.0, 1.0), (1.0, 1.0), (0.0, 0.0), (2, 2))
    with pytest.raises(ValueError, match=r"heat must be \(2, 2\)"):
        heat_overlay(Image.new("RGB", (2, 2)), np.zeros((3, 2)), geo)


# -- the gallery ---------------------------------------------------------------------------------
def test_examples_cover_every_task_with_a_target():
    samples = example_samples(96, per_task=2)
    assert [s.id for s in samples] == [f"{t}-{i}" for t in task_settings(96) for i in (0, 1)]
    assert all(s.image.size == (96, 96) and s.question and not s.geometry.is_empty()
               for s in samples)
    assert example_samples(96, 1)[0].image.tobytes() == samples[0].image.tobytes()  # seeded
    with pytest.raises(ValueError):
        example_samples(8)


def test_model_image_size_reads_the_processor():
    _, processor = tiny("llava")
    side = processor.image_processor.crop_size["height"]
    assert model_image_size(processor) == side
    assert model_image_size(object(), default=123) == 123
