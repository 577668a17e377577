"""Training with auxiliary grounding losses: the trainer, LoRA, and ``lookhere train``'s config.

The names below are imported on first use, so that the torch-free `lookhere.train.config` can be
read (``lookhere train --help``) without importing torch or transformers.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "GroundingTrainer": "lookhere.train.trainer",
    "apply_lora": "lookhere.train.lora",
    "KLALConfig": "lookhere.losses.config",
    "LLLConfig": "lookhere.losses.config",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'lookhere.train' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
