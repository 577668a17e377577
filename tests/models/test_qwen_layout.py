"""Qwen2.5-VL / Qwen2-VL adapters: smart_resize geometry, token positions, tiny models.

The check of the grid against the real processor and model (markers) is test_layout.py's;
the forward, round trip and image-count checks of every family are test_adapters.py's.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import families_of  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from transformers import Qwen2VLImageProcessorPil  # noqa: E402

import lookhere.models.qwen2_vl as qwen  # noqa: E402  (registers both families)
from lookhere.models import build_tiny, get_adapter  # noqa: E402

FAMILIES = families_of(qwen)  # the families this module registers


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request):
    model, processor = build_tiny(request.param, size="test", seed=0)
    return request.param, model, processor


def _process(processor, images, texts=None, **kwargs):
    texts = texts or ["x"] * len(images)
    flat = [im for ims in images for im in ims]
    return processor(images=flat, text=texts, return_tensors="pt", padding=True, **kwargs)


def _prompts(adapter, processor, images):
    return [adapter.tiny_prompt(processor, f"what is sample {b}", len(ims))
            for b, ims in enumerate(images)]


# -- the tiny models ---------------------------------------------------------------------------
def test_tiny_model_has_gqa_and_the_image_pad_token(tiny):
    _, model, processor = tiny
    adapter = get_adapter(model)
    assert adapter.num_kv_heads == 2 and adapter.num_heads == 4  # GQA of the "test" size
    assert adapter.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")


# -- geometry, by hand -------------------------------------------------------------------------
# The "test" processor: patch 14, merge 2 -> factor 28; min_pixels 56*56 = 3136,
# max_pixels 112*112 = 12544. (W, H) -> (W', H') by smart_resize, by hand:
GEOMETRY_CASES = [
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


@pytest.mark.parametrize(("image_size", "canvas"), GEOMETRY_CASES)
def test_geometry_by_hand(tiny, image_size, canvas):
    _, model, processor = tiny
    (w, h), (cw, ch) = image_size, canvas
    assert qwen.qwen_resized_size(processor.image_processor, w, h) == (cw, ch)
    images = [[Image.new("RGB", (w, h))]]
    batch = _process(processor, images, _prompts(get_adapter(model), processor, images))
    assert batch["image_grid_thw"].tolist() == [[1, ch // 14, cw // 14]]
    geo = get_adapter(model).layout(batch, images, processor)[0].grids[0].geometry
    assert (geo.rows, geo.cols) == (ch // 28, cw // 28)
    assert geo.cell_size == (28, 28) and geo.offset == (0.0, 0.0)
    assert geo.scale == pytest.approx((cw / w, ch / h))
    assert geo.image_size == (w, h)


def test_resize_mirror_matches_processor():
    """The smart_resize mirror agrees with the real processor over many sizes and settings."""
    rng = np.random.default_rng(0)
    for lo, hi in ((56 * 56, 112 * 112), (28 * 28, 28 * 28 * 20), (224 * 224, 448 * 448)):
        ip = Qwen2VLImageProcessorPil(min_pixels=lo, max_pixels=hi)
        for w, h in rng.integers(5, 700, size=(25, 2)).tolist():
            if max(w, h) / min(w, h) > 200:
                continue
            out = ip(Image.new("RGB", (w, h)), return_tensors="pt")
            _, gh, gw = out["image_grid_thw"][0].tolist()
            assert qwen.qwen_resized_size(ip, w, h) == (gw * 14, gh * 14), (w, h, lo, hi)


# -- positions with left padding and two images -------------------------------------------------
def _box_image(size, box):
    image = Image.new("RGB", size)
    ImageDraw.Draw(image).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill="white")
    return image


@pytest.fixture(scope="module")
def padded(tiny):
    family, model, processor = tiny
    processor.tokenizer.padding_side = "left"
    images = [[_box_image((97, 61), (10, 10, 40, 40)), Image.new("RGB", (30, 20), "red")],
              [Image.new("RGB", (300, 200), "blue")]]
    batch = _process(processor, images, _prompts(get_adapter(model), processor, images))
    return family, model, processor, images, batch


def test_positions_hold_image_tokens(padded):
    _, model, processor, images, batch = padded
    adapter = get_adapter(model)
    layout = adapter.layout(batch, images, processor)
    ids, image_id = batch["input_ids"], adapter.image_token_id
    assert (batch["attention_mask"][:, 0] == 0).any(), "expected left padding"
    assert torch.equal(batch["mm_token_type_ids"], (ids == image_id).long())
    # 97x61 -> 84x56 (3x2 tokens), 30x20 -> 84x56 (3x2), 300x200 -> 112x84 (4x3): see above.
    assert [[g.shape for g in s.grids] for s in layout.samples] == [[(2, 3), (2, 3)], [(3, 4)]]
    for b, sample in enumerate(layout.samples):
        assert len(sample.visual_positions) == int((ids[b] == image_id).sum())
        assert sum(g.positions.numel() for g in sample.grids) == len(sample.visual_positions)
        for g in sample.grids:
            assert (ids[b, g.positions] == image_id).all()
            assert torch.equal(sample.visual_positions[g.key_index], g.positions)
            # each image is one contiguous run, wrapped by <|vision_start|> ... <|vision_end|>
            assert torch.equal(g.positions, torch.arange(g.positions[0], g.positions[-1] + 1))
            before, after = ids[b, g.positions[0] - 1], ids[b, g.positions[-1] + 1]
            assert before == model.config.vision_start_token_id
            assert after == model.config.vision_end_token_id


def test_positions_match_the_models_mrope_grid(padded):
    """Independent check of row-major order: the model's own M-RoPE (h, w) ids of each token."""
    _, model, processor, images, batch = padded
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


# -- errors ------------------------------------------------------------------------------------
def test_grid_thw_of_other_images_is_a_clear_error(padded):
    _, model, processor, images, batch = padded
    adapter = get_adapter(model)
    wrong = {**batch, "image_grid_thw": batch["image_grid_thw"][:2]}
    with pytest.raises(ValueError, match="sample 1: .* image tokens do not match"):
        adapter.layout(wrong, images, processor)
