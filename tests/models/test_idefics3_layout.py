"""SmolVLM / Idefics3 adapters: tile-split geometry, positions, forward and round trip.

The check of the global and tiles grids against the real processor and model (markers) is
test_layout.py's; the forward, round trip and image-count checks of every family are
test_adapters.py's.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from conftest import families_of
from PIL import Image, ImageDraw

import lookhere.models.idefics3 as idefics3  # (registers smolvlm and idefics3)
from lookhere.models.adapter import get_adapter
from lookhere.models.idefics3 import TileSplit, split_plan
from lookhere.models.tiny import build_tiny

FAMILIES = families_of(idefics3)  # the families this module registers
TILE, N = 56, 4  # tiny "test" size: 56 px tiles, vision patch 7, scale_factor 2 -> 4x4 tokens


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request):
    model, processor = build_tiny(request.param, "test", seed=0)
    return request.param, model, processor


def _with_image_processor(processor, **kwargs):
    """The same processor class and tokenizer around an image processor with other settings."""
    ip = type(processor.image_processor)(**{**processor.image_processor.to_dict(), **kwargs})
    return type(processor)(image_processor=ip, tokenizer=processor.tokenizer,
                           image_seq_len=processor.image_seq_len)


def _image(size, box=None):
    im = Image.new("RGB", size)
    if box is not None:  # PIL's rectangle includes x1, y1: draw the half-open box [x0, x1)
        ImageDraw.Draw(im).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill="white")
    return im


# -- (1) hand-computed geometry ------------------------------------------------------------------
# Settings of the tiny processor: size longest_edge 112, tile (max_image_size) 56.
CASES = [
    # 97x61 wide: longest edge -> 112, h = int(112 / (97/61)) = int(70.4) = 70 (even);
    # resize_for_vision_encoder: w = ceil(112/56)*56 = 112, h = ceil(~70/56)*56 = 112 -> 2x2 tiles.
    ({}, (97, 61), TileSplit(2, 2, (112, 112))),
    # 97x41 wide: h = int(112 / (97/41)) = int(47.3) = 47 -> 48 (made even);
    # w = 112, h = ceil(48/56)*56 = 56 -> 1 row x 2 cols.
    ({}, (97, 41), TileSplit(1, 2, (112, 56))),
    # 41x97 tall: h = 112, w = int(112 * 41/97) = 47 -> 48; h = 112, w = 56 -> 2 rows x 1 col.
    ({}, (41, 97), TileSplit(2, 1, (56, 112))),
    # longest_edge = one tile: 97x61 -> 56 x int(56 / (97/61)) = 56x35 -> 56x36; both sides round
    # up to 56 = one tile, so split_images keeps the single frame (global only).
    ({"size": {"longest_edge": 56}}, (97, 61), TileSplit(0, 0, (56, 56))),
    # no resize: 150x61 as is; w = ceil(150/56)*56 = 168, h = int(168 / (150/61)) = 68 -> 112.
    ({"do_resize": False}, (150, 61), TileSplit(2, 3, (168, 112))),
    # splitting off: the image is squashed to one 56x56 frame.
    ({"do_image_splitting": False}, (97, 61), TileSplit(0, 0, (56, 56))),
]


@pytest.mark.parametrize(("kwargs", "size", "expected"), CASES)
def test_split_plan_by_hand_and_against_processor(tiny, kwargs, size, expected):
    _, _, processor = tiny
    ip = _with_image_processor(processor, **kwargs).image_processor
    assert split_plan(ip, size) == expected
    out = ip([[_image(size)]], return_row_col_info=True, return_tensors="pt")
    assert (out["rows"][0][0], out["cols"][0][0]) == (expected.tile_rows, expected.tile_cols)
    n_frames = expected.tile_rows * expected.tile_cols + 1  # tiles + global (or the one frame)
    assert out["pixel_values"].shape == (1, n_frames, 3, TILE, TILE)


@pytest.mark.parametrize("kwargs", [{}, {"size": {"longest_edge": 100}}, {"do_resize": False}])
def test_split_plan_matches_processor_on_random_sizes(tiny, kwargs):
    ip = _with_image_processor(tiny[2], **kwargs).image_processor
    rng = np.random.default_rng(0)
    for w, h in rng.integers(1, 200, (12, 2)).tolist():
        plan = split_plan(ip, (w, h))
        out = ip([[_image((w, h))]], return_row_col_info=True, return_tensors="pt")
        assert (out["rows"][0][0], out["cols"][0][0]) == (plan.tile_rows, plan.tile_cols), (w, h)
        assert out["pixel_values"].shape[1] == plan.tile_rows * plan.tile_cols + 1


def test_split_plan_bounded_by_max_image_size(tiny):
    # longest_edge 5000 on 100x50: 5000x2500, then the 4096 bound: 4096 x int(4096/2) = 4096x2048;
    # tiles of 56: w = ceil(4096/56)*56 = 74*56 = 4144, h = ceil(int(4144/2)/56)*56 = 37*56 = 2072.
    ip = _with_image_processor(tiny[2], size={"longest_edge": 5000}).image_processor
    assert split_plan(ip, (100, 50)) == TileSplit(37, 74, (4144, 2072))


def test_grid_geometry_by_hand(tiny):
    _, model, processor = tiny
    im = _image((97, 61))
    batch = processor(images=[[im]], text=["<image>left"], return_tensors="pt")
    glob, tiles = get_adapter(model).layout(batch, [[im]], processor)[0].images[0].grids
    # global: the whole 97x61 image squashed to 56x56, 4x4 tokens of 14 px.
    assert (glob.name, glob.shape, glob.geometry.cell_size) == ("global", (N, N), (14, 14))
    assert glob.geometry.scale == pytest.approx((56 / 97, 56 / 61))
    # tiles: canvas 112x112 (2x2 tiles) -> 8x8 tokens of 14 px, scale 112/97, 112/61.
    assert (tiles.name, tiles.shape, tiles.geometry.cell_size) == ("tiles", (8, 8), (14, 14))
    assert tiles.geometry.scale == pytest.approx((112 / 97, 112 / 61))
    assert glob.geometry.offset == tiles.geometry.offset == (0, 0)


def test_pixel_shuffle_order_is_row_major(tiny):
    """Token t = a*n + b of a tile pools patches rows a*s.., cols b*s.. (the real connector)."""
    _, model, _ = tiny
    s = model.config.scale_factor
    side = TILE // model.config.vision_config.patch_size  # 8 patches per tile side
    x = torch.arange(side * side, dtype=torch.float32).view(1, -1, 1)  # (1, P, 1) patch ids
    out = model.model.connector.pixel_shuffle(x, s)[0]  # (N*N, s*s) patch ids per token
    for a in range(N):
        for b in range(N):
            patches = {(a * s + i) * side + b * s + j for i in range(s) for j in range(s)}
            assert set(out[a * N + b].long().tolist()) == patches


# -- (3) positions ---------------------------------------------------------------------------------
def _batch(processor, adapter):
    processor.tokenizer.padding_side = "left"
    images = [[_image((97, 61)), _image((41, 97))], [_image((97, 41))]]
    prompts = [adapter.tiny_prompt(processor, "what is left of the square", 2),
               adapter.tiny_prompt(processor, "where", 1)]
    batch = processor(images=images, text=prompts, padding=True, return_tensors="pt")
    return batch, images


def test_positions_with_left_padding_and_two_images(tiny):
    _, model, processor = tiny
    adapter = get_adapter(model)
    batch, images = _batch(processor, adapter)
    ids = batch["input_ids"]
    assert (batch["attention_mask"][1] == 0).any() and batch["attention_mask"][1, 0] == 0
    layout = adapter.layout(batch, images, processor)
    tok = processor.tokenizer
    tile_shapes = [[(8, 8), (8, 4)], [(4, 8)]]  # 2x2, 2x1 and 1x2 tiles of 4x4 tokens
    for b, sample in enumerate(layout.samples):
        assert torch.equal(sample.visual_positions, torch.nonzero(ids[b] == adapter.image_token_id)
                           .flatten())
        keys = torch.cat([g.key_index for g in sample.grids])
        assert torch.equal(keys.sort().values, torch.arange(len(sample.visual_positions)))
        for im, shape in zip(sample.images, tile_shapes[b], strict=True):
            glob, tiles = im.grids
            assert (glob.shape, tiles.shape) == ((N, N), shape)
            for g in im.grids:
                assert (ids[b, g.positions] == adapter.image_token_id).all()
                assert torch.equal(sample.visual_positions[g.key_index], g.positions)
            assert ids[b, glob.positions[0] - 1] == tok.convert_tokens_to_ids("<global-img>")
            _check_tile_tags(ids[b], tiles, tok)


def _check_tile_tags(ids, tiles, tok):
    """The top-left token of stitched tile (tr, tc) directly follows its <row_r_col_c> tag."""
    pos = tiles.positions.view(tiles.shape)
    for tr in range(tiles.shape[0] // N):
        for tc in range(tiles.shape[1] // N):
            tag = tok.convert_tokens_to_ids(f"<row_{tr + 1}_col_{tc + 1}>")
            assert ids[pos[tr * N, tc * N] - 1] == tag
            block = pos[tr * N:(tr + 1) * N, tc * N:(tc + 1) * N].flatten()
            assert torch.equal(block, block[0] + torch.arange(N * N))  # one contiguous run


# -- (4) errors ------------------------------------------------------------------------------------
def test_processed_with_other_settings(tiny):
    _, model, processor = tiny
    im = _image((97, 61))
    batch = processor(images=[[im]], text=["<image>x"], do_image_splitting=False,
                      return_tensors="pt")
    with pytest.raises(ValueError, match="processor's settings give"):
        get_adapter(model).layout(batch, [[im]], processor)
