"""NTP + weight * KLAL for one batch: the probe set-up and the KLAL term, shared by the trainer and
the benchmarks so both measure the same computation."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from lookhere.losses.klal import klal_loss
from lookhere.probe import IGNORE_INDEX, AttentionProbe, query_positions
from lookhere.train.config import KLALConfig


def klal_probe(model: nn.Module, inputs: Mapping[str, Any], aux: Mapping[str, Any],
               config: KLALConfig) -> AttentionProbe | nullcontext:
    """The probe for one step: the config's query role over each sample's answer content tokens
    (``aux["answer_mask"]`` from `GroundingCollator`), keys = visual tokens, log-probabilities.
    A ``nullcontext`` (yielding None) when KLAL is neither trained on nor monitored."""
    if not config.active:
        return nullcontext()
    if "answer_mask" not in aux:
        raise KeyError("KLAL needs lookhere_answer_mask in the batch: use GroundingCollator")
    ids = inputs["input_ids"]
    answer = aux["answer_mask"].to(ids.device).bool()
    labels = torch.where(answer, ids, IGNORE_INDEX)  # content tokens only: no end-of-turn
    pos, mask = query_positions(config.query, ids, inputs.get("attention_mask"), labels)
    queries = [p[m].tolist() for p, m in zip(pos, mask, strict=True)]
    return AttentionProbe(model, layers=config.probe_layers(), queries=queries, keys="visual",
                          log_probs=True)


def klal_term(probe: AttentionProbe, aux: Mapping[str, Any], config: KLALConfig) -> torch.Tensor:
    """Scalar KLAL of the probe's last forward against ``aux["target"]``."""
    if not probe.rows:
        raise RuntimeError("the probe recorded no rows: run the forward inside its context")
    device = probe.key_mask.device
    target = aux["target"].to(device)
    if target.shape != probe.key_mask.shape:
        raise ValueError(
            f"lookhere_target is {tuple(target.shape)} but the batch has "
            f"{tuple(probe.key_mask.shape)} visual keys: build targets from this batch's layout"
        )
    return klal_loss(probe.rows, target, key_mask=probe.key_mask, query_mask=probe.query_mask,
                     sample_mask=aux["has_target"].to(device), heads=config.heads)
