"""Grid Patch: name the grid cell that holds the marker of a given colour (KLAL pointing task).

The image is cut into a grid that matches the model's patch grid (336 px / 24x24 = LLaVA-1.5's
14 px patches), with faint lines so a person can count cells. One cell holds the target marker,
a few others hold distractor markers of other colours (a colour never repeats within an image).
The answer is the target's cell, ``row R, column C`` (1-based); the geometry is that cell's box.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image, ImageDraw

from lookhere.data.sample import Geometry, Sample
from lookhere.data.synthetic.base import SyntheticTask, register_task

# Clearly distinct named colours. No magenta: the contact sheet draws geometry in magenta.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 20),
    "green": (0, 150, 0),
    "blue": (20, 60, 230),
    "yellow": (245, 210, 0),
    "orange": (255, 128, 0),
    "purple": (130, 40, 180),
    "cyan": (0, 200, 220),
    "brown": (120, 70, 20),
    "black": (0, 0, 0),
    "pink": (255, 150, 200),
}
BACKGROUND = (255, 255, 255)
GRID_LINE = (205, 205, 205)  # faint: countable by eye, far from every palette colour
SHAPES = ("disc", "square", "mixed")


@dataclass(frozen=True)
class GridPatchConfig:
    image_size: int = field(default=336, metadata={
        "help": "Side of the square image in pixels (336 = LLaVA-1.5's input)."})
    grid_rows: int = field(default=24, metadata={
        "help": "Grid rows; match the model's patch grid (24 for 336 px / 14 px patches)."})
    grid_cols: int = field(default=24, metadata={
        "help": "Grid columns; match the model's patch grid."})
    num_distractors: int = field(default=3, metadata={
        "help": "Markers of other colours, each in its own cell."})
    marker_shape: str = field(default="disc", metadata={
        "help": "Marker shape: 'disc', 'square', or 'mixed' (random per marker)."})
    marker_margin: float = field(default=0.15, metadata={
        "help": "Gap between a marker and its cell border, as a fraction of the cell side."})
    grid_lines: bool = field(default=True, metadata={
        "help": "Draw faint grid lines on the cell borders."})
    describe_grid: bool = field(default=True, metadata={
        "help": "Begin the question with the grid size and the numbering convention."})

    def __post_init__(self) -> None:
        if not 16 <= self.image_size <= 4096:
            raise ValueError(f"image_size must be in [16, 4096], got {self.image_size}")
        for name in ("grid_rows", "grid_cols"):
            n = getattr(self, name)
            if not 1 <= n <= self.image_size // 6:
                raise ValueError(f"{name} must be in [1, image_size // 6 = "
                                 f"{self.image_size // 6}] so cells are >= 6 px, got {n}")
        cap = min(len(PALETTE), self.grid_rows * self.grid_cols) - 1
        if not 0 <= self.num_distractors <= cap:
            raise ValueError(f"num_distractors must be in [0, {cap}] (one colour and one cell "
                             f"per marker), got {self.num_distractors}")
        if self.marker_shape not in SHAPES:
            raise ValueError(f"marker_shape must be one of {SHAPES}, got {self.marker_shape!r}")
        if not 0.0 <= self.marker_margin <= 0.3:
            raise ValueError(f"marker_margin must be in [0, 0.3], got {self.marker_margin}")


def cell_box(row: int, col: int, cfg: GridPatchConfig) -> tuple[int, int, int, int]:
    """xyxy box (x1, y1 exclusive) of a 0-based cell; borders at ``i * size // n`` so any
    image size works, and sizes divisible by the grid give equal cells."""
    s = cfg.image_size
    return (col * s // cfg.grid_cols, row * s // cfg.grid_rows,
            (col + 1) * s // cfg.grid_cols, (row + 1) * s // cfg.grid_rows)


def _draw_grid(draw: ImageDraw.ImageDraw, cfg: GridPatchConfig) -> None:
    # A line on the first pixel column/row of each interior cell; the margin keeps markers off it.
    s = cfg.image_size
    for c in range(1, cfg.grid_cols):
        x = c * s // cfg.grid_cols
        draw.line([(x, 0), (x, s - 1)], fill=GRID_LINE)
    for r in range(1, cfg.grid_rows):
        y = r * s // cfg.grid_rows
        draw.line([(0, y), (s - 1, y)], fill=GRID_LINE)


def _draw_marker(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], shape: str,
                 rgb: tuple[int, int, int], margin: float) -> None:
    x0, y0, x1, y1 = box
    # At least 1 px off the border (grid line), so 14 px cells still give a ~10 px marker.
    m = max(1, round(margin * min(x1 - x0, y1 - y0)))
    xy = [x0 + m, y0 + m, x1 - 1 - m, y1 - 1 - m]
    if shape == "disc":
        draw.ellipse(xy, fill=rgb)
    else:
        draw.rectangle(xy, fill=rgb)


@register_task
class GridPatchTask(SyntheticTask):
    """Which grid cell holds the marker of a named colour? Answer ``row R, column C``."""

    name = "grid_patch"
    config_class = GridPatchConfig

    def sample(self, index: int) -> Sample:
        cfg = self.config
        rng = self.rng(index)
        n = cfg.num_distractors + 1
        cells = rng.choice(cfg.grid_rows * cfg.grid_cols, size=n, replace=False)
        names = list(PALETTE)
        colours = [names[i] for i in rng.choice(len(names), size=n, replace=False)]
        shapes = ([SHAPES[i] for i in rng.integers(0, 2, size=n)] if cfg.marker_shape == "mixed"
                  else [cfg.marker_shape] * n)

        img = Image.new("RGB", (cfg.image_size, cfg.image_size), BACKGROUND)
        draw = ImageDraw.Draw(img)
        if cfg.grid_lines:
            _draw_grid(draw, cfg)
        markers = []
        for cell, colour, shape in zip(cells, colours, shapes, strict=True):
            r, c = divmod(int(cell), cfg.grid_cols)
            box = cell_box(r, c, cfg)
            _draw_marker(draw, box, shape, PALETTE[colour], cfg.marker_margin)
            markers.append({"color": colour, "rgb": list(PALETTE[colour]), "shape": shape,
                            "row": r + 1, "col": c + 1, "box": list(box)})

        target = markers[0]  # the first marker is the target; its colour is drawn at random
        row, col = target["row"], target["col"]
        return Sample(
            image=img,
            question=self._question(target["color"]),
            answer=f"row {row}, column {col}",
            structured={"row": row, "col": col},
            geometry=Geometry(boxes=[tuple(float(v) for v in target["box"])]),
            task=self.name,
            id=self.sample_id(index),
            meta={"target_color": target["color"], "markers": markers,
                  "num_distractors": cfg.num_distractors, "grid_rows": cfg.grid_rows,
                  "grid_cols": cfg.grid_cols, "image_size": cfg.image_size},
        )

    def _question(self, colour: str) -> str:
        cfg = self.config
        ask = f"Which cell holds the {colour} marker? Answer as row R, column C."
        if not cfg.describe_grid:
            return ask
        return (f"The image is divided into a grid of {cfg.grid_rows} rows and {cfg.grid_cols} "
                "columns, numbered from 1 starting at the top-left. " + ask)
