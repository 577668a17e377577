"""LLaVA-NeXT adapter: anyres geometry (base + unpadded crops grids), positions, model agreement."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from transformers import LlavaNextForConditionalGeneration, LlavaNextImageProcessorPil  # noqa: E402
from transformers.models.llava_next.modeling_llava_next import (  # noqa: E402
    get_anyres_image_grid_shape,
)

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


# -- (2) the box lands where it is seen: base view and reassembled crops canvas ------------------
def _brightness(pv: torch.Tensor, ip) -> torch.Tensor:
    """(3, H, W) normalised pixels -> (H, W) mean brightness in [0, 1]."""
    mean = torch.tensor(ip.image_mean)[:, None, None]
    std = torch.tensor(ip.image_std)[:, None, None]
    return (pv * std + mean).mean(0)


def _cell_means(img: torch.Tensor) -> torch.Tensor:
    """(H, W) -> (H/P, W/P) mean per patch."""
    return img.unflatten(0, (-1, P)).unflatten(2, (-1, P)).mean((1, 3))


def _packed_ids(model, image_size_hw: torch.Tensor, nph: int, npw: int) -> torch.Tensor:
    """Run the model's own ``pack_image_features`` on features that name their patch.

    Base patch k -> -(1 + k); crops patch -> its cell id in the full (nph*4, npw*4) canvas grid;
    newline -> -1000. Returns (L,) in token order.
    """
    per = S // P
    cells = torch.arange(nph * per * npw * per).view(nph, per, npw, per)
    crops = cells.permute(0, 2, 1, 3).reshape(nph * npw, per * per)  # crop k row-major, patches
    base = -(1 + torch.arange(per * per))[None]
    feats = torch.cat([base, crops]).float()[..., None]  # (1 + crops, per*per, 1)
    packed, _ = model.model.pack_image_features(
        [feats], image_size_hw[None], "default", image_newline=torch.tensor([-1000.0]))
    return packed[0][:, 0]


@pytest.mark.parametrize("wh, box", [((97, 61), (0, 0, 49, 31)), ((59, 95), (30, 47, 59, 95))])
def test_box_lands_where_it_is_seen(tiny, wh, box):
    model, proc = tiny
    ip = proc.image_processor
    img = Image.new("RGB", wh)
    ImageDraw.Draw(img).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=(255, 255, 255))
    batch = proc(images=[img], text=["<image>where"], return_tensors="pt")
    base_grid, crops_grid = get_adapter(model).layout(batch, [[img]], proc)[0].images[0].grids
    pv, hw = batch["pixel_values"][0], batch["image_sizes"][0]

    # Base: pixel_values[:, 0] is the whole image at base resolution.
    _assert_box(_cell_means(_brightness(pv[0], ip)), base_grid.geometry.box_coverage(box))

    # Crops: reassemble the crops (row-major) into the padded canvas, then let the model's
    # pack_image_features say which canvas cell each crops-grid token holds.
    nph, npw = get_anyres_image_grid_shape(hw, model.config.image_grid_pinpoints, S)
    canvas = pv[1:1 + nph * npw].unflatten(0, (nph, npw)).permute(2, 0, 3, 1, 4)
    canvas = canvas.reshape(3, nph * S, npw * S)
    ids = _packed_ids(model, hw, nph, npw)
    k0 = int(base_grid.key_index[0])
    assert len(ids) == base_grid.key_index.numel() + crops_grid.key_index.numel() + \
        crops_grid.geometry.rows
    assert torch.equal(ids[base_grid.key_index - k0], -(1 + torch.arange(16)).float())
    crop_ids = ids[crops_grid.key_index - k0].long()
    assert (crop_ids >= 0).all() and int((ids == -1000).sum()) == crops_grid.geometry.rows
    seen = _cell_means(_brightness(canvas, ip)).flatten()[crop_ids].view(crops_grid.shape)
    _assert_box(seen, crops_grid.geometry.box_coverage(box))


def _assert_box(seen: torch.Tensor, cov: np.ndarray) -> None:
    seen = seen.numpy()
    assert seen.shape == cov.shape
    inside, outside = cov > 0.9, cov == 0
    assert inside.sum() >= 2 and outside.sum() >= 2
    assert (seen[inside] > 0.7).all(), seen
    assert (seen[outside] < 0.15).all(), seen


# -- (3)-(4) positions in a left-padded batch with 2 images in one prompt; forward ---------------
def _batch(proc):
    images = [[Image.new("RGB", (97, 61), "red")],
              [Image.new("RGB", (59, 95), "blue"), Image.new("RGB", (45, 101), "green")]]
    proc.tokenizer.padding_side = "left"
    texts = [LlavaNextAdapter.tiny_prompt(proc, "what colour is the square", 1),
             LlavaNextAdapter.tiny_prompt(proc, "find the star", 2)]
    batch = LlavaNextAdapter.process(proc, texts, images, padding=True)
    return batch, images


def test_positions_and_forward(tiny):
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
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.shape == (*ids.shape, model.config.text_config.vocab_size)
    assert torch.isfinite(out.logits).all()


def test_tiny_sizes(tiny):
    model, _ = tiny
    assert isinstance(model, LlavaNextForConditionalGeneration)
    assert 1e5 <= param_count(model) <= 5e5
    assert model.config.vision_config.image_size == S and model.config.image_grid_pinpoints == \
        PINPOINTS


# -- (5) save_pretrained -> from_pretrained round trip -----------------------------------------
def test_round_trip(tiny, tmp_path):
    model, proc = tiny
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    model2 = LlavaNextForConditionalGeneration.from_pretrained(tmp_path).eval()
    proc2 = LlavaNextAdapter.load_processor(str(tmp_path))
    batch, images = _batch(proc)
    batch2, _ = _batch(proc2)
    assert torch.equal(batch["input_ids"], batch2["input_ids"])
    assert torch.equal(batch["pixel_values"], batch2["pixel_values"])
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, model2(**batch2).logits)
    lay2 = get_adapter(model2).layout(batch2, images, proc2)
    lay = get_adapter(model).layout(batch, images, proc)
    assert all(torch.equal(a.positions, b.positions) and a.geometry == b.geometry
               for s, s2 in zip(lay, lay2, strict=True)
               for a, b in zip(s.grids, s2.grids, strict=True))


# -- (6) clear errors -----------------------------------------------------------------------------
def test_wrong_images(tiny):
    model, proc = tiny
    batch, images = _batch(proc)
    adapter = get_adapter(model)
    with pytest.raises(ValueError, match="sample 1"):
        adapter.layout(batch, [images[0], images[1][:1]], proc)
    with pytest.raises(ValueError, match="images has 1 samples"):
        adapter.layout(batch, images[:1], proc)
    with pytest.raises(ValueError, match="images: image 2"):
        adapter.layout(batch, [images[0], [images[1][0], (44, 101)]], proc)
    with pytest.raises(ValueError, match="image_sizes"):
        adapter.layout({"input_ids": batch["input_ids"]}, images, proc)
