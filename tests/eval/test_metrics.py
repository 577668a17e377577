"""Metrics against pycocotools and hand computations."""

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from lookhere.eval.metrics import (
    acc_at_iou,
    attention_ratio,
    bootstrap_ci,
    box_iou,
    exact_match,
    mask_ious,
    pointing_accuracy,
)


def _xywh(b):
    return [b[0], b[1], b[2] - b[0], b[3] - b[1]]


def test_box_iou_matches_pycocotools():
    rng = np.random.default_rng(0)
    for _ in range(300):
        a = np.sort(rng.uniform(0, 100, (2, 2)), axis=0).T.reshape(-1)[[0, 2, 1, 3]]
        b = np.sort(rng.uniform(0, 100, (2, 2)), axis=0).T.reshape(-1)[[0, 2, 1, 3]]
        ref = mask_utils.iou([_xywh(a)], [_xywh(b)], [0])[0, 0]
        assert abs(box_iou(tuple(a), tuple(b)) - ref) < 1e-9


def test_acc_at_iou_and_misses():
    gold = [(0, 0, 10, 10)] * 3
    preds = [(0, 0, 10, 10), (5, 5, 15, 15), None]  # IoU 1, 25/175, miss
    assert acc_at_iou(preds, gold) == pytest.approx(1 / 3)
    assert acc_at_iou(preds, gold, threshold=0.1) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="length"):
        acc_at_iou(preds[:2], gold)
    with pytest.raises(ValueError, match="threshold"):
        acc_at_iou(preds, gold, threshold=0)


def test_mask_ious_match_pycocotools():
    rng = np.random.default_rng(1)
    preds = [rng.random((20, 30)) > 0.6 for _ in range(20)]
    golds = [rng.random((20, 30)) > 0.5 for _ in range(20)]
    enc = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in preds + golds]
    per = [mask_utils.iou([enc[i]], [enc[20 + i]], [0])[0, 0] for i in range(20)]
    inter = sum((p & g).sum() for p, g in zip(preds, golds, strict=True))
    union = sum((p | g).sum() for p, g in zip(preds, golds, strict=True))
    got = mask_ious(preds, golds)
    assert got["mIoU"] == pytest.approx(np.mean(per))
    assert got["cIoU"] == pytest.approx(inter / union)


def test_pointing_and_exact_match():
    mask = np.zeros((10, 10), bool)
    mask[2:4, 5:8] = True
    assert pointing_accuracy([(6.5, 3.2), (1, 1), None], masks=[mask] * 3) == pytest.approx(1 / 3)
    assert pointing_accuracy([(3, 3)], boxes=[(0, 0, 5, 5)]) == 1.0
    assert exact_match(["Row 3, column 5.", None, "no"], ["row 3, column 5", "yes", "yes"]) \
        == pytest.approx(1 / 3)


def test_attention_ratio_by_hand():
    a = torch.tensor([[0.4, 0.1, 0.1, 0.0], [0.25, 0.25, 0.25, 0.25]])
    t = torch.tensor([[True, False, False, False], [False, True, False, False]])
    r = attention_ratio(a, t)
    # row 0: 0.4 / (0.6 / 4) = 2.667; row 1: uniform -> 1
    torch.testing.assert_close(r, torch.tensor([0.4 / 0.15, 1.0]))
    vis = torch.tensor([[True, True, True, False]] * 2)
    torch.testing.assert_close(attention_ratio(a, t, vis)[0], torch.tensor(0.4 / 0.2))
    assert torch.isnan(attention_ratio(a, torch.zeros_like(t))).all()


def test_bootstrap_ci():
    mean, lo, hi = bootstrap_ci([1.0] * 50 + [0.0] * 50, seed=0)
    assert mean == 0.5 and lo < 0.5 < hi and hi - lo < 0.25


def test_tally_keeps_per_sample_scores_and_pools_in_order():
    from lookhere.eval.metrics import Tally

    a, b = Tally(), Tally()
    a.add(hit=1.0, inter=3, union=4)
    a.add(hit=0.0)
    b.add(hit=1.0)
    assert a["inter"] == [3] and a["hit"] == [1.0, 0.0] and b["inter"] == []
    both = sum((a, b), Tally())
    assert both["hit"] == [1.0, 0.0, 1.0] and both.mean("hit") == pytest.approx(2 / 3)
    assert a["hit"] == [1.0, 0.0]  # pooling copies
