"""Line Tracing: which numbered marker does the curve from a lettered marker end at?

K smooth curves of one colour run from lettered start markers (A, B, ...) to numbered end markers
(1, 2, ...) and cross each other, so only following the queried curve answers the question.
Letters and numbers are random permutations over the marker positions and curves bend through
random control points, so neither the letter, the marker positions, the curve's initial
direction nor simple image statistics give the answer away
(tests/data/test_synthetic_line_tracing.py measures those shortcuts).

Layouts: ``sides`` (default) puts the starts on one side of the image and the ends on the opposite
side, in one of the square's 8 orientations, with curves that never turn back; ``scatter`` puts
all markers anywhere and ``border`` on a ring near the edge, with free-form curves (harder to
generate, so slower). Curves are clamped B-splines (cubic with 2+ interior control points) whose
control polygon runs from start through random points to end, drawn as polylines. Rejection
sampling keeps them legible: smooth (a minimum radius of curvature), crossings unambiguous (both
curves run nearly straight through them, at a minimum angle) and apart from each other, no
near-tangencies or self-crossings, and no curve passing under a marker that is not its own.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from lookhere.data.sample import Geometry, Sample
from lookhere.data.synthetic.base import SyntheticTask, register_task
from lookhere.data.synthetic.glyphs import glyph as glyph_mask

MAX_CURVES = 8
LETTERS = "ABCDEFGH"
LAYOUTS = ("sides", "scatter", "border")
FREE_LAYOUT_MIN_SIZE = 224  # smallest image for the free-form layouts (see LineTracingConfig)
QUESTION = "Which number does the curve starting at {letter} end at? Answer with the number."
# Dark curve colours (one per sample, shared by all its curves) on a white background.
CURVE_COLORS = ((0, 0, 0), (25, 45, 120), (20, 90, 40), (120, 20, 30), (80, 30, 110),
                (70, 70, 70), (100, 60, 20))
BACKGROUND = (255, 255, 255)
Crossings = list[tuple[int, int, float, float]]  # (curve i, curve j, x, y), i < j

# Sampler tuning (acceptance rate and speed; none changes what a valid sample is, except the two
# angles, which are part of what "legible" means here).
_ATTEMPTS = 400  # whole-layout restarts before giving up
_SIDES_DRAWS = 40  # 'sides': draws of all curves at once before adding them one at a time
_CURVE_TRIES = 25  # candidates for one curve checked against the others before a restart
_BATCHES = 6  # batches of candidate control polygons drawn for one curve
_CANDIDATES = 64  # control polygons per batch
_AIM = 0.5  # free layouts: share of them with a control point next to an already placed curve
_MAX_TURN = math.radians(120)  # sharpest bend of a control polygon (no hairpins)
_MAX_CROSS_TURN = math.radians(30)  # most a curve may turn while passing through a crossing
# Free layouts: weights of the 11 cues of ``_cues`` in the choice of the queried curve. Rejection
# sampling keeps curves that end far from their start and leave it heading away from their end
# (heading at a nearby end would bring the curve back along itself), so a uniform choice gave
# those cues away, both ways (the heading ray 0.20, the farthest end 0.35, chance 0.29).
# Fit by fit_query_tilt(layout, (100, 101), 400) (1,600 scenes, 224 and 336 px).
_QUERY_TILT = {"scatter": (0.49, -0.39, 0.04, 1.66, 1.63, 0.63, -0.27, -0.32, -0.09, -0.21, -0.04),
               "border": (0.62, -0.16, 0.12, 0.69, 2.71, 0.38, -0.28, -0.75, -0.05, -0.01, 0.19)}



def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class LineTracingConfig:
    """Knobs of the Line Tracing task (defaults fit a 336 px LLaVA-1.5 image)."""

    image_size: int = field(default=336, metadata=_help("image width = height in pixels, 96-2048"))
    min_curves: int = field(default=3, metadata=_help("fewest curves per image, 3-8"))
    max_curves: int = field(default=4, metadata=_help("most curves per image, min_curves-8"))
    control_points: int = field(default=2, metadata=_help(
        "random interior control points per curve (more = curvier), 0-6"))
    wander: float = field(default=1.0, metadata=_help(
        "how far control points stray from the straight start-end path: 0 = straight lines, "
        "1 = anywhere in the image; 0-1"))
    min_crossings: int = field(default=2, metadata=_help(
        "fewest crossings in the image in total (rejection-sampled), 0-12"))
    min_query_crossings: int = field(default=1, metadata=_help(
        "fewest crossings of the queried curve with other curves, 0-6"))
    min_crossing_angle: float = field(default=40.0, metadata=_help(
        "smallest angle (degrees) at which two curves may cross, 5-85"))
    line_width: int = field(default=0, metadata=_help(
        "curve width in pixels, 2-16; 0 = auto (max(2, round(image_size / 112)))"))
    marker_radius: int = field(default=0, metadata=_help(
        "marker circle radius in pixels, 6-64; 0 = auto (5 * glyph scale + 2)"))
    layout: str = field(default="sides", metadata=_help(
        "marker placement: 'sides' (starts on one side, ends on the opposite one), 'scatter' "
        "(anywhere) or 'border' (on a ring near the image edge)"))

    def __post_init__(self) -> None:
        _check_range("image_size", self.image_size, 96, 2048)
        _check_range("min_curves", self.min_curves, 3, MAX_CURVES)
        _check_range("max_curves", self.max_curves, self.min_curves, MAX_CURVES)
        _check_range("control_points", self.control_points, 0, 6)
        _check_range("wander", self.wander, 0.0, 1.0)
        _check_range("min_crossings", self.min_crossings, 0, 12)
        _check_range("min_query_crossings", self.min_query_crossings, 0, 6)
        _check_range("min_crossing_angle", self.min_crossing_angle, 5.0, 85.0)
        if self.line_width != 0:
            _check_range("line_width", self.line_width, 2, 16)
        if self.marker_radius != 0:
            _check_range("marker_radius", self.marker_radius, 6, 64)
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        room = self.max_room()
        if self.max_curves > room:
            raise ValueError(f"max_curves must be <= {room} for a {self.layout!r} layout at "
                             f"image_size {self.image_size} (markers need room), got "
                             f"{self.max_curves}")
        if self.layout != "sides" and self.image_size < FREE_LAYOUT_MIN_SIZE:
            # Below this, markers and gaps fill so much of the image that only nearly straight
            # curves fit, and the farthest end marker gives the answer away.
            raise ValueError(f"image_size must be >= {FREE_LAYOUT_MIN_SIZE} for layout "
                             f"{self.layout!r} (use 'sides' for small images), got "
                             f"{self.image_size}")
        if self.control_points == 0 and self.min_query_crossings > self.max_curves - 1:
            raise ValueError("min_query_crossings must be <= max_curves - 1 when control_points "
                             "= 0: a straight line crosses each other straight line at most once")

    def max_room(self) -> int:
        """Most curves whose markers fit (a necessary bound; the sampler may still fail)."""
        span = self.image_size - 2 * (self.radius + 2)
        sep = _marker_sep(self.radius, self.width)
        if self.layout == "sides":
            fit = int(span // sep) + 1
        elif self.layout == "border":
            fit = int(4 * span // sep) // 2
        else:  # discs of diameter sep, packed at best hexagonally
            fit = int(0.9069 * (span + sep) ** 2 / (math.pi / 4 * sep ** 2)) // 2
        return min(fit, MAX_CURVES)

    @property
    def width(self) -> int:
        """The drawn curve width in pixels."""
        return self.line_width or max(2, round(self.image_size / 112))

    @property
    def glyph_scale(self) -> int:
        """Integer upscaling of the 5x7 glyphs (1 at 112 px, 2 at 336 px)."""
        if self.marker_radius:
            return max(1, (self.marker_radius - 2) // 5)
        return max(1, round(self.image_size / 168))

    @property
    def radius(self) -> int:
        """The marker radius in pixels."""
        return self.marker_radius or 5 * self.glyph_scale + 2


def _marker_sep(radius: int, width: int) -> float:
    """Smallest distance between marker centres: a curve fits between two markers."""
    return 2.0 * (radius + 0.5 * width + 2.0) + width


def _check_range(name: str, value: Any, lo: float, hi: float) -> None:
    kind = float if isinstance(lo, float) else int
    ok_type = isinstance(value, (int, float)) if kind is float else isinstance(value, int)
    if isinstance(value, bool) or not ok_type or not lo <= value <= hi:
        raise ValueError(f"{name} must be {kind.__name__} in [{lo}, {hi}], got {value!r}")


@register_task
class LineTracingTask(SyntheticTask):
    """Trace one of several crossing, same-coloured curves from its letter to its number."""

    name = "line_tracing"
    config_class = LineTracingConfig

    def sample(self, index: int) -> Sample:
        cfg = self.config
        rng = self.rng(index)
        scene = self._scene(rng, index)
        color = CURVE_COLORS[int(rng.integers(len(CURVE_COLORS)))]
        image = _render(cfg, scene, color)
        return _to_sample(self, index, cfg, scene, color, image)

    def _scene(self, rng: np.random.Generator, index: int) -> _Scene:
        dims = _Dims.of(self.config)
        for _ in range(_ATTEMPTS):
            scene = _make_scene(self.config, dims, rng)
            if scene is not None:
                return scene
        raise RuntimeError(
            f"line_tracing: no valid layout in {_ATTEMPTS} attempts for sample {index}; "
            "lower max_curves / min_crossings / min_crossing_angle or raise image_size")


# ----------------------------------------------------------------------------- scene building


@dataclass(frozen=True)
class _Dims:
    """Pixel sizes derived from the config, computed once per sample."""

    size: int
    width: int
    radius: int
    clearance: float  # how close a curve's centre line may come to a marker it does not end at
    gap: float  # smallest centre-line distance between two strands that do not cross there
    window: float  # radius around a crossing where strands may be closer than gap
    reach: float  # arc length either side of a crossing over which a curve must run straight
    min_angle: float  # smallest allowed crossing angle, degrees
    cos_min: float  # its cosine
    spacing: float  # target distance between polyline vertices
    marker_sep: float  # smallest distance between marker centres (room for a curve between)
    min_radius: float  # smallest radius of curvature (no sharp corners or tight loops)

    @classmethod
    def of(cls, cfg: LineTracingConfig) -> _Dims:
        gap = max(1.5 * cfg.width + 2.0, cfg.image_size / 40)
        sin = math.sin(math.radians(cfg.min_crossing_angle))
        return cls(size=cfg.image_size, width=cfg.width, radius=cfg.radius,
                   clearance=cfg.radius + 0.5 * cfg.width + 2.0, gap=gap,
                   window=1.5 * gap / sin, reach=gap / sin,
                   min_angle=cfg.min_crossing_angle,
                   cos_min=math.cos(math.radians(cfg.min_crossing_angle)),
                   spacing=max(3.0, cfg.image_size / 48),
                   marker_sep=_marker_sep(cfg.radius, cfg.width),
                   min_radius=max(1.5 * gap, cfg.image_size / 20))


@dataclass
class _Scene:
    starts: np.ndarray  # (K, 2) start marker centres, curve k starts at starts[k]
    ends: np.ndarray  # (K, 2) end marker centres, curve k ends at ends[k]
    letters: list[str]  # letter of curve k's start marker
    numbers: list[str]  # number of curve k's end marker
    curves: list[np.ndarray]  # (N_k, 2) vertices
    crossings: Crossings
    query: int  # the queried curve


def _make_scene(cfg: LineTracingConfig, d: _Dims, rng: np.random.Generator) -> _Scene | None:
    """One attempt at a full layout; None when a constraint could not be met."""
    k = int(rng.integers(cfg.min_curves, cfg.max_curves + 1))
    if cfg.layout == "sides":
        markers = _side_markers(d, rng, k)
    else:
        markers = _place_markers(cfg, d, rng, 2 * k)
    if markers is None:
        return None
    made = _sides_at_once(cfg, d, rng, markers, k) if cfg.layout == "sides" else None
    made = made or _one_at_a_time(cfg, d, rng, markers, k)
    if made is None:
        return None
    curves, crossings = made
    if cfg.layout == "sides":
        markers, curves, crossings = _reorient(rng, d.size, markers, curves, crossings)
    query = _choose_query(cfg, d, rng, markers, curves, crossings)
    letters = [LETTERS[j] for j in rng.permutation(k)]
    numbers = [str(j + 1) for j in rng.permutation(k)]
    return _Scene(markers[:k], markers[k:], letters, numbers, curves, crossings, query)


def _candidates_for_query(cfg: LineTracingConfig, crossings: Crossings, k: int) -> list[int]:
    per_curve = _crossings_per_curve(crossings, k)
    return [i for i in range(k) if per_curve[i] >= cfg.min_query_crossings]


def _choose_query(cfg: LineTracingConfig, d: _Dims, rng: np.random.Generator,
                  markers: np.ndarray, curves: list[np.ndarray], crossings: Crossings) -> int:
    """The queried curve, among those with enough crossings: uniformly in 'sides'; in the free
    layouts with weights exp(_QUERY_TILT . cues), which cancel the sampler's lean (towards curves
    that end far away and leave their start heading away from their end) on average."""
    k = len(curves)
    candidates = _candidates_for_query(cfg, crossings, k)
    if cfg.layout == "sides":
        return candidates[int(rng.integers(len(candidates)))]
    logits = _cues(d, markers[:k], markers[k:], curves)[candidates] @ np.array(
        _QUERY_TILT[cfg.layout])
    p = np.exp(logits - logits.max())
    return candidates[int(rng.choice(len(candidates), p=p / p.sum()))]


def fit_query_tilt(layout: str, seeds: tuple[int, ...], count: int,
                   sizes: tuple[int, ...] = (224, 336)) -> np.ndarray:
    """Refit ``_QUERY_TILT[layout]`` on ``count`` scenes per seed and size: the weights beta with
    which the queried curve's cues give its end marker chance probability on average, i.e. the
    minimum of the mean over scenes of log sum_candidates exp(beta . cues) (convex; its gradient
    is the mean cue of the chosen curve). The scenes do not depend on the weights."""
    from scipy.optimize import minimize
    from scipy.special import logsumexp, softmax

    rows = []
    for seed in seeds:
        for size in sizes:
            task = LineTracingTask(seed=seed, image_size=size, layout=layout)
            d = _Dims.of(task.config)
            for i in range(count):
                sc = task._scene(task.rng(i), i)
                cues = _cues(d, sc.starts, sc.ends, sc.curves)
                rows.append(cues[_candidates_for_query(task.config, sc.crossings, len(cues))])
    res = minimize(lambda b: np.mean([logsumexp(g @ b) for g in rows]),
                   np.zeros(rows[0].shape[1]), method="BFGS",
                   jac=lambda b: np.mean([softmax(g @ b) @ g for g in rows], axis=0))
    return res.x


def _cues(d: _Dims, starts: np.ndarray, ends: np.ndarray, curves: list[np.ndarray]) -> np.ndarray:
    """(K, F) what F simple cues that do not trace the curve give curve k's own end marker, minus
    chance (1/K). Each cue is a distribution over the end markers, seen from curve k's start (a
    cue that names a set is uniform over it; an empty set: over all): the nearest, the farthest,
    the one closest in angle to the curve's heading as it leaves its marker, those within 30 / 60
    degrees of that heading, on the start's image edge, on the opposite edge, within 30 degrees of
    the direction to the image centre, the one nearest the centre, the one with the most curve
    length around it, and the one in the start's place in order along the axis the starts spread
    along."""
    k, centre = len(curves), np.full(2, d.size / 2)
    edge, start_edge = _edge(ends, d.size), _edge(starts, d.size)
    central = np.eye(k)[np.hypot(*(ends - centre).T).argmin()]
    densest = np.eye(k)[_ring_length(d, ends, curves).argmax()]
    axis = int(np.argmax(starts.std(0)))
    across = np.argsort(ends[:, axis])[np.argsort(np.argsort(starts[:, axis]))]
    out = np.empty((k, 11))
    for c, curve in enumerate(curves):
        to = ends - starts[c]
        dist = np.hypot(to[:, 0], to[:, 1])
        out_of_marker = np.hypot(*(curve - starts[c]).T) > d.radius + 3 * d.width
        cos = _cos(to, curve[int(np.argmax(out_of_marker))] - starts[c])
        cues = [np.eye(k)[dist.argmin()], np.eye(k)[dist.argmax()], np.eye(k)[cos.argmax()],
                _uniform_over(cos >= math.cos(math.radians(30))),
                _uniform_over(cos >= math.cos(math.radians(60))),
                _uniform_over(edge == start_edge[c]), _uniform_over(edge == start_edge[c] ^ 1),
                _uniform_over(_cos(to, centre - starts[c]) >= math.cos(math.radians(30))),
                central, densest, np.eye(k)[across[c]]]
        out[c] = [cue[c] - 1 / k for cue in cues]
    return out


def _cos(vectors: np.ndarray, direction: np.ndarray) -> np.ndarray:
    norms = np.hypot(vectors[:, 0], vectors[:, 1]) * np.hypot(*direction)
    return vectors @ direction / np.maximum(norms, 1e-9)


def _ring_length(d: _Dims, ends: np.ndarray, curves: list[np.ndarray]) -> np.ndarray:
    """(K,) length of all curves within a ring of radius r + 1 to 3 r around each end marker."""
    pts = np.concatenate([(c[1:] + c[:-1]) / 2 for c in curves])
    seg = np.concatenate([np.hypot(*np.diff(c, axis=0).T) for c in curves])
    dist = np.hypot(*(pts[None] - ends[:, None]).transpose(2, 0, 1))
    return ((dist > d.radius + 1) & (dist < 3 * d.radius)) @ seg


def _edge(points: np.ndarray, size: int) -> np.ndarray:
    """The image edge nearest to each point: 0 left, 1 right, 2 top, 3 bottom."""
    return np.stack([points[:, 0], size - points[:, 0], points[:, 1], size - points[:, 1]],
                    1).argmin(1)


def _uniform_over(mask: np.ndarray) -> np.ndarray:
    mask = mask if mask.any() else np.ones_like(mask)
    return mask / mask.sum()


def _one_at_a_time(cfg: LineTracingConfig, d: _Dims, rng: np.random.Generator,
                   markers: np.ndarray, k: int) -> tuple[list[np.ndarray], Crossings] | None:
    """Curves added one at a time, each drawn until it fits with those already placed."""
    curves: list[np.ndarray] = []
    crossings: Crossings = []
    for i in range(k):
        # The last curve must also meet the crossing minimums: re-drawing it alone is far
        # cheaper than restarting the whole layout.
        goal = _crossing_goal(cfg, k) if i == k - 1 else None
        found = _add_curve(cfg, d, rng, markers, i, k, curves, crossings, goal)
        if found is None:
            return None
        curves.append(found[0])
        crossings.extend(found[1])
    return curves, crossings


def _sides_at_once(cfg: LineTracingConfig, d: _Dims, rng: np.random.Generator,
                   markers: np.ndarray, k: int) -> tuple[list[np.ndarray], Crossings] | None:
    """'sides': all curves drawn together, a few times; checked all at once on their shared
    x-grid this is the fastest way for a few curves (many curves rarely all fit at once)."""
    m = cfg.control_points
    lo, hi = float(markers[0, 0]), float(markers[k, 0])
    n = max(4, math.ceil((hi - lo) / d.spacing) + 1)
    basis = _basis(m + 2, n)
    t = _greville(m + 2)
    ys, ye = markers[:k, 1], markers[k:, 1]
    straight = ys[:, None] + t[None, 1:-1] * (ye - ys)[:, None]  # (k, m)
    margin = d.radius + 2.0
    for _ in range(_SIDES_DRAWS >> max(0, k - 4)):  # the chance that all fit falls fast with k
        ctrl_y = (1 - cfg.wander) * straight + cfg.wander * rng.uniform(margin, d.size - margin,
                                                                        (k, m))
        poly_y = np.concatenate([ys[:, None], ctrl_y, ye[:, None]], 1)
        polys = np.stack([np.broadcast_to(lo + (hi - lo) * t, poly_y.shape), poly_y], -1)
        curves = np.round(np.einsum("nk,ckx->cnx", basis, polys), 2)
        crossings = _sides_ok(cfg, d, curves, markers, k)
        if crossings is not None:
            return list(curves), crossings
    return None


def _sides_ok(cfg: LineTracingConfig, d: _Dims, curves: np.ndarray, markers: np.ndarray,
              k: int) -> Crossings | None:
    """The crossings of a full set of side-to-side curves, or None if a check fails."""
    y = curves[..., 1]
    if y.min() < d.width or y.max() > d.size - d.width or not _smooth(d, curves).all():
        return None
    ii, jj = _pairs(k)
    bad, count = _grid_pairs(d, curves[ii], curves[jj])
    per_curve = np.bincount(ii, count, k) + np.bincount(jj, count, k)
    if bad.any() or count.sum() < cfg.min_crossings or per_curve.max() < cfg.min_query_crossings:
        return None
    if not _clear_of_markers(d, curves, markers, np.arange(k), np.arange(k, 2 * k)).all():
        return None
    pairs = _pair_checks(d, curves[ii], curves[jj])
    if pairs is None:
        return None
    crossings: Crossings = [(int(i), int(j), x, yy)
                            for i, j, pair in zip(ii, jj, pairs, strict=True) for x, yy in pair]
    if not _crossing_goal(cfg, k)(crossings) or not _crossings_apart(d, [], crossings):
        return None
    return crossings


@functools.lru_cache(maxsize=MAX_CURVES + 1)
def _pairs(k: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.triu_indices(k, 1)``, built once per k (it is slow next to the checks it feeds)."""
    ii, jj = np.triu_indices(k, 1)
    ii.setflags(write=False)
    jj.setflags(write=False)
    return ii, jj


def _side_markers(d: _Dims, rng: np.random.Generator, k: int) -> np.ndarray | None:
    """'sides': k start markers on the left edge and k end markers on the right one, at random
    heights (rotated or reflected later, so starts may end up on any side)."""
    lo, hi = d.radius + 2.0, d.size - d.radius - 2.0
    ys = [_spaced(rng, k, lo, hi, d.marker_sep) for _ in range(2)]
    if ys[0] is None or ys[1] is None:
        return None
    return np.concatenate([np.stack([np.full(k, lo), ys[0]], 1),
                           np.stack([np.full(k, hi), ys[1]], 1)])


def _spaced(rng: np.random.Generator, n: int, lo: float, hi: float,
            sep: float) -> np.ndarray | None:
    """n values in [lo, hi], pairwise at least sep apart, uniform over such sets, in random
    order (sorted uniforms, shifted apart)."""
    room = hi - lo - (n - 1) * sep
    if room < 0:
        return None
    vals = np.sort(rng.uniform(0.0, room, n)) + sep * np.arange(n) + lo
    return np.round(vals[rng.permutation(n)], 2)


def _greville(n_ctrl: int) -> np.ndarray:
    """Greville abscissae of the knot vector of ``_basis``: control points there reproduce a
    straight line, so a curve whose control x sit there has x linear in the parameter."""
    k = min(3, n_ctrl - 1)
    knots = np.concatenate([np.zeros(k), np.linspace(0.0, 1.0, n_ctrl - k + 1), np.ones(k)])
    return np.array([knots[i + 1:i + k + 1].mean() for i in range(n_ctrl)])


def _reorient(rng: np.random.Generator, size: int, markers: np.ndarray,
              curves: list[np.ndarray], crossings: Crossings,
              ) -> tuple[np.ndarray, list[np.ndarray], Crossings]:
    """Apply one of the square's 8 symmetries, so starts may sit on any side."""
    swap, flip_x, flip_y = (bool(b) for b in rng.integers(0, 2, 3))

    def move(p: np.ndarray) -> np.ndarray:
        p = p[..., ::-1] if swap else p
        p = np.stack([size - p[..., 0] if flip_x else p[..., 0],
                      size - p[..., 1] if flip_y else p[..., 1]], -1)
        return np.round(p, 2)

    moved = [(i, j, *move(np.array([x, y])).tolist()) for i, j, x, y in crossings]
    return move(markers), [move(c) for c in curves], moved


def _crossing_goal(cfg: LineTracingConfig, k: int) -> Callable[[Crossings], bool]:
    """Whether a full list of crossings meets the configured minimums."""
    def goal(crossings: Crossings) -> bool:
        per_curve = _crossings_per_curve(crossings, k)
        return (len(crossings) >= cfg.min_crossings
                and max(per_curve) >= cfg.min_query_crossings)
    return goal


def _add_curve(cfg: LineTracingConfig, d: _Dims, rng: np.random.Generator, markers: np.ndarray,
               i: int, k: int, placed: list[np.ndarray], crossings: Crossings,
               goal: Callable[[Crossings], bool] | None) -> tuple[np.ndarray, Crossings] | None:
    """Curve i (start marker i to end marker k + i) and its new crossings, or None.

    With ``goal``, the curve must also make the full crossing list meet it.
    """
    tried = 0
    for _ in range(_BATCHES if cfg.control_points else 1):
        for curve in _candidates(cfg, d, rng, markers, (i, k + i), placed):
            found = _crossings_with(d, curve, i, placed, crossings, goal)
            if found is not None:
                return curve, found
            tried += 1
            if tried == _CURVE_TRIES:
                return None
    return None


def _candidates(cfg: LineTracingConfig, d: _Dims, rng: np.random.Generator,
                markers: np.ndarray, own: tuple[int, int], placed: list[np.ndarray],
                ) -> np.ndarray:
    """(C, N, 2) candidate curves for one start-end pair that pass the single-curve checks
    (inside the image, smooth, off other markers), all checked at once."""
    polys = _control_polygons(cfg, d, rng, markers[own[0]], markers[own[1]], placed)
    if not len(polys):
        return polys
    if cfg.layout == "sides":  # one x-grid for all curves
        length = abs(float(markers[own[1], 0] - markers[own[0], 0]))
    else:
        length = np.hypot(*np.diff(polys, axis=1).transpose(2, 0, 1)).sum(1).max()
    n = max(4, math.ceil(length / d.spacing) + 1)
    curves = np.round(np.einsum("nk,ckx->cnx", _basis(polys.shape[1], n), polys), 2)
    ok = (curves.min((1, 2)) >= d.width) & (curves.max((1, 2)) <= d.size - d.width)
    ok &= _smooth(d, curves) & _clear_of_markers(d, curves, markers, *own)
    if cfg.layout == "sides" and placed:
        c, p = np.divmod(np.arange(len(curves) * len(placed)), len(placed))
        ok &= ~_grid_pairs(d, curves[c], np.stack(placed)[p])[0].reshape(len(curves), -1).any(1)
    return curves[ok]


def _grid_pairs(d: _Dims, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """'sides' only, where all curves share one x-grid, for curve pairs (a[p], b[p]): whether each
    pair touches at a vertex or crosses too flat, and how often it crosses (where the y difference
    changes sign). A cheap, vectorised first pass of the commonest failures of ``_pair_checks``."""
    diff = a[..., 1] - b[..., 1]  # (P, N)
    bad = (np.abs(diff) < 0.02).any(1)  # touching at a vertex: ambiguous to count, and to see
    flips = np.diff(np.sign(diff), axis=1) != 0  # (P, N - 1): segment n crosses there
    p, n = np.nonzero(flips)
    dx = np.full(len(n), a[0, 1, 0] - a[0, 0, 0])
    flat = _abs_cos(np.stack([dx, a[p, n + 1, 1] - a[p, n, 1]], 1),
                    np.stack([dx, b[p, n + 1, 1] - b[p, n, 1]], 1)) > d.cos_min
    bad[p[flat]] = True
    return bad, flips.sum(1)


def _place_markers(cfg: LineTracingConfig, d: _Dims, rng: np.random.Generator,
                   n: int) -> np.ndarray | None:
    """n marker centres at least a curve-corridor apart, inside the image (or on its border)."""
    lo, hi = d.radius + 2.0, d.size - d.radius - 2.0
    min_sep = d.marker_sep
    pool = (_border_points(rng, lo, hi, 40 * n) if cfg.layout == "border"
            else rng.uniform(lo, hi, (40 * n, 2)))
    pts: list[np.ndarray] = []
    for p in pool:
        if all((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 >= min_sep ** 2 for q in pts):
            pts.append(p)
            if len(pts) == n:
                return np.round(np.array(pts), 2)
    return None


def _border_points(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    """n uniform points on the square ring [lo, hi] (the marker centres' border)."""
    s = rng.uniform(0.0, 4.0, n)
    side, t = s.astype(int), lo + (s % 1.0) * (hi - lo)
    x = np.choose(side, [t, np.full(n, hi), t, np.full(n, lo)])
    y = np.choose(side, [np.full(n, lo), t, np.full(n, hi), t])
    return np.stack([x, y], axis=1)


def _control_polygons(cfg: LineTracingConfig, d: _Dims, rng: np.random.Generator,
                      start: np.ndarray, end: np.ndarray, placed: list[np.ndarray]) -> np.ndarray:
    """(C, m + 2, 2) control polygons: start, m random points, end. Those with a chord too short,
    a hairpin bend or two crossing chords (a spline with a cusp or loop) are dropped."""
    m = cfg.control_points
    margin = d.radius + 2.0
    c = _CANDIDATES if m else 1
    if cfg.layout == "sides":
        # x at the Greville abscissae, so that x runs linearly along every curve: all curves
        # share one x-grid and are graphs over it (they never turn back).
        t = _greville(m + 2)[1:-1, None]
        anywhere = np.stack([np.broadcast_to(start[0] + t[:, 0] * (end[0] - start[0]), (c, m)),
                             rng.uniform(margin, d.size - margin, (c, m))], -1)
    else:
        t = (np.arange(1, m + 1) / (m + 1))[:, None]
        anywhere = rng.uniform(margin, d.size - margin, (c, m, 2))
        if m and placed:
            _aim(rng, anywhere, np.concatenate(placed), d.size / 8, (margin, d.size - margin))
    straight = (1 - t) * start + t * end
    ctrl = (1 - cfg.wander) * straight + cfg.wander * anywhere
    n = len(ctrl)
    poly = np.concatenate([np.broadcast_to(start, (n, 1, 2)), ctrl,
                           np.broadcast_to(end, (n, 1, 2))], axis=1)
    chords = np.diff(poly, axis=1)  # (C, m + 1, 2)
    length = np.hypot(chords[..., 0], chords[..., 1])
    ok = (length >= 2.0 * d.gap).all(1)
    if m:
        cos = (chords[:, 1:] * chords[:, :-1]).sum(-1) / np.maximum(
            length[:, 1:] * length[:, :-1], 1e-9)
        ok &= (cos >= math.cos(_MAX_TURN)).all(1)
    if m >= 2:
        ok &= ~_polygon_crosses_itself(poly)
    return poly[ok]


def _aim(rng: np.random.Generator, ctrl: np.ndarray, targets: np.ndarray, jitter: float,
         bounds: tuple[float, float]) -> None:
    """Move one control point of about half the candidates next to a random point of a placed
    curve, in place: curves then cross far more often than from uniform points alone."""
    c, m = ctrl.shape[:2]
    use = np.flatnonzero(rng.random(c) < _AIM)
    aim = targets[rng.integers(len(targets), size=len(use))]
    aim = aim + rng.uniform(-jitter, jitter, (len(use), 2))
    ctrl[use, rng.integers(m, size=len(use))] = np.clip(aim, *bounds)


def _polygon_crosses_itself(poly: np.ndarray) -> np.ndarray:
    """(C,) whether two non-adjacent chords of each control polygon cross (a twisted polygon
    gives a spline with a cusp or a loop)."""
    out = np.zeros(len(poly), dtype=bool)
    n = poly.shape[1] - 1
    for i in range(n - 2):
        for j in range(i + 2, n):
            out |= _chords_cross(poly[:, i], poly[:, i + 1], poly[:, j], poly[:, j + 1])
    return out


def _chords_cross(p: np.ndarray, q: np.ndarray, r: np.ndarray, s: np.ndarray) -> np.ndarray:
    def orient(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
        return np.sign((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1])
                       - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))
    return (orient(p, q, r) != orient(p, q, s)) & (orient(r, s, p) != orient(r, s, q))


@functools.lru_cache(maxsize=1024)
def _basis(n_ctrl: int, n_samples: int) -> np.ndarray:
    """(n_samples, n_ctrl) B-spline basis at uniform parameters, exact at both ends."""
    # imported here: scipy.interpolate takes ~0.4 s, which every `--help` that shows an
    # experiment config (it imports the task registry) would pay otherwise
    from scipy.interpolate import BSpline

    k = min(3, n_ctrl - 1)
    knots = np.concatenate([np.zeros(k), np.linspace(0.0, 1.0, n_ctrl - k + 1), np.ones(k)])
    u = np.linspace(0.0, 1.0, n_samples)
    basis = BSpline(knots, np.eye(n_ctrl), k)(u)
    basis[0], basis[-1] = np.eye(n_ctrl)[0], np.eye(n_ctrl)[-1]
    basis.setflags(write=False)
    return basis


def _crossings_with(d: _Dims, curve: np.ndarray, i: int, placed: list[np.ndarray],
                    crossings: Crossings, goal: Callable[[Crossings], bool] | None,
                    ) -> Crossings | None:
    """The new curve's crossings with the placed curves, or None if it breaks a constraint."""
    if placed and all(len(c) == len(curve) for c in placed):  # one batch (always, in 'sides')
        pairs = _pair_checks(d, np.stack(placed), np.stack([curve] * len(placed)))
    else:
        pairs = []
        for other in placed:
            pair = _pair_checks(d, other[None], curve[None])
            if pair is None:
                return None
            pairs.append(pair[0])
    if pairs is None:
        return None
    found: Crossings = [(j, i, x, y) for j, pair in enumerate(pairs) for x, y in pair]
    if goal is not None and not goal(crossings + found):
        return None
    if not _crossings_apart(d, crossings, found) or not _self_ok(d, curve):
        return None
    return found


def _smooth(d: _Dims, curves: np.ndarray) -> np.ndarray:
    """(C,) whether each curve's radius of curvature stays above ``min_radius`` everywhere."""
    seg = np.diff(curves, axis=1)
    length = np.hypot(seg[..., 0], seg[..., 1])
    cross = seg[:, :-1, 0] * seg[:, 1:, 1] - seg[:, :-1, 1] * seg[:, 1:, 0]
    dot = (seg[:, :-1] * seg[:, 1:]).sum(-1)
    turn = np.abs(np.arctan2(cross, dot))  # turning angle at each inner vertex
    return (turn * d.min_radius <= 0.5 * (length[:, :-1] + length[:, 1:])).all(1)


def _clear_of_markers(d: _Dims, curves: np.ndarray, markers: np.ndarray,
                      own_start: np.ndarray | int, own_end: np.ndarray | int) -> np.ndarray:
    """(C,) whether each curve keeps off every marker, except where it leaves its own start
    marker (a leading run of vertices) and enters its own end marker (a trailing run)."""
    diff = curves[:, :, None, :] - markers[None, None, :, :]
    near = _dot(diff, diff) < d.clearance ** 2  # (C, N, M)
    c = np.arange(len(curves))
    own_start = np.broadcast_to(own_start, c.shape)
    own_end = np.broadcast_to(own_end, c.shape)
    col = near[c, :, own_start]
    near[c, :, own_start] = col & ~np.logical_and.accumulate(col, axis=1)
    col = near[c, :, own_end]
    near[c, :, own_end] = col & ~np.logical_and.accumulate(col[:, ::-1], axis=1)[:, ::-1]
    return ~near.any((1, 2))


def _self_ok(d: _Dims, curve: np.ndarray) -> bool:
    """No self-crossing and no hairpin: strands far apart along the curve stay apart in space."""
    steps = np.hypot(*np.diff(curve, axis=0).T)
    arc = np.concatenate([[0.0], np.cumsum(steps)])
    far_along = np.abs(arc[:, None] - arc[None, :]) > 3.0 * d.gap
    diff = curve[:, None, :] - curve[None, :, :]
    dist2 = _dot(diff, diff)
    if (far_along & (dist2 < d.gap ** 2)).any():
        return False
    a0, a1 = curve[:-1, None], curve[1:, None]  # (N - 1, 1, 2) against (1, N - 1, 2)
    t, u = _segment_hits(a0, a1, curve[None, :-1], curve[None, 1:])
    hit = (t >= 0) & (t < 1) & (u >= 0) & (u < 1)
    idx = np.arange(len(curve) - 1)
    hit &= np.abs(idx[:, None] - idx[None, :]) > 1  # neighbours share a vertex
    return not hit.any()


def _dot(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(...) dot products of (..., 2) vectors: the same sums as ``(u * v).sum(-1)``, several times
    faster (numpy reduces a length-2 axis slowly, and the sampler does it in its inner loop)."""
    return u[..., 0] * v[..., 0] + u[..., 1] * v[..., 1]


def _segment_hits(a0: np.ndarray, a1: np.ndarray, b0: np.ndarray, b1: np.ndarray,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Parameters (t along a, u along b) where the lines of segments a0-a1 and b0-b1 meet, for
    (..., 2) arrays broadcast together: (...) each (-1 for parallel segments)."""
    da, db, w = a1 - a0, b1 - b0, b0 - a0
    den = da[..., 0] * db[..., 1] - da[..., 1] * db[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (w[..., 0] * db[..., 1] - w[..., 1] * db[..., 0]) / den
        u = (w[..., 0] * da[..., 1] - w[..., 1] * da[..., 0]) / den
    bad = ~np.isfinite(t) | ~np.isfinite(u)  # parallel segments never cross here
    t[bad], u[bad] = -1.0, -1.0
    return t, u


def _pair_checks(d: _Dims, a: np.ndarray, b: np.ndarray) -> list[list[tuple[float, float]]] | None:
    """Crossing points of each curve pair (a[p], b[p]) (both (P, N, 2)), or None if any crossing
    is unclear (too flat, or a curve bends at it) or two curves run too close elsewhere."""
    dx, dy = (a[:, :, None, i] - b[:, None, :, i] for i in (0, 1))  # (P, Na, Nb) each
    dist2 = dx * dx + dy * dy  # squared vertex distances
    # Two segments can only meet if their first vertices are within the sum of their lengths
    # (the L1 step bounds each length): only those pairs are solved, in the same (p, ia, ib)
    # order, with the same arithmetic, so the result is that of solving every pair.
    reach = 1.01 * (_max_step(a) + _max_step(b))
    p, ia, ib = np.nonzero(dist2[:, :-1, :-1] <= reach ** 2)
    t, u = _segment_hits(a[p, ia], a[p, ia + 1], b[p, ib], b[p, ib + 1])
    eps = 1e-6  # a crossing exactly at a vertex would be counted ambiguously: reject it
    hit = (t >= -eps) & (t <= 1 + eps) & (u >= -eps) & (u <= 1 + eps)
    p, ia, ib, tt, uu = p[hit], ia[hit], ib[hit], t[hit], u[hit]
    if ((tt < eps) | (tt > 1 - eps) | (uu < eps) | (uu > 1 - eps)).any():
        return None
    pts = a[p, ia] + tt[:, None] * (a[p, ia + 1] - a[p, ia])
    if len(pts):
        if (_abs_cos(a[p, ia + 1] - a[p, ia], b[p, ib + 1] - b[p, ib]) > d.cos_min).any():
            return None  # too flat right at the crossing
        arc_a, arc_b = _arc(a), _arc(b)
        for reach in (d.reach, 1.5 * d.reach):
            arms_a = _arms(a, *arc_a, p, ia, tt, pts, reach)
            arms_b = _arms(b, *arc_b, p, ib, uu, pts, reach)
            if not _unambiguous(d, arms_a, arms_b):
                return None
    if _runs_close(d, a, b, p, pts, dist2):
        return None
    found: list[list[tuple[float, float]]] = [[] for _ in range(len(a))]
    for q, (x, y) in zip(p.tolist(), pts.tolist(), strict=True):
        found[q].append((x, y))
    return found


def _abs_cos(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.abs(_dot(u, v)) / np.maximum(np.hypot(u[..., 0], u[..., 1])
                                                * np.hypot(v[..., 0], v[..., 1]), 1e-9)


def _arc(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P, N - 1) segment lengths and (P, N) arc length at each vertex of curves (P, N, 2)."""
    step = np.hypot(*np.diff(curves, axis=1).transpose(2, 0, 1))
    return step, np.concatenate([np.zeros((len(curves), 1)), np.cumsum(step, axis=1)], axis=1)


def _arms(curves: np.ndarray, step: np.ndarray, arc: np.ndarray, p: np.ndarray, seg: np.ndarray,
          t: np.ndarray, x: np.ndarray, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors from each crossing x (on curve p's segment seg, at t) to the curve's points
    ``reach`` before and after it along the curve (step, arc: ``_arc(curves)``): the two arms a
    viewer sees leave it by."""
    s = arc[p, seg] + t * step[p, seg]
    n = curves.shape[1]
    out = []
    for shift in (-reach, reach):
        # np.minimum / np.maximum: np.clip's result, without its per-call overhead
        target = np.minimum(np.maximum(s + shift, 0.0), arc[p, -1])
        # The segment holding arc length ``target`` on each crossing's own curve.
        k = np.minimum(np.maximum((arc[p] <= target[:, None]).sum(1) - 1, 0), n - 2)
        frac = (target - arc[p, k]) / np.maximum(step[p, k], 1e-12)
        q = curves[p, k] + frac[:, None] * (curves[p, k + 1] - curves[p, k]) - x
        out.append(q / np.maximum(np.hypot(q[:, 0], q[:, 1]), 1e-9)[:, None])
    return out[0], out[1]


def _unambiguous(d: _Dims, arms_a: tuple[np.ndarray, np.ndarray],
                 arms_b: tuple[np.ndarray, np.ndarray]) -> bool:
    """Good continuation at every crossing of curves a and b: each curve runs nearly straight
    through it (bending at most ``_MAX_CROSS_TURN``), and going on from any arm along the other
    curve would bend more, by half the minimum crossing angle, than following its own curve.

    A curve that bends at a crossing could be read as turning onto the other curve.
    """
    def bend(p: np.ndarray, q: np.ndarray) -> np.ndarray:  # deviation from straight, p in, q out
        return np.arccos(np.minimum(np.maximum(-_dot(p, q), -1.0), 1.0))

    own_a, own_b = bend(*arms_a), bend(*arms_b)
    if (own_a > _MAX_CROSS_TURN).any() or (own_b > _MAX_CROSS_TURN).any():
        return False
    need = np.maximum(own_a, own_b) + math.radians(0.5 * d.min_angle)
    return all((bend(p, q) >= need).all() for p in arms_a for q in arms_b)


def _runs_close(d: _Dims, a: np.ndarray, b: np.ndarray, p: np.ndarray,
                crossings: np.ndarray, dist2: np.ndarray) -> bool:
    """Whether curves a[q] and b[q] come within gap of each other away from their crossings
    (p: the pair of each crossing; dist2: (P, Na, Nb) squared vertex distances)."""
    away_a, away_b = _away(a, p, crossings, d.window), _away(b, p, crossings, d.window)
    gap = d.gap
    # Only a vertex within gap + a segment's length of the other curve's vertices can be within
    # gap of one of its segments: the exact distances are measured for those vertices alone.
    reach2 = (gap + max(_max_step(a), _max_step(b))) ** 2
    near_a = (dist2.min(2) < reach2) & away_a  # (P, Na)
    near_b = (dist2.min(1) < reach2) & away_b  # (P, Nb)
    return _any_within(a, b, near_a, gap) or _any_within(b, a, near_b, gap)


def _any_within(a: np.ndarray, b: np.ndarray, which: np.ndarray, gap: float) -> bool:
    """Whether any vertex a[q, v] marked in ``which`` (P, Na) lies within gap of curve b[q]."""
    q, v = np.nonzero(which)
    if not len(q):
        return False
    dist = _point_segment_distance(a[q, v][:, None], b[q, :-1], b[q, 1:])  # (M, 1, Nb - 1)
    return bool((dist.min(-1) < gap).any())


def _max_step(curves: np.ndarray) -> float:
    step = np.abs(np.diff(curves, axis=-2))
    return float((step[..., 0] + step[..., 1]).max())


def _away(curves: np.ndarray, p: np.ndarray, crossings: np.ndarray, window: float) -> np.ndarray:
    """(P, N) whether each vertex lies farther than window from every crossing of its pair."""
    if not len(crossings):
        return np.ones(curves.shape[:2], dtype=bool)
    diff = curves[:, :, None, :] - crossings[None, None]
    d2 = _dot(diff, diff)  # (P, N, C)
    mine = p[None, None, :] == np.arange(len(curves))[:, None, None]
    return ~((d2 <= window ** 2) & mine).any(-1)


def _point_segment_distance(pts: np.ndarray, s0: np.ndarray, s1: np.ndarray) -> np.ndarray:
    """Distances from points (..., P, 2) to segments (..., S, 2): (..., P, S)."""
    d = (s1 - s0)[..., None, :, :]
    w = pts[..., :, None, :] - s0[..., None, :, :]
    dd = np.maximum(_dot(d, d), 1e-12)
    t = np.clip(_dot(w, d) / dd, 0.0, 1.0)
    diff = w - t[..., None] * d
    return np.hypot(diff[..., 0], diff[..., 1])


def _crossings_apart(d: _Dims, old: list[tuple[int, int, float, float]],
                     new: list[tuple[int, int, float, float]]) -> bool:
    """Crossings stay far enough apart to be told apart (no three curves meeting at a point)."""
    pts = [(c[2], c[3]) for c in old + new]
    sep2 = d.window ** 2
    for n in range(len(old), len(pts)):
        for m in range(n):
            if (pts[n][0] - pts[m][0]) ** 2 + (pts[n][1] - pts[m][1]) ** 2 < sep2:
                return False
    return True


def _crossings_per_curve(crossings: list[tuple[int, int, float, float]], k: int) -> list[int]:
    counts = [0] * k
    for i, j, _, _ in crossings:
        counts[i] += 1
        counts[j] += 1
    return counts


# ----------------------------------------------------------------------------- drawing


def _render(cfg: LineTracingConfig, scene: _Scene, color: tuple[int, int, int]) -> Image.Image:
    size = cfg.image_size
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for curve in scene.curves:
        # Pixel i covers [i, i+1) and PIL's integer coordinate i is that pixel's centre (wide
        # lines truncate floats): so each vertex is drawn in the pixel that contains it.
        draw.line([(int(x), int(y)) for x, y in curve.tolist()], fill=color,
                  width=cfg.width, joint="curve")
    for k in range(len(scene.curves)):
        _marker(image, draw, cfg, scene.starts[k], scene.letters[k], color, filled=True)
        _marker(image, draw, cfg, scene.ends[k], scene.numbers[k], color, filled=False)
    return image


def _marker(image: Image.Image, draw: ImageDraw.ImageDraw, cfg: LineTracingConfig,
            centre: np.ndarray, glyph: str, color: tuple[int, int, int], filled: bool) -> None:
    """Start markers: filled disc, white glyph; end markers: white disc, ring, dark glyph."""
    cx, cy = float(centre[0]), float(centre[1])
    r = cfg.radius
    # Integer box (PIL truncates floats): the pixels [x0, x1] centred on (cx, cy) within 0.5 px.
    box = [round(cx - r), round(cy - r), round(cx + r) - 1, round(cy + r) - 1]
    ring = max(1, cfg.glyph_scale)
    draw.ellipse(box, fill=color if filled else BACKGROUND, outline=color, width=ring)
    mask = glyph_mask(glyph, cfg.glyph_scale)
    x0 = round(cx - mask.width / 2)
    y0 = round(cy - mask.height / 2)
    image.paste(BACKGROUND if filled else color, (x0, y0), mask)




# ----------------------------------------------------------------------------- sample


def _turning(curve: np.ndarray) -> float:
    """Total absolute turning angle of a polyline, radians (a curvature measure)."""
    d = np.diff(curve, axis=0)
    ang = np.arctan2(d[:, 1], d[:, 0])
    turn = (np.diff(ang) + np.pi) % (2 * np.pi) - np.pi
    return float(np.abs(turn).sum())


def _length(curve: np.ndarray) -> float:
    return float(np.hypot(*np.diff(curve, axis=0).T).sum())


def _to_sample(task: LineTracingTask, index: int, cfg: LineTracingConfig, scene: _Scene,
               color: tuple[int, int, int], image: Image.Image) -> Sample:
    q, r = scene.query, cfg.radius
    per_curve = _crossings_per_curve(scene.crossings, len(scene.curves))
    curves = [{
        "start": scene.letters[k], "end": scene.numbers[k], "vertices": c.tolist(),
        "crossings": per_curve[k], "length": round(_length(c), 2),
        "turning": round(_turning(c), 4),
    } for k, c in enumerate(scene.curves)]
    ex, ey = scene.ends[q].tolist()
    size = cfg.image_size
    end_box = (max(0.0, ex - r), max(0.0, ey - r), min(size, ex + r), min(size, ey + r))
    letter, number = scene.letters[q], scene.numbers[q]
    meta = {
        "num_curves": len(scene.curves), "query_index": q,
        "query_crossings": per_curve[q], "total_crossings": len(scene.crossings),
        "curve_length": curves[q]["length"], "curvature": curves[q]["turning"],
        "curves": curves,
        "start_markers": {scene.letters[k]: scene.starts[k].tolist() for k in range(len(curves))},
        "end_markers": {scene.numbers[k]: scene.ends[k].tolist() for k in range(len(curves))},
        "crossings": [[i, j, round(x, 2), round(y, 2)] for i, j, x, y in scene.crossings],
        "marker_radius": r, "line_width": cfg.width, "curve_color": list(color),
        "background": list(BACKGROUND), "layout": cfg.layout, "image_size": size,
    }
    return Sample(
        image=image, question=QUESTION.format(letter=letter), answer=number,
        structured={"start": letter, "end": number},
        geometry=Geometry(boxes=[end_box], polylines=[[tuple(p) for p in curves[q]["vertices"]]],
                          line_width=float(cfg.width)),
        task=task.name, id=task.sample_id(index), meta=meta,
    )
