"""Answer formats: render structured answers in each family's native style, parse model text back.

Parsing is tolerant and never raises on model output: a parser returns None when it finds no
answer, and `ParseStats` counts those so evaluations report a parse-failure rate.

Box and point styles:
- ``"llava"``: LLaVA-1.5's normalised ``[x0, y0, x1, y1]`` with 2 decimals. LLaVA-1.5 learned
  boxes normalised to the *padded square* image (``expand2square``), so ``square=True`` (default)
  pads the shorter side, centred, before normalising.
- ``"qwen"``: Qwen2.5-VL's absolute-pixel JSON ``{"bbox_2d": [x0, y0, x1, y1], "label": ...}`` and
  ``{"point_2d": [x, y], "label": ...}``, in the pixel frame of the image the model saw
  (``frame``: the processor's resized size; default the original size).
- ``"plain"``: normalised ``[x0, y0, x1, y1]`` of the original image, 2 decimals (lookhere's
  neutral format for tiny models).
- ``"pixels"``: ``[x0, y0, x1, y1]`` in whole original-image pixels (RefCOCO's ``rec_pixels``).

`render_box` is the one place a box becomes text: the answer formats, the synthetic tasks'
answers and captions, and the RefCOCO loader all call it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Box = tuple[float, float, float, float]
STYLES = ("llava", "qwen", "plain", "pixels")
_NUM = r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?"


@dataclass
class ParseStats:
    """Counts parse attempts and failures, for the parse-failure rate of an evaluation."""

    total: int = 0
    failed: int = 0

    def add(self, parsed: Any) -> Any:
        self.total += 1
        self.failed += parsed is None
        return parsed

    @property
    def failure_rate(self) -> float:
        return self.failed / self.total if self.total else 0.0


def _frame(style: str, image_size: tuple[int, int], square: bool, frame: tuple[int, int] | None
           ) -> tuple[float, float, float, float]:
    """(offset_x, offset_y, width, height) of the frame coordinates are expressed in."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    w, h = image_size
    if style == "llava" and square:
        side = max(w, h)
        return (side - w) / 2, (side - h) / 2, side, side
    if style == "qwen" and frame is not None:
        return 0.0, 0.0, float(frame[0]), float(frame[1])
    if style == "pixels":
        return 0.0, 0.0, 1.0, 1.0
    return 0.0, 0.0, float(w), float(h)


def render_box(box: Box | Sequence[float], image_size: tuple[int, int], style: str = "plain",
               label: str = "", square: bool = True, frame: tuple[int, int] | None = None,
               clip: bool = False) -> str:
    """A pixel xyxy box of the original image as answer text in ``style``; ``clip`` (the
    normalised styles) clamps each number to [0, 1], so a box that overhangs the frame reads
    0.00 or 1.00."""
    ox, oy, fw, fh = _frame(style, image_size, square, frame)
    if clip and style not in ("plain", "llava"):
        raise ValueError(f"clip applies to the normalised styles plain and llava, not {style!r}")
    x0, y0, x1, y1 = box
    if style == "pixels":
        return "[" + ", ".join(str(int(round(float(v)))) for v in (x0, y0, x1, y1)) + "]"
    if style == "qwen":
        sx, sy = fw / image_size[0], fh / image_size[1]
        coords = [round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy)]
        return json.dumps({"bbox_2d": coords, "label": label} if label else {"bbox_2d": coords})
    vals = [(x0 + ox) / fw, (y0 + oy) / fh, (x1 + ox) / fw, (y1 + oy) / fh]
    if clip:
        vals = [min(max(v, 0.0), 1.0) for v in vals]
    return "[" + ", ".join(f"{v:.2f}" for v in vals) + "]"


def parse_box(text: str, image_size: tuple[int, int], style: str = "plain", square: bool = True,
              frame: tuple[int, int] | None = None) -> Box | None:
    """The first box in model text, as pixel xyxy of the original image; None if none parses."""
    ox, oy, fw, fh = _frame(style, image_size, square, frame)
    nums = _first_numbers(text, 4, key="bbox_2d")
    if nums is None:
        return None
    x0, y0, x1, y1 = nums
    if style == "qwen":
        sx, sy = image_size[0] / fw, image_size[1] / fh
        x0, y0, x1, y1 = x0 * sx, y0 * sy, x1 * sx, y1 * sy
    else:
        x0, y0, x1, y1 = x0 * fw - ox, y0 * fh - oy, x1 * fw - ox, y1 * fh - oy
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    return (x0, y0, x1, y1)


def render_point(point: tuple[float, float], image_size: tuple[int, int], style: str = "plain",
                 label: str = "", square: bool = True, frame: tuple[int, int] | None = None
                 ) -> str:
    ox, oy, fw, fh = _frame(style, image_size, square, frame)
    x, y = point
    if style == "qwen":
        xy = [round(x * fw / image_size[0]), round(y * fh / image_size[1])]
        return json.dumps({"point_2d": xy, "label": label} if label else {"point_2d": xy})
    if style == "pixels":
        return f"[{int(round(float(x)))}, {int(round(float(y)))}]"
    return f"[{(x + ox) / fw:.2f}, {(y + oy) / fh:.2f}]"


def parse_points(text: str, image_size: tuple[int, int], style: str = "plain",
                 square: bool = True, frame: tuple[int, int] | None = None
                 ) -> list[tuple[float, float]] | None:
    """Every point in model text, as original-image pixels; None if none parses."""
    ox, oy, fw, fh = _frame(style, image_size, square, frame)
    if style == "qwen":
        found = [(float(a), float(b)) for a, b in re.findall(
            rf'"point_2d"\s*:\s*\[\s*({_NUM})\s*,\s*({_NUM})\s*\]', text)]
        pts = [(x * image_size[0] / fw, y * image_size[1] / fh) for x, y in found]
    else:
        found = [(float(a), float(b)) for a, b in re.findall(
            rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*\]", text)]
        pts = [(x * fw - ox, y * fh - oy) for x, y in found]
    return pts or None


def render_grid_cell(row: int, col: int) -> str:
    """Grid Patch's answer, 1-based: ``row R, column C``."""
    return f"row {row}, column {col}"


def parse_grid_cell(text: str) -> tuple[int, int] | None:
    m = re.search(r"row\s*(\d+)\s*[,;]?\s*(?:and\s*)?col(?:umn)?\s*(\d+)", text, re.IGNORECASE)
    if m is None:
        m = re.search(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_yes_no(text: str) -> bool | None:
    """The first yes/no word; None when both or neither appear first-equal."""
    m = re.search(r"\b(yes|no)\b", text, re.IGNORECASE)
    return None if m is None else m.group(1).lower() == "yes"


def parse_number(text: str) -> int | None:
    m = re.search(r"-?\d+", text)
    return int(m.group(0)) if m else None


def parse_word(text: str, vocabulary: list[str]) -> str | None:
    """The first vocabulary word that appears in the text (case-insensitive, whole word)."""
    hits = [(m.start(), w) for w in vocabulary
            for m in [re.search(rf"\b{re.escape(w)}\b", text, re.IGNORECASE)] if m]
    return min(hits)[1] if hits else None


def _first_numbers(text: str, n: int, key: str) -> list[float] | None:
    """n numbers from a JSON ``key`` list, else from the first bracketed list of n numbers."""
    m = re.search(rf'"{key}"\s*:\s*\[([^\]]*)\]', text)
    candidates = [m.group(1)] if m else re.findall(r"[\[(]([^\[\]()]*)[\])]", text)
    for chunk in candidates:
        nums = re.findall(_NUM, chunk)
        if len(nums) == n:
            try:
                return [float(v) for v in nums]
            except ValueError:
                continue
    return None
