"""Scenes: the pretraining generator, richer than Shapes (objects, markers, curves), many skills.

A scene is a Shapes scene (the same shapes, palette, background and exact masks, drawn by
`ShapesTask.scene` / `ShapesTask.render` with this task's own random stream) plus, sometimes,
letter/number **markers** (a 5x7 glyph on a white tile) and dark **curves** that run from a
marker to an object. Every sample is one of three modes:

- ``"vision"``: no question; ``meta["patch_labels"]`` holds the dense per-patch labels of the
  vision stage (colour, shape, size and glyph class of each ``patch_size`` cell, and the box of
  the object or marker it lies on, each edge in `BOX_BINS` bins, see `patch_labels`);
- ``"caption"``: "Describe the image." answered with every object and marker, left to right,
  each with its box in LLaVA-1.5's ``[x0, y0, x1, y1]`` form (the alignment stage);
- ``"instruct"``: one question from the skill mix (`SKILLS`): colour, shape, size and count
  (Shapes' own VQA pairs), left/right and top/bottom position, yes/no relations, referring
  expressions answered with a box, pointing, reading markers, locating markers, and following a
  curve to the object it reaches.

The task's name keys its random stream (`SyntheticTask.rng`), so no scene is ever a Shapes
scene of the experiments' splits, and none of the KLAL benchmark tasks (Grid Patch, Line
Intersection, Line Tracing) is drawn here (tests check both).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from lookhere.data.formats import render_box, render_point
from lookhere.data.sample import Geometry, Sample
from lookhere.data.synthetic.base import SyntheticTask, register_task
from lookhere.data.synthetic.glyphs import GLYPH_ROWS, glyph
from lookhere.data.synthetic.shapes import (
    PALETTE,
    SHAPES,
    ShapesConfig,
    ShapesTask,
)

MODES = ("vision", "caption", "instruct")
#: skill -> weight in the instruction mix (a skill that a scene cannot pose is redrawn)
SKILLS: dict[str, float] = {
    "colour": 2.0, "shape": 2.0, "size": 1.0, "count": 1.0, "position": 1.0, "relation": 1.0,
    "rec": 3.0, "point": 1.0, "read": 1.0, "find_marker": 0.5, "follow": 1.0,
}
GLYPHS = tuple(GLYPH_ROWS)
MARKER_INK = (25, 25, 25)
MARKER_TILE = (250, 250, 250)
CURVE_RGB = (60, 60, 60)
#: dense label vocabularies of the vision stage (index 0: background)
COLOUR_CLASSES = ("background", *PALETTE, "marker", "curve")
SHAPE_CLASSES = ("background", *SHAPES, "marker", "curve")
SIZE_CLASSES = ("background", "small", "medium", "large")
GLYPH_CLASSES = ("none", *GLYPHS)
#: the box edges a cell predicts (FCOS-style dense boxes), each in BOX_BINS bins of the side;
#: class 0 is "on no object", class b + 1 is bin b
BOX_EDGES = ("x0", "y0", "x1", "y1")
BOX_BINS = 24
_MAX_TRIES = 100


@dataclass(frozen=True)
class ScenesConfig:
    mode: str = field(default="instruct", metadata={
        "help": f"One of {', '.join(MODES)}: dense labels, a full caption, or one question."})
    image_size: int = field(default=96, metadata={"help": "Side of the square image in px."})
    patch_size: int = field(default=8, metadata={
        "help": "Cell side of the vision stage's dense labels (the vision tower's patch)."})
    min_objects: int = field(default=2, metadata={"help": "Fewest shapes per image."})
    max_objects: int = field(default=5, metadata={"help": "Most shapes per image."})
    small_radius: float = field(default=0.10, metadata={
        "help": "Radius of a small shape, fraction of the side."})
    large_radius: float = field(default=0.16, metadata={
        "help": "Radius of a large shape, fraction of the side."})
    marker_prob: float = field(default=0.5, metadata={
        "help": "Chance that a scene has markers (1 or 2 letter/number tiles)."})
    curve_prob: float = field(default=0.6, metadata={
        "help": "Chance, per marker, of a curve from it to an object."})
    skills: tuple[str, ...] = field(default=tuple(SKILLS), metadata={
        "help": f"Skills drawn in 'instruct' mode, a subset of {', '.join(SKILLS)}."})
    turns: int = field(default=1, metadata={
        "help": "Most questions per 'instruct' sample, all on its one image (LLaVA's "
                "multi-turn conversations): meta['turns'], the first being the sample's own."})

    def __post_init__(self) -> None:
        object.__setattr__(self, "skills", tuple(self.skills))
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        bad = [s for s in self.skills if s not in SKILLS]
        if not self.skills or bad:
            raise ValueError(f"skills must be a non-empty subset of {tuple(SKILLS)}, got "
                             f"{self.skills!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size "
                             f"({self.patch_size})")
        for name in ("marker_prob", "curve_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not isinstance(self.turns, int) or self.turns < 1:
            raise ValueError(f"turns must be an int >= 1, got {self.turns!r}")
        self.shapes_config()  # validates the object settings

    def shapes_config(self) -> ShapesConfig:
        return ShapesConfig(mode="vqa", image_size=self.image_size, min_objects=self.min_objects,
                            max_objects=self.max_objects, small_radius=self.small_radius,
                            large_radius=self.large_radius)

    @property
    def tile(self) -> int:
        """Marker tile side in px: the glyph (5x7 at integer scale) with a margin."""
        return 7 * self.glyph_scale + 4

    @property
    def glyph_scale(self) -> int:
        return max(1, self.image_size // 112)


@register_task
class ScenesTask(SyntheticTask):
    """Pretraining scenes: dense labels, captions, or one question of the skill mix."""

    name = "scenes"
    config_class = ScenesConfig

    def __init__(self, config: Any = None, seed: int = 0, **overrides: Any) -> None:
        super().__init__(config, seed, **overrides)
        self._shapes = ShapesTask(self.config.shapes_config(), seed=seed)

    def sample(self, index: int) -> Sample:
        cfg: ScenesConfig = self.config
        rng = self.rng(index)
        for _ in range(_MAX_TRIES):
            scene = self._shapes.scene(rng)
            if scene is None:
                continue
            objs, masks, exprs, pairs = scene
            markers = self._markers(rng, objs)
            if markers is None:
                continue
            curves = self._curves(rng, objs, markers)
            image, labels = self._render(rng, objs, masks, markers, curves)
            posed = None
            if cfg.mode == "instruct":
                posed = self._question(rng, objs, masks, exprs, pairs, markers, curves)
                if posed is None:  # no allowed skill fits this scene: draw another
                    continue
            break
        else:
            raise RuntimeError(f"scenes: no scene for index {index} in {_MAX_TRIES} tries "
                               f"poses one of the skills {cfg.skills}")
        meta = {"image_size": cfg.image_size, "mode": cfg.mode, "objects": objs,
                "markers": markers, "curves": curves, "vqa": pairs,
                "expressions": [{"object": o["index"], **e}
                                for o, e in zip(objs, exprs, strict=True) if e is not None]}
        if cfg.mode == "vision":
            meta["patch_labels"] = patch_labels(labels, cfg.patch_size)
            q, a, structured, geo = "Describe the image.", "", {}, Geometry()
        elif cfg.mode == "caption":
            q, a, structured, geo = self._caption(rng, objs, masks, markers)
        else:
            q, a, structured, geo = posed
            meta["turns"] = self._more_turns(rng, (q, a, structured["skill"]), objs, masks,
                                             exprs, pairs, markers, curves)
        return Sample(image=image, question=q, answer=a, structured=structured, geometry=geo,
                      task=self.name, id=self.sample_id(index), meta=meta)

    # ---- scene additions

    def _markers(self, rng: np.random.Generator, objs: list[dict[str, Any]]
                 ) -> list[dict[str, Any]] | None:
        """0-2 marker tiles clear of every object and of each other (None: retry the scene)."""
        cfg = self.config
        if rng.random() >= cfg.marker_prob:
            return []
        n, s, t = int(rng.integers(1, 3)), cfg.image_size, cfg.tile
        chars = rng.choice(len(GLYPHS), size=n, replace=False)
        out: list[dict[str, Any]] = []
        for c in chars:
            for _ in range(200):
                x0, y0 = (int(v) for v in rng.integers(2, s - t - 2, size=2))
                cx, cy = x0 + t / 2, y0 + t / 2
                clear = all(math.hypot(cx - o["cx"], cy - o["cy"]) > o["radius"] + 0.75 * t + 2
                            for o in objs)
                apart = all(abs(cx - m["cx"]) > t + 4 or abs(cy - m["cy"]) > t + 4 for m in out)
                if clear and apart:
                    break
            else:
                return None
            out.append({"char": GLYPHS[int(c)], "box": [x0, y0, x0 + t, y0 + t],
                        "cx": cx, "cy": cy})
        return out

    def _curves(self, rng: np.random.Generator, objs: list[dict[str, Any]],
                markers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per marker (with curve_prob), a quadratic Bezier to a distinct object's edge that
        passes no other object (so following it is unambiguous)."""
        out: list[dict[str, Any]] = []
        taken: set[int] = set()
        for m in markers:
            if rng.random() >= self.config.curve_prob:
                continue
            for _ in range(20):
                j = int(rng.integers(len(objs)))
                if j in taken:
                    continue
                pts = _bezier(rng, (m["cx"], m["cy"]), objs[j])
                if _clear_path(pts, objs, j, markers, m):
                    taken.add(j)
                    out.append({"marker": m["char"], "object": j,
                                "points": [[round(float(x), 2), round(float(y), 2)]
                                           for x, y in pts]})
                    break
        return out

    def _render(self, rng: np.random.Generator, objs, masks, markers, curves
                ) -> tuple[Image.Image, dict[str, np.ndarray]]:
        """The image, and per-pixel class maps (colour, shape, size, glyph, and the four box-edge
        bins of the object or marker under the pixel) of the same pixels."""
        s = self.config.image_size
        image = self._shapes.render(rng, objs, masks)  # background and objects
        # Curves go under the objects (they end at an object's edge) and over the background.
        ink = Image.new("L", (s, s), 0)
        pen = ImageDraw.Draw(ink)
        for c in curves:
            pen.line([tuple(p) for p in c["points"]], fill=255, width=2)
        curve = np.asarray(ink) > 0
        for m in masks:
            curve &= ~m
        arr = np.asarray(image).copy()
        arr[curve] = CURVE_RGB
        colour = np.zeros((s, s), np.int64)
        shape, size, glyphs = colour.copy(), colour.copy(), colour.copy()
        edges = {f"box_{e}": colour.copy() for e in BOX_EDGES}
        colour[curve], shape[curve] = len(COLOUR_CLASSES) - 1, len(SHAPE_CLASSES) - 1
        for o, m in zip(objs, masks, strict=True):
            colour[m] = COLOUR_CLASSES.index(o["colour"])
            shape[m] = SHAPE_CLASSES.index(o["shape"])
            size[m] = SIZE_CLASSES.index(o["size"])
            for e, b in zip(BOX_EDGES, box_bins(o["box"], s), strict=True):
                edges[f"box_{e}"][m] = b
        image = Image.fromarray(arr, "RGB")
        draw = ImageDraw.Draw(image)
        for mk in markers:
            x0, y0, x1, y1 = mk["box"]
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=MARKER_TILE, outline=MARKER_INK)
            g = glyph(mk["char"], self.config.glyph_scale)
            gx, gy = x0 + (x1 - x0 - g.width) // 2, y0 + (y1 - y0 - g.height) // 2
            image.paste(MARKER_INK, (gx, gy), g)
            colour[y0:y1, x0:x1] = COLOUR_CLASSES.index("marker")
            shape[y0:y1, x0:x1] = SHAPE_CLASSES.index("marker")
            glyphs[y0:y1, x0:x1] = GLYPH_CLASSES.index(mk["char"])
            for e, b in zip(BOX_EDGES, box_bins(mk["box"], s), strict=True):
                edges[f"box_{e}"][y0:y1, x0:x1] = b
        return image, {"colour": colour, "shape": shape, "size": size, "glyph": glyphs, **edges}

    # ---- text

    def _caption(self, rng, objs, masks, markers):
        text = caption(objs, markers, self.config.image_size, rng)
        geo = Geometry(boxes=[tuple(float(v) for v in o["box"]) for o in objs],
                       mask=np.logical_or.reduce(masks))
        return "Describe the image.", text, {"objects": len(objs), "markers": len(markers)}, geo

    def _more_turns(self, rng, first, *scene) -> list[dict[str, str]]:
        """The conversation: the first question, then up to ``turns - 1`` other questions on the
        same scene (a repeated question is drawn again, a few times at most). Drawn after the
        first question, so ``turns`` never changes a sample's own question."""
        turns = [dict(zip(("question", "answer", "skill"), first, strict=True))]
        asked = {first[0]}
        for _ in range(3 * (self.config.turns - 1)):
            if len(turns) == self.config.turns:
                break
            posed = self._question(rng, *scene)
            if posed is not None and posed[0] not in asked:
                asked.add(posed[0])
                turns.append({"question": posed[0], "answer": posed[1],
                              "skill": posed[2]["skill"]})
        return turns

    def _question(self, rng, objs, masks, exprs, pairs, markers, curves):
        cfg: ScenesConfig = self.config
        skills = list(cfg.skills)
        weights = np.array([SKILLS[k] for k in skills])
        for _ in range(4 * len(skills)):
            k = skills[int(rng.choice(len(skills), p=weights / weights.sum()))]
            posed = _SKILL_FNS[k](rng, cfg, objs, masks, exprs, pairs, markers, curves)
            if posed is not None:
                q, a, structured, geo = posed
                return q, a, {"skill": k, **structured}, geo
        if "count" in skills:  # every scene has a count question
            q, a, structured, geo = _SKILL_FNS["count"](rng, cfg, objs, masks, exprs, pairs,
                                                        markers, curves)
            return q, a, {"skill": "count", **structured}, geo
        return None


def caption(objs: list[dict[str, Any]], markers: list[dict[str, Any]], side: int,
            rng: np.random.Generator | None = None) -> str:
    """Every object and marker of a scene with its box ("caption" mode's answer).

    Without ``rng``: left to right, "a small red square at [...]". With ``rng`` (the alignment
    data): in a random order, each object named in one of two word orders, "a small red square"
    or "a small square, red,". Both choices make the caption a lesson in *binding*: in a fixed
    left-to-right order the next object's words can be read off a spatial scan (the object right
    of the last one), never found by what they name; in a random order, "square, ->red" and
    "red square at ->[box]" must be looked up by content, the lookup the colour, shape and REC
    questions need (docs/methods.md, "Pretraining").
    """
    def name(o: dict[str, Any]) -> str:
        if rng is not None and rng.random() < 0.5:
            return f"a {o['size']} {o['shape']}, {o['colour']},"
        return f"a {o['size']} {o['colour']} {o['shape']}"

    items = [(o["box"], f"{name(o)} at {render_box(o['box'], (side, side))}") for o in objs]
    items += [(m["box"], f"a marker {m['char']} at {render_box(m['box'], (side, side))}")
              for m in markers]
    if rng is None:
        items.sort(key=lambda it: (it[0][0] + it[0][2], it[0][1]))
    else:
        items = [items[i] for i in rng.permutation(len(items))]
    return "; ".join(t for _, t in items) + "."


def _bezier(rng: np.random.Generator, start: tuple[float, float], obj: dict[str, Any],
            n: int = 24) -> np.ndarray:
    """(n, 2) points of a quadratic Bezier from ``start`` to the edge of ``obj``'s circle."""
    p0 = np.array(start, float)
    c = np.array([obj["cx"], obj["cy"]], float)
    d = c - p0
    length = float(np.hypot(*d)) or 1.0
    p2 = c - d / length * obj["radius"] * 0.8  # stop at the shape's rim
    normal = np.array([-d[1], d[0]]) / length
    p1 = (p0 + p2) / 2 + normal * rng.uniform(-0.35, 0.35) * length
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


def _clear_path(pts: np.ndarray, objs, target: int, markers, own: dict[str, Any]) -> bool:
    for o in objs:
        if o["index"] == target:
            continue
        if (np.hypot(pts[:, 0] - o["cx"], pts[:, 1] - o["cy"]) < o["radius"] + 3).any():
            return False
    for m in markers:
        if m is own:
            continue
        x0, y0, x1, y1 = m["box"]
        inside = (pts[:, 0] > x0 - 3) & (pts[:, 0] < x1 + 3) & (pts[:, 1] > y0 - 3) \
            & (pts[:, 1] < y1 + 3)
        if inside.any():
            return False
    return True


def _obj_geometry(objs, masks, idx: list[int]) -> Geometry:
    return Geometry(boxes=[tuple(float(v) for v in objs[i]["box"]) for i in idx],
                    mask=np.logical_or.reduce([masks[i] for i in idx]))


def _marker_geometry(m: dict[str, Any]) -> Geometry:
    return Geometry(boxes=[tuple(float(v) for v in m["box"])])


def _centre(box: list[float]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


# --------------------------------------------------------------------------- skills
# Each takes (rng, cfg, objs, masks, exprs, pairs, markers, curves) and returns
# (question, answer, structured, geometry), or None when the scene cannot pose it.


def _vqa(kind: str):
    def pose(rng, cfg, objs, masks, exprs, pairs, markers, curves):
        options = [p for p in pairs if p["type"] == kind]
        if not options:
            return None
        p = options[int(rng.integers(len(options)))]
        return (p["question"], p["answer"], {"answer": p["answer"], "objects": p["objects"]},
                _obj_geometry(objs, masks, p["objects"]))
    return pose


def _named(rng, objs, exprs) -> tuple[int, str] | None:
    usable = [i for i, e in enumerate(exprs) if e is not None and e["kind"] == "attribute"]
    if not usable:
        return None
    i = usable[int(rng.integers(len(usable)))]
    return i, exprs[i]["text"]


def _position(rng, cfg, objs, masks, exprs, pairs, markers, curves):
    named = _named(rng, objs, exprs)
    if named is None:
        return None
    i, text = named
    s, margin = cfg.image_size, 0.12 * cfg.image_size
    x, y = _centre(objs[i]["box"])
    axes = []
    if abs(x - s / 2) > margin:
        axes.append(("on the left or the right", "left" if x < s / 2 else "right"))
    if abs(y - s / 2) > margin:
        axes.append(("at the top or the bottom", "top" if y < s / 2 else "bottom"))
    if not axes:
        return None
    question, answer = axes[int(rng.integers(len(axes)))]
    return (f"Is {text} {question}?", answer, {"answer": answer, "objects": [i]},
            _obj_geometry(objs, masks, [i]))


_RELATIONS = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}


def _relation(rng, cfg, objs, masks, exprs, pairs, markers, curves):
    attr = [(i, e["text"]) for i, e in enumerate(exprs) if e is not None and e["kind"] ==
            "attribute"]
    if len(attr) < 2:
        return None
    a, b = rng.choice(len(attr), size=2, replace=False)
    (i, ti), (j, tj) = attr[int(a)], attr[int(b)]
    rel = list(_RELATIONS)[int(rng.integers(len(_RELATIONS)))]
    axis, sign = _RELATIONS[rel]
    ci, cj = _centre(objs[i]["box"]), _centre(objs[j]["box"])
    along = sign * (ci[axis] - cj[axis])
    if abs(along) < 0.08 * cfg.image_size:  # too close to call either way
        return None
    answer = "yes" if along > 0 else "no"
    return (f"Is {ti} {rel} {tj}?", answer, {"answer": answer, "objects": [i, j]},
            _obj_geometry(objs, masks, [i, j]))


def _rec(rng, cfg, objs, masks, exprs, pairs, markers, curves):
    usable = [i for i, e in enumerate(exprs) if e is not None]
    if not usable:
        return None
    i = usable[int(rng.integers(len(usable)))]
    s, box = cfg.image_size, objs[i]["box"]
    return (f"Where is {exprs[i]['text']}?", render_box(box, (s, s)),
            {"box": list(box), "object": i, "expression": exprs[i]["text"]},
            _obj_geometry(objs, masks, [i]))


def _point(rng, cfg, objs, masks, exprs, pairs, markers, curves):
    usable = [i for i, e in enumerate(exprs) if e is not None]
    if not usable:
        return None
    i = usable[int(rng.integers(len(usable)))]
    s = cfg.image_size
    point = (objs[i]["cx"], objs[i]["cy"])
    return (f"Point to {exprs[i]['text']}.", render_point(point, (s, s)),
            {"points": [list(point)], "object": i}, _obj_geometry(objs, masks, [i]))


def _which_marker(rng, cfg, markers) -> tuple[dict[str, Any], str] | None:
    """A marker and the phrase that names it without its text ('the marker', 'the left marker')."""
    if len(markers) == 1:
        return markers[0], "the marker"
    a, b = markers
    dx, dy = a["cx"] - b["cx"], a["cy"] - b["cy"]
    if abs(dx) >= abs(dy) and abs(dx) > cfg.tile:
        left, right = (a, b) if dx < 0 else (b, a)
        return (left, "the left marker") if rng.random() < 0.5 else (right, "the right marker")
    if abs(dy) > cfg.tile:
        top, bottom = (a, b) if dy < 0 else (b, a)
        return (top, "the top marker") if rng.random() < 0.5 else (bottom, "the bottom marker")
    return None


def _read(rng, cfg, objs, masks, exprs, pairs, markers, curves):
    if not markers:
        return None
    found = _which_marker(rng, cfg, markers)
    if found is None:
        return None
    m, phrase = found
    return (f"What is written on {phrase}?", m["char"], {"answer": m["char"]},
            _marker_geometry(m))


def _find_marker(rng, cfg, objs, masks, exprs, pairs, markers, curves):
    if not markers:
        return None
    m = markers[int(rng.integers(len(markers)))]
    s = cfg.image_size
    return (f"Where is the marker {m['char']}?", render_box(m["box"], (s, s)),
            {"box": list(m["box"]), "marker": m["char"]}, _marker_geometry(m))


def _follow(rng, cfg, objs, masks, exprs, pairs, markers, curves):
    if not curves:
        return None
    c = curves[int(rng.integers(len(curves)))]
    o = objs[c["object"]]
    attr = "colour" if rng.random() < 0.5 else "shape"
    q = f"What {attr} is the object at the end of the curve from marker {c['marker']}?"
    geo = _obj_geometry(objs, masks, [c["object"]])
    geo.polylines = [[tuple(p) for p in c["points"]]]
    geo.line_width = 2.0
    return q, o[attr], {"answer": o[attr], "objects": [c["object"]]}, geo


_SKILL_FNS = {
    "colour": _vqa("colour"), "shape": _vqa("shape"), "size": _vqa("size"),
    "count": _vqa("count"), "position": _position, "relation": _relation, "rec": _rec,
    "point": _point, "read": _read, "find_marker": _find_marker, "follow": _follow,
}


def box_bins(box: list[float], side: int, bins: int = BOX_BINS) -> list[int]:
    """Each edge of a pixel xyxy box as its bin's class: ``1 + floor(bins * edge / side)``, the
    last bin closed (class 0 stays "on no object")."""
    return [1 + min(bins - 1, max(0, math.floor(bins * float(v) / side))) for v in box]


def patch_labels(labels: dict[str, np.ndarray], patch: int, min_cover: float = 0.25
                 ) -> dict[str, list[int]]:
    """Per-cell class of each pixel map, row-major: the most frequent non-background class when it
    covers at least ``min_cover`` of the cell, else 0 (background)."""
    out = {}
    for name, m in labels.items():
        h, w = m.shape
        k = int(m.max()) + 1
        cells = m.reshape(h // patch, patch, w // patch, patch).transpose(0, 2, 1, 3)
        cells = cells.reshape(-1, patch * patch)  # (rows * cols, patch^2)
        counts = np.stack([(cells == c).sum(1) for c in range(k)], 1)  # (cells, k)
        counts[:, 0] = 0
        best = counts.argmax(1)
        best[counts.max(1) < min_cover * patch * patch] = 0
        out[name] = best.astype(int).tolist()
    return out
