"""Load a real VLM (hub id or local folder) with its processor and adapter."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lookhere.models.adapter import Adapter, get_adapter
from lookhere.models.pretrained import pretrained_path, resolve


def load_model(
    name_or_path: str,
    dtype: torch.dtype | str = "auto",
    device_map: Any = None,
    **kwargs: Any,
) -> tuple[nn.Module, Any, Adapter]:
    """``(model, processor, adapter)`` for a VLM, with the language model on SDPA (or on what
    the adapter's ``attn_implementation`` says: eager for Gemma 2, which has no SDPA).

    Checks the family first (from the config alone), so an unsupported model fails before any
    weights are read. ``lookhere:llava-mini`` names the checkpoint shipped in the package
    (`lookhere.models.pretrained`). Extra ``kwargs`` go to ``from_pretrained`` of the model.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    name_or_path = resolve(name_or_path)

    config = AutoConfig.from_pretrained(name_or_path)
    adapter = get_adapter(config)
    model = AutoModelForImageTextToText.from_pretrained(
        name_or_path, dtype=dtype, device_map=device_map,
        attn_implementation=adapter.attn_implementation, **kwargs
    )
    processor = type(adapter).load_processor(name_or_path)
    return model, processor, get_adapter(model)


def load_pretrained(name: str = "llava-mini") -> tuple[nn.Module, Any]:
    """``(model, processor)`` of a shipped checkpoint, offline, in eval mode, SDPA attention."""
    model, processor, _ = load_model(str(pretrained_path(name)), dtype="float32")
    return model.eval(), processor
