"""LoRA on the language model's attention projections, through PEFT."""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from lookhere.models.adapter import get_adapter

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def lora_target_modules(model: nn.Module, names: Sequence[str] = ATTENTION_PROJECTIONS
                        ) -> list[str]:
    """Full names of the language model's linear layers called ``names`` (never the vision
    tower's, whose attention often uses the same names)."""
    adapter = get_adapter(model)
    lm = adapter.language_model(model)
    prefix = next(n for n, m in model.named_modules() if m is lm)
    found = [f"{prefix}.{n}" if prefix else n for n, m in lm.named_modules()
             if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in names]
    if not found:
        raise ValueError(f"no linear layer named {tuple(names)} in the language model")
    return found


def apply_lora(model: nn.Module, r: int = 16, alpha: int = 32, dropout: float = 0.0,
               names: Sequence[str] = ATTENTION_PROJECTIONS) -> nn.Module:
    """``peft.get_peft_model`` with LoRA on the language model's attention projections; the
    vision tower and projector stay frozen. Returns the PEFT model."""
    from peft import LoraConfig, get_peft_model

    if r < 1:
        raise ValueError(f"LoRA rank r must be >= 1, got {r}")
    targets = lora_target_modules(model, names)
    pattern = "^(" + "|".join(re.escape(t) for t in targets) + ")$"
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern)
    return get_peft_model(model, config)
