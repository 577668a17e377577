"""Batches for training and evaluation: chat prompts, answer labels, KLAL targets.

`GroundingCollator` turns `Sample`s into one model batch:

- the processor runs once on the prompts (chat turn up to the assistant header) and images;
- each answer (content, then the turn's closing text) is tokenised on its own and appended after
  the sample's prompt tokens, so the label boundary is exact, whatever the tokenizer merges;
- sequences are right padded; ``labels`` are -100 on prompt and padding;
- ``lookhere_answer_mask`` marks the answer's content tokens (not the closing ones): the KLAL
  query roles are read from it;
- ``lookhere_target`` (B, K) is the ground-truth map over each sample's visual tokens, aligned
  with ``AttentionProbe(keys="visual")``; ``lookhere_has_target`` (B,) is False for samples
  without geometry; ``lookhere_target_cells`` (B, K) marks the tokens the geometry touches.

Keys starting with ``lookhere_`` are not model inputs: the trainer pops them before the forward.
`prompt_batch` builds left-padded prompts for generation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lookhere.data.prompt import chat_turn
from lookhere.data.sample import Sample
from lookhere.models.adapter import Adapter
from lookhere.probe import IGNORE_INDEX
from lookhere.targets import TargetConfig, batch_target_cells, batch_targets

AUX_PREFIX = "lookhere_"


@dataclass
class GroundingCollator:
    """Callable ``list[Sample] -> batch`` (see the module doc for the keys)."""

    processor: Any
    adapter: Adapter
    target_config: TargetConfig = field(default_factory=TargetConfig)
    targets: bool = True  # build lookhere_target / _has_target / _target_cells

    def __call__(self, samples: Sequence[Sample]) -> dict[str, Any]:
        if not samples:
            raise ValueError("samples must not be empty")
        tok = self.processor.tokenizer
        turns = [chat_turn(self.adapter, self.processor, s.question, s.answer, 1)
                 for s in samples]
        enc = _process(self.adapter, self.processor, [t.prompt for t in turns], samples, "right")
        answers, ends = [], []
        for t in turns:
            answers.append(tok(t.answer, add_special_tokens=False)["input_ids"])
            end = tok(t.end, add_special_tokens=False)["input_ids"] if t.end else []
            if not t.end.strip():  # the template does not close the turn: stop with EOS
                end = end + [tok.eos_token_id]
            ends.append(end)
        batch = _append_answers(enc, answers, ends, tok.pad_token_id)
        if self.targets:
            images = [[s.image] for s in samples]
            layout = self.adapter.layout(batch, images, self.processor)
            geos = [s.geometry if s.geometry is not None and not s.geometry.is_empty() else None
                    for s in samples]
            target, has = batch_targets(layout, geos, config=self.target_config)
            batch["lookhere_target"] = target
            batch["lookhere_has_target"] = has
            batch["lookhere_target_cells"] = batch_target_cells(layout, geos)
        return batch


def prompt_batch(adapter: Adapter, processor: Any, samples: Sequence[Sample]) -> dict[str, Any]:
    """Left-padded generation prompts (chat turn up to the assistant header) for ``samples``."""
    prompts = [chat_turn(adapter, processor, s.question).prompt for s in samples]
    return dict(_process(adapter, processor, prompts, samples, "left"))


def to_device(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    """The batch with every tensor on ``device`` (other entries as they are)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def split_aux(batch: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model inputs, lookhere_ entries without the prefix)."""
    inputs = {k: v for k, v in batch.items() if not k.startswith(AUX_PREFIX)}
    aux = {k[len(AUX_PREFIX):]: v for k, v in batch.items() if k.startswith(AUX_PREFIX)}
    return inputs, aux


def _process(adapter: Adapter, processor: Any, prompts: list[str], samples: Sequence[Sample],
             side: str) -> Any:
    tok = processor.tokenizer
    saved = tok.padding_side
    tok.padding_side = side
    try:
        return adapter.process(processor, prompts, [[s.image] for s in samples], padding=True)
    finally:
        tok.padding_side = saved


def _append_answers(enc: Mapping[str, Any], answers: list[list[int]], ends: list[list[int]],
                    pad_id: int) -> dict[str, Any]:
    """Prompt tokens + answer + end per sample, right padded; every (B, L) entry follows."""
    ids, attn = enc["input_ids"], enc["attention_mask"]  # (B, L)
    per_token = [k for k, v in enc.items()
                 if isinstance(v, torch.Tensor) and v.shape == ids.shape and k != "input_ids"]
    rows: list[dict[str, torch.Tensor]] = []
    for b in range(ids.shape[0]):
        keep = attn[b].bool()
        extra = answers[b] + ends[b]
        n_new = len(extra)
        row = {"input_ids": torch.cat([ids[b][keep], torch.tensor(extra, dtype=ids.dtype)])}
        for k in per_token:  # attention_mask -> 1, token types -> 0 (text)
            fill = 1 if k == "attention_mask" else 0
            row[k] = torch.cat([enc[k][b][keep], torch.full((n_new,), fill, dtype=enc[k].dtype)])
        n_prompt = int(keep.sum())
        labels = torch.full_like(row["input_ids"], IGNORE_INDEX)
        labels[n_prompt:] = row["input_ids"][n_prompt:]
        row["labels"] = labels
        answer = torch.zeros_like(row["input_ids"], dtype=torch.bool)
        answer[n_prompt:n_prompt + len(answers[b])] = True
        row["lookhere_answer_mask"] = answer
        rows.append(row)
    length = max(len(r["input_ids"]) for r in rows)
    pads = {"input_ids": pad_id, "labels": IGNORE_INDEX}
    out: dict[str, Any] = {k: v for k, v in enc.items() if k not in per_token and k != "input_ids"}
    for k in rows[0]:
        fill = pads.get(k, 0)
        out[k] = torch.stack([torch.cat([r[k], r[k].new_full((length - len(r[k]),), fill)])
                              for r in rows])
    return out
