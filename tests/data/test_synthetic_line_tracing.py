"""Line Tracing: determinism, config errors, an independent answer check, pixels, crossings, and
the shortcuts that must stay near chance."""

import json
import re
from collections import Counter, defaultdict

import numpy as np
import pytest

from lookhere.data.synthetic import line_tracing as lt
from lookhere.data.synthetic.base import make_task

SIZE = 112
N = 1000


@pytest.fixture(scope="module")
def samples():
    task = lt.LineTracingTask(seed=0, image_size=SIZE)
    return [task.sample(i) for i in range(N)]


@pytest.fixture(scope="module")
def free_samples():
    """The slower free-form layouts, a few dozen each."""
    out = []
    for layout in ("scatter", "border"):
        task = lt.LineTracingTask(seed=3, image_size=224, layout=layout)
        out += [task.sample(i) for i in range(25)]
    return out


# ----------------------------------------------------------------------------- basics


def test_deterministic_and_order_independent():
    a = lt.LineTracingTask(seed=7, image_size=SIZE)
    b = lt.LineTracingTask(seed=7, image_size=SIZE)
    order = [5, 0, 3]
    first = {i: a.sample(i) for i in order}
    second = {i: b.sample(i) for i in sorted(order)}
    for i in order:
        assert first[i].image.tobytes() == second[i].image.tobytes()
        assert first[i].meta == second[i].meta and first[i].answer == second[i].answer
    other = lt.LineTracingTask(seed=8, image_size=SIZE).sample(0)
    assert other.image.tobytes() != first[0].image.tobytes()


def test_registered_and_configurable():
    task = make_task("line_tracing", seed=1, image_size=SIZE, min_curves=4, max_curves=4)
    s = task.sample(0)
    assert s.task == "line_tracing" and s.id == task.sample_id(0)
    assert s.meta["num_curves"] == 4 and s.image.size == (SIZE, SIZE)


@pytest.mark.parametrize("kwargs, field", [
    ({"image_size": 64}, "image_size"),
    ({"min_curves": 2}, "min_curves"),
    ({"min_curves": 4, "max_curves": 3}, "max_curves"),
    ({"max_curves": 9}, "max_curves"),
    ({"image_size": 112, "max_curves": 7}, "max_curves"),  # no room for 7 per side
    ({"control_points": 7}, "control_points"),
    ({"wander": 1.5}, "wander"),
    ({"min_crossings": -1}, "min_crossings"),
    ({"min_query_crossings": 7}, "min_query_crossings"),
    ({"min_crossing_angle": 90.0}, "min_crossing_angle"),
    ({"line_width": 1}, "line_width"),
    ({"marker_radius": 3}, "marker_radius"),
    ({"layout": "grid"}, "layout"),
    ({"layout": "scatter", "image_size": 112}, "image_size"),
    ({"control_points": 0, "min_query_crossings": 4, "max_curves": 4}, "min_query_crossings"),
    ({"min_curves": 3.0}, "min_curves"),
])
def test_config_errors(kwargs, field):
    with pytest.raises(ValueError, match=field):
        lt.LineTracingConfig(**kwargs)


def test_every_field_has_help():
    from dataclasses import fields

    for f in fields(lt.LineTracingConfig):
        assert f.metadata.get("help"), f.name


def test_fields_json_and_geometry_inside(samples):
    for s in samples[:200]:
        json.dumps(s.meta)
        json.dumps(s.structured)
        json.dumps(s.geometry.to_json())
        assert s.structured == {"start": _letter(s), "end": s.answer}
        assert s.answer in s.meta["end_markers"]
        (x0, y0, x1, y1), = s.geometry.boxes
        assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
        line, = s.geometry.polylines
        pts = np.array(line)
        assert (pts >= 0).all() and (pts <= SIZE).all()
        assert s.geometry.line_width == s.meta["line_width"] >= 2
        for key in ("num_curves", "query_crossings", "total_crossings", "curve_length",
                    "curvature"):
            assert key in s.meta


def test_difficulty_knobs(samples):
    ks = Counter(s.meta["num_curves"] for s in samples)
    assert set(ks) == {3, 4}
    straight = lt.LineTracingTask(seed=0, image_size=SIZE, control_points=0, min_crossings=1)
    for i in range(10):  # total turning of a straight line: only vertex rounding noise
        assert straight.sample(i).meta["curvature"] < 0.25 < samples[i].meta["curvature"]
    busy = lt.LineTracingTask(seed=0, image_size=168, min_curves=4, min_crossings=4,
                              min_query_crossings=2)
    for i in range(10):
        s = busy.sample(i)
        assert s.meta["total_crossings"] >= 4 and s.meta["query_crossings"] >= 2


# ----------------------------------------------------------------------------- independent checks


def _letter(s) -> str:
    m = re.fullmatch(r"Which number does the curve starting at ([A-H]) end at\? "
                     r"Answer with the number\.", s.question)
    assert m, s.question
    return m.group(1)


def _nearest(point, named: dict) -> str:
    return min(named, key=lambda k: np.hypot(named[k][0] - point[0], named[k][1] - point[1]))


def _check_answer(s) -> None:
    """From meta's curves and marker positions only: the curve leaving the asked letter's marker,
    and the end marker nearest to its last vertex."""
    meta, letter = s.meta, _letter(s)
    start = meta["start_markers"][letter]
    curve = min(meta["curves"], key=lambda c: np.hypot(c["vertices"][0][0] - start[0],
                                                       c["vertices"][0][1] - start[1]))
    first = curve["vertices"][0]
    assert np.hypot(first[0] - start[0], first[1] - start[1]) <= meta["marker_radius"]
    last = curve["vertices"][-1]
    end = _nearest(last, meta["end_markers"])
    assert np.hypot(last[0] - meta["end_markers"][end][0],
                    last[1] - meta["end_markers"][end][1]) <= meta["marker_radius"]
    assert end == s.answer, (s.id, end, s.answer)
    assert [list(p) for p in s.geometry.polylines[0]] == curve["vertices"]
    ex, ey = meta["end_markers"][end]
    x0, y0, x1, y1 = s.geometry.boxes[0]
    assert x0 <= ex <= x1 and y0 <= ey <= y1


def test_answer_independent(samples, free_samples):
    for s in samples + free_samples:
        _check_answer(s)


def _check_pixels(s) -> None:
    """The vertices of the queried polyline (outside its own two markers, drawn on top) lie on
    curve-coloured pixels (PIL's wide lines may miss a vertex's own pixel by one at a tiny jog:
    all within one pixel, nearly all exact); the markers are drawn where meta says."""
    meta = s.meta
    img = np.asarray(s.image)
    colour = np.array(meta["curve_color"])
    on_curve = (img == colour).all(-1)
    r = meta["marker_radius"]
    own = [meta["start_markers"][s.structured["start"]], meta["end_markers"][s.answer]]
    exact = []
    for x, y in s.geometry.polylines[0]:
        if min(np.hypot(x - mx, y - my) for mx, my in own) <= r:
            continue
        i, j = int(y), int(x)
        exact.append(on_curve[i, j])
        assert on_curve[i - 1:i + 2, j - 1:j + 2].any(), (s.id, x, y)
    assert np.mean(exact) >= 0.97, s.id
    yy, xx = np.mgrid[:img.shape[0], :img.shape[1]] + 0.5  # pixel centres
    for mx, my in list(meta["start_markers"].values()) + list(meta["end_markers"].values()):
        dist, angle = np.hypot(xx - mx, yy - my), np.arctan2(yy - my, xx - mx)
        outline = on_curve & (dist > r - 2.5) & (dist < r + 0.5)
        for a in np.arange(-4, 4) * np.pi / 4:  # the marker's outline is there all round
            sector = np.abs((angle - a + np.pi) % (2 * np.pi) - np.pi) < np.pi / 8
            assert (outline & sector).any(), (s.id, mx, my, a)


def test_pixels(samples, free_samples):
    for s in samples[:40] + free_samples[::3]:
        _check_pixels(s)


def _proper_crossings(a: np.ndarray, b: np.ndarray) -> int:
    """Pairs of segments of polylines a and b that properly cross (orientation signs)."""
    p, q = a[:-1, None], a[1:, None]
    r, s = b[None, :-1], b[None, 1:]

    def orient(o, u, v):
        return np.sign((u[..., 0] - o[..., 0]) * (v[..., 1] - o[..., 1])
                       - (u[..., 1] - o[..., 1]) * (v[..., 0] - o[..., 0]))

    o1, o2 = orient(p, q, r), orient(p, q, s)
    o3, o4 = orient(r, s, p), orient(r, s, q)
    return int(((o1 * o2 < 0) & (o3 * o4 < 0)).sum())


def _check_crossings(s, min_total: int, min_query: int) -> None:
    curves = [np.array(c["vertices"]) for c in s.meta["curves"]]
    per = [0] * len(curves)
    total = 0
    for i in range(len(curves)):
        for j in range(i + 1, len(curves)):
            n = _proper_crossings(curves[i], curves[j])
            total += n
            per[i] += n
            per[j] += n
    assert total == s.meta["total_crossings"] == len(s.meta["crossings"]) >= min_total, s.id
    assert per == [c["crossings"] for c in s.meta["curves"]], s.id
    assert per[s.meta["query_index"]] == s.meta["query_crossings"] >= min_query, s.id


def test_crossings_recomputed(samples, free_samples):
    cfg = lt.LineTracingConfig()
    for s in samples + free_samples:
        _check_crossings(s, cfg.min_crossings, cfg.min_query_crossings)


# ----------------------------------------------------------------------------- shortcuts


def _shortcut_accuracies(samples) -> dict[str, float]:
    """How often simple rules that do not trace the curve get the answer right."""
    hits = defaultdict(list)
    half = len(samples) // 2
    prior = defaultdict(Counter)  # majority answer per letter, fit on the first half
    for s in samples[:half]:
        prior[_letter(s)][s.answer] += 1
    for n, s in enumerate(samples):
        meta, letter = s.meta, _letter(s)
        start = np.array(meta["start_markers"][letter])
        names = list(meta["end_markers"])
        ends = np.array([meta["end_markers"][k] for k in names])
        hits["chance"].append(1 / len(names))

        def pick(i, name, _names=names, _s=s):
            hits[name].append(_names[int(i)] == _s.answer)

        if n >= half:
            hits["letter prior"].append(prior[letter].most_common(1)[0][0] == s.answer)
        hits["same rank (A->1)"].append(str(ord(letter) - ord("A") + 1) == s.answer)
        dist = np.hypot(*(ends - start).T)
        pick(dist.argmin(), "nearest end marker")
        pick(dist.argmax(), "farthest end marker")
        pick(_ray_choice(s, start, ends), "initial-direction ray")
        pick(_across_choice(meta, letter, ends), "same place in order across")
        curve_px = (np.asarray(s.image) == np.array(meta["curve_color"])).all(-1)
        pick(_density_choice(curve_px, ends, meta["marker_radius"]), "curve pixels near end")
        pick(_segment_choice(curve_px, start, ends, meta["marker_radius"]),
             "curve pixels on straight path")
    return {k: float(np.mean(v)) for k, v in hits.items()}


def _ray_choice(s, start, ends) -> int:
    """The end marker closest in angle to the queried curve's initial direction."""
    v = np.array(s.geometry.polylines[0])
    r, w = s.meta["marker_radius"], s.meta["line_width"]
    k = int(np.argmax(np.hypot(*(v - start).T) > r + 3 * w))  # first vertex clear of the marker
    head = (v[k] - start) / np.linalg.norm(v[k] - start)
    to = ends - start
    return int(np.argmax(to @ head / np.hypot(*to.T)))


def _across_choice(meta, letter, ends) -> int:
    """Lines run straight across: the end marker whose rank along the side (the axis the start
    markers spread along) equals the start marker's."""
    starts = np.array(list(meta["start_markers"].values()))
    axis = int(np.argmax(starts.std(0)))
    rank = int((starts[:, axis] < meta["start_markers"][letter][axis]).sum())
    return int(np.argsort(ends[:, axis])[rank])


def _density_choice(curve_px, ends, r) -> int:
    """The end marker with the most curve pixels in a ring around it."""
    yy, xx = np.mgrid[:curve_px.shape[0], :curve_px.shape[1]] + 0.5
    counts = [(curve_px & (np.hypot(xx - x, yy - y) > r + 1)
               & (np.hypot(xx - x, yy - y) < 3 * r)).sum() for x, y in ends]
    return int(np.argmax(counts))


def _segment_choice(curve_px, start, ends, r) -> int:
    """The end marker whose straight segment from the start runs most over curve pixels."""
    scores = []
    for end in ends:
        t = np.linspace(0, 1, 200)[:, None]
        pts = start + t * (end - start)
        keep = (np.hypot(*(pts - start).T) > r + 1) & (np.hypot(*(pts - end).T) > r + 1)
        pts = pts[keep].astype(int)
        scores.append(curve_px[pts[:, 1], pts[:, 0]].mean() if len(pts) else 0.0)
    return int(np.argmax(scores))


@pytest.mark.slow
def test_shortcuts_near_chance(samples):
    acc = _shortcut_accuracies(samples)
    chance = acc.pop("chance")
    print(f"\nline_tracing shortcuts on {len(samples)} samples (chance {chance:.3f}):")
    for name, value in acc.items():
        print(f"  {name:32s} {value:.3f}")
    for name, value in acc.items():
        assert value < chance + 0.1, (name, value, chance)
