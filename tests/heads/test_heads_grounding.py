"""Grounding from head maps: smoothing against a hand-built kernel, component and hull choices on
hand-drawn maps, and boxes mapped back to pixels through padding."""

import math
from dataclasses import replace

import numpy as np
import pytest

from lookhere.heads.grounding import ground
from lookhere.maps import convex_hull_mask, pixel_mask, smooth
from lookhere.models.layout import GridGeometry


def reference_smooth(a, sigma=1.0, radius=3):
    """Separable Gaussian, weights normalised to 1, reflect-101 padding (OpenCV's default)."""
    x = np.arange(-radius, radius + 1)
    k = np.exp(-(x**2) / (2 * sigma**2))
    k /= k.sum()
    p = np.pad(a, radius, mode="reflect")
    rows = np.array([[np.dot(p[i + radius, j:j + 2 * radius + 1], k)
                      for j in range(a.shape[1])] for i in range(-radius, a.shape[0] + radius)])
    return np.array([[np.dot(rows[i:i + 2 * radius + 1, j], k) for j in range(a.shape[1])]
                     for i in range(a.shape[0])])


def square_grid(n=6, cell=10.0):
    return GridGeometry(rows=n, cols=n, cell_size=(cell, cell), scale=(1.0, 1.0),
                        offset=(0.0, 0.0), image_size=(int(n * cell), int(n * cell)))


def test_smooth_matches_reference():
    a = np.random.default_rng(0).random((7, 9))
    np.testing.assert_allclose(smooth(a), reference_smooth(a), atol=1e-12)
    np.testing.assert_allclose(smooth(a, sigma=0), a)
    with pytest.raises(ValueError, match="odd"):
        smooth(a, kernel=6)


def test_largest_component_and_box():
    g = square_grid()
    m = np.zeros((6, 6))
    m[0:2, 0:3] = 1.0  # 6 cells
    m[4, 4] = 5.0  # 1 cell, more mass per cell
    out = ground(m, g, sigma=0)
    assert out.grid_box == (0, 0, 3, 2)
    assert out.box == (0.0, 0.0, 30.0, 20.0)
    assert out.mask.sum() == 6 and out.mask[:2, :3].all()
    # several heads are summed before binarising
    two = ground(np.stack([m, np.roll(m, 1, axis=0)]), g, sigma=0)
    assert two.grid_box == (0, 0, 3, 3)


def test_hull_fills_concavities():
    comp = np.zeros((5, 5), dtype=bool)
    comp[0, 0:3] = True
    comp[0:3, 0] = True  # an L of 5 cells
    hull = convex_hull_mask(comp)
    # The corners' hull is bounded by the line x + y = 4 (x = column, y = row, cell edges):
    # centres (1.5, 1.5), (2.5, 1.5) and (1.5, 2.5) are inside or on it, (2.5, 2.5) is not.
    assert hull[comp].all() and hull[1, 1] and hull[1, 2] and hull[2, 1] and not hull[2, 2]
    assert hull.sum() == 8


def test_box_maps_back_through_padding():
    # a 200 x 100 image padded to a square canvas (84 px at top and bottom), 4 x 4 cells of 84 px
    g = GridGeometry(rows=4, cols=4, cell_size=(84.0, 84.0), scale=(1.68, 1.68),
                     offset=(0.0, 84.0), image_size=(200, 100))
    m = np.zeros((4, 4))
    m[1:3, 2] = 1.0  # the middle rows hold the image; column 2 is x in [100, 150)
    out = ground(m, g, sigma=0)
    x0, y0, x1, y1 = out.box
    assert (x0, x1) == pytest.approx((2 * 84 / 1.68, 3 * 84 / 1.68))
    assert (y0, y1) == pytest.approx((0.0, 100.0))
    mask = pixel_mask(out.mask, g)
    assert mask.shape == (100, 200)
    assert mask[:, 100:150].all() and not mask[:, :99].any() and not mask[:, 151:].any()


def test_flat_map_and_errors():
    g = square_grid()
    out = ground(np.ones((6, 6)), g)
    assert out.grid_box == (0, 0, 6, 6)  # no evidence: the whole grid
    with pytest.raises(ValueError, match="maps must be"):
        ground(np.ones((5, 6)), g)
    with pytest.raises(ValueError, match="finite"):
        ground(np.full((6, 6), math.nan), g)


def test_component_all_is_the_binarised_grid():
    # the authors' code: the box covers every foreground cell, the mask is the binarised grid
    g = square_grid()
    m = np.zeros((6, 6))
    m[0:2, 0:3] = 1.0
    m[4, 4] = 5.0  # mean = 11 / 36: the 7 non-zero cells are the foreground
    out = ground(m, g, sigma=0, component="all")
    np.testing.assert_array_equal(out.mask, m > 0)
    assert out.grid_box == (0, 0, 5, 5) and out.box == (0.0, 0.0, 50.0, 50.0)
    assert ground(m, g, sigma=0).grid_box == (0, 0, 3, 2)  # the paper's largest component
    comp = np.zeros((5, 5))
    comp[0, 0:3] = comp[0:3, 0] = 1.0  # an L: "all" keeps its concavity, "largest" fills it
    lshape = square_grid(5)
    np.testing.assert_array_equal(ground(comp, lshape, sigma=0, component="all").mask, comp > 0)
    assert ground(comp, lshape, sigma=0).mask.sum() == 8
    flat = ground(np.ones((6, 6)), g, component="all")  # no evidence: the whole grid
    assert flat.grid_box == (0, 0, 6, 6) and flat.mask.all()
    with pytest.raises(ValueError, match="component"):
        ground(m, g, component="biggest")


def test_grounding_keeps_maps_and_its_grid():
    g = GridGeometry(rows=4, cols=4, cell_size=(84.0, 84.0), scale=(1.68, 1.68),
                     offset=(0.0, 84.0), image_size=(200, 100))
    maps = np.random.default_rng(1).random((3, 4, 4))
    out = ground(maps, g)
    np.testing.assert_array_equal(out.maps, maps)
    assert out.geometry == g and out.pixel_mask is None
    np.testing.assert_allclose(out.heatmap, sum(reference_smooth(x) for x in maps), atol=1e-12)
    up = out.image_mask()  # nothing set: the upsampled grid mask
    assert up.shape == (100, 200) and up.dtype == bool
    np.testing.assert_array_equal(up, pixel_mask(out.mask, g))
    own = np.zeros((100, 200), dtype=bool)
    assert replace(out, pixel_mask=own).image_mask() is own


def blur(a, sigma, radius=None, border="reflect"):
    """A separable Gaussian written out by hand: weights ``exp(-x^2 / 2 sigma^2)`` over
    ``radius`` taps each side (default a 4-sigma window, ``int(4 sigma + 0.5)``), normalised to
    1. Borders ``"reflect"`` repeat the edge cell (d c b a | a b c d | d c b a), ``"mirror"``
    does not (d c b | a b c d | c b a); both fold again for a window wider than the grid."""
    radius = int(4 * sigma + 0.5) if radius is None else radius
    x = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    w /= w.sum()
    a = np.asarray(a, dtype=np.float64)
    for axis in (0, 1):
        n = a.shape[axis]
        idx = np.arange(-radius, n + radius)
        if border == "reflect":  # period 2n: a b c d d c b a
            idx = np.mod(idx, 2 * n)
            idx = np.where(idx >= n, 2 * n - 1 - idx, idx)
        else:  # period 2n - 2: a b c d c b
            idx = np.mod(idx, max(2 * n - 2, 1))
            idx = np.where(idx >= n, 2 * n - 2 - idx, idx)
        padded = np.take(a, idx, axis=axis)
        a = sum(w[k] * np.take(padded, np.arange(k, k + n), axis=axis)
                for k in range(2 * radius + 1))
    return a


def described_all_components(maps, sigma):
    """The authors' box, as described: every head's map blurred (`blur`, scipy's defaults) and
    summed; the foreground is the cells above the sum's mean (the whole grid when none); the box
    in cells (end exclusive) covers every foreground cell."""
    heat = sum(blur(m, sigma) for m in maps)
    fg = heat > heat.mean()
    fg = fg if fg.any() else np.ones_like(fg)
    rows, cols = np.nonzero(fg)
    return heat, fg, (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)


def test_all_components_are_the_authors_rule():
    """component="all" (the authors' code) against `described_all_components` on 400 draws of
    1-4 head maps, grids of 1 x 1 to 12 x 12 (many narrower than the blur's window), sigma 0.5 to
    2.5, float32 and float64; the paper path keeps its 7-tap mirrored kernel."""
    for seed in range(400):
        rng = np.random.default_rng(seed)
        rows, cols, k = int(rng.integers(1, 13)), int(rng.integers(1, 13)), int(rng.integers(1, 5))
        g = GridGeometry(rows=rows, cols=cols, cell_size=(10.0, 10.0), scale=(1.0, 1.0),
                         offset=(0.0, 0.0), image_size=(10 * cols, 10 * rows))
        maps = (rng.random((k, rows, cols)) ** 3).astype(np.float32 if seed % 2 else np.float64)
        sigma = float(rng.uniform(0.5, 2.5))
        heat, fg, box = described_all_components(maps, sigma)
        out = ground(maps, g, sigma=sigma, component="all")
        np.testing.assert_allclose(out.heatmap, heat, rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(out.mask, fg)
        assert out.grid_box == box


@pytest.mark.parametrize("changed", [{"border": "mirror"}, {"radius": 3}])
def test_all_components_comparison_catches_a_changed_blur(changed):
    """A blur with mirrored borders or 7 taps (the paper path's) gives other heatmaps than
    scipy's defaults, so `test_all_components_are_the_authors_rule` would catch either."""
    rng = np.random.default_rng(3)
    g = GridGeometry(rows=6, cols=9, cell_size=(10.0, 10.0), scale=(1.0, 1.0),
                     offset=(0.0, 0.0), image_size=(90, 60))
    maps = rng.random((2, 6, 9))
    for sigma in (1.0, 1.6):
        got = ground(maps, g, sigma=sigma, component="all").heatmap
        assert not np.allclose(got, sum(blur(m, sigma, **changed) for m in maps))
        paper = ground(maps, g, sigma=sigma).heatmap
        assert not np.allclose(paper, got)
        # and `blur` is right about the paper path's kernel, so its variants are real ones
        np.testing.assert_allclose(paper, sum(blur(m, sigma, 3, "mirror") for m in maps),
                                   rtol=1e-12)
