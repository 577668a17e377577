"""Head scores against independent references: a brute-force flood fill for the spatial entropy,
curves with a known knee for tau, hand-computed pooling over grids; the HeadScores container."""

import math
import zipfile
from fractions import Fraction

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
        return described_authors_entropy(a, threshold)
    mean = sum(a.ravel()) / a.size
    mask = a > mean if threshold == "mean" else a - 2 * mean > 1e-3
    comps = brute_components(mask)
    if not comps:
        return math.inf
    shares = [len(c) for c in comps]
    total = sum(shares)
    return -sum(s / total * math.log(s / total) for s in shares if s > 0)


def described_authors_entropy(a, threshold="two_mean", *, share_of="map", weights="excess",
                              margin=1e-3, empty=0.0):
    """The authors' spatial entropy as issue 17 describes it, in exact arithmetic: each cell
    weighs ``relu(A - k * mean)`` (k = 2 for "two_mean", 1 for "mean"); the components are the
    8-connected cells whose weight exceeds the 0.001 margin; each component's share is its
    weight over the weight of the *whole* map; inf when the map has no weight, 0.0 (their bug)
    when it has weight but no component. The keyword arguments change one rule each, for the
    test that the comparison would catch a change: ``share_of="components"`` (shares over the
    components only), ``weights="attention"`` (A instead of the excess), ``margin`` and
    ``empty`` (the value with no component)."""
    cells = [[Fraction(float(v)) for v in row] for row in np.asarray(a)]
    mean = sum(sum(row) for row in cells) / a.size  # exact: a constant map's mean is itself
    k = 2 if threshold == "two_mean" else 1
    excess = [[max(v - k * mean, Fraction(0)) for v in row] for row in cells]
    w = excess if weights == "excess" else cells
    comps = brute_components(np.array([[v > Fraction(margin) for v in row] for row in excess]))
    sums = [sum(w[y][x] for y, x in c) for c in comps]
    total = sum(sum(row) for row in w) if share_of == "map" else sum(sums)
    if not sum(sum(row) for row in excess) > 0:
        return math.inf
    if not comps:
        return empty
    return -sum(float(s / total) * math.log(float(s / total)) for s in sums if s > 0)


def map_corpus(rng, count, dtype):
    """``count`` maps of every kind the authors' rule separates, in ``dtype``: dense, peaky
    (a few hot cells on a low floor), low (weights at or below the 0.001 margin), ties (a few
    exact binary levels, so whole regions sit exactly at the mean or at twice it), constant."""
    maps = []
    for i in range(count):
        shape = (int(rng.integers(1, 13)), int(rng.integers(1, 13)))
        kind = i % 5
        a = rng.random(shape)
        if kind == 1:
            a = np.where(rng.random(shape) < 0.15, a * 10, a * 0.01)
        elif kind == 2:
            a = a * 10 ** -rng.uniform(1.5, 3.5)
        elif kind == 3:
            a = rng.choice([0.0, 0.25, 0.5, 1.0], size=shape, p=[0.4, 0.3, 0.2, 0.1])
        elif kind == 4:
            a = np.full(shape, rng.random() * 10 ** -rng.uniform(0, 3))
        maps.append(a.astype(dtype))
    return maps


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


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int64])
def test_constant_maps_have_no_foreground(dtype):
    """A constant map has no foreground and entropy inf under every threshold and weight, in
    every dtype, even where its computed float mean rounds below the constant (for 22-36% of
    float64 constants), which made the mean rule score 0."""
    rng = np.random.default_rng(0)
    rounded_below = 0
    for i in range(120):
        value = rng.random() * 10 ** rng.uniform(-4, 2) * (-1 if i % 7 == 0 else 1)
        a = np.full((int(rng.integers(1, 24)), int(rng.integers(1, 24))), value).astype(dtype)
        rounded_below += np.float64(a).mean() < np.float64(a[0, 0])
        for threshold in ("mean", "two_mean"):
            assert not binarise(a, threshold).any()
            for weight in ("area", "mass"):
                assert spatial_entropy(a, threshold, weight) == math.inf, (a, threshold, weight)
    if dtype is np.float64:
        assert rounded_below > 10  # the case the rule guards is really exercised


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threshold", ["two_mean", "mean"])
def test_mass_weight_is_the_authors_rule(threshold, dtype):
    """weight="mass" equals the authors' rule as described (`described_authors_entropy`, exact
    arithmetic) on 500 maps of 5 seeds: dense, peaky, low maps whose cells barely clear (or
    miss) the 0.001 margin, maps with exact ties at the mean and at twice it, constant maps."""
    seen = {"inf": 0, "their 0.0": 0, "mass outside components": 0, "several components": 0}
    for seed in range(5):
        for a in map_corpus(np.random.default_rng(seed), 100, dtype):
            got, want = spatial_entropy(a, threshold, "mass"), described_authors_entropy(
                a, threshold)
            assert got == pytest.approx(want, abs=1e-12) or got == want == math.inf, (a, got, want)
            k = 2 if threshold == "two_mean" else 1
            b = np.maximum(np.float64(a) - k * np.float64(a).mean(), 0)
            fg = b > 1e-3
            seen["inf"] += want == math.inf
            seen["their 0.0"] += want == 0.0 and b.sum() > 0 and not fg.any()
            seen["mass outside components"] += fg.any() and b[~fg].sum() > 0
            seen["several components"] += components(fg)[1] > 1
    assert min(seen.values()) > 0, seen  # every case of the rule is exercised


@pytest.mark.parametrize("change", [
    {"share_of": "components"}, {"weights": "attention"}, {"empty": math.inf}, {"margin": 0.0},
    {"threshold": "mean"}])
def test_mass_comparison_catches_a_changed_rule(change):
    """Each one-rule change to the described rule disagrees with weight="mass" on the corpus,
    so `test_mass_weight_is_the_authors_rule` would fail if the implementation made it."""
    kwargs = {"threshold": "two_mean", **change}
    differs = 0
    for a in map_corpus(np.random.default_rng(0), 100, np.float64):
        got = spatial_entropy(a, "two_mean", "mass")
        want = described_authors_entropy(a, **kwargs)
        differs += not (got == pytest.approx(want, abs=1e-9) or got == want == math.inf)
    assert differs > 0


def test_mass_weight_known_values():
    """The authors' rule by hand on a 4 x 4 map (mean 1/8, so 2 * mean = 1/4): weights 0.75
    and 0.2495 in two components, 0.0005 in a cell under the margin that counts only in the
    total; and a map whose weights all sit under the margin, their 0.0."""
    a = np.zeros((4, 4))
    a[0, 0], a[3, 3], a[0, 3] = 1.0, 0.4995, 0.2505  # sum 1.75 + 0.25 = 2 -> mean 1/8
    a[3, 0] = 0.25
    total = 0.75 + 0.2495 + 0.0005
    p = np.array([0.75, 0.2495]) / total
    assert spatial_entropy(a, "two_mean", "mass") == pytest.approx(-(p * np.log(p)).sum())
    low = np.zeros((3, 3))
    low[1, 1] = 0.0011  # mean 0.0011 / 9: weight 0.0011 * 7 / 9 < 0.001
    assert spatial_entropy(low, "two_mean", "mass") == 0.0  # their bug, behind the option
    assert spatial_entropy(low, "two_mean") == math.inf  # no foreground by area


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
    # the same scores are the same bytes, whenever written (a resumed search's files equal an
    # uninterrupted one's): np.savez would stamp each zip entry with the clock
    with zipfile.ZipFile(path) as z:
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert HeadScores.load(path).save(tmp_path / "again.npz").read_bytes() == path.read_bytes()


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
