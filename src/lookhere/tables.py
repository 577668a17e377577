"""Table cells: how every results table writes a share as a percentage."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal


def pct(value: float | None, half_up: bool = False, missing: str = "-") -> str:
    """A share in [0, 1] as a percentage with one decimal, ``missing`` when missing (None, NaN
    or infinite). The float's own rounding (``f"{100 * value:.1f}"``: 0.3125 -> "31.2"), or with
    ``half_up`` rounded half up from the value's decimal form, the way a person rounds
    (0.3125 -> "31.3"; the KLAL results table)."""
    if value is None or not math.isfinite(value):
        return missing
    if half_up:
        return str(_round1(Decimal(repr(float(value))) * 100))
    return f"{100 * float(value):.1f}"


def points(a: float, b: float) -> str:
    """a - b in percentage points, rounded half up like ``pct(..., half_up=True)``, signed:
    '+8.8', '-1.5', '0.0'."""
    d = _round1((Decimal(repr(float(a))) - Decimal(repr(float(b)))) * 100)
    return "0.0" if d == 0 else f"{d:+}"


def _round1(x: Decimal) -> Decimal:
    return x.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
