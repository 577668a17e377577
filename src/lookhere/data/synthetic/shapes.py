"""Shapes: 2-6 coloured shapes on a textured background, for REC, VQA, segmentation and the lens.

Every object is a filled shape (circle, square, triangle, star, diamond, hexagon, cross) of one
named colour and one size class, placed without overlap. Each image carries, per object, its box,
its exact mask (recomputable from meta by :func:`object_mask`), its colour and shape, its
concept words, and its shortest unambiguous referring expression; plus every well-defined VQA pair.

Masks are rasterised analytically (a pixel belongs to an object when its centre lies inside the
shape) and the image is painted from those very masks, with no anti-aliasing, so the stored mask,
the recomputed mask and the coloured pixels agree exactly and do not depend on the Pillow version.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from lookhere.data.formats import render_box
from lookhere.data.sample import Geometry, Sample
from lookhere.data.synthetic.base import SyntheticTask, register_task

# Well separated, saturated colours: far from the light grey background and from each other.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 130, 15),
    "yellow": (225, 190, 0),
    "green": (30, 150, 50),
    "blue": (30, 70, 220),
    "purple": (130, 50, 190),
    "pink": (240, 90, 185),
    "brown": (120, 70, 25),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon", "cross")
PLURALS = {s: s + "s" for s in SHAPES} | {"cross": "crosses"}
SIZE_WORDS = {2: ("small", "large"), 3: ("small", "medium", "large")}
RELATIONS = ("left of", "right of", "above", "below")
VQA_TYPES = ("colour", "shape", "size", "count")

# Attribute combinations, shortest first; ties keep this order (colour before size).
ATTR_COMBOS: tuple[tuple[str, ...], ...] = (
    ("shape",), ("colour", "shape"), ("size", "shape"), ("size", "colour", "shape"))

_MAX_SCENE_TRIES = 200
_MAX_PLACE_TRIES = 300


def _unit_polygon(shape: str) -> list[tuple[float, float]] | None:
    """Vertices in radius units (y down), inside the unit circle; None if not a polygon."""
    def ring(n: int, rad: float, start_deg: float) -> list[tuple[float, float]]:
        return [(rad * math.cos(math.radians(start_deg + 360 * k / n)),
                 rad * math.sin(math.radians(start_deg + 360 * k / n))) for k in range(n)]

    if shape == "triangle":
        return ring(3, 1.0, -90)
    if shape == "square":
        return [(-0.7, -0.7), (0.7, -0.7), (0.7, 0.7), (-0.7, 0.7)]
    if shape == "diamond":
        return [(0.0, -1.0), (0.68, 0.0), (0.0, 1.0), (-0.68, 0.0)]
    if shape == "hexagon":
        return ring(6, 0.93, 0)
    if shape == "star":
        outer, inner = ring(5, 1.0, -90), ring(5, 0.42, -54)
        return [p for pair in zip(outer, inner, strict=True) for p in pair]
    return None


_POLYGONS = {s: _unit_polygon(s) for s in SHAPES}


def _inside_polygon(px: np.ndarray, py: np.ndarray, verts: list[tuple[float, float]]) -> np.ndarray:
    """Even-odd rule, vectorised over points; works for the (non-convex) star too."""
    inside = np.zeros(np.broadcast(px, py).shape, dtype=bool)
    for (xi, yi), (xj, yj) in zip(verts, verts[1:] + verts[:1], strict=True):
        if yi == yj:  # horizontal edges never cross a horizontal ray
            continue
        crosses = (yi > py) != (yj > py)
        x_at = xi + (py - yi) * (xj - xi) / (yj - yi)
        inside ^= crosses & (px < x_at)
    return inside


def _inside_unit(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of points (u, v), in units of the radius around the centre."""
    if shape == "circle":
        return u * u + v * v <= 0.9 ** 2
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        arm, half = 0.9, 0.3
        return ((au <= arm) & (av <= half)) | ((au <= half) & (av <= arm))
    verts = _POLYGONS.get(shape)
    if verts is None:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    return _inside_polygon(u, v, verts)


def _image_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(image_size, (tuple, list)):
        w, h = image_size
        return int(h), int(w)
    return int(image_size), int(image_size)


def object_mask(obj: dict[str, Any], image_size: int | tuple[int, int]) -> np.ndarray:
    """The exact (H, W) bool mask of one object from its meta dict (shape, cx, cy, radius).

    ``image_size`` is the side of the square image, or (width, height). A pixel (row i, col j)
    belongs to the object when its centre (j + 0.5, i + 0.5) lies inside the shape.
    """
    h, w = _image_hw(image_size)
    cx, cy, r = float(obj["cx"]), float(obj["cy"]), float(obj["radius"])
    mask = np.zeros((h, w), dtype=bool)
    # Only the window around the shape is tested: every shape lies within its radius.
    x0, x1 = max(0, math.floor(cx - r)), min(w, math.ceil(cx + r) + 1)
    y0, y1 = max(0, math.floor(cy - r)), min(h, math.ceil(cy + r) + 1)
    if x0 >= x1 or y0 >= y1:
        return mask
    u = (np.arange(x0, x1) + 0.5 - cx)[None, :] / r
    v = (np.arange(y0, y1) + 0.5 - cy)[:, None] / r
    mask[y0:y1, x0:x1] = _inside_unit(str(obj["shape"]), u, v)
    return mask


def mask_box(mask: np.ndarray) -> list[int]:
    """Tight xyxy box of a mask (x1, y1 exclusive)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


@dataclass(frozen=True)
class ShapesConfig:
    mode: str = field(default="rec", metadata={
        "help": "'rec': locate a referring expression, answer its box; 'vqa': answer a question "
                "about colour, shape, size or count."})
    image_size: int = field(default=336, metadata={"help": "Side of the square image in px."})
    min_objects: int = field(default=2, metadata={"help": "Fewest shapes per image."})
    max_objects: int = field(default=6, metadata={"help": "Most shapes per image."})
    shapes: tuple[str, ...] = field(default=SHAPES, metadata={
        "help": f"Shape vocabulary, a subset of {', '.join(SHAPES)}."})
    colours: tuple[str, ...] = field(default=tuple(PALETTE), metadata={
        "help": f"Colour vocabulary, a subset of {', '.join(PALETTE)}."})
    num_sizes: int = field(default=2, metadata={
        "help": "Size classes: 2 (small/large) or 3 (small/medium/large)."})
    small_radius: float = field(default=0.065, metadata={
        "help": "Radius of a small shape as a fraction of the image side."})
    large_radius: float = field(default=0.12, metadata={
        "help": "Radius of a large shape as a fraction of the image side "
                "(medium: the geometric mean)."})
    min_gap: float = field(default=0.03, metadata={
        "help": "Least gap between two shapes' bounding circles, fraction of the image side."})
    share_prob: float = field(default=0.5, metadata={
        "help": "Chance that a shape copies another's shape (and, each with p=0.5, its colour and "
                "size): makes distractors, longer expressions and spatial relations."})
    relation_margin: float = field(default=0.05, metadata={
        "help": "Least box-centre offset, fraction of the image side, for a spatial relation."})
    texture_contrast: int = field(default=12, metadata={
        "help": "Peak-to-peak grey levels of the background's noise and stripes (0: flat)."})
    vqa_types: tuple[str, ...] = field(default=VQA_TYPES, metadata={
        "help": f"VQA question types drawn in 'vqa' mode, a subset of {', '.join(VQA_TYPES)}."})

    def __post_init__(self) -> None:
        for name in ("shapes", "colours", "vqa_types"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self._check_choices()
        self._check_numbers()

    def _check_choices(self) -> None:
        if self.mode not in ("rec", "vqa"):
            raise ValueError(f"mode must be 'rec' or 'vqa', got {self.mode!r}")
        for name, known in (("shapes", SHAPES), ("colours", tuple(PALETTE)),
                            ("vqa_types", VQA_TYPES)):
            vals = getattr(self, name)
            bad = [v for v in vals if v not in known]
            if not vals or bad or len(set(vals)) != len(vals):
                raise ValueError(f"{name} must be a non-empty set of distinct values from "
                                 f"{', '.join(known)}; got {vals!r}")
        if self.num_sizes not in SIZE_WORDS:
            raise ValueError(f"num_sizes must be 2 or 3, got {self.num_sizes!r}")

    def _check_numbers(self) -> None:
        if not 56 <= self.image_size <= 2048:
            raise ValueError(f"image_size must be in [56, 2048], got {self.image_size}")
        if not 1 <= self.min_objects <= self.max_objects <= 8:
            raise ValueError("need 1 <= min_objects <= max_objects <= 8, got "
                             f"min_objects={self.min_objects}, max_objects={self.max_objects}")
        if not 0.02 <= self.small_radius < self.large_radius <= 0.2:
            raise ValueError("need 0.02 <= small_radius < large_radius <= 0.2, got "
                             f"small_radius={self.small_radius}, large_radius={self.large_radius}")
        if self.large_radius < 1.3 * self.small_radius:
            raise ValueError("large_radius must be at least 1.3 x small_radius so sizes are "
                             f"visibly different, got {self.large_radius} vs {self.small_radius}")
        if self.small_radius * self.image_size < 5:
            raise ValueError(f"small_radius * image_size must be >= 5 px for legible shapes, got "
                             f"{self.small_radius * self.image_size:.1f}")
        if not 0.0 <= self.min_gap <= 0.2:
            raise ValueError(f"min_gap must be in [0, 0.2], got {self.min_gap}")
        if not 0.0 <= self.share_prob <= 1.0:
            raise ValueError(f"share_prob must be in [0, 1], got {self.share_prob}")
        if not 0.0 <= self.relation_margin <= 0.3:
            raise ValueError(f"relation_margin must be in [0, 0.3], got {self.relation_margin}")
        if not 0 <= self.texture_contrast <= 40:
            raise ValueError(f"texture_contrast must be in [0, 40], got {self.texture_contrast}")

    def radii(self) -> dict[str, float]:
        """Radius in px of each size word."""
        words = SIZE_WORDS[self.num_sizes]
        fracs = np.geomspace(self.small_radius, self.large_radius, self.num_sizes)
        return {w: round(float(f) * self.image_size, 2) for w, f in zip(words, fracs, strict=True)}


# --------------------------------------------------------------------------- descriptions

def _phrase(obj: dict[str, Any], attrs: tuple[str, ...], noun: str | None = None) -> str:
    """'the small red triangle' (size, colour, then shape or the given noun)."""
    words = [obj[a] for a in ("size", "colour", "shape") if a in attrs and a != "shape"]
    words.append(noun if noun is not None else obj["shape"])
    return "the " + " ".join(words)


def _matching(objs: list[dict[str, Any]], ref: dict[str, Any], attrs: tuple[str, ...]) -> list[int]:
    return [o["index"] for o in objs if all(o[a] == ref[a] for a in attrs)]


def _unique_combo(objs: list[dict[str, Any]], i: int,
                  combos: tuple[tuple[str, ...], ...]) -> tuple[str, ...] | None:
    """The first attribute combo that picks out object i alone."""
    for attrs in combos:
        if _matching(objs, objs[i], attrs) == [i]:
            return attrs
    return None


def _centre(obj: dict[str, Any]) -> tuple[float, float]:
    x0, y0, x1, y1 = obj["box"]
    return (x0 + x1) / 2, (y0 + y1) / 2


def _offset(obj: dict[str, Any], anchor: dict[str, Any], rel: str) -> tuple[float, float]:
    """(offset along the relation's direction, offset across it); along > 0: the relation holds."""
    (x, y), (ax, ay) = _centre(obj), _centre(anchor)
    dx, dy = x - ax, y - ay
    return {"left of": (-dx, dy), "right of": (dx, dy),
            "above": (-dy, dx), "below": (dy, dx)}[rel]


def _clearly_holds(obj: dict[str, Any], anchor: dict[str, Any], rel: str, margin: float) -> bool:
    along, across = _offset(obj, anchor, rel)
    # Past the margin, and mostly in that direction (a point far above is not 'left of').
    return along > 0 and along >= margin and along >= abs(across)


def _spatial_expression(objs: list[dict[str, Any]], i: int,
                        attr_desc: list[tuple[str, ...] | None], margin: float) -> dict | None:
    """Shortest 'the X <relation> the Y' naming object i alone, Y uniquely described by attributes.

    The target must clearly satisfy the relation; every other object matching X must not satisfy
    it at all (its centre is not even slightly on that side), so no reading of the margin matters.
    """
    best: tuple[int, dict] | None = None
    for t_attrs in ATTR_COMBOS:
        cands = _matching(objs, objs[i], t_attrs)
        for j, a_attrs in enumerate(attr_desc):
            if a_attrs is None or j == i:
                continue
            cost = len(t_attrs) + len(a_attrs)
            if best is not None and cost >= best[0]:
                continue
            for rel in RELATIONS:
                if not _clearly_holds(objs[i], objs[j], rel, margin):
                    continue
                if any(_offset(objs[k], objs[j], rel)[0] > 0 for k in cands if k != i):
                    continue
                text = f"{_phrase(objs[i], t_attrs)} {rel} {_phrase(objs[j], a_attrs)}"
                best = (cost, {"text": text, "kind": "spatial", "attrs": list(t_attrs),
                               "relation": rel, "anchor": j, "anchor_attrs": list(a_attrs)})
                break
    return None if best is None else best[1]


def referring_expressions(objs: list[dict[str, Any]], margin: float) -> list[dict | None]:
    """Per object, its shortest unambiguous expression (attributes, else a spatial relation)."""
    attr_desc = [_unique_combo(objs, o["index"], ATTR_COMBOS) for o in objs]
    out: list[dict | None] = []
    for o, attrs in zip(objs, attr_desc, strict=True):
        if attrs is not None:
            out.append({"text": _phrase(o, attrs), "kind": "attribute", "attrs": list(attrs)})
        else:
            out.append(_spatial_expression(objs, o["index"], attr_desc, margin))
    return out


def vqa_pairs(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every well-defined question: the subject is unique (counts are always well-defined)."""
    pairs: list[dict[str, Any]] = []
    for o in objs:
        i = o["index"]
        attrs = _unique_combo(objs, i, (("shape",), ("size", "shape")))
        if attrs is not None:
            pairs.append(_pair("colour", f"What colour is {_phrase(o, attrs)}?", o["colour"], [i]))
        attrs = _unique_combo(objs, i, (("colour",), ("size",), ("size", "colour")))
        if attrs is not None:
            q = f"What shape is {_phrase(o, attrs, noun='object')}?"
            pairs.append(_pair("shape", q, o["shape"], [i]))
        attrs = _unique_combo(objs, i, (("shape",), ("colour", "shape")))
        if attrs is not None:
            pairs.append(_pair("size", f"What size is {_phrase(o, attrs)}?", o["size"], [i]))
    for shape in sorted({o["shape"] for o in objs}, key=SHAPES.index):
        idx = [o["index"] for o in objs if o["shape"] == shape]
        pairs.append(_pair("count", f"How many {PLURALS[shape]} are there?", str(len(idx)), idx))
    for colour in sorted({o["colour"] for o in objs}, key=list(PALETTE).index):
        idx = [o["index"] for o in objs if o["colour"] == colour]
        q = f"How many {colour} objects are there?"
        pairs.append(_pair("count", q, str(len(idx)), idx))
    return pairs


def _pair(kind: str, question: str, answer: str, objects: list[int]) -> dict[str, Any]:
    return {"type": kind, "question": question, "answer": answer, "objects": objects}


# --------------------------------------------------------------------------- rendering

def _background(rng: np.random.Generator, h: int, w: int, contrast: int) -> np.ndarray:
    """Light grey with a slight tint, faint stripes at a random angle, and faint noise.

    Integer arithmetic throughout, and bounded so no clipping is needed: base <= 228 + 6 and the
    texture adds at most contrast / 2 <= 20 grey levels either way.
    """
    base = np.rint(rng.uniform(200, 228) + rng.uniform(-6, 6, size=3)).astype(np.int16)
    angle, period = rng.uniform(0, math.pi), rng.uniform(6, 18)
    phase = rng.uniform(0, 2 * math.pi)
    k = 2 * math.pi / period
    ys = np.arange(h, dtype=np.float32) * np.float32(k * math.sin(angle))
    xs = np.arange(w, dtype=np.float32) * np.float32(k * math.cos(angle)) + np.float32(phase)
    stripes = np.cos(np.add.outer(ys, xs)) * np.float32(contrast / 4)
    half = contrast // 4
    noise = rng.integers(-half, half + 1, size=(h, w), dtype=np.int16)
    grey = np.rint(stripes).astype(np.int16) + noise
    return (base[None, None, :] + grey[:, :, None]).astype(np.uint8)


# --------------------------------------------------------------------------- the task

@register_task
class ShapesTask(SyntheticTask):
    """Referring expressions and VQA over non-overlapping coloured shapes."""

    name = "shapes"
    config_class = ShapesConfig

    def sample(self, index: int) -> Sample:
        cfg: ShapesConfig = self.config
        rng = self.rng(index)
        for _ in range(_MAX_SCENE_TRIES):
            scene = self.scene(rng)
            if scene is not None:
                break
        else:  # only reachable with degenerate vocabularies (e.g. one shape, one colour)
            raise RuntimeError(f"shapes: no usable scene for index {index} in "
                               f"{_MAX_SCENE_TRIES} tries; widen shapes/colours/num_sizes")
        objs, masks, exprs, pairs = scene
        image = self.render(rng, objs, masks)
        if cfg.mode == "rec":
            q, a, structured, geometry, diff = self._rec(rng, objs, masks, exprs)
        else:
            q, a, structured, geometry, diff = self._vqa(rng, objs, masks, pairs)
        meta = {
            "image_size": cfg.image_size, "mode": cfg.mode, "num_objects": len(objs),
            "num_sizes": cfg.num_sizes, "relation_margin_px": cfg.relation_margin * cfg.image_size,
            "objects": objs, "mask_rule": "pixel centre inside shape; see shapes.object_mask",
            "expressions": [{"object": o["index"], **e} for o, e in zip(objs, exprs, strict=True)
                            if e is not None],
            "vqa": pairs, "difficulty": {"num_objects": len(objs), **diff},
        }
        return Sample(image=image, question=q, answer=a, structured=structured,
                      geometry=geometry, task=self.name, id=self.sample_id(index), meta=meta)

    # ---- scene

    def _attributes(self, rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
        cfg = self.config
        words = SIZE_WORDS[cfg.num_sizes]
        objs: list[dict[str, Any]] = []
        for i in range(n):
            o = {"shape": str(rng.choice(cfg.shapes)), "colour": str(rng.choice(cfg.colours)),
                 "size": str(rng.choice(words))}
            if objs and rng.random() < cfg.share_prob:  # a distractor of an earlier object
                src = objs[int(rng.integers(len(objs)))]
                o["shape"] = src["shape"]
                if rng.random() < 0.5:
                    o["colour"] = src["colour"]
                if rng.random() < 0.5:
                    o["size"] = src["size"]
            objs.append({"index": i, **o})
        return objs

    def _place(self, rng: np.random.Generator, objs: list[dict[str, Any]]) -> bool:
        """Centres by rejection sampling: bounding circles stay apart by min_gap. Largest first."""
        cfg = self.config
        s, radii = cfg.image_size, cfg.radii()
        gap, border = cfg.min_gap * s, max(1.0, 0.02 * s)
        placed: list[tuple[float, float, float]] = []
        for o in sorted(objs, key=lambda o: -radii[o["size"]]):
            r = radii[o["size"]]
            for _ in range(_MAX_PLACE_TRIES):
                cx, cy = (round(float(v), 2) for v in rng.uniform(r + border, s - r - border, 2))
                if all(math.hypot(cx - px, cy - py) >= r + pr + gap for px, py, pr in placed):
                    break
            else:
                return False
            placed.append((cx, cy, r))
            o.update(cx=cx, cy=cy, radius=r)
        return True

    def scene(self, rng: np.random.Generator):
        cfg = self.config
        n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        objs = self._attributes(rng, n)
        if not self._place(rng, objs):
            return None
        masks = []
        for o in objs:
            m = object_mask(o, cfg.image_size)
            o.update(rgb=list(PALETTE[o["colour"]]), box=mask_box(m),
                     concepts=[o["colour"], o["shape"]])
            masks.append(m)
        exprs = referring_expressions(objs, cfg.relation_margin * cfg.image_size)
        for o, e in zip(objs, exprs, strict=True):
            o["expression"] = None if e is None else e["text"]
        pairs = vqa_pairs(objs)
        if cfg.mode == "rec" and all(e is None for e in exprs):
            return None
        if cfg.mode == "vqa" and not any(p["type"] in cfg.vqa_types for p in pairs):
            return None
        return objs, masks, exprs, pairs

    def render(self, rng: np.random.Generator, objs: list[dict[str, Any]],
                masks: list[np.ndarray]) -> Image.Image:
        s = self.config.image_size
        arr = _background(rng, s, s, self.config.texture_contrast)
        for o, m in zip(objs, masks, strict=True):
            arr[m] = o["rgb"]
        return Image.fromarray(arr, "RGB")

    # ---- questions

    def _rec(self, rng, objs, masks, exprs):
        s = self.config.image_size
        usable = [i for i, e in enumerate(exprs) if e is not None]
        t = usable[int(rng.integers(len(usable)))]
        e, box = exprs[t], objs[t]["box"]
        structured = {"box": list(box), "object": t, "expression": e["text"]}
        geometry = Geometry(boxes=[tuple(float(v) for v in box)], mask=masks[t].copy())
        diff = {"target": t, "expression_kind": e["kind"],
                "expression_words": len(e["text"].split()),
                "same_shape_distractors": sum(o["shape"] == objs[t]["shape"] for o in objs) - 1}
        return f"Where is {e['text']}?", render_box(box, (s, s)), structured, geometry, diff

    def _vqa(self, rng, objs, masks, pairs):
        kinds = [k for k in self.config.vqa_types if any(p["type"] == k for p in pairs)]
        kind = kinds[int(rng.integers(len(kinds)))]  # type first, so counts don't dominate
        options = [p for p in pairs if p["type"] == kind]
        p = options[int(rng.integers(len(options)))]
        idx = p["objects"]
        mask = np.logical_or.reduce([masks[i] for i in idx])
        geometry = Geometry(boxes=[tuple(float(v) for v in objs[i]["box"]) for i in idx],
                            mask=mask)
        structured = {"answer": p["answer"], "type": kind, "objects": list(idx),
                      "boxes": [list(objs[i]["box"]) for i in idx]}
        diff = {"vqa_type": kind, "question_words": len(p["question"].split()),
                "num_subjects": len(idx)}
        return p["question"], p["answer"], structured, geometry, diff
