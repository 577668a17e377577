"""Gemma3 adapter: squash-resize geometry, pooled-grid positions, the tiny config, errors.

The check of the grid against the real processor and model (markers) is test_layout.py's;
the forward, round trip and image-count checks of every family are test_adapters.py's.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

import lookhere.models.gemma3  # noqa: F401  (registers the adapter)
from lookhere.models import get_adapter
from lookhere.models.adapter import squash_geometry as gemma3_geometry
from lookhere.models.gemma3 import IMAGE, Gemma3Adapter
from lookhere.models.tiny import build_tiny


@pytest.fixture(scope="module")
def tiny():
    model, processor = build_tiny("gemma3", size="test", seed=0)
    processor.tokenizer.padding_side = "left"
    return model, processor


def _batch(processor, prompts_images):
    prompts = [Gemma3Adapter.tiny_prompt(processor, text, len(ims)) for text, ims in prompts_images]
    images = [ims for _, ims in prompts_images]
    return Gemma3Adapter.process(processor, prompts, images, padding=True), images


@pytest.fixture(scope="module")
def two_prompts(tiny):
    _, processor = tiny
    ims = [Image.new("RGB", (97, 61), "red"), Image.new("RGB", (40, 80), "blue")]
    return _batch(processor, [("what colour left", ims), ("yes", [Image.new("RGB", (50, 50))])])


# -- (1) geometry by hand
def test_geometry_squash_resize(tiny):
    _, processor = tiny
    # size 56x56, 4x4 tokens -> cell 56/4 = 14 canvas px. A 97x61 image is squashed to 56x56:
    # sx = 56/97 = 0.5773, sy = 56/61 = 0.9180, no offset.
    geo = gemma3_geometry(processor.image_processor, (97, 61), 4, (14.0, 14.0), (56, 56))
    assert (geo.rows, geo.cols, geo.cell_size, geo.offset) == (4, 4, (14.0, 14.0), (0.0, 0.0))
    assert geo.scale == pytest.approx((56 / 97, 56 / 61))
    # cell (0, 0) is canvas [0, 14) x [0, 14) -> image x [0, 14/sx = 24.25), y [0, 14/sy = 15.25)
    assert geo.cell_boxes()[0, 0] == pytest.approx([0, 0, 24.25, 15.25])
    # image point (96, 60) -> canvas (55.42, 55.08) -> cell (3, 3)
    assert geo.point_to_cell(96, 60) == (3, 3)
    assert geo.image_fraction() == pytest.approx(np.ones((4, 4)))  # squash: no padding


def test_geometry_no_resize(tiny):
    _, processor = tiny
    ip = type(processor.image_processor)(size={"height": 56, "width": 56}, do_resize=False)
    # no resize: a 56x56 image is the canvas itself, scale 1; cell (1, 2) = x [28, 42), y [14, 28)
    geo = gemma3_geometry(ip, (56, 56), 4, (14.0, 14.0), (56, 56))
    assert geo.scale == (1.0, 1.0)
    assert geo.cell_boxes()[1, 2] == pytest.approx([28, 14, 42, 28])
    with pytest.raises(ValueError, match="resizes to 60x56"):  # 60x56 image != 56x56 canvas
        gemma3_geometry(ip, (60, 56), 4, (14.0, 14.0), (56, 56))


def test_layout_geometry_matches_config(tiny, two_prompts):
    model, processor = tiny
    batch, images = two_prompts
    adapter = get_adapter(model)
    assert isinstance(adapter, Gemma3Adapter)
    geo = adapter.layout(batch, images, processor)[0].images[1].primary.geometry
    # second image 40x80 -> 56x56: sx = 56/40 = 1.4, sy = 56/80 = 0.7; 16 tokens -> 4x4 grid
    assert (geo.rows, geo.cols) == (4, 4) and geo.scale == pytest.approx((1.4, 0.7))


# -- (3) positions
def test_positions_left_padding_two_images(tiny, two_prompts):
    model, processor = tiny
    batch, images = two_prompts
    adapter = Gemma3Adapter(model.config)
    layout = adapter.layout(batch, images, processor)
    ids, types = batch["input_ids"], batch["token_type_ids"]
    image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE)
    boi, eoi = processor.tokenizer.boi_token_id, processor.tokenizer.eoi_token_id
    assert adapter.image_token_id == image_id != processor.image_token_id  # the latter is BOI
    assert (batch["attention_mask"][1, 0] == 0).item()  # sample 1 is left-padded
    assert [len(s.images) for s in layout.samples] == [2, 1]
    for b, sample in enumerate(layout.samples):
        n_visual = int((ids[b] == image_id).sum())
        assert len(sample.visual_positions) == n_visual == 16 * len(images[b])
        assert torch.equal(torch.nonzero(types[b]).flatten(), sample.visual_positions)
        for grid in sample.grids:
            assert grid.shape == (4, 4) and len(grid.positions) == 16
            assert (ids[b, grid.positions] == image_id).all()
            assert torch.equal(sample.visual_positions[grid.key_index], grid.positions)
            assert ids[b, grid.positions[0] - 1] == boi and ids[b, grid.positions[-1] + 1] == eoi
    pos, mask = layout.key_positions()
    assert pos.shape == (2, 32) and mask.sum().item() == 48


# -- (4) the tiny config
def test_tiny_config_takes_both_attention_kinds(tiny, two_prompts):
    model, _ = tiny
    batch, _ = two_prompts
    adapter = Gemma3Adapter(model.config)
    tc = model.config.text_config
    # one sliding layer whose window is shorter than an image block, one full layer
    assert set(tc.layer_types) == {"sliding_attention", "full_attention"}
    assert tc.sliding_window == 8 < batch["input_ids"].shape[1]
    assert tc.final_logit_softcapping is None and tc.attn_logit_softcapping is None
    assert adapter.num_layers == 2
    assert (adapter.num_heads, adapter.num_kv_heads, adapter.head_dim) == (4, 2, 16)


# -- (5) pan and scan, off
def test_loaded_processor_keeps_pan_and_scan_off(tiny, tmp_path):
    _, processor = tiny
    processor.save_pretrained(tmp_path)
    assert Gemma3Adapter.load_processor(str(tmp_path)).image_processor.do_pan_and_scan is False


def test_pan_and_scan_rejected(tiny):
    model, processor = tiny
    adapter = Gemma3Adapter(model.config)
    image = Image.new("RGB", (97, 61))
    prompt = Gemma3Adapter.tiny_prompt(processor, "where", 1)
    # 97/61 = 1.59 >= 1.2 -> 2 crops of 49x61 (>= min crop 20): 3 token blocks for 1 image
    batch = processor(text=[prompt], images=[[image]], return_tensors="pt", do_pan_and_scan=True,
                      pan_and_scan_min_crop_size=20)
    with pytest.raises(ValueError, match="do_pan_and_scan"):
        adapter.layout(batch, [[image]], processor)
    processor.image_processor.do_pan_and_scan = True
    try:
        with pytest.raises(ValueError, match="processor.image_processor.do_pan_and_scan"):
            adapter.layout(batch, [[image]], processor)
    finally:
        processor.image_processor.do_pan_and_scan = False


def test_mm_tokens_must_be_square(tiny):
    model, _ = tiny
    config = model.config.__class__.from_dict(model.config.to_dict())
    config.mm_tokens_per_image = 12
    with pytest.raises(ValueError, match="perfect square"):
        _ = Gemma3Adapter(config).tokens_per_side
