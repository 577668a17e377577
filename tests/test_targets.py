"""Ground-truth attention maps: hand cases, errors, properties, and every adapter's layout."""

import numpy as np
import pytest
import torch
from conftest import make_batch, tiny
from hypothesis import given, settings
from hypothesis import strategies as st

from lookhere.data.sample import Geometry
from lookhere.models import get_adapter
from lookhere.models.layout import GridGeometry
from lookhere.targets import (
    TargetConfig,
    batch_targets,
    cell_coverage,
    cell_weights,
    image_distribution,
)

# 4x4 grid of 10 px cells over a 40x40 image, identity mapping
GRID = GridGeometry(rows=4, cols=4, cell_size=(10, 10), scale=(1, 1), offset=(0, 0),
                    image_size=(40, 40))


def test_box_hand_case():
    # box covers cell (1,1) fully and half of cell (1,2)
    w = cell_weights(GRID, Geometry(boxes=[(10, 10, 25, 20)]), TargetConfig(1.0, 0.5, 0.01))
    assert w[1, 1] == 1.0 and w[1, 2] == 0.5  # half covered: max(0.5 * 1, ring 0.5)
    assert w[0, 0] == 0.5 and w[2, 3] == 0.5  # the ring of the touched cells
    assert w[3, 0] == 0.01  # beyond the ring: floor (cell (1,2) is touched, so (2,3) is ring)
    cov = cell_coverage(GRID, Geometry(boxes=[(10, 10, 25, 20)]))
    np.testing.assert_allclose(cov[1, :], [0, 1, 0.5, 0])


def test_points_polylines_masks():
    w = cell_weights(GRID, Geometry(points=[(35, 5)]))
    assert w[0, 3] == 1 and w[1, 2] == 0.5 and w[3, 0] == 0.01
    line = Geometry(polylines=[[(5, 5), (35, 35)]], line_width=1)
    cov = cell_coverage(GRID, line)
    assert np.all(np.diag(cov) == 1) and cov[0, 3] == 0
    mask = np.zeros((40, 40), bool)
    mask[0:10, 0:5] = True  # half of cell (0, 0)
    np.testing.assert_allclose(cell_coverage(GRID, Geometry(mask=mask))[0, 0], 0.5)


@pytest.mark.parametrize("geo, match", [
    (Geometry(boxes=[(0, 0, 50, 10)]), "outside"),
    (Geometry(boxes=[(5, 5, 5, 10)]), "empty"),
    (Geometry(boxes=[(0, 0, float("nan"), 10)]), "finite"),
    (Geometry(points=[(-3, 4)]), "outside"),
    (Geometry(polylines=[[(0, 0), (41, 3)]]), "outside"),
    (Geometry(mask=np.zeros((3, 3), bool)), "mask"),
])
def test_bad_geometry_errors(geo, match):
    with pytest.raises(ValueError, match=match):
        cell_coverage(GRID, geo)


def test_config_validation():
    with pytest.raises(ValueError, match="floor"):
        TargetConfig(1.0, 0.5, -1)
    with pytest.raises(ValueError, match="target >= neighbour"):
        TargetConfig(0.1, 0.5, 0.01)


boxes = st.tuples(st.floats(0, 39), st.floats(0, 39), st.floats(0.5, 40), st.floats(0.5, 40)) \
    .map(lambda t: (t[0], t[1], min(40, t[0] + t[2]), min(40, t[1] + t[3])))
grids = st.builds(
    lambda r, c, s, ox, oy: GridGeometry(rows=r, cols=c, cell_size=(14, 14), scale=(s, s),
                                         offset=(ox, oy), image_size=(40, 40)),
    st.integers(2, 8), st.integers(2, 8), st.floats(0.5, 3), st.floats(-5, 5), st.floats(-5, 5),
)


@settings(max_examples=150, deadline=None)
@given(grid=grids, box=boxes)
def test_properties(grid, box):
    cfg = TargetConfig()
    w = cell_weights(grid, Geometry(boxes=[box]), cfg)
    assert (w >= cfg.floor).all() and np.isfinite(w).all()
    p = w / w.sum()
    assert abs(p.sum() - 1) < 1e-9
    cov = grid.box_coverage(box)
    if cov.max() > 0:
        # the best-covered cells hold the most mass
        assert p[cov == cov.max()].min() >= p.max() - 1e-12
        # a touched cell never weighs less than the ring around it
        assert w[cov > 0].min() >= cfg.neighbour - 1e-12
        # round trip: the fully covered cells, mapped back to pixels, give the same full cells
        full = cov > 1 - 1e-9
        if full.any():
            cells = grid.cell_boxes(clip=False)[full]
            inside = [tuple(b) for b in cells
                      if b[0] >= 0 and b[1] >= 0 and b[2] <= 40 and b[3] <= 40]
            if inside:
                cov2 = cell_coverage(grid, Geometry(boxes=inside))
                assert ((cov2 > 1 - 1e-6) <= full).all()


def test_every_family_layout(family):
    """Targets over a real layout: sum to 1 over the asked image, 0 on other images."""
    model, processor = tiny(family)
    batch, images = make_batch(family, processor)
    layout = get_adapter(model).layout(batch, images, processor)
    w, h = images[1][-1].size
    geos = [None, Geometry(boxes=[(0, 0, w / 2, h / 2)])]
    last = len(images[1]) - 1
    p, has = batch_targets(layout, geos, image_indices=[0, last])
    assert has.tolist() == [False, True] and p[0].sum() == 0
    sample = layout[1]
    own = torch.cat([g.key_index for g in sample.images[last].grids])
    assert torch.isclose(p[1, own].sum(), torch.tensor(1.0))
    assert torch.isclose(p[1].sum(), torch.tensor(1.0))  # nothing on the other image
    # the top-left cell of every grid of that image is a target cell
    for grid in sample.images[last].grids:
        m = grid.to_grid(p[1])
        assert m[0, 0] == m.max()
    with pytest.raises(ValueError, match="image_index"):
        image_distribution(sample, geos[1], image_index=5)
