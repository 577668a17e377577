"""Answer formats: render structured answers in each family's native style, parse model text back.

Parsing is tolerant and never raises on model output: a parser returns None when it finds no
answer, and `ParseStats` counts those so evaluations report a parse-failure rate. It reads an
answer where a person would (`reads_as_answer`): the first candidate of the expected form, at
the start of the reply or after a few plain words, standing alone, in legible text; an answer
hidden in token soup (a random model's output) is a parse failure, not an answer.

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
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Box = tuple[float, float, float, float]
STYLES = ("llava", "qwen", "plain", "pixels")
# a number; possessive, so a long run of digits is read in one way (no quadratic backtracking)
_NUM = r"[-+]?+(?:\d++(?:\.\d++)?+|\.\d++)(?:[eE][-+]?+\d++)?+"
#: plain words a reply may open with before its answer ("The box is", "It is in", "```json"):
#: one sentence, however wordy
LEAD_WORDS = 16
#: characters past the answer that must be legible too (no control or replacement characters)
LEGIBLE_AFTER = 20
_PUNCT = r"[\s\"'`*_#>\[\]{}():,.;!?-]*+"  # possessive: no backtracking on long replies
_LEAD = re.compile(rf"{_PUNCT}(?:[A-Za-z]++(?:'[A-Za-z]++)?+{_PUNCT}){{0,{LEAD_WORDS}}}+")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve")


def reads_as_answer(text: str, start: int, end: int) -> bool:
    """Whether ``text[start:end]``, a candidate of the expected form, reads as the reply's
    answer (docs/methods.md, answer parsing):

    - it leads: before it come at most `LEAD_WORDS` plain words (ASCII letters) and
      punctuation, no digits or symbols ("The box is [...]", "```json [{"bbox_2d": ...");
    - it stands alone: no letter or digit glued to either side ("16ell", "arrow3");
    - the reply is legible through it and `LEGIBLE_AFTER` characters past it: no control
      character (tab and newlines aside), no U+FFFD (bytes that decode as nothing), no
      unassigned or private code point: the marks of token soup, which real replies lack.
    """
    if _LEAD.fullmatch(text, 0, start) is None:
        return False
    if (start > 0 and text[start - 1].isalnum() and text[start].isalnum()) or (
            end < len(text) and text[end - 1].isalnum() and text[end].isalnum()):
        return False
    return all(_legible(c) for c in text[start:end + LEGIBLE_AFTER])


def _legible(c: str) -> bool:
    if c in "\t\n\r":
        return True
    return c != "\ufffd" and unicodedata.category(c) not in ("Cc", "Cs", "Co", "Cn")


def _answer(match: re.Match[str] | None) -> re.Match[str] | None:
    """``match`` if it reads as the answer of its text, else None."""
    if match is None or not reads_as_answer(match.string, match.start(), match.end()):
        return None
    return match


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
    """The first box in model text, as pixel xyxy of the original image; None if none reads as
    the answer (`reads_as_answer`)."""
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
    """Every point in model text, as original-image pixels; None if the first does not read as
    the answer (`reads_as_answer`)."""
    ox, oy, fw, fh = _frame(style, image_size, square, frame)
    pattern = (rf'"point_2d"\s*:\s*\[\s*({_NUM})\s*,\s*({_NUM})\s*\]' if style == "qwen"
               else rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*\]")
    if _answer(re.search(pattern, text)) is None:
        return None
    found = [(float(a), float(b)) for a, b in re.findall(pattern, text)]
    if style == "qwen":
        return [(x * image_size[0] / fw, y * image_size[1] / fh) for x, y in found]
    return [(x * fw - ox, y * fh - oy) for x, y in found]


def render_grid_cell(row: int, col: int) -> str:
    """Grid Patch's answer, 1-based: ``row R, column C``."""
    return f"row {row}, column {col}"


def parse_grid_cell(text: str) -> tuple[int, int] | None:
    """``row R, column C`` (or ``(R, C)``), 1-based, as the answer (`reads_as_answer`)."""
    m = re.search(r"row\s*(\d+)\s*[,;]?\s*(?:and\s*)?col(?:umn)?\s*(\d+)", text, re.IGNORECASE)
    if m is None:
        m = re.search(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)", text)
    m = _answer(m)
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_yes_no(text: str) -> bool | None:
    """The first yes/no word, if it reads as the answer (`reads_as_answer`)."""
    m = _answer(re.search(r"\b(yes|no)\b", text, re.IGNORECASE))
    return None if m is None else m.group(1).lower() == "yes"


def parse_number(text: str) -> int | None:
    """The first whole number, if it reads as the answer (`reads_as_answer`)."""
    m = _answer(re.search(r"-?\d+", text))
    return int(m.group(0)) if m else None


def parse_count(text: str) -> int | None:
    """The first count, in digits or a word up to twelve, if it reads as the answer."""
    words = "|".join(NUMBER_WORDS)
    m = _answer(re.search(rf"\d+|\b(?:{words})\b", text, re.IGNORECASE))
    if m is None:
        return None
    tok = m.group(0).lower()
    return int(tok) if tok.isdigit() else NUMBER_WORDS.index(tok)


def parse_word(text: str, vocabulary: list[str], ignore_case: bool = True) -> str | None:
    """The first vocabulary word in the text (whole word; case-insensitive unless
    ``ignore_case`` is False), if it reads as the answer (`reads_as_answer`). Glyph names need
    their case: read case-insensitively, the article in "It is a B" would be the letter A."""
    flags = re.IGNORECASE if ignore_case else 0
    hits = [(m.start(), w, m) for w in vocabulary
            for m in [re.search(rf"\b{re.escape(w)}\b", text, flags)] if m]
    if not hits:
        return None
    _, word, m = min(hits, key=lambda h: h[0])
    return word if _answer(m) else None


def _first_numbers(text: str, n: int, key: str) -> list[float] | None:
    """n numbers from a JSON ``key`` list, else from the first bracketed list of exactly n
    numbers (separated by commas or spaces, nothing else inside), if it reads as the answer."""
    m = re.search(rf'"{key}"\s*:\s*\[([^\]]*)\]', text)
    candidates = [m] if m else re.finditer(r"[\[(]([^\[\]()]*)[\])]", text)
    for c in candidates:
        nums = re.findall(_NUM, c.group(1))
        if len(nums) == n and _LIST.fullmatch(c.group(1)):
            return [float(v) for v in nums] if _answer(c) else None
    return None


_LIST = re.compile(rf"\s*{_NUM}(?:(?:\s*[,;]\s*|\s+){_NUM})*\s*")  # separators required
