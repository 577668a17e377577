"""Grid Patch and Line Intersection: determinism, config checks, and answers re-derived by
separate code (meta and pixels) that never calls the generators' own answer logic."""

import itertools
import json
import math
import re

import numpy as np
import pytest

from lookhere.data.synthetic.base import make_task
from lookhere.data.synthetic.grid_patch import PALETTE as GRID_PALETTE
from lookhere.data.synthetic.grid_patch import GridPatchConfig, GridPatchTask
from lookhere.data.synthetic.line_intersection import PALETTE as LINE_PALETTE
from lookhere.data.synthetic.line_intersection import (
    LineIntersectionConfig,
    LineIntersectionTask,
)

SMALL_GRID = dict(image_size=112, grid_rows=8, grid_cols=8)
N_CHECK = 1000


# ---------------------------------------------------------------- shared


@pytest.mark.parametrize("cls, cfg", [(GridPatchTask, SMALL_GRID),
                                      (LineIntersectionTask, dict(image_size=112))])
def test_deterministic_and_order_independent(cls, cfg):
    a, b = cls(seed=3, **cfg), cls(seed=3, **cfg)
    idx = list(range(40))
    first = {i: a.sample(i) for i in idx}
    second = {i: b.sample(i) for i in reversed(idx)}
    for i in idx:
        s, t = first[i], second[i]
        assert s.image.tobytes() == t.image.tobytes()
        assert (s.question, s.answer, s.structured, s.meta) == (
            t.question, t.answer, t.structured, t.meta)
        assert s.geometry.to_json() == t.geometry.to_json()
        assert s.id == t.id and s.task == cls.name
    other = cls(seed=4, **cfg)
    assert sum(other.sample(i).image.tobytes() != first[i].image.tobytes() for i in idx) >= 35


@pytest.mark.parametrize("name", ["grid_patch", "line_intersection"])
def test_registered_and_json(name):
    s = make_task(name, seed=1, image_size=112).sample(7) if name == "line_intersection" else \
        make_task(name, seed=1, **SMALL_GRID).sample(7)
    json.dumps(s.meta)
    json.dumps(s.structured)
    json.dumps(s.geometry.to_json())
    assert s.image.mode == "RGB" and s.image.size == (112, 112)


# ---------------------------------------------------------------- grid patch


@pytest.mark.parametrize("bad, field", [
    (dict(image_size=8), "image_size"),
    (dict(image_size=112, grid_rows=0), "grid_rows"),
    (dict(image_size=112, grid_rows=8, grid_cols=40), "grid_cols"),
    (dict(num_distractors=-1), "num_distractors"),
    (dict(num_distractors=len(GRID_PALETTE)), "num_distractors"),
    (dict(image_size=24, grid_rows=2, grid_cols=2, num_distractors=4), "num_distractors"),
    (dict(marker_shape="star"), "marker_shape"),
    (dict(marker_margin=0.5), "marker_margin"),
])
def test_grid_config_validation(bad, field):
    with pytest.raises(ValueError, match=field):
        GridPatchConfig(**bad)


def _grid_cells(size: int, rows: int, cols: int) -> dict[tuple[int, int], tuple[int, ...]]:
    """1-based (row, col) -> xyxy box, from the documented partition (borders at i*size//n)."""
    ys = [round(np.floor(i * size / rows)) for i in range(rows + 1)]
    xs = [round(np.floor(j * size / cols)) for j in range(cols + 1)]
    return {(r + 1, c + 1): (xs[c], ys[r], xs[c + 1], ys[r + 1])
            for r in range(rows) for c in range(cols)}


@pytest.mark.parametrize("cfg", [
    dict(SMALL_GRID, marker_shape="mixed"),
    dict(image_size=100, grid_rows=7, grid_cols=9, num_distractors=6),  # uneven cells
])
def test_grid_answers_independent(cfg):
    task = GridPatchTask(seed=11, **cfg)
    size, rows, cols = cfg["image_size"], cfg["grid_rows"], cfg["grid_cols"]
    cells = _grid_cells(size, rows, cols)
    n_markers = task.config.num_distractors + 1
    seen_rows, seen_cols = set(), set()
    for i in range(N_CHECK):
        s = task.sample(i)
        colour = re.search(r"holds the (\w+) marker\?", s.question).group(1)
        m = re.fullmatch(r"row (\d+), column (\d+)", s.answer)
        assert m, s.answer
        ans = (int(m.group(1)), int(m.group(2)))
        assert s.structured == {"row": ans[0], "col": ans[1]}
        # From meta: the marker of the named colour.
        markers = s.meta["markers"]
        assert len(markers) == n_markers
        assert len({mk["color"] for mk in markers}) == n_markers  # no repeated colour
        assert len({(mk["row"], mk["col"]) for mk in markers}) == n_markers  # own cells
        named = [mk for mk in markers if mk["color"] == colour]
        assert len(named) == 1 and (named[0]["row"], named[0]["col"]) == ans
        # From pixels: the cells whose centre pixel has the named colour.
        arr = np.asarray(s.image)
        rgb = np.array(GRID_PALETTE[colour])
        centres = {rc: arr[(b[1] + b[3]) // 2, (b[0] + b[2]) // 2] for rc, b in cells.items()}
        hits = [rc for rc, px in centres.items() if (px == rgb).all()]
        assert hits == [ans], (i, hits, ans)
        coloured = [rc for rc, px in centres.items() if not (px == 255).all()]
        assert len(coloured) == n_markers  # every marker visible at its cell centre
        # Geometry: exactly the answer cell's box, inside the image.
        assert [tuple(b) for b in s.geometry.boxes] == [tuple(map(float, cells[ans]))]
        x0, y0, x1, y1 = s.geometry.boxes[0]
        assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
        seen_rows.add(ans[0])
        seen_cols.add(ans[1])
    assert seen_rows == set(range(1, rows + 1)) and seen_cols == set(range(1, cols + 1))


def test_grid_question_forms():
    with_grid = GridPatchTask(**SMALL_GRID).sample(0).question
    bare = GridPatchTask(describe_grid=False, **SMALL_GRID).sample(0).question
    assert "8 rows and 8 columns" in with_grid and with_grid.endswith(bare)
    assert bare.endswith("Answer as row R, column C.")


# ---------------------------------------------------------------- line intersection


@pytest.mark.parametrize("bad, field", [
    (dict(image_size=16), "image_size"),
    (dict(num_lines_min=1), "num_lines_min"),
    (dict(num_lines_min=3, num_lines_max=2), "num_lines_max"),
    (dict(num_lines_max=len(LINE_PALETTE) + 1), "num_lines_max"),
    (dict(image_size=112, line_width=20), "line_width"),
    (dict(min_length=0.9), "min_length"),
    (dict(min_gap=-0.1), "min_gap"),
    (dict(min_angle_deg=80), "min_angle_deg"),
    (dict(end_margin=0.5), "end_margin"),
])
def test_line_config_validation(bad, field):
    with pytest.raises(ValueError, match=field):
        LineIntersectionConfig(**bad)


def _orient(p, q, r) -> float:
    return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])


def _segments_cross(a, b) -> bool:
    """Orientation test (proper or touching crossings)."""
    p, q, r, s = a[0], a[1], b[0], b[1]
    d1, d2, d3, d4 = _orient(r, s, p), _orient(r, s, q), _orient(p, q, r), _orient(p, q, s)
    if d1 * d2 < 0 and d3 * d4 < 0:
        return True
    # Collinear touching cases never occur with clear margins, but count them as crossing.
    return any(d == 0 for d in (d1, d2, d3, d4)) and _dist_seg_seg(a, b) < 1e-9


def _line_meet(a, b) -> np.ndarray:
    """Where the two infinite lines meet: cross product of homogeneous lines."""
    la = np.cross([*a[0], 1.0], [*a[1], 1.0])
    lb = np.cross([*b[0], 1.0], [*b[1], 1.0])
    h = np.cross(la, lb)
    return h[:2] / h[2]


def _dist_point_seg(p, seg) -> float:
    p, a, b = (np.asarray(v, float) for v in (p, seg[0], seg[1]))
    ab = b - a
    t = np.clip(np.dot(p - a, ab) / np.dot(ab, ab), 0, 1)
    return float(np.linalg.norm(p - (a + t * ab)))


def _dist_seg_seg(a, b) -> float:
    return min(_dist_point_seg(a[0], b), _dist_point_seg(a[1], b),
               _dist_point_seg(b[0], a), _dist_point_seg(b[1], a))


def _angle(a, b) -> float:
    u, v = np.subtract(a[1], a[0]), np.subtract(b[1], b[0])
    c = abs(np.dot(u, v)) / (np.linalg.norm(u) * np.linalg.norm(v))
    return math.degrees(math.acos(min(1.0, c)))


def _segs(sample) -> dict[str, tuple]:
    return {sg["color"]: (tuple(sg["p0"]), tuple(sg["p1"])) for sg in sample.meta["segments"]}


def _clear_crossing(a, b, cfg) -> bool:
    x = _line_meet(a, b)
    ends = [np.linalg.norm(x - np.asarray(p)) for p in (*a, *b)]
    return _angle(a, b) >= cfg.min_angle_deg - 1e-9 and min(ends) >= cfg.end_margin_px - 1e-9


def test_line_balance_by_parity():
    task = LineIntersectionTask(seed=5, image_size=112)
    answers = [task.sample(i).answer for i in range(200)]
    assert answers == ["yes", "no"] * 100


@pytest.mark.parametrize("cfg", [dict(image_size=112), dict(image_size=96, num_lines_min=4,
                                                            num_lines_max=6)])
@pytest.mark.slow
def test_line_answers_independent(cfg):
    task = LineIntersectionTask(seed=2, **cfg)
    c = task.config
    size = c.image_size
    counts = set()
    for i in range(N_CHECK):
        s = task.sample(i)
        c1, c2 = re.fullmatch(r"Do the (\w+) and (\w+) lines intersect\? Answer yes or no\.",
                              s.question).groups()
        segs = _segs(s)
        assert len(segs) == s.meta["num_lines"] and c1 != c2
        assert c.num_lines_min <= len(segs) <= c.num_lines_max
        counts.add(len(segs))
        a, b = segs[c1], segs[c2]
        crosses = _segments_cross(a, b)
        assert s.answer == ("yes" if crosses else "no")
        assert s.structured == {"intersect": crosses}
        for p in (pt for seg in segs.values() for pt in seg):
            assert 0 <= p[0] <= size and 0 <= p[1] <= size
        for x, y in s.geometry.points:
            assert 0 <= x <= size and 0 <= y <= size
        arr = np.asarray(s.image).astype(int)
        if crosses:
            (pt,) = s.geometry.points
            np.testing.assert_allclose(pt, _line_meet(a, b), atol=1e-3)
            assert _clear_crossing(a, b, c)
            px = arr[int(pt[1]), int(pt[0])]
            assert any((px == LINE_PALETTE[k]).all() for k in (c1, c2)), (i, px)
        else:
            pa, pb = s.geometry.points
            # One point on each segment (first on c1's), their distance the least possible.
            assert _dist_point_seg(pa, a) < 1e-3 and _dist_point_seg(pb, b) < 1e-3
            d = _dist_seg_seg(a, b)
            assert math.dist(pa, pb) == pytest.approx(d, abs=1e-3)
            assert d >= c.gap_px - 1e-9
            mid = np.floor((np.asarray(pa) + np.asarray(pb)) / 2).astype(int)
            assert (arr[mid[1], mid[0]] == 255).all(), i  # the gap shows as background
        # Every pair in the image is unambiguous, not just the queried one.
        for u, v in itertools.combinations(segs.values(), 2):
            if _segments_cross(u, v):
                assert _clear_crossing(u, v, c)
            else:
                assert _dist_seg_seg(u, v) >= c.gap_px - 1e-9
    assert counts == set(range(c.num_lines_min, c.num_lines_max + 1))


def test_line_closest_points_brute_force():
    """The no-case closest points against a dense sampling of both segments."""
    task = LineIntersectionTask(seed=9, image_size=112)
    t = np.linspace(0, 1, 801)[:, None]
    for i in range(1, 80, 2):
        s = task.sample(i)
        c1, c2 = s.meta["query"]
        (a0, a1), (b0, b1) = _segs(s)[c1], _segs(s)[c2]
        pa = np.asarray(a0) + t * (np.subtract(a1, a0))
        pb = np.asarray(b0) + t * (np.subtract(b1, b0))
        brute = np.sqrt(((pa[:, None] - pb[None]) ** 2).sum(-1)).min()
        reported = math.dist(*s.geometry.points)
        step = max(np.linalg.norm(np.subtract(a1, a0)), np.linalg.norm(np.subtract(b1, b0))) / 800
        assert reported - 1e-9 <= brute <= reported + step


def test_line_width_scales():
    assert LineIntersectionConfig(image_size=112).width_px == 2
    assert LineIntersectionConfig(image_size=336).width_px == 6
    assert LineIntersectionConfig(image_size=336, line_width=3).width_px == 3
