"""Checkpoints shipped inside the package, loaded offline by name (``lookhere:<name>``).

``llava-mini`` is the name of the pretrained miniature LLaVA-1.5 made by `lookhere.pretrain`;
``lookhere pretrain card`` writes it, with its model card, into the package's
``models/weights/llava-mini`` (docs/results.md 6.6). A missing file (a broken install) is a
clear FileNotFoundError. `SHIPPED` gives each one's family, so that a config reads a shipped
checkpoint's shape without transformers (`lookhere.experiment.config.checkpoint_shape`; a test
checks both against what transformers and the adapters read).
"""

from __future__ import annotations

from pathlib import Path

PREFIX = "lookhere:"
WEIGHTS = Path(__file__).parent.parent / "models" / "weights"
#: shipped name -> the model family it belongs to
SHIPPED = {"llava-mini": "llava"}


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

