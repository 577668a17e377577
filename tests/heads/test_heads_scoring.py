"""Head scores against independent references: a brute-force flood fill for the spatial entropy,
curves with a known knee for tau, hand-computed pooling over grids; the HeadScores container."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lookhere.heads.scoring import (
    HeadScores,
    chord_knee,
    image_attention_sum,
    pooled_entropy,
    spatial_entropy,
)
from lookhere.maps import binarise, components


def brute_components(mask):
    """Component sizes and cell lists by breadth-first search over the 8 neighbours."""
    rows, cols = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    comps = []
    for r in range(rows):
        for c in range(cols):
            if mask[r, c] and not seen[r, c]:
                stack, cells = [(r, c)], []
                seen[r, c] = True
                while stack:
                    y, x = stack.pop()
                    cells.append((y, x))
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            ny, nx = y + dy, x + dx
                            if 0 <= ny < rows and 0 <= nx < cols and mask[ny, nx] \
                                    and not seen[ny, nx]:
                                seen[ny, nx] = True
                                stack.append((ny, nx))
                comps.append(cells)
    return comps


def brute_entropy(a, threshold="mean", weight="area"):
    if weight == "mass":
        return authors_reference(a, threshold)
    mean = sum(a.ravel()) / a.size
    mask = a > mean if threshold == "mean" else a - 2 * mean > 1e-3
    comps = brute_components(mask)
    if not comps:
        return math.inf
    shares = [len(c) for c in comps]
    total = sum(shares)
    return -sum(s / total * math.log(s / total) for s in shares if s > 0)


def authors_reference(a, threshold="two_mean"):
    """The authors' ``spatial_entropy`` (seilk/LocalizationHeads), step by step in torch and
    scipy as they write it, in float64: B = relu(S - k * mean), components of B > 0.001, each
    component's sum of B over the whole map's sum of B, 0 when no component, inf when no mass."""
    from scipy.ndimage import label

    s_h = torch.as_tensor(a, dtype=torch.float64)
    b_h = torch.relu(s_h - (2 if threshold == "two_mean" else 1) * torch.mean(s_h))
    b_np = b_h.numpy()
    labeled, num = label((b_np > 0.001).astype(np.int32), structure=np.ones((3, 3)))
    total = torch.sum(b_h).item()
    if total <= 0:
        return math.inf
    sums = [b_np[labeled == i].sum() for i in range(1, num + 1)]
    probs = [x / total for x in sums if x > 0]
    return -sum(p * np.log(p) for p in probs if p > 0) if probs else 0


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 12), seed=st.integers(0, 10_000),
       threshold=st.sampled_from(["mean", "two_mean"]), weight=st.sampled_from(["area", "mass"]),
       sparse=st.booleans())
def test_entropy_matches_brute_force(rows, cols, seed, threshold, weight, sparse):
    rng = np.random.default_rng(seed)
    a = rng.random((rows, cols))
    if sparse:  # peaky maps like real heads: a few hot cells on a low floor
        a = np.where(rng.random((rows, cols)) < 0.15, a * 10, a * 0.01)
    got = spatial_entropy(a, threshold, weight)
    want = brute_entropy(a, threshold, weight)
    assert got == pytest.approx(want, abs=1e-12) or (math.isinf(got) and math.isinf(want))


def test_entropy_known_values():
    a = np.zeros((6, 6))
    a[1, 1] = a[2, 2] = 1.0  # diagonal neighbours: one component under 8-connectivity
    assert spatial_entropy(a) == 0.0
    assert components(a > 0)[1] == 1
    b = np.zeros((6, 6))
    b[0, 0], b[5, 5] = 1.0, 1.0  # two equal components
    assert spatial_entropy(b) == pytest.approx(math.log(2))
    b[5, 4] = 1.0  # areas 1 and 2
    assert spatial_entropy(b) == pytest.approx(-(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3)))
    c = np.zeros((6, 6))
    c[0, 0], c[5, 5] = 3.0, 1.0  # equal areas; the authors' weights relu(A - mean), mean 1/9
    w = np.array([3.0, 1.0]) - 1 / 9
    p = w / w.sum()
    assert spatial_entropy(c, "mean", weight="mass") == pytest.approx(-(p * np.log(p)).sum())
    assert spatial_entropy(np.ones((4, 5))) == math.inf  # nothing above the mean


def test_constant_maps_have_no_foreground():
    """A constant float64 map has no cell above its mean even where the computed mean rounds
    below the constant (it did for 22-36% of constants), so its entropy is inf, not 0."""
    rng = np.random.default_rng(0)
    rounded_below = 0
    for _ in range(200):
        a = np.full((int(rng.integers(2, 24)), int(rng.integers(2, 24))), rng.random())
        rounded_below += a.mean() < a[0, 0]
        assert spatial_entropy(a) == math.inf and not binarise(a).any()
    assert rounded_below > 10  # the case the rule guards is really exercised


@pytest.mark.parametrize("threshold", ["mean", "two_mean"])
def test_mass_weight_is_the_authors_code(threshold):
    """weight="mass" against the transcription of the authors' function on 300 maps: dense,
    peaky, and low maps whose cells barely clear (or miss) the 0.001 margin, where their code
    divides by mass outside every component and returns 0.0 with no component."""
    rng = np.random.default_rng(1)
    zero_cases = 0
    for i in range(300):
        shape = (int(rng.integers(2, 14)), int(rng.integers(2, 14)))
        a = rng.random(shape)
        if i % 3 == 1:
            a = np.where(rng.random(shape) < 0.15, a * 10, a * 0.01)
        if i % 3 == 2:
            a = a * 10 ** -rng.uniform(1.5, 3.5)  # B mostly at or below the margin
        got, want = spatial_entropy(a, threshold, "mass"), authors_reference(a, threshold)
        assert got == pytest.approx(want, abs=1e-12) or (math.isinf(got) and math.isinf(want))
        zero_cases += want == 0 and not binarise(a, "two_mean").any()
    assert zero_cases > 0  # their 0.0-without-component case occurs and is reproduced


def test_binarise_rules():
    a = np.array([[0.0, 0.1], [0.2, 0.7]])  # mean 0.25
    assert binarise(a).tolist() == [[False, False], [False, True]]
    assert binarise(a, "two_mean").tolist() == [[False, False], [False, True]]  # 0.7 - 0.5 > 0.001
    b = np.array([[0.0, 0.3], [0.3, 0.4]])  # mean 0.25: mean rule keeps 3 cells, 2*mean none
    assert binarise(b).sum() == 3 and binarise(b, "two_mean").sum() == 0


def test_chord_knee_known_knee():
    # flat then steep: the knee is the last point of the flat part
    v = np.concatenate([np.linspace(0.0, 0.1, 30), np.linspace(0.2, 1.0, 10)])
    i, value = chord_knee(np.random.default_rng(0).permutation(v))  # order does not matter
    assert i == 29 and value == pytest.approx(0.1)
    # a convex curve y = x^4 on [0, 1]: the farthest point from the chord solves 4x^3 = 1
    x = np.linspace(0, 1, 1001)
    i, value = chord_knee(x**4)
    assert x[i] == pytest.approx((1 / 4) ** (1 / 3), abs=1e-3)
    # scale invariance: the knee index does not depend on the units of the values
    assert chord_knee(7 * x**4 + 3)[0] == i


def test_chord_knee_edge_cases():
    assert chord_knee([0.5, 0.5, 0.5]) == (0, 0.5)
    with pytest.raises(ValueError, match="at least 3"):
        chord_knee([0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        chord_knee([0.1, float("nan"), 0.3])


def test_image_attention_sum():
    rows = torch.tensor([[[0.1, 0.2, 0.3], [0.0, 0.0, 0.5]]])  # (B=1, H=2, K=3)
    assert image_attention_sum(rows)[0].tolist() == pytest.approx([0.6, 0.5])
    with pytest.raises(ValueError, match="probabilities"):
        image_attention_sum(torch.tensor([-0.1, 0.2]))


def test_map_errors():
    with pytest.raises(ValueError, match="2-D"):
        spatial_entropy(np.zeros(5))
    with pytest.raises(ValueError, match="finite"):
        spatial_entropy(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="threshold"):
        binarise(np.zeros((2, 2)), "median")
    with pytest.raises(ValueError, match="weight"):
        spatial_entropy(np.eye(3), weight="count")


def test_pooled_entropy_hand_values():
    # (G=3, 2 heads): head 0 has finite entropies on grids 0 and 2, head 1 on none
    e = np.array([[0.5, np.inf], [np.inf, np.inf], [2.0, np.inf]])
    m = np.array([[0.3, 0.1], [0.5, 0.2], [0.1, 0.3]])
    got = pooled_entropy(e, m)
    assert got[0] == pytest.approx((0.3 * 0.5 + 0.1 * 2.0) / (0.3 + 0.1))  # grid 1 left out
    assert got[1] == math.inf
    one = np.array([[0.7, np.inf]])  # one grid: exactly its entropy
    assert pooled_entropy(one, np.array([[0.2, 0.4]])).tolist() == [0.7, math.inf]
    with pytest.raises(ValueError, match="G"):
        pooled_entropy(e, m[:2])


def head_scores(n, seed=0, prefix="s"):
    rng = np.random.default_rng(seed)
    e = rng.uniform(0, 2, (n, 3, 2))
    e[0, 0, 0] = np.inf
    return HeadScores(rng.uniform(0, 1, (n, 3, 2)), e, rng.uniform(0, 0.1, (n, 3, 2)),
                      tuple(f"{prefix}{i}" for i in range(n)))


def test_head_scores_concat_and_round_trip(tmp_path):
    a, b = head_scores(2), head_scores(3, seed=1, prefix="t")
    both = HeadScores.concat([a, b])
    assert len(both) == 5 and both.sample_ids == ("s0", "s1", "t0", "t1", "t2")
    for k in ("s_img", "entropy", "bottom_row"):
        np.testing.assert_array_equal(getattr(both, k)[:2], getattr(a, k))
        np.testing.assert_array_equal(getattr(both, k)[2:], getattr(b, k))
    path = both.save(tmp_path / "scores" / "batch.npz")
    assert sorted(p.name for p in path.parent.iterdir()) == ["batch.npz"]  # no temporary left
    back = HeadScores.load(path)
    assert back.sample_ids == both.sample_ids and back.entropy[0, 0, 0] == np.inf
    for k in ("s_img", "entropy", "bottom_row"):
        np.testing.assert_array_equal(getattr(back, k), getattr(both, k))
        assert getattr(back, k).dtype == np.float64
    with np.load(path, allow_pickle=False) as z:  # ids are text, not pickled objects
        assert z["sample_ids"].dtype.kind == "U"


def test_head_scores_errors(tmp_path):
    a = head_scores(2)
    with pytest.raises(ValueError, match="N, L, H"):
        HeadScores(a.s_img, a.entropy[:, :2], a.bottom_row, a.sample_ids)
    with pytest.raises(ValueError, match="sample_ids"):
        HeadScores(a.s_img, a.entropy, a.bottom_row, ("only one",))
    with pytest.raises(ValueError, match="at least one"):
        HeadScores.concat([])
    np.savez(tmp_path / "other.npz", s_img=a.s_img)
    with pytest.raises(ValueError, match="not a HeadScores"):
        HeadScores.load(tmp_path / "other.npz")
