"""Pixel <-> visual-token geometry of every registered adapter against the real processor and model,
and the hand-computed cases of each family's geometry and token positions.

One reference serves every family (`check_geometry`). A small white square (a "marker") is drawn at
known pixels of a black image; the family's real processor prepares the image and the real model
turns it into the language model's input embeddings, with the vision tower's attention switched
off so that each visual token depends only on the pixels of its own patches. The visual tokens
whose embedding the marker changes are the cells the marker really landed in (the processed pixels
that show it bright, through the model's own patching), and the adapter's geometry must predict
exactly those:

- no token of a grid changes outside the cells that the marker's box covers (`box_coverage` > 0);
- the cell that `point_to_cell` gives for the marker's centre changes, and so does every cell the
  box covers wholly;
- visual tokens that belong to no grid (LLaVA-NeXT's and LLaVA-OneVision's row newlines) and the
  tokens of the prompt's other image never change.

This goes through everything between the pixels and the language model: the processor's resize,
crop, pad and tiling, the model's patching, pooling / merging / pixel shuffle, unpadding and the
order in which it writes the features into the image tokens. Going through the model rather than
decoding ``pixel_values`` by hand keeps the check free of family knowledge (Qwen flattens its
patches, Idefics3 and InternVL stack frames, LLaVA-NeXT crops): the family's own code does that.
The processor resamples with NEAREST for these runs (the pixel map is the same for every filter),
so a marker does not bleed into the neighbouring cells and the prediction holds to `SLACK` canvas
pixels (cells are 14 to 28 px). Every grid of every image is checked: LLaVA-NeXT base + crops,
Idefics3 / SmolVLM / InternVL global + tiles.

`test_geometry_matches_processor` runs the check over the adapter registry (the ``family``
fixture) and several image shapes at each tiny processor's settings, with the marked image second
in a two-image prompt and alone in its prompt (LLaVA-OneVision tiles only a prompt's only image),
so a new family gets it by registering. `test_family_settings` runs it on the non-default settings
that take other branches of a family's geometry (LLaVA pad-to-square, Qwen pixel bounds, Idefics3
without splitting or resizing, ...). The sections after it hold each family's hand-computed cases
(the processors' integer arithmetic, token positions against the model's own bookkeeping, clear
errors): what the generic check cannot see.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from conftest import FAMILIES, tiny
from PIL import Image, ImageDraw

from lookhere.models import adapter_class, get_adapter

NEAREST = 0  # PIL.Image.Resampling.NEAREST: no blur across cell edges
N_MARKERS = 16  # marker images per check: the centre of the image plus random places
OTHER = (37, 53)  # the prompt's first image, never marked: its tokens must never change
# Canvas pixels of slack on the "must not change" side. One nearest resize is exact (a canvas
# pixel changes iff its centre maps into the marker), but Idefics3 / SmolVLM resize twice (longest
# edge, then up to whole tiles): the marker's edge may move by half a pixel of the intermediate
# image, up to 1.1 canvas pixels for the shapes here (33x140: 26 -> 56 px wide).
SLACK = 1.5

SIZES = {  # (width, height)
    "square": (64, 64),
    "wide": (97, 61),
    "tall": (59, 95),
    "very_wide_odd": (151, 37),
    "very_tall_odd": (33, 140),
    "small_odd": (23, 31),  # upscaled by every processor
}


class _Captured(Exception):
    """Stops the forward pass once the language model's input embeddings are in hand."""


def _zero_output(module, args, output):
    if isinstance(output, tuple):
        return (torch.zeros_like(output[0]), *output[1:])
    return torch.zeros_like(output)


@contextmanager
def _local_vision(model, adapter):
    """Switch off every attention module outside the language model (the vision tower's): each
    visual token then depends only on the pixels of its own patches (its receptive field)."""
    lm = {id(m) for m in adapter.language_model(model).modules()}
    hooks = [m.register_forward_hook(_zero_output) for m in model.modules()
             if id(m) not in lm and type(m).__name__.endswith("Attention")]
    assert hooks, "no attention module found outside the language model"
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def lm_input_embeddings(model, adapter, batch) -> torch.Tensor:
    """(B, L, D) embeddings the language model receives, image features already in place."""
    captured = {}

    def grab(module, args, kwargs):
        captured["embeds"] = kwargs.get("inputs_embeds")
        raise _Captured

    handle = adapter.language_model(model).register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with _local_vision(model, adapter), torch.no_grad():
            model(**batch)
    except _Captured:
        pass
    finally:
        handle.remove()
    assert captured.get("embeds") is not None, "the language model got no inputs_embeds"
    return captured["embeds"]


def _marker_image(size, box=None) -> Image.Image:
    image = Image.new("RGB", size)
    if box is not None:  # PIL's rectangle includes x1, y1: draw the half-open box [x0, x1)
        ImageDraw.Draw(image).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill="white")
    return image


def _markers(size, side, seed):
    """Marker boxes (x0, y0, x1, y1): one at the image centre, the rest anywhere in the image."""
    w, h = size
    rng = np.random.default_rng(seed)
    corners = [((w - side) // 2, (h - side) // 2)]
    corners += list(zip(rng.integers(0, w - side + 1, N_MARKERS - 1).tolist(),
                        rng.integers(0, h - side + 1, N_MARKERS - 1).tolist(), strict=True))
    return [(x, y, x + side, y + side) for x, y in corners]


def _process(family, processor, image_lists):
    cls = adapter_class(family)
    texts = [cls.tiny_prompt(processor, "where", len(ims)) for ims in image_lists]
    return cls.process(processor, texts, image_lists, padding=True, resample=NEAREST)


def check_geometry(family, processor, size, seed=0, one_image=False):
    """Markers must change exactly the cells the adapter's geometry maps them to (module doc).

    The marked image is second in its prompt, after an unmarked one, or alone (``one_image``).
    """
    model, _ = tiny(family)
    adapter = get_adapter(model)
    w, h = size
    lead = [] if one_image else [OTHER]  # the images before the marked one
    marked = len(lead)  # its index in the prompt
    # Marker side: >= 3 canvas pixels in every grid, so the cell holding its centre sees it.
    probe = _process(family, processor, [[*map(_marker_image, lead), _marker_image(size)]])
    grids = adapter.layout(probe, [[*lead, size]], processor)[0].images[marked].grids
    min_scale = min(min(g.geometry.scale) for g in grids)
    side = min(max(2, math.ceil(3 / min_scale)), w // 2, h // 2)
    boxes = _markers(size, side, seed)
    images = [[*map(_marker_image, lead), _marker_image(size, box)] for box in [None, *boxes]]
    batch = _process(family, processor, images)
    layout = adapter.layout(batch, images, processor)
    embeds = lm_input_embeddings(model, adapter, batch)

    ids = batch["input_ids"]
    for b, sample in enumerate(layout.samples):
        # Every image token is a visual position, and the grids share none of them.
        assert torch.equal(sample.visual_positions,
                           torch.nonzero(ids[b] == adapter.image_token_id).flatten())
        keys = torch.cat([g.key_index for g in sample.grids])
        assert keys.unique().numel() == keys.numel() <= len(sample.visual_positions)
        assert [im.image_size for im in sample.images] == [*lead, size]

    blank = embeds[0, layout[0].visual_positions]
    deltas = [(embeds[k, layout[k].visual_positions] - blank).abs().amax(-1)
              for k in range(1, len(images))]
    changed_at = 1e-4 * float(torch.stack(deltas).max())
    assert changed_at > 0, "no marker changed any visual token"
    seen = {g.name: 0 for g in grids}
    for k, (box, delta) in enumerate(zip(boxes, deltas, strict=True), 1):
        sample = layout[k]
        changed = delta > changed_at
        fixed = torch.ones_like(changed)
        for g in sample.images[marked].grids:
            fixed[g.key_index] = False
        where = f"{family} {size}, marker {box}"
        assert not changed[fixed].any(), \
            f"{where}: tokens of the other image or of no grid changed"
        for g in sample.images[marked].grids:
            geo = g.geometry
            got = g.to_grid(changed).numpy()
            sx, sy = (SLACK / s for s in geo.scale)
            allowed = geo.box_coverage((box[0] - sx, box[1] - sy, box[2] + sx, box[3] + sy)) > 0
            needed = geo.box_coverage(box) >= 1 - 1e-9
            centre = geo.point_to_cell((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
            if centre is not None:
                needed[centre] = True
            msg = (f"{where}: grid {g.name!r} {g.shape}, cells that changed\n{got.astype(int)}\n"
                   f"cells the geometry allows\n{allowed.astype(int)}\nand needs\n"
                   f"{needed.astype(int)}")
            assert not (got & ~allowed).any(), msg
            assert got[needed].all(), msg
            seen[g.name] += int(got.sum())
    assert all(seen.values()), f"{family} {size}: some grid never saw a marker: {seen}"


@pytest.mark.parametrize("size", list(SIZES.values()), ids=list(SIZES))
def test_geometry_matches_processor(family, size):
    _, processor = tiny(family)
    check_geometry(family, processor, size, one_image=not adapter_class(family).multi_image)


ALONE = ("wide", "tall", "very_wide_odd", "small_odd")  # shapes that take every tiling branch


@pytest.mark.parametrize("size", [SIZES[k] for k in ALONE], ids=ALONE)
def test_geometry_of_a_prompts_only_image(family, size):
    _, processor = tiny(family)
    check_geometry(family, processor, size, one_image=True)


# -- family-specific settings, the same reference ------------------------------------------------
SETTINGS = [
    # (family, image processor attributes, image size)
    ("llava", {"do_pad": True}, (97, 61)),  # pad to square: offset on y
    ("llava", {"do_pad": True}, (61, 97)),  # ... and on x
    ("llava", {"size": {"shortest_edge": 42}}, (80, 60)),  # shortest < crop: center_crop pads
    ("llava_next", {"size": {"height": 56, "width": 56}}, (97, 61)),  # base squashed to h x w
    ("llava_next", {}, (45, 101)),  # tall pinpoint (112, 56): 8x4 crops, nothing unpadded
    ("qwen2_5_vl", {"size": {"shortest_edge": 224 * 224, "longest_edge": 448 * 448}},
     (97, 61)),  # upscaled to 308x196: 11x7 cells
    ("qwen2_vl", {"size": {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 30}},
     (397, 251)),  # downscaled to 168x112: 6x4 cells
    ("smolvlm", {"do_image_splitting": False}, (97, 61)),  # the global frame only
    ("idefics3", {"do_resize": False}, (150, 61)),  # no resize: a 168x112 canvas, 2x3 tiles
    ("idefics3", {"size": {"longest_edge": 56}}, (97, 61)),  # one tile: not split
    ("qwen3_vl", {"size": {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 30}},
     (397, 251)),  # downscaled to 168x112: 6x4 cells
    ("internvl", {"max_patches": 2}, (200, 50)),  # 4:1 image in at most 2 tiles: 2x1 + thumb
    ("internvl", {"min_patches": 2}, (50, 40)),  # a small image tiled anyway: 2x2 + thumb
]


@pytest.mark.parametrize(("family_name", "settings", "size"), SETTINGS,
                         ids=[f"{f}-{'-'.join(s) or 'default'}-{w}x{h}"
                              for f, s, (w, h) in SETTINGS])
def test_family_settings(family_name, settings, size):
    _, processor = tiny(family_name)
    processor = copy.deepcopy(processor)  # the tiny processor is shared by the whole session
    for name, value in settings.items():
        setattr(processor.image_processor, name, value)
    check_geometry(family_name, processor, size)


# =================================================================================================
# Hand-computed cases, per family: the processors' integer arithmetic, token positions against the
# model's own bookkeeping, and the clear errors. A family's cases take its tiny model and processor
# from `tiny` (shared by the session: a case that changes a setting works on a copy).


def _copy_with(processor, **settings):
    """A copy of a tiny processor whose image processor has other settings."""
    processor = copy.deepcopy(processor)
    for name, value in settings.items():
        setattr(processor.image_processor, name, value)
    return processor


# -- LLaVA-1.5: optional pad to square, resize (shortest edge), center crop ----------------------
@pytest.mark.parametrize(
    "do_pad, shortest, size, scale, offset",
    [
        # resize 80x60 -> short side 56, long int(56*80/60)=74: (74, 56); crop left (74-56)//2=9
        (False, 56, (80, 60), (74 / 80, 56 / 60), (-9, 0)),
        # tall 60x80 -> (56, 74); crop top 9
        (False, 56, (60, 80), (56 / 60, 74 / 80), (0, -9)),
        # pad 80x60 to 80x80 (top (80-60)//2=10), resize x0.7 -> offset y 7
        (True, 56, (80, 60), (0.7, 0.7), (0, 7)),
        # pad 61x97 to 97x97 (left (97-61)//2=18), resize 56/97
        (True, 56, (61, 97), (56 / 97, 56 / 97), (18 * 56 / 97, 0)),
        # shortest 42 < crop 56: 80x60 -> (56, 42); center_crop pads height by ceil(14/2)=7
        (False, 42, (80, 60), (56 / 80, 42 / 60), (0, 7)),
    ],
)
def test_llava_geometry_by_hand(do_pad, shortest, size, scale, offset):
    from lookhere.models.llava import llava_geometry

    processor = _copy_with(tiny("llava")[1], do_pad=do_pad, size={"shortest_edge": shortest},
                           crop_size={"height": 56, "width": 56})
    geo = llava_geometry(processor.image_processor, size, 4, 4, 14)
    np.testing.assert_allclose(geo.scale, scale)
    np.testing.assert_allclose(geo.offset, offset)
    assert geo.image_size == size and geo.cell_size == (14, 14)


def test_llava_cell_boxes_round_trip():
    from lookhere.models.llava import llava_geometry

    processor = _copy_with(tiny("llava")[1], do_pad=True)
    geo = llava_geometry(processor.image_processor, (80, 60), 4, 4, 14)
    boxes = geo.cell_boxes(clip=False)  # (4, 4, 4)
    # pad-to-square 80x80, 20 px per cell; 10 px of padding on top and bottom
    np.testing.assert_allclose(boxes[0, 0], [0, -10, 20, 10])
    np.testing.assert_allclose(boxes[3, 3], [60, 50, 80, 70])
    assert geo.point_to_cell(79.9, 0.0) == (0, 3)
    assert geo.point_to_cell(100, 30) is None
    with pytest.raises(ValueError, match="box"):
        geo.box_coverage((10, 10, 5, 20))


# -- Qwen2-VL, Qwen2.5-VL, Qwen3-VL: smart_resize, one rectangular grid ---------------------------
def _qwen_families():
    from lookhere.models.qwen2_vl import QwenVLAdapter

    return [f for f in FAMILIES if issubclass(adapter_class(f), QwenVLAdapter)]


# The tiny processors: patch 14, merge 2 -> factor 28; min_pixels 56*56 = 3136,
# max_pixels 112*112 = 12544. (W, H) -> (W', H') by smart_resize, by hand:
QWEN_CASES = [
    # round branch: 97/28 = 3.46 -> 3 -> 84; 61/28 = 2.18 -> 2 -> 56; 84*56 = 4704 in range.
    ((97, 61), (84, 56)),
    # round half to even: 126/28 = 4.5 -> 4 -> 112; 70/28 = 2.5 -> 2 -> 56; 6272 in range.
    ((126, 70), (112, 56)),
    # max branch: round gives 308*196 = 60368 > 12544; beta = sqrt(300*200/12544) = 2.1871;
    # W' = floor(300/2.1871/28) * 28 = floor(4.90) * 28 = 112; H' = floor(3.27) * 28 = 84.
    ((300, 200), (112, 84)),
    # min branch: round gives 28*28 = 784 < 3136; beta = sqrt(3136/(30*20)) = 2.2862;
    # W' = ceil(30*2.2862/28) * 28 = ceil(2.45) * 28 = 84; H' = ceil(1.63) * 28 = 56.
    ((30, 20), (84, 56)),
    # max branch with the factor clamp: round gives 588*28 = 16464 > 12544; beta = 0.97809;
    # W' = floor(600/0.97809/28) * 28 = 21 * 28 = 588; H' = max(28, floor(0.73) * 28) = 28,
    # so the result (16464 px) still exceeds max_pixels.
    ((600, 20), (588, 28)),
]


@pytest.fixture(params=_qwen_families())
def qwen(request):
    return request.param, *tiny(request.param)


def _qwen_batch(family, processor, images):
    cls = adapter_class(family)
    processor.tokenizer.padding_side = "left"
    texts = [cls.tiny_prompt(processor, f"what is sample {b}", len(ims))
             for b, ims in enumerate(images)]
    return cls.process(processor, texts, images, padding=True)


@pytest.mark.parametrize(("image_size", "canvas"), QWEN_CASES)
def test_qwen_geometry_by_hand(qwen, image_size, canvas):
    from lookhere.models.qwen2_vl import qwen_resized_size

    family, model, processor = qwen
    (w, h), (cw, ch) = image_size, canvas
    assert qwen_resized_size(processor.image_processor, w, h) == (cw, ch)
    images = [[Image.new("RGB", (w, h))]]
    batch = _qwen_batch(family, processor, images)
    assert batch["image_grid_thw"].tolist() == [[1, ch // 14, cw // 14]]
    geo = get_adapter(model).layout(batch, images, processor)[0].grids[0].geometry
    assert (geo.rows, geo.cols) == (ch // 28, cw // 28)
    assert geo.cell_size == (28, 28) and geo.offset == (0.0, 0.0)
    assert geo.scale == pytest.approx((cw / w, ch / h))
    assert geo.image_size == (w, h)


def test_qwen_resize_mirror_matches_processor():
    """The smart_resize mirror agrees with the real processor over many sizes and settings."""
    from transformers import Qwen2VLImageProcessorPil

    from lookhere.models.qwen2_vl import qwen_resized_size

    rng = np.random.default_rng(0)
    for lo, hi in ((56 * 56, 112 * 112), (28 * 28, 28 * 28 * 20), (224 * 224, 448 * 448)):
        ip = Qwen2VLImageProcessorPil(min_pixels=lo, max_pixels=hi)
        for w, h in rng.integers(5, 700, size=(25, 2)).tolist():
            if max(w, h) / min(w, h) > 200:
                continue
            out = ip(Image.new("RGB", (w, h)), return_tensors="pt")
            _, gh, gw = out["image_grid_thw"][0].tolist()
            assert qwen_resized_size(ip, w, h) == (gw * 14, gh * 14), (w, h, lo, hi)


@pytest.fixture
def qwen_padded(qwen):
    family, model, processor = qwen
    images = [[_marker_image((97, 61), (10, 10, 40, 40)), Image.new("RGB", (30, 20), "red")],
              [Image.new("RGB", (300, 200), "blue")]]
    return model, processor, images, _qwen_batch(family, processor, images)


def test_qwen_positions(qwen_padded):
    model, processor, images, batch = qwen_padded
    adapter = get_adapter(model)
    layout = adapter.layout(batch, images, processor)
    ids, image_id = batch["input_ids"], adapter.image_token_id
    assert (batch["attention_mask"][:, 0] == 0).any(), "expected left padding"
    assert torch.equal(batch["mm_token_type_ids"], (ids == image_id).long())
    # 97x61 -> 84x56 (3x2 tokens), 30x20 -> 84x56 (3x2), 300x200 -> 112x84 (4x3): see above.
    assert [[g.shape for g in s.grids] for s in layout.samples] == [[(2, 3), (2, 3)], [(3, 4)]]
    for b, sample in enumerate(layout.samples):
        for g in sample.grids:
            # each image is one contiguous run, wrapped by <|vision_start|> ... <|vision_end|>
            assert torch.equal(g.positions, torch.arange(g.positions[0], g.positions[-1] + 1))
            before, after = ids[b, g.positions[0] - 1], ids[b, g.positions[-1] + 1]
            assert before == model.config.vision_start_token_id
            assert after == model.config.vision_end_token_id


def test_qwen_positions_match_the_models_mrope_grid(qwen_padded):
    """Independent check of row-major order: the model's own M-RoPE (h, w) ids of each token."""
    model, processor, images, batch = qwen_padded
    rope, _ = model.model.get_rope_index(
        batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
        image_grid_thw=batch["image_grid_thw"], attention_mask=batch["attention_mask"],
    )  # (3, B, L): temporal, height, width
    layout = get_adapter(model).layout(batch, images, processor)
    for b, sample in enumerate(layout.samples):
        for g in sample.grids:
            rows, cols = g.shape
            h, w = rope[1, b, g.positions], rope[2, b, g.positions]
            assert torch.equal((h - h.min()).view(rows, cols),
                               torch.arange(rows).view(rows, 1).expand(rows, cols))
            assert torch.equal((w - w.min()).view(rows, cols),
                               torch.arange(cols).view(1, cols).expand(rows, cols))


def test_qwen_grid_thw_of_other_images_is_a_clear_error(qwen_padded):
    model, processor, images, batch = qwen_padded
    wrong = {**batch, "image_grid_thw": batch["image_grid_thw"][:2]}
    with pytest.raises(ValueError, match="sample 1: .* image tokens do not match"):
        get_adapter(model).layout(wrong, images, processor)


# -- LLaVA-NeXT: anyres, a base and an unpadded crops grid ---------------------------------------
S, P = 56, 14  # the "test" size: base/crop side and patch side; 4x4 patches per view
PINPOINTS = [[S, S], [S, 2 * S], [2 * S, S], [2 * S, 2 * S]]  # (height, width)


def _next_ip(**kw):
    from transformers import LlavaNextImageProcessorPil

    kw = {"size": {"shortest_edge": S}, "crop_size": {"height": S, "width": S},
          "image_grid_pinpoints": PINPOINTS, **kw}
    return LlavaNextImageProcessorPil(**kw)


def _approx(geo, rows, cols, scale, offset, cell=(P, P)):
    assert (geo.rows, geo.cols) == (rows, cols)
    assert geo.cell_size == pytest.approx(cell)
    assert np.allclose(geo.scale, scale) and np.allclose(geo.offset, offset)


def test_llava_next_wide_image_unpad_drops_rows():
    from lookhere.models.llava_next import anyres_grids

    g = anyres_grids(_next_ip(), (97, 61), P)
    # base: squashed 97x61 -> 56x56, 4x4 patches.
    _approx(g.base, 4, 4, (56 / 97, 56 / 61), (0, 0))
    # best resolution (h, w): (112, 112) keeps all 97*61 px (the 56-high ones downscale).
    # resize keeping aspect: scale_w = 112/97 < scale_h -> w 112, h = ceil(61*112/97 = 70.4) = 71;
    # pad top (112-71)//2 = 20. Feature grid 8x8; unpad: new_rows = int(61*8/97 = 5.03) = 5,
    # pad (8-5)//2 = 1 row each side -> 6x8, origin 1 row (14 px) lower: oy = 20 - 14 = 6.
    _approx(g.crops, 6, 8, (112 / 97, 71 / 61), (0, 6))
    assert g.num_tokens == 16 + 6 * (8 + 1)


def test_llava_next_tall_image_unpad_drops_columns_into_the_image():
    from lookhere.models.llava_next import anyres_grids

    g = anyres_grids(_next_ip(), (59, 95), P)
    _approx(g.base, 4, 4, (56 / 59, 56 / 95), (0, 0))
    # best (112, 112) (effective 5605 px vs 5040 for (112, 56)); scale_h = 112/95 < scale_w ->
    # h 112, w = ceil(59*112/95 = 69.6) = 70; pad left (112-70)//2 = 21. Unpad: new_cols =
    # int(59*8/95 = 4.97) = 4, pad (8-4)//2 = 2 cols each side -> 8x4, ox = 21 - 28 = -7
    # (unpad's rounding cuts 7 canvas px of the image off each side).
    _approx(g.crops, 8, 4, (70 / 59, 112 / 95), (-7, 0))


def test_llava_next_tall_pinpoint_unpad_keeps_all():
    from lookhere.models.llava_next import anyres_grids

    g = anyres_grids(_next_ip(), (45, 101), P)
    # best (112, 56): scale_h = 112/101 < scale_w = 56/45 -> h 112, w = ceil(45*112/101 = 49.9)
    # = 50, pad left (56-50)//2 = 3. Grid 8x4; unpad: new_cols = int(45*8/101 = 3.56) = 3,
    # pad (4-3)//2 = 0 -> nothing dropped.
    _approx(g.crops, 8, 4, (50 / 45, 112 / 101), (3, 0))


def test_llava_next_small_image_single_crop():
    from lookhere.models.llava_next import anyres_grids

    g = anyres_grids(_next_ip(), (50, 40), P)
    # best (56, 56): scale = min(56/50, 56/40) = 1.12 -> 56x44, all 2000 px kept, least waste.
    # w 56, h = ceil(40*1.12 = 44.8) = 45, pad top (56-45)//2 = 5; unpad: new_rows =
    # int(40*4/50 = 3.2) = 3, pad (4-3)//2 = 0 -> 4x4 kept.
    _approx(g.crops, 4, 4, (56 / 50, 45 / 40), (0, 5))


def test_llava_next_height_width_size_mode():
    from lookhere.models.llava_next import anyres_grids

    # size {"height", "width"}: base squashed straight to it, the crops are unchanged.
    g = anyres_grids(_next_ip(size={"height": S, "width": S}), (97, 61), P)
    _approx(g.base, 4, 4, (56 / 97, 56 / 61), (0, 0))
    _approx(g.crops, 6, 8, (112 / 97, 71 / 61), (0, 6))


def test_llava_next_crops_changed_by_resize_is_rejected():
    from lookhere.models.llava_next import anyres_grids

    # shortest_edge 64 then crop 56 would zoom every crop: the crops no longer tile one grid.
    with pytest.raises(ValueError, match="crops"):
        anyres_grids(_next_ip(size={"shortest_edge": 64}), (97, 61), P)


def _anyres_batch(family, processor, images):
    cls = adapter_class(family)
    processor.tokenizer.padding_side = "left"
    texts = [cls.tiny_prompt(processor, "what colour is the square", len(ims)) for ims in images]
    return cls.process(processor, texts, images, padding=True)


def test_llava_next_positions_match_the_models_feature_counts():
    model, proc = tiny("llava_next")
    images = [[Image.new("RGB", (97, 61), "red")],
              [Image.new("RGB", (59, 95), "blue"), Image.new("RGB", (45, 101), "green")]]
    batch = _anyres_batch("llava_next", proc, images)
    ids, adapter = batch["input_ids"], get_adapter(model)
    assert (batch["attention_mask"][0] == 0).any()  # sample 0 is left padded
    layout = adapter.layout(batch, images, proc)
    tok = adapter.image_token_id
    # The model's own per-image feature counts: must equal each image's token block.
    with torch.no_grad():
        feats = model.model.get_image_features(batch["pixel_values"], batch["image_sizes"])
    lens = iter(f.shape[0] for f in feats.pooler_output)
    for b, sample in enumerate(layout):
        in_grids = torch.cat([g.positions for g in sample.grids])
        n_newline = 0
        for im in sample.images:
            base, crops = im.grids
            assert (base.name, crops.name) == ("base", "crops")
            n = base.key_index.numel() + crops.key_index.numel() + crops.geometry.rows
            assert n == next(lens)
            n_newline += crops.geometry.rows
            # the newline token follows the last cell of every crops row
            ends = crops.positions.view(crops.shape)[:, -1] + 1
            assert (ids[b, ends] == tok).all() and not torch.isin(ends, in_grids).any()
        assert len(sample.visual_positions) == in_grids.numel() + n_newline
    with pytest.raises(StopIteration):
        next(lens)


def test_llava_next_image_size_other_than_processed():
    """An image whose size is not the one the batch was processed at (its ``image_sizes``)."""
    model, proc = tiny("llava_next")
    images = [[Image.new("RGB", (97, 61))], [Image.new("RGB", (59, 95)),
                                              Image.new("RGB", (45, 101))]]
    batch = _anyres_batch("llava_next", proc, images)
    with pytest.raises(ValueError, match="images: image 2"):
        get_adapter(model).layout(batch, [images[0], [images[1][0], (44, 101)]], proc)


# -- LLaVA-OneVision: anyres for a prompt's only image (shrunk past anyres_max_N), else views ----
def _onevision_counts(model, batch):
    """The model's own token count per image (its packed features)."""
    with torch.no_grad():
        feats = model.model.get_image_features(
            batch["pixel_values"], batch["image_sizes"], batch_num_images=batch["batch_num_images"],
            vision_feature_layer=-1, vision_feature_select_strategy="full",
            vision_aspect_ratio=model.config.vision_aspect_ratio)
    return [f.shape[0] for f in feats.pooler_output]


def test_llava_onevision_crops_shrink_past_anyres_max():
    model, proc = tiny("llava_onevision")
    model, proc = copy.deepcopy(model), copy.deepcopy(proc)
    model.config.vision_aspect_ratio = proc.vision_aspect_ratio = "anyres_max_1"
    images = [[Image.new("RGB", (97, 61))]]
    batch = _anyres_batch("llava_onevision", proc, images)
    base, crops = get_adapter(model).layout(batch, images, proc)[0].grids
    # unpadded crops 6x8 (as LLaVA-NeXT's above): r = sqrt(48 / (1 * 16)) = 1.732 > 1.1, so the
    # model interpolates to int(6 // 1.732) x int(8 // 1.732) = 3x4 tokens of 28x28 canvas px
    _approx(crops.geometry, 3, 4, (112 / 97, 71 / 61), (0, 6), cell=(28, 28))
    assert base.shape == (4, 4)
    assert _onevision_counts(model, batch) == [16 + 3 * (4 + 1)]


def test_llava_onevision_several_images_are_square_views():
    model, proc = tiny("llava_onevision")
    images = [[Image.new("RGB", (97, 61))],
              [Image.new("RGB", (97, 61)), Image.new("RGB", (40, 80))]]
    batch = _anyres_batch("llava_onevision", proc, images)
    layout = get_adapter(model).layout(batch, images, proc)
    assert [len(im.grids) for s in layout for im in s.images] == [2, 1, 1]
    wide, tall = (im.primary.geometry for im in layout[1].images)
    # 97x61 padded to 97x97 (top (97-61)//2 = 18), squashed to 56x56: offset y = 18 * 56/97
    _approx(wide, 4, 4, (56 / 97, 56 / 97), (0, 18 * 56 / 97))
    # 40x80 padded to 80x80 (left (80-40)//2 = 20), squashed to 56x56: offset x = 20 * 0.7
    _approx(tall, 4, 4, (0.7, 0.7), (14, 0))
    assert _onevision_counts(model, batch) == [16 + 6 * 9, 17, 17]  # one newline per view
    ids = batch["input_ids"][1]
    for im in layout[1].images:  # the view's last token is followed by its newline
        assert ids[im.primary.positions[-1] + 1] == get_adapter(model).image_token_id


# -- Gemma3 and PaliGemma: a plain squash resize ---------------------------------------------------
def test_squash_geometry_by_hand():
    from lookhere.models.adapter import squash_geometry

    ip = tiny("gemma3")[1].image_processor
    # size 56x56, 4x4 tokens -> cell 56/4 = 14 canvas px. A 97x61 image is squashed to 56x56:
    # sx = 56/97 = 0.5773, sy = 56/61 = 0.9180, no offset.
    geo = squash_geometry(ip, (97, 61), 4, (14.0, 14.0), (56, 56))
    assert (geo.rows, geo.cols, geo.cell_size, geo.offset) == (4, 4, (14.0, 14.0), (0.0, 0.0))
    assert geo.scale == pytest.approx((56 / 97, 56 / 61))
    # cell (0, 0) is canvas [0, 14) x [0, 14) -> image x [0, 14/sx = 24.25), y [0, 14/sy = 15.25)
    assert geo.cell_boxes()[0, 0] == pytest.approx([0, 0, 24.25, 15.25])
    # image point (96, 60) -> canvas (55.42, 55.08) -> cell (3, 3)
    assert geo.point_to_cell(96, 60) == (3, 3)
    assert geo.image_fraction() == pytest.approx(np.ones((4, 4)))  # squash: no padding
    # no resize: a 56x56 image is the canvas itself, scale 1; cell (1, 2) = x [28, 42), y [14, 28)
    still = type(ip)(size={"height": 56, "width": 56}, do_resize=False)
    geo = squash_geometry(still, (56, 56), 4, (14.0, 14.0), (56, 56))
    assert geo.scale == (1.0, 1.0)
    assert geo.cell_boxes()[1, 2] == pytest.approx([28, 14, 42, 28])
    with pytest.raises(ValueError, match="resizes to 60x56"):  # 60x56 image != 56x56 canvas
        squash_geometry(still, (60, 56), 4, (14.0, 14.0), (56, 56))


@pytest.fixture
def gemma3_two_prompts():
    model, processor = tiny("gemma3")
    ims = [Image.new("RGB", (97, 61), "red"), Image.new("RGB", (40, 80), "blue")]
    images = [ims, [Image.new("RGB", (50, 50))]]
    prompts = [adapter_class("gemma3").tiny_prompt(processor, text, len(im))
               for text, im in zip(("what colour left", "yes"), images, strict=True)]
    processor.tokenizer.padding_side = "left"
    return model, processor, images, adapter_class("gemma3").process(processor, prompts, images,
                                                                     padding=True)


def test_gemma3_positions_left_padding_two_images(gemma3_two_prompts):
    from lookhere.models.gemma3 import IMAGE

    model, processor, images, batch = gemma3_two_prompts
    adapter = get_adapter(model)
    layout = adapter.layout(batch, images, processor)
    ids, types = batch["input_ids"], batch["token_type_ids"]
    image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE)
    boi, eoi = processor.tokenizer.boi_token_id, processor.tokenizer.eoi_token_id
    assert adapter.image_token_id == image_id != processor.image_token_id  # the latter is BOI
    assert (batch["attention_mask"][1, 0] == 0).item()  # sample 1 is left-padded
    # second image 40x80 -> 56x56: sx = 56/40 = 1.4, sy = 56/80 = 0.7; 16 tokens -> 4x4 grid
    assert layout[0].images[1].primary.geometry.scale == pytest.approx((1.4, 0.7))
    for b, sample in enumerate(layout.samples):
        assert len(sample.visual_positions) == 16 * len(images[b])
        assert torch.equal(torch.nonzero(types[b]).flatten(), sample.visual_positions)
        for grid in sample.grids:
            assert grid.shape == (4, 4)
            assert ids[b, grid.positions[0] - 1] == boi and ids[b, grid.positions[-1] + 1] == eoi


def test_gemma3_tiny_config_takes_both_attention_kinds(gemma3_two_prompts):
    model, _, _, batch = gemma3_two_prompts
    adapter = get_adapter(model)
    tc = model.config.text_config
    # one sliding layer whose window is shorter than an image block, one full layer
    assert set(tc.layer_types) == {"sliding_attention", "full_attention"}
    assert tc.sliding_window == 8 < batch["input_ids"].shape[1]
    assert tc.final_logit_softcapping is None and tc.attn_logit_softcapping is None
    assert (adapter.num_heads, adapter.num_kv_heads, adapter.head_dim) == (4, 2, 16)


def test_gemma3_loaded_processor_keeps_pan_and_scan_off(tmp_path):
    processor = tiny("gemma3")[1]
    processor.save_pretrained(tmp_path)
    loaded = adapter_class("gemma3").load_processor(str(tmp_path))
    assert loaded.image_processor.do_pan_and_scan is False


def test_gemma3_pan_and_scan_rejected():
    model, processor = tiny("gemma3")
    adapter = get_adapter(model)
    image = Image.new("RGB", (97, 61))
    prompt = adapter.tiny_prompt(processor, "where", 1)
    # 97/61 = 1.59 >= 1.2 -> 2 crops of 49x61 (>= min crop 20): 3 token blocks for 1 image
    batch = processor(text=[prompt], images=[[image]], return_tensors="pt", do_pan_and_scan=True,
                      pan_and_scan_min_crop_size=20)
    with pytest.raises(ValueError, match="do_pan_and_scan"):
        adapter.layout(batch, [[image]], processor)
    with pytest.raises(ValueError, match="processor.image_processor.do_pan_and_scan"):
        adapter.layout(batch, [[image]], _copy_with(processor, do_pan_and_scan=True))


def test_gemma3_mm_tokens_must_be_square():
    model, _ = tiny("gemma3")
    config = model.config.__class__.from_dict(model.config.to_dict())
    config.mm_tokens_per_image = 12
    with pytest.raises(ValueError, match="perfect square"):
        _ = adapter_class("gemma3")(config).tokens_per_side


def test_paligemma_geometry_by_hand():
    model, processor = tiny("paligemma")
    images = [[Image.new("RGB", (97, 61)), Image.new("RGB", (40, 80))]]
    batch = adapter_class("paligemma").process(
        processor, [adapter_class("paligemma").tiny_prompt(processor, "where", 2)], images)
    layout = get_adapter(model).layout(batch, images, processor)
    wide, tall = (im.primary.geometry for im in layout[0].images)
    # SigLIP squashes to 56x56: 4x4 patches of 14 px; 97x61 -> (56/97, 56/61), 40x80 -> (1.4, 0.7)
    assert (wide.rows, wide.cols, wide.cell_size) == (4, 4, (14, 14))
    assert wide.scale == pytest.approx((56 / 97, 56 / 61))
    assert tall.scale == pytest.approx((1.4, 0.7))
    ids = batch["input_ids"][0]
    # <image> * 32, then <bos>: the images are one block at the very start of the prefix
    assert layout[0].visual_positions.tolist() == list(range(32))
    assert ids[32] == processor.tokenizer.bos_token_id


# -- SmolVLM and Idefics3: tiles plus a global image, pixel-shuffled ------------------------------
TILE, N = 56, 4  # tiny "test" size: 56 px tiles, vision patch 7, scale_factor 2 -> 4x4 tokens


def _idefics3_families():
    from lookhere.models.idefics3 import _Idefics3Family

    return [f for f in FAMILIES if issubclass(adapter_class(f), _Idefics3Family)]


@pytest.fixture(params=_idefics3_families())
def idefics3(request):
    return request.param, *tiny(request.param)


def _with_image_processor(processor, **kwargs):
    """The same processor class and tokenizer around an image processor with other settings."""
    ip = type(processor.image_processor)(**{**processor.image_processor.to_dict(), **kwargs})
    return type(processor)(image_processor=ip, tokenizer=processor.tokenizer,
                           image_seq_len=processor.image_seq_len)


def _tile_split(rows, cols, canvas):
    from lookhere.models.idefics3 import TileSplit

    return TileSplit(rows, cols, canvas)


# Settings of the tiny processor: size longest_edge 112, tile (max_image_size) 56.
IDEFICS3_CASES = [
    # 97x61 wide: longest edge -> 112, h = int(112 / (97/61)) = int(70.4) = 70 (even);
    # resize_for_vision_encoder: w = ceil(112/56)*56 = 112, h = ceil(~70/56)*56 = 112 -> 2x2 tiles.
    ({}, (97, 61), (2, 2, (112, 112))),
    # 97x41 wide: h = int(112 / (97/41)) = int(47.3) = 47 -> 48 (made even);
    # w = 112, h = ceil(48/56)*56 = 56 -> 1 row x 2 cols.
    ({}, (97, 41), (1, 2, (112, 56))),
    # 41x97 tall: h = 112, w = int(112 * 41/97) = 47 -> 48; h = 112, w = 56 -> 2 rows x 1 col.
    ({}, (41, 97), (2, 1, (56, 112))),
    # longest_edge = one tile: 97x61 -> 56 x int(56 / (97/61)) = 56x35 -> 56x36; both sides round
    # up to 56 = one tile, so split_images keeps the single frame (global only).
    ({"size": {"longest_edge": 56}}, (97, 61), (0, 0, (56, 56))),
    # no resize: 150x61 as is; w = ceil(150/56)*56 = 168, h = int(168 / (150/61)) = 68 -> 112.
    ({"do_resize": False}, (150, 61), (2, 3, (168, 112))),
    # splitting off: the image is squashed to one 56x56 frame.
    ({"do_image_splitting": False}, (97, 61), (0, 0, (56, 56))),
]


@pytest.mark.parametrize(("kwargs", "size", "expected"), IDEFICS3_CASES)
def test_idefics3_split_plan_by_hand_and_against_processor(idefics3, kwargs, size, expected):
    from lookhere.models.idefics3 import split_plan

    ip = _with_image_processor(idefics3[2], **kwargs).image_processor
    expected = _tile_split(*expected)
    assert split_plan(ip, size) == expected
    out = ip([[_marker_image(size)]], return_row_col_info=True, return_tensors="pt")
    assert (out["rows"][0][0], out["cols"][0][0]) == (expected.tile_rows, expected.tile_cols)
    n_frames = expected.tile_rows * expected.tile_cols + 1  # tiles + global (or the one frame)
    assert out["pixel_values"].shape == (1, n_frames, 3, TILE, TILE)


@pytest.mark.parametrize("kwargs", [{}, {"size": {"longest_edge": 100}}, {"do_resize": False}])
def test_idefics3_split_plan_matches_processor_on_random_sizes(idefics3, kwargs):
    from lookhere.models.idefics3 import split_plan

    ip = _with_image_processor(idefics3[2], **kwargs).image_processor
    rng = np.random.default_rng(0)
    for w, h in rng.integers(1, 200, (12, 2)).tolist():
        plan = split_plan(ip, (w, h))
        out = ip([[_marker_image((w, h))]], return_row_col_info=True, return_tensors="pt")
        assert (out["rows"][0][0], out["cols"][0][0]) == (plan.tile_rows, plan.tile_cols), (w, h)
        assert out["pixel_values"].shape[1] == plan.tile_rows * plan.tile_cols + 1


def test_idefics3_split_plan_bounded_by_max_image_size(idefics3):
    from lookhere.models.idefics3 import split_plan

    # longest_edge 5000 on 100x50: 5000x2500, then the 4096 bound: 4096 x int(4096/2) = 4096x2048;
    # tiles of 56: w = ceil(4096/56)*56 = 74*56 = 4144, h = ceil(int(4144/2)/56)*56 = 37*56 = 2072.
    ip = _with_image_processor(idefics3[2], size={"longest_edge": 5000}).image_processor
    assert split_plan(ip, (100, 50)) == _tile_split(37, 74, (4144, 2072))


def test_idefics3_grid_geometry_by_hand(idefics3):
    _, model, processor = idefics3
    im = _marker_image((97, 61))
    batch = processor(images=[[im]], text=["<image>left"], return_tensors="pt")
    glob, tiles = get_adapter(model).layout(batch, [[im]], processor)[0].images[0].grids
    # global: the whole 97x61 image squashed to 56x56, 4x4 tokens of 14 px.
    assert (glob.name, glob.shape, glob.geometry.cell_size) == ("global", (N, N), (14, 14))
    assert glob.geometry.scale == pytest.approx((56 / 97, 56 / 61))
    # tiles: canvas 112x112 (2x2 tiles) -> 8x8 tokens of 14 px, scale 112/97, 112/61.
    assert (tiles.name, tiles.shape, tiles.geometry.cell_size) == ("tiles", (8, 8), (14, 14))
    assert tiles.geometry.scale == pytest.approx((112 / 97, 112 / 61))
    assert glob.geometry.offset == tiles.geometry.offset == (0, 0)


def test_idefics3_pixel_shuffle_order_is_row_major(idefics3):
    """Token t = a*n + b of a tile pools patches rows a*s.., cols b*s.. (the real connector)."""
    _, model, _ = idefics3
    s = model.config.scale_factor
    side = TILE // model.config.vision_config.patch_size  # 8 patches per tile side
    x = torch.arange(side * side, dtype=torch.float32).view(1, -1, 1)  # (1, P, 1) patch ids
    out = model.model.connector.pixel_shuffle(x, s)[0]  # (N*N, s*s) patch ids per token
    for a in range(N):
        for b in range(N):
            patches = {(a * s + i) * side + b * s + j for i in range(s) for j in range(s)}
            assert set(out[a * N + b].long().tolist()) == patches


def test_idefics3_positions_with_left_padding_and_two_images(idefics3):
    _, model, processor = idefics3
    adapter = get_adapter(model)
    processor.tokenizer.padding_side = "left"
    images = [[_marker_image((97, 61)), _marker_image((41, 97))], [_marker_image((97, 41))]]
    prompts = [adapter.tiny_prompt(processor, "what is left of the square", 2),
               adapter.tiny_prompt(processor, "where", 1)]
    batch = processor(images=images, text=prompts, padding=True, return_tensors="pt")
    ids, tok = batch["input_ids"], processor.tokenizer
    assert batch["attention_mask"][1, 0] == 0
    layout = adapter.layout(batch, images, processor)
    tile_shapes = [[(8, 8), (8, 4)], [(4, 8)]]  # 2x2, 2x1 and 1x2 tiles of 4x4 tokens
    for b, sample in enumerate(layout.samples):
        for im, shape in zip(sample.images, tile_shapes[b], strict=True):
            glob, tiles = im.grids
            assert (glob.shape, tiles.shape) == ((N, N), shape)
            assert ids[b, glob.positions[0] - 1] == tok.convert_tokens_to_ids("<global-img>")
            # the top-left token of stitched tile (tr, tc) directly follows <row_r_col_c>
            pos = tiles.positions.view(tiles.shape)
            for tr in range(tiles.shape[0] // N):
                for tc in range(tiles.shape[1] // N):
                    tag = tok.convert_tokens_to_ids(f"<row_{tr + 1}_col_{tc + 1}>")
                    assert ids[b, pos[tr * N, tc * N] - 1] == tag
                    block = pos[tr * N:(tr + 1) * N, tc * N:(tc + 1) * N].flatten()
                    assert torch.equal(block, block[0] + torch.arange(N * N))  # one run


def test_idefics3_processed_with_other_settings(idefics3):
    _, model, processor = idefics3
    im = _marker_image((97, 61))
    batch = processor(images=[[im]], text=["<image>x"], do_image_splitting=False,
                      return_tensors="pt")
    with pytest.raises(ValueError, match="processor's settings give"):
        get_adapter(model).layout(batch, [[im]], processor)


# -- InternVL: tiles of the squashed image plus a thumbnail ----------------------------------------
# The tiny processor: 56 px tiles, 1 to 4 of them; a thumbnail after several tiles.
INTERNVL_CASES = [
    # aspect 1.59: of the arrangements (cols, rows) with 1-4 tiles, (2, 1) is closest (0.41)
    ((97, 61), 2, 1),
    # aspect 4: (4, 1) exactly
    ((200, 50), 4, 1),
    # aspect 1.25: (1, 1) and (2, 2) tie (0.25); the 2000 px image is under half of 2x2 tiles
    # (0.5 * 56² * 4 = 6272 px), so the fewer tiles stay: one frame, no thumbnail
    ((50, 40), 0, 0),
    # aspect 1: the same tie, but 14400 px > 6272 px: 2x2 tiles
    ((120, 120), 2, 2),
]


@pytest.mark.parametrize(("size", "cols", "rows"), INTERNVL_CASES)
def test_internvl_tiling_by_hand(size, cols, rows):
    model, processor = tiny("internvl")
    adapter = get_adapter(model)
    images = [[_marker_image(size)]]
    batch = adapter.process(processor, [adapter.tiny_prompt(processor, "where", 1)], images)
    grids = adapter.layout(batch, images, processor)[0].grids
    frames = cols * rows + 1 if cols else 1
    assert batch["pixel_values"].shape[0] == frames
    assert [g.name for g in grids] == (["global", "tiles"] if cols else ["global"])
    w, h = size
    glob = grids[0].geometry
    assert (glob.rows, glob.cols, glob.cell_size) == (N, N, (14, 14))
    assert glob.scale == pytest.approx((56 / w, 56 / h))
    if cols:
        tiles = grids[1].geometry
        assert (tiles.rows, tiles.cols) == (rows * N, cols * N)
        assert tiles.scale == pytest.approx((cols * 56 / w, rows * 56 / h))
        # the thumbnail's tokens come last, after every tile's
        assert grids[0].key_index.min() == cols * rows * N * N


def test_internvl_positions_and_errors():
    model, processor = tiny("internvl")
    adapter = get_adapter(model)
    processor.tokenizer.padding_side = "left"
    images = [[_marker_image((97, 61)), _marker_image((50, 40))], [_marker_image((200, 50))]]
    prompts = [adapter.tiny_prompt(processor, "where is it", 2),
               adapter.tiny_prompt(processor, "what", 1)]
    batch = adapter.process(processor, prompts, images, padding=True)
    ids = batch["input_ids"]
    layout = adapter.layout(batch, images, processor)
    for b, sample in enumerate(layout):
        for im in sample.images:  # each image's tokens sit between its <img> and </img>
            first = int(torch.cat([g.positions for g in im.grids]).min())
            last = int(torch.cat([g.positions for g in im.grids]).max())
            assert ids[b, first - 1] == processor.start_image_token_id
            assert ids[b, last + 1] == processor.end_image_token_id
    # the tiles of stitched tile (0, 1) of the 97x61 image are its second block of 16 tokens
    tiles = layout[0].images[0].grids[1]
    assert torch.equal(tiles.key_index.view(4, 8)[:, 4:].flatten(), 16 + torch.arange(16))
    with pytest.raises(ValueError, match="min/max_patches"):
        adapter.layout(batch, images, _copy_with(processor, max_patches=2))
