"""Pixel <-> visual-token geometry of every registered adapter against the real processor and model.

One reference serves every family (`check_geometry`). A small white square (a "marker") is drawn at
known pixels of a black image; the family's real processor prepares the image and the real model
turns it into the language model's input embeddings, with the vision tower's attention switched
off so that each visual token depends only on the pixels of its own patches. The visual tokens
whose embedding the marker changes are the cells the marker really landed in, and the adapter's
geometry must predict exactly those:

- no token of a grid changes outside the cells that the marker's box covers (`box_coverage` > 0);
- the cell that `point_to_cell` gives for the marker's centre changes, and so does every cell the
  box covers wholly;
- visual tokens that belong to no grid (LLaVA-NeXT's row newlines) and the tokens of the prompt's
  other image never change.

This goes through everything between the pixels and the language model: the processor's resize,
crop, pad and tiling, the model's patching, pooling / merging / pixel shuffle, unpadding and the
order in which it writes the features into the image tokens. The processor resamples with NEAREST
for these runs (the pixel map is the same for every filter), so a marker does not bleed into the
neighbouring cells and the prediction holds to `SLACK` canvas pixels (cells are 14 to 28 px).
Every grid of every image is checked: LLaVA-NeXT base + crops, Idefics3 / SmolVLM global + tiles.

`test_geometry_matches_processor` runs the check over the adapter registry (`FAMILIES`) and
several image shapes at each tiny processor's settings, so a new family gets it by registering.
`test_family_settings` runs it on the non-default settings that take other branches of a family's
geometry (LLaVA pad-to-square, Qwen pixel bounds, Idefics3 without splitting or resizing, ...).
The per-family files (test_<family>_layout.py) keep the hand-computed cases.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from conftest import tiny
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


def check_geometry(family, processor, size, seed=0):
    """Markers must change exactly the cells the adapter's geometry maps them to (module doc)."""
    model, _ = tiny(family)
    adapter = get_adapter(model)
    w, h = size
    # Marker side: >= 3 canvas pixels in every grid, so the cell holding its centre sees it.
    probe = _process(family, processor, [[_marker_image(OTHER), _marker_image(size)]])
    grids = adapter.layout(probe, [[OTHER, size]], processor)[0].images[1].grids
    min_scale = min(min(g.geometry.scale) for g in grids)
    side = min(max(2, math.ceil(3 / min_scale)), w // 2, h // 2)
    boxes = _markers(size, side, seed)
    images = [[_marker_image(OTHER), _marker_image(size, box)] for box in [None, *boxes]]
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
        assert [im.image_size for im in sample.images] == [OTHER, size]

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
        for g in sample.images[1].grids:
            fixed[g.key_index] = False
        where = f"{family} {size}, marker {box}"
        assert not changed[fixed].any(), \
            f"{where}: tokens of the other image or of no grid changed"
        for g in sample.images[1].grids:
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
    check_geometry(family, processor, size)


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
