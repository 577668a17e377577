"""lookhere.maps: heatmap -> mask and the pointing game, against hand-built maps and
grids, and the IoU of its masks against pycocotools."""

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from lookhere.eval.metrics import mask_ious
from lookhere.eval.rec import peak_point as rec_peak_point
from lookhere.heads.grounding import ground
from lookhere.maps import parse_threshold, peak_cell, peak_point, pointing, segment
from lookhere.models.layout import GridGeometry


def grid(rows=4, cols=4, cell=14, scale=1.0, offset=(0.0, 0.0), size=(56, 56)):
    return GridGeometry(rows, cols, (cell, cell), (scale, scale), offset, size)


def blocks(grid_mask, cell):
    """The grid mask upsampled by hand: every cell a cell x cell block of pixels."""
    return np.kron(np.asarray(grid_mask, dtype=int), np.ones((cell, cell), dtype=int)).astype(bool)


HEAT = np.array([[0.0, 0.1, 0.0, 0.0],
                 [0.1, 0.9, 0.6, 0.0],
                 [0.0, 0.5, 0.2, 0.0],
                 [0.0, 0.0, 0.0, 0.4]])  # mean 0.175


def test_mean_threshold_by_hand():
    want = np.array([[0, 0, 0, 0],
                     [0, 1, 1, 0],
                     [0, 1, 1, 0],
                     [0, 0, 0, 1]], dtype=bool)  # > 0.175
    g, px = segment(HEAT, grid())
    assert g.dtype == bool and (g == want).all()
    assert px.shape == (56, 56) and (px == blocks(want, 14)).all()


def test_relative_threshold_and_largest_component_by_hand():
    g, _ = segment(HEAT, grid(), threshold=0.5)  # >= 0.45
    assert (g == (HEAT >= 0.45)).all() and g.sum() == 3  # 0.9, 0.6, 0.5
    g, _ = segment(HEAT, grid(), threshold="0.4")  # >= 0.36: the corner 0.4 joins, alone
    assert g[3, 3] and g.sum() == 4
    g, _ = segment(HEAT, grid(), threshold=0.4, largest=True)
    assert not g[3, 3] and g.sum() == 3
    # mean threshold: the corner touches the block's cell (2, 2) diagonally: 8-connected, kept
    g, _ = segment(HEAT, grid(), largest=True)
    assert g.sum() == 5 and g[3, 3]
    diag = np.eye(4)
    assert segment(diag, grid(), largest=True).grid_mask.sum() == 4


def test_two_mean_threshold():
    g, _ = segment(HEAT, grid(), threshold="two_mean")  # > 0.35 + 0.001
    assert (g == (HEAT > 0.351)).all()


def test_smoothing_spreads_a_spike():
    """Sigma 1, 7 taps, away from the borders: a neighbour gets exp(-1/2) = 0.61 of the peak, a
    diagonal exp(-1) = 0.37, two cells away exp(-2) = 0.14; so 0.3 x max keeps a 3x3 block."""
    spike = np.zeros((8, 8))
    spike[3, 3] = 1.0
    geo = grid(8, 8, size=(112, 112))
    assert segment(spike, geo, 0.3).grid_mask.sum() == 1
    g, _ = segment(spike, geo, 0.3, smooth_sigma=1.0)
    want = np.zeros((8, 8), dtype=bool)
    want[2:5, 2:5] = True
    assert (g == want).all()
    g, _ = segment(spike, geo, 0.4, smooth_sigma=1.0)  # diagonals (0.37) drop out
    assert g.sum() == 5


def test_pixel_mask_undoes_resize_and_padding():
    # a 56 x 28 image resized by 2 to 112 x 56 and padded to 112 x 112 (offset 28 px on top):
    # grid rows 0 and 3 are padding, rows 1-2 the image
    geo = grid(4, 4, cell=28, scale=2.0, offset=(0.0, 28.0), size=(56, 28))
    heat = np.zeros((4, 4))
    heat[1, 0] = heat[2, 3] = heat[0, 1] = 1.0  # the padding cell (0, 1) has no pixel
    g, px = segment(heat, geo)
    assert g.sum() == 3 and px.shape == (28, 56)
    want = np.zeros((28, 56), dtype=bool)
    want[0:14, 0:14] = True  # cell (1, 0): image rows 0-13, cols 0-13
    want[14:28, 42:56] = True  # cell (2, 3)
    assert (px == want).all()


def test_flat_and_zero_maps_give_empty_masks():
    for threshold in ("mean", "two_mean", 0.5):
        for value in (0.0, 0.3):
            g, px = segment(np.full((4, 4), value), grid(), threshold)
            if threshold == 0.5 and value > 0:  # every cell reaches half the max
                assert g.all() and px.all()
            else:
                assert not g.any() and not px.any()


def test_pointing_by_hand():
    gold = np.zeros((56, 56), dtype=bool)
    gold[14:28, 14:28] = True  # exactly cell (1, 1), the peak
    assert peak_point(HEAT, grid()) == (21.0, 21.0)
    assert pointing(HEAT, grid(), gold)
    assert not pointing(HEAT, grid(), ~gold)
    gold2 = np.zeros((56, 56), dtype=bool)
    gold2[21, 21] = True  # the one pixel under the peak cell's centre
    assert pointing(HEAT, grid(), gold2)
    tie = np.zeros((4, 4))
    tie[2, 1] = tie[0, 3] = 1.0  # the first maximum, row-major: (0, 3)
    assert peak_point(tie, grid()) == (49.0, 7.0)
    assert peak_cell(tie, grid()) == (0, 3) and peak_cell(HEAT, grid()) == (1, 1)
    # smoothing moves the peak to the 2x2 block's centre of mass side
    lone = np.zeros((8, 8))
    lone[0, 0] = 1.0
    lone[5:7, 5:7] = 0.9
    geo = grid(8, 8, size=(112, 112))
    assert peak_point(lone, geo) == (7.0, 7.0)
    assert peak_point(lone, geo, smooth_sigma=1.0) in [(77.0, 77.0), (91.0, 77.0),
                                                        (77.0, 91.0), (91.0, 91.0)]


def test_peak_point_matches_rec():
    rng = np.random.default_rng(0)
    geo = grid(4, 4, cell=28, scale=2.0, offset=(0.0, 28.0), size=(56, 28))
    for _ in range(5):
        g = ground(rng.random((2, 4, 4)), geo)
        assert peak_point(g.heatmap, geo) == rec_peak_point(g)


def test_ious_match_pycocotools():
    """mask_ious of segment's pixel masks == pycocotools' IoU (per sample: mIoU) and merged
    areas (cumulative: cIoU), on random maps over a resized grid."""
    rng = np.random.default_rng(1)
    geo = grid(8, 8, cell=14, scale=112 / 70, size=(70, 70))
    preds, golds, ious, inter, union = [], [], [], 0, 0
    for i in range(6):
        heat = rng.random((8, 8)) ** 3
        _, px = segment(heat, geo, ("mean", 0.5, "two_mean")[i % 3], smooth_sigma=i % 2)
        gold = np.zeros((70, 70), dtype=bool)
        x, y = rng.integers(0, 50, 2)
        gold[y:y + 20, x:x + 15] = True
        preds.append(px)
        golds.append(gold)
        rp, rg = (mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in (px, gold))
        ious.append(float(mask_utils.iou([rp], [rg], [0])[0, 0]))
        inter += int(mask_utils.area(mask_utils.merge([rp, rg], intersect=True)))
        union += int(mask_utils.area(mask_utils.merge([rp, rg], intersect=False)))
    assert 0 < np.mean(ious) < 1
    got = mask_ious(preds, golds)
    assert got["mIoU"] == pytest.approx(np.mean(ious), abs=1e-12)
    assert got["cIoU"] == pytest.approx(inter / union, abs=1e-12)


def test_bad_input():
    with pytest.raises(ValueError, match="threshold"):
        segment(HEAT, grid(), "median")
    for bad in (0, 1, 1.5, -0.2, True, float("nan"), "1.0"):
        with pytest.raises(ValueError, match="threshold"):
            parse_threshold(bad)
    assert parse_threshold("0.25") == 0.25 and parse_threshold("mean") == "mean"
    with pytest.raises(ValueError, match="heatmap must be"):
        segment(np.zeros((4, 5)), grid())
    with pytest.raises(ValueError, match="finite"):
        segment(np.full((4, 4), np.nan), grid())
    with pytest.raises(ValueError, match="smooth_sigma"):
        segment(HEAT, grid(), smooth_sigma=-1.0)
    with pytest.raises(ValueError, match="gold_mask"):
        pointing(HEAT, grid(), np.zeros((56, 55), dtype=bool))
