"""Checkpoints shipped inside the package, loaded offline by name (``lookhere:<name>``).

``llava-mini`` is the name of the pretrained miniature LLaVA-1.5 made by `lookhere.pretrain`;
``lookhere pretrain card`` writes it, with its model card, into ``weights/llava-mini``. No
checkpoint is committed yet (docs/results.md section 6): until one is, loading it is a clear
FileNotFoundError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PREFIX = "lookhere:"
WEIGHTS = Path(__file__).parent / "weights"
SHIPPED = ("llava-mini",)


def pretrained_path(name: str = "llava-mini") -> Path:
    """The folder of a shipped checkpoint (``save_pretrained`` layout)."""
    name = name.removeprefix(PREFIX)
    if name not in SHIPPED:
        raise ValueError(f"unknown shipped checkpoint {name!r}; shipped: {', '.join(SHIPPED)}")
    path = WEIGHTS / name
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"the shipped checkpoint {name!r} is missing from {path}: "
                                "reinstall lookhere (or run `lookhere pretrain` to make it)")
    return path


def resolve(name_or_path: str) -> str:
    """A ``lookhere:<name>`` shipped name as its folder; anything else unchanged."""
    if isinstance(name_or_path, str) and name_or_path.startswith(PREFIX):
        return str(pretrained_path(name_or_path))
    return name_or_path


def load_pretrained(name: str = "llava-mini") -> tuple[Any, Any]:
    """``(model, processor)`` of a shipped checkpoint, offline, in eval mode, SDPA attention."""
    from lookhere.models.loading import load_model

    model, processor, _ = load_model(str(pretrained_path(name)), dtype="float32")
    return model.eval(), processor
