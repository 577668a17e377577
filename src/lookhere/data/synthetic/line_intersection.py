"""Line Intersection: do two named coloured line segments cross? (KLAL geometric-reasoning task)

2-4 thick segments of distinct named colours on white. Answers are balanced exactly by index
parity (even index: "yes", odd: "no"); rejection sampling draws segments from one proposal
distribution until the queried pair's geometry matches, so segment placement carries no label cue.
Every pair of segments in an image is unambiguous by eye: crossings are not too shallow and not
near a segment end, and non-crossing segments keep a clear gap. The geometry is the crossing
point, or for "no" the two closest points (one on each segment).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from lookhere.data.sample import Geometry, Sample
from lookhere.data.synthetic.base import SyntheticTask, register_task

# No magenta (the contact sheet's overlay colour), no yellow or pink (faint as thin lines on white).
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 20),
    "green": (0, 150, 0),
    "blue": (20, 60, 230),
    "orange": (255, 128, 0),
    "purple": (130, 40, 180),
    "black": (0, 0, 0),
    "brown": (120, 70, 20),
    "cyan": (0, 190, 210),
}
BACKGROUND = (255, 255, 255)
_MAX_TRIES = 5000  # rejection-sampling budget per segment; defaults need a few dozen at most
_BATCH = 64  # endpoints drawn per rng call: far fewer numpy calls than one per try

Seg = tuple[float, float, float, float]  # x0, y0, x1, y1 in continuous pixel coordinates


@dataclass(frozen=True)
class LineIntersectionConfig:
    image_size: int = field(default=336, metadata={
        "help": "Side of the square image in pixels (336 = LLaVA-1.5's input)."})
    num_lines_min: int = field(default=2, metadata={
        "help": "Fewest segments per image (the queried pair included)."})
    num_lines_max: int = field(default=4, metadata={
        "help": "Most segments per image; the count is uniform in [min, max]."})
    line_width: int = field(default=0, metadata={
        "help": "Stroke width in pixels; 0 = auto, max(2, round(image_size / 56)) "
                "(2 px at 112, 6 px at 336)."})
    min_length: float = field(default=0.3, metadata={
        "help": "Shortest segment, as a fraction of the image side."})
    min_gap: float = field(default=0.05, metadata={
        "help": "Non-crossing segments: least centreline distance, as a fraction of the image "
                "side (never below line_width + 3 px, so >= 3 px of background shows)."})
    min_angle_deg: float = field(default=25.0, metadata={
        "help": "Crossing segments: least crossing angle in degrees."})
    end_margin: float = field(default=0.1, metadata={
        "help": "Crossing segments: least distance from the crossing to any of the two "
                "segments' ends, as a fraction of the image side (never below 2 x line_width)."})

    def __post_init__(self) -> None:
        if not 32 <= self.image_size <= 4096:
            raise ValueError(f"image_size must be in [32, 4096], got {self.image_size}")
        n = len(PALETTE)
        if not 2 <= self.num_lines_min <= n:
            raise ValueError(f"num_lines_min must be in [2, {n}], got {self.num_lines_min}")
        if not self.num_lines_min <= self.num_lines_max <= n:
            raise ValueError(f"num_lines_max must be in [num_lines_min={self.num_lines_min}, "
                             f"{n}], got {self.num_lines_max}")
        if not 0 <= self.line_width <= self.image_size // 16:
            raise ValueError(f"line_width must be in [0, image_size // 16 = "
                             f"{self.image_size // 16}] (0 = auto), got {self.line_width}")
        if not 0.05 <= self.min_length <= 0.8:
            raise ValueError(f"min_length must be in [0.05, 0.8], got {self.min_length}")
        if not 0.0 <= self.min_gap <= 0.2:
            raise ValueError(f"min_gap must be in [0, 0.2], got {self.min_gap}")
        if not 0.0 <= self.min_angle_deg <= 60.0:
            raise ValueError(f"min_angle_deg must be in [0, 60], got {self.min_angle_deg}")
        if not 0.0 <= self.end_margin <= 0.2:
            raise ValueError(f"end_margin must be in [0, 0.2], got {self.end_margin}")

    @property
    def width_px(self) -> int:
        return self.line_width or max(2, round(self.image_size / 56))

    @property
    def gap_px(self) -> float:
        return max(self.min_gap * self.image_size, self.width_px + 3.0)

    @property
    def end_margin_px(self) -> float:
        return max(self.end_margin * self.image_size, 2.0 * self.width_px)


# ---- segment geometry (plain floats: this runs inside the rejection loop) ----

def _closest_on_segment(px: float, py: float, s: Seg) -> tuple[float, float]:
    x0, y0, x1, y1 = s
    dx, dy = x1 - x0, y1 - y0
    n2 = dx * dx + dy * dy
    if n2 == 0.0:  # a point (the crossing, used as a degenerate segment)
        return x0, y0
    t = ((px - x0) * dx + (py - y0) * dy) / n2
    t = min(1.0, max(0.0, t))
    return x0 + t * dx, y0 + t * dy


def closest_points(a: Seg, b: Seg) -> tuple[tuple[float, float], tuple[float, float], float]:
    """Closest points (on a, on b) of two NON-crossing segments and their distance: in 2D the
    minimum is always attained at an endpoint of one segment, so four projections suffice."""
    best: tuple[Any, Any, float] | None = None
    for src, dst, flip in ((a, b, False), (b, a, True)):
        for px, py in ((src[0], src[1]), (src[2], src[3])):
            q = _closest_on_segment(px, py, dst)
            d = math.hypot(q[0] - px, q[1] - py)
            if best is None or d < best[2]:
                best = (q, (px, py), d) if flip else ((px, py), q, d)
    assert best is not None
    return best


def crossing(a: Seg, b: Seg) -> tuple[float, float, float, float] | None:
    """(t, u, x, y) where a(t) = b(u) with t, u in [0, 1], or None (also for parallel)."""
    rx, ry = a[2] - a[0], a[3] - a[1]
    sx, sy = b[2] - b[0], b[3] - b[1]
    den = rx * sy - ry * sx
    if abs(den) < 1e-12:
        return None
    qx, qy = b[0] - a[0], b[1] - a[1]
    t = (qx * sy - qy * sx) / den
    u = (qx * ry - qy * rx) / den
    if not (0.0 <= t <= 1.0 and 0.0 <= u <= 1.0):
        return None
    return t, u, a[0] + t * rx, a[1] + t * ry


def _length(s: Seg) -> float:
    return math.hypot(s[2] - s[0], s[3] - s[1])


def relation(a: Seg, b: Seg, cfg: LineIntersectionConfig) -> dict[str, Any] | None:
    """How two segments relate, or None when it would be ambiguous by eye.

    Crossing: ``{"intersect": True, "point", "angle_deg", "end_distance"}``;
    apart: ``{"intersect": False, "points": (pa, pb), "gap"}``.
    """
    hit = crossing(a, b)
    if hit is None:
        pa, pb, d = closest_points(a, b)
        return None if d < cfg.gap_px else {"intersect": False, "points": (pa, pb), "gap": d}
    t, u, x, y = hit
    la, lb = _length(a), _length(b)
    end_dist = min(t * la, (1 - t) * la, u * lb, (1 - u) * lb)
    cos = abs((a[2] - a[0]) * (b[2] - b[0]) + (a[3] - a[1]) * (b[3] - b[1])) / (la * lb)
    angle = math.degrees(math.acos(min(1.0, cos)))
    if end_dist < cfg.end_margin_px or angle < cfg.min_angle_deg:
        return None
    return {"intersect": True, "point": (x, y), "angle_deg": angle, "end_distance": end_dist}


def _segment_to_segment(a: Seg, b: Seg) -> float:
    if crossing(a, b) is not None:
        return 0.0
    return closest_points(a, b)[2]


# ---- sampling ----

class _Proposals:
    """Random segments with both ends inside the padded image and length >= min_length."""

    def __init__(self, rng: np.random.Generator, cfg: LineIntersectionConfig) -> None:
        self.rng, self.cfg = rng, cfg
        self.pad = max(cfg.width_px, 0.04 * cfg.image_size)
        self.buf: list[list[float]] = []

    def __next__(self) -> Seg:
        min_len = self.cfg.min_length * self.cfg.image_size
        while True:
            if not self.buf:
                hi = self.cfg.image_size - self.pad
                self.buf = self.rng.uniform(self.pad, hi, size=(_BATCH, 4)).tolist()[::-1]
            x0, y0, x1, y1 = self.buf.pop()
            if math.hypot(x1 - x0, y1 - y0) >= min_len:
                return (x0, y0, x1, y1)


def _query_pair(props: _Proposals, want: bool) -> tuple[Seg, Seg, dict[str, Any]]:
    for _ in range(_MAX_TRIES):
        a, b = next(props), next(props)
        rel = relation(a, b, props.cfg)
        if rel is not None and rel["intersect"] == want:
            return a, b, rel
    raise RuntimeError(f"no clear {'crossing' if want else 'separate'} pair in {_MAX_TRIES} "
                       "tries; loosen min_angle_deg / end_margin / min_gap / min_length")


def _distractor(props: _Proposals, placed: list[Seg], key: Seg) -> Seg:
    """A segment unambiguous against every placed one, and clear of the evidence ``key`` (the
    crossing point or the gap between the closest points) so it can't hide it."""
    cfg = props.cfg
    for _ in range(_MAX_TRIES):
        s = next(props)
        if (_segment_to_segment(s, key) >= cfg.gap_px
                and all(relation(s, p, cfg) is not None for p in placed)):
            return s
    raise RuntimeError(f"could not place a distractor segment in {_MAX_TRIES} tries; "
                       "use fewer lines or loosen the margins")


@register_task
class LineIntersectionTask(SyntheticTask):
    """Do the {c1} and {c2} line segments cross? Even index: yes; odd index: no."""

    name = "line_intersection"
    config_class = LineIntersectionConfig

    def sample(self, index: int) -> Sample:
        cfg = self.config
        rng = self.rng(index)
        want = index % 2 == 0  # exact 50/50 balance over any run of consecutive indices
        n = int(rng.integers(cfg.num_lines_min, cfg.num_lines_max + 1))
        names = list(PALETTE)
        colours = [names[i] for i in rng.choice(len(names), size=n, replace=False)]
        props = _Proposals(rng, cfg)
        a, b, rel = _query_pair(props, want)
        if rel["intersect"]:
            points = [rel["point"]]
            key: Seg = (*rel["point"], *rel["point"])
        else:
            points = list(rel["points"])
            key = (*rel["points"][0], *rel["points"][1])
        segs = [a, b]
        for _ in range(n - 2):
            segs.append(_distractor(props, segs, key))
        # Random draw order, so the queried lines are not always at the bottom of the stack.
        order = [int(i) for i in rng.permutation(n)]
        img = self._draw([segs[i] for i in order], [colours[i] for i in order])

        c1, c2 = colours[0], colours[1]
        segments = [{"color": colours[i], "rgb": list(PALETTE[colours[i]]),
                     "p0": [segs[i][0], segs[i][1]], "p1": [segs[i][2], segs[i][3]],
                     "queried": i < 2} for i in order]
        meta: dict[str, Any] = {"segments": segments, "query": [c1, c2], "num_lines": n,
                                "line_width": cfg.width_px, "image_size": cfg.image_size}
        if rel["intersect"]:
            meta.update(angle_deg=round(rel["angle_deg"], 3),
                        end_distance=round(rel["end_distance"], 3))
        else:
            meta.update(gap=round(rel["gap"], 3))
        return Sample(
            image=img,
            question=f"Do the {c1} and {c2} lines intersect? Answer yes or no.",
            answer="yes" if rel["intersect"] else "no",
            structured={"intersect": bool(rel["intersect"])},
            geometry=Geometry(points=[(float(x), float(y)) for x, y in points]),
            task=self.name,
            id=self.sample_id(index),
            meta=meta,
        )

    def _draw(self, segs: list[Seg], colours: list[str]) -> Image.Image:
        s = self.config.image_size
        arr = np.full((s, s, 3), BACKGROUND, dtype=np.uint8)
        for seg, c in zip(segs, colours, strict=True):
            _paint_stroke(arr, seg, self.config.width_px, PALETTE[c])
        return Image.fromarray(arr)


def _paint_stroke(arr: np.ndarray, seg: Seg, width: float, rgb: tuple[int, int, int]) -> None:
    """Paint the pixels whose centre (i + 0.5) lies within width / 2 of the segment: a round-capped
    stroke of even thickness at every angle, centred on the exact continuous coordinates
    (PIL's wide lines come out 1 px thin at some angles and shift by half a pixel)."""
    size = arr.shape[0]
    x0, y0, x1, y1 = seg
    r = width / 2
    cx0, cx1 = max(0, math.floor(min(x0, x1) - r)), min(size, math.ceil(max(x0, x1) + r) + 1)
    cy0, cy1 = max(0, math.floor(min(y0, y1) - r)), min(size, math.ceil(max(y0, y1) + r) + 1)
    px = np.arange(cx0, cx1, dtype=np.float64)[None, :] + 0.5 - x0
    py = np.arange(cy0, cy1, dtype=np.float64)[:, None] + 0.5 - y0
    dx, dy = x1 - x0, y1 - y0
    t = np.clip((px * dx + py * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    inside = (px - t * dx) ** 2 + (py - t * dy) ** 2 <= r * r
    arr[cy0:cy1, cx0:cx1][inside] = rgb
