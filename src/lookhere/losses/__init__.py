"""Auxiliary losses as pure tensor functions: KLAL (attention toward a target map) and LLL (the
logit lens of visual tokens toward their concept's words); their configs (`config`).

The functions are imported on first use (PEP 562): `lookhere.losses.config` is imported by
configs that must build without torch (an experiment's, shown by ``--help``), and importing it
runs this file first."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lookhere.losses.klal import klal_loss, klal_per_sample
    from lookhere.losses.lll import concept_log_probs, lll_loss, lll_per_sample

#: name -> the submodule that defines it
_FUNCTIONS = {"klal_loss": "klal", "klal_per_sample": "klal", "concept_log_probs": "lll",
              "lll_loss": "lll", "lll_per_sample": "lll"}

__all__ = ["concept_log_probs", "klal_loss", "klal_per_sample", "lll_loss", "lll_per_sample"]


def __getattr__(name: str) -> Any:
    if name not in _FUNCTIONS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_FUNCTIONS[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_FUNCTIONS])
