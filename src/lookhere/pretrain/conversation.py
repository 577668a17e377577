"""Multi-turn conversations for instruction tuning, as in LLaVA-1.5's instruction data.

LLaVA-1.5's instruction mix holds many questions per image, one conversation per sample, every
assistant turn in the loss. For the miniature this is also where the compute goes furthest: the
144 image tokens dominate a sequence's cost, and each further turn adds ~15 text tokens and one
more supervised answer about the same image. A Scenes ``instruct`` sample carries its
conversation in ``meta["turns"]`` (`ScenesConfig.turns`); samples without one are a single turn.

The first turn is rendered exactly as `GroundingCollator` renders a sample (images, question,
answer, end); each further turn is the family's user turn without images, then its answer and end
(LLaVA: ``USER: <image>\\nQ1 ASSISTANT: A1</s>USER: \\nQ2 ASSISTANT: A2</s>``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lookhere.collate import end_ids, process_prompts
from lookhere.data.sample import Sample
from lookhere.models.adapter import Adapter
from lookhere.models.prompt import chat_turn
from lookhere.probe import IGNORE_INDEX


def sample_turns(sample: Sample) -> list[tuple[str, str]]:
    """``[(question, answer), ...]``: the sample's conversation, or its one question."""
    turns = sample.meta.get("turns") if isinstance(sample.meta, dict) else None
    if not turns:
        return [(sample.question, sample.answer)]
    return [(t["question"], t["answer"]) for t in turns]


@dataclass
class ConversationCollator:
    """``list[Sample] -> {input_ids, attention_mask, labels, pixel_values, ...}``, every
    assistant turn (answer and end) labelled, everything else ``IGNORE_INDEX``; right padded."""

    processor: Any
    adapter: Adapter

    def __call__(self, samples: Sequence[Sample]) -> dict[str, Any]:
        if not samples:
            raise ValueError("samples must not be empty")
        firsts, rests = [], []
        for s in samples:
            turns = sample_turns(s)
            firsts.append(chat_turn(self.adapter, self.processor, *turns[0], n_images=1))
            rests.append([chat_turn(self.adapter, self.processor, q, a, n_images=0)
                          for q, a in turns[1:]])
        tok = self.processor.tokenizer
        enc = process_prompts(self.adapter, self.processor, [t.prompt for t in firsts], samples,
                              "right")
        ids, attn = enc["input_ids"], enc["attention_mask"]  # (B, L)
        rows = []
        for b, first in enumerate(firsts):
            prompt = ids[b][attn[b].bool()].tolist()
            pieces = [(prompt, False)]
            for i, turn in enumerate([first, *rests[b]]):
                if i:
                    pieces.append((self._encode(turn.prompt), False))
                pieces.append((self._encode(turn.answer) + end_ids(tok, turn.end), True))
            rows.append(pieces)
        out = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
        out.update(_pad(rows, tok.pad_token_id))
        return out

    def _encode(self, text: str) -> list[int]:
        return self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]


def _pad(rows: list[list[tuple[list[int], bool]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pieces ``(token ids, labelled)`` per sample -> right-padded (B, L) tensors."""
    seqs = [[t for piece, _ in pieces for t in piece] for pieces in rows]
    labels = [[t if keep else IGNORE_INDEX for piece, keep in pieces for t in piece]
              for pieces in rows]
    n = max(map(len, seqs))
    return {
        "input_ids": torch.tensor([s + [pad_id] * (n - len(s)) for s in seqs]),
        "attention_mask": torch.tensor([[1] * len(s) + [0] * (n - len(s)) for s in seqs]),
        "labels": torch.tensor([x + [IGNORE_INDEX] * (n - len(x)) for x in labels]),
    }
