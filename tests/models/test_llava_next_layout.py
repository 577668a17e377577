"""LLaVA-NeXT adapter: anyres geometry (base + unpadded crops grids), positions, model agreement.

The check of both grids against the real processor and model (markers) is test_layout.py's;
the forward, round trip and image-count checks of every family are test_adapters.py's.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import LlavaNextForConditionalGeneration, LlavaNextImageProcessorPil  # noqa: E402

import lookhere.models.llava_next  # noqa: E402, F401  (registers the family)
from lookhere.models.adapter import get_adapter  # noqa: E402
from lookhere.models.llava_next import LlavaNextAdapter, anyres_grids  # noqa: E402
from lookhere.models.tiny import build_tiny, param_count  # noqa: E402

S, P = 56, 14  # "test" size: base/crop side and patch side; 4x4 patches per view
PINPOINTS = [[S, S], [S, 2 * S], [2 * S, S], [2 * S, 2 * S]]  # (height, width)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny("llava_next", "test", 0)


def _ip(**kw):
    kw = {"size": {"shortest_edge": S}, "crop_size": {"height": S, "width": S},
          "image_grid_pinpoints": PINPOINTS, **kw}
    return LlavaNextImageProcessorPil(**kw)


def _approx(geo, rows, cols, scale, offset):
    assert (geo.rows, geo.cols) == (rows, cols)
    assert geo.cell_size == (P, P)
    assert np.allclose(geo.scale, scale) and np.allclose(geo.offset, offset)


# -- (1) hand-computed geometry ----------------------------------------------------------------
def test_wide_image_unpad_drops_rows():
    g = anyres_grids(_ip(), (97, 61), P)
    # base: squashed 97x61 -> 56x56, 4x4 patches.
    _approx(g.base, 4, 4, (56 / 97, 56 / 61), (0, 0))
    # best resolution (h, w): (112, 112) keeps all 97*61 px (the 56-high ones downscale).
    # resize keeping aspect: scale_w = 112/97 < scale_h -> w 112, h = ceil(61*112/97 = 70.4) = 71;
    # pad top (112-71)//2 = 20. Feature grid 8x8; unpad: new_rows = int(61*8/97 = 5.03) = 5,
    # pad (8-5)//2 = 1 row each side -> 6x8, origin 1 row (14 px) lower: oy = 20 - 14 = 6.
    _approx(g.crops, 6, 8, (112 / 97, 71 / 61), (0, 6))
    assert g.num_tokens == 16 + 6 * (8 + 1)


def test_tall_image_unpad_drops_columns_into_the_image():
    g = anyres_grids(_ip(), (59, 95), P)
    _approx(g.base, 4, 4, (56 / 59, 56 / 95), (0, 0))
    # best (112, 112) (effective 5605 px vs 5040 for (112, 56)); scale_h = 112/95 < scale_w ->
    # h 112, w = ceil(59*112/95 = 69.6) = 70; pad left (112-70)//2 = 21. Unpad: new_cols =
    # int(59*8/95 = 4.97) = 4, pad (8-4)//2 = 2 cols each side -> 8x4, ox = 21 - 28 = -7
    # (unpad's rounding cuts 7 canvas px of the image off each side).
    _approx(g.crops, 8, 4, (70 / 59, 112 / 95), (-7, 0))


def test_tall_pinpoint_unpad_keeps_all():
    g = anyres_grids(_ip(), (45, 101), P)
    # best (112, 56): scale_h = 112/101 < scale_w = 56/45 -> h 112, w = ceil(45*112/101 = 49.9)
    # = 50, pad left (56-50)//2 = 3. Grid 8x4; unpad: new_cols = int(45*8/101 = 3.56) = 3,
    # pad (4-3)//2 = 0 -> nothing dropped.
    _approx(g.crops, 8, 4, (50 / 45, 112 / 101), (3, 0))


def test_small_image_single_crop():
    g = anyres_grids(_ip(), (50, 40), P)
    # best (56, 56): scale = min(56/50, 56/40) = 1.12 -> 56x44, all 2000 px kept, least waste.
    # w 56, h = ceil(40*1.12 = 44.8) = 45, pad top (56-45)//2 = 5; unpad: new_rows =
    # int(40*4/50 = 3.2) = 3, pad (4-3)//2 = 0 -> 4x4 kept.
    _approx(g.crops, 4, 4, (56 / 50, 45 / 40), (0, 5))


def test_height_width_size_mode():
    # size {"height", "width"}: base squashed straight to it, the crops are unchanged.
    g = anyres_grids(_ip(size={"height": S, "width": S}), (97, 61), P)
    _approx(g.base, 4, 4, (56 / 97, 56 / 61), (0, 0))
    _approx(g.crops, 6, 8, (112 / 97, 71 / 61), (0, 6))


def test_crops_changed_by_resize_is_rejected():
    # shortest_edge 64 then crop 56 would zoom every crop: the crops no longer tile one grid.
    with pytest.raises(ValueError, match="crops"):
        anyres_grids(_ip(size={"shortest_edge": 64}), (97, 61), P)


# -- (3) positions in a left-padded batch with 2 images in one prompt --------------------------
def _batch(proc):
    images = [[Image.new("RGB", (97, 61), "red")],
              [Image.new("RGB", (59, 95), "blue"), Image.new("RGB", (45, 101), "green")]]
    proc.tokenizer.padding_side = "left"
    texts = [LlavaNextAdapter.tiny_prompt(proc, "what colour is the square", 1),
             LlavaNextAdapter.tiny_prompt(proc, "find the star", 2)]
    batch = LlavaNextAdapter.process(proc, texts, images, padding=True)
    return batch, images


def test_positions_match_the_models_feature_counts(tiny):
    model, proc = tiny
    batch, images = _batch(proc)
    ids, adapter = batch["input_ids"], get_adapter(model)
    assert (batch["attention_mask"][0] == 0).any()  # sample 0 is left padded
    layout = adapter.layout(batch, images, proc)
    tok = adapter.image_token_id
    # The model's own per-image feature counts: must equal each image's token block.
    with torch.no_grad():
        feats = model.model.get_image_features(batch["pixel_values"], batch["image_sizes"])
    lens = iter(f.shape[0] for f in feats.pooler_output)
    for b, sample in enumerate(layout):
        assert len(sample.images) == len(images[b])
        assert torch.equal(sample.visual_positions, torch.nonzero(ids[b] == tok).flatten())
        in_grids = torch.cat([g.positions for g in sample.grids])
        assert in_grids.unique().numel() == in_grids.numel()
        n_newline = 0
        for im in sample.images:
            base, crops = im.grids
            assert (base.name, crops.name) == ("base", "crops")
            n = base.key_index.numel() + crops.key_index.numel() + crops.geometry.rows
            assert n == next(lens)
            n_newline += crops.geometry.rows
            for g in im.grids:
                assert (ids[b, g.positions] == tok).all()
                assert torch.equal(sample.visual_positions[g.key_index], g.positions)
                assert g.positions.numel() == g.geometry.rows * g.geometry.cols
            # the newline token follows the last cell of every crops row
            ends = crops.positions.view(crops.shape)[:, -1] + 1
            assert (ids[b, ends] == tok).all() and not torch.isin(ends, in_grids).any()
        assert len(sample.visual_positions) == in_grids.numel() + n_newline
    with pytest.raises(StopIteration):
        next(lens)


def test_tiny_sizes(tiny):
    model, _ = tiny
    assert isinstance(model, LlavaNextForConditionalGeneration)
    assert 1e5 <= param_count(model) <= 5e5
    assert model.config.vision_config.image_size == S and model.config.image_grid_pinpoints == \
        PINPOINTS


# -- (4) clear errors -----------------------------------------------------------------------------
def test_image_size_other_than_processed(tiny):
    """An image whose size is not the one the batch was processed at (its ``image_sizes``)."""
    model, proc = tiny
    batch, images = _batch(proc)
    with pytest.raises(ValueError, match="images: image 2"):
        get_adapter(model).layout(batch, [images[0], [images[1][0], (44, 101)]], proc)
