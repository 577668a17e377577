"""NTP + weight * KLAL + weight * LLL for one batch: the probe and hidden-state capture set-up and
the auxiliary terms, shared by the trainer and the benchmarks so both measure the same
computation."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from lookhere.capture import HiddenCapture, capture_hidden
from lookhere.losses.config import KLALConfig, LLLConfig
from lookhere.losses.klal import klal_loss
from lookhere.losses.lll import lll_loss
from lookhere.models.adapter import get_adapter, resolve_heads, unwrap_model
from lookhere.probe import (
    IGNORE_INDEX,
    AttentionProbe,
    Positions,
    query_positions,
    visual_positions,
)


def klal_probe(model: nn.Module, inputs: Mapping[str, Any], aux: Mapping[str, Any],
               config: KLALConfig, check: bool = True) -> AttentionProbe | nullcontext:
    """The probe for one step: the config's query role over each sample's answer content tokens
    (``aux["answer_mask"]`` from `GroundingCollator`), keys = visual tokens, log-probabilities.
    A ``nullcontext`` (yielding None) when KLAL is neither trained on nor monitored.

    Positions are built on the device for the whole batch. With ``check`` the keys' width is
    the batch's own count of visual tokens (one host sync), which `klal_term` then compares with
    the target's; without it the width is taken from ``aux["target"]`` (the collator builds both
    from one layout), so the step makes no host sync (``all_answer`` still makes one: the most
    answer tokens set the query width)."""
    if not config.active:
        return nullcontext()
    if "answer_mask" not in aux:
        raise KeyError("KLAL needs lookhere_answer_mask in the batch: use GroundingCollator")
    ids = inputs["input_ids"]
    answer = aux["answer_mask"].to(ids.device).bool()
    labels = torch.where(answer, ids, IGNORE_INDEX)  # content tokens only: no end-of-turn
    queries = Positions(*query_positions(config.query, ids, inputs.get("attention_mask"), labels))
    adapter = get_adapter(unwrap_model(model))
    keys = "visual" if check or "target" not in aux else \
        Positions(*visual_positions(adapter, ids, aux["target"].shape[-1]))
    return AttentionProbe(model, layers=config.probe_layers(), queries=queries, keys=keys,
                          adapter=adapter, log_probs=True)


def klal_term(probe: AttentionProbe, aux: Mapping[str, Any], config: KLALConfig,
              check: bool = True) -> torch.Tensor:
    """Scalar KLAL of the probe's last forward against ``aux["target"]``; ``check`` as in
    `klal_probe` (and `klal_loss`: the target's and the rows' values)."""
    if not probe.rows:
        raise RuntimeError("the probe recorded no rows: run the forward inside its context")
    device = probe.key_mask.device
    target = aux["target"].to(device)
    if target.shape != probe.key_mask.shape:
        raise ValueError(
            f"lookhere_target is {tuple(target.shape)} but the batch has "
            f"{tuple(probe.key_mask.shape)} visual keys: build targets from this batch's layout"
        )
    heads = None if config.heads is None else resolve_heads(
        config.heads, probe.adapter.num_layers, probe.adapter.num_heads)  # negative layers too
    return klal_loss(probe.rows, target, key_mask=probe.key_mask, query_mask=probe.query_mask,
                     sample_mask=aux["has_target"].to(device), heads=heads, check=check)


def lll_capture(model: nn.Module, inputs: Mapping[str, Any], config: LLLConfig | None
                ) -> HiddenCapture | nullcontext:
    """The step's hidden-state capture at ``config.layer`` (its output before the final norm,
    at each sample's visual tokens, aligned with the collator's per-token entries); a
    ``nullcontext`` (yielding None) when LLL is off, neither trained on nor monitored."""
    if config is None or not config.active:
        return nullcontext()
    return capture_hidden(model, get_adapter(unwrap_model(model)), [config.layer])


def lll_term(capture: HiddenCapture, aux: Mapping[str, Any], config: LLLConfig) -> torch.Tensor:
    """Scalar LLL of the capture's last forward against the batch's ``lookhere_lll_*`` entries."""
    hidden = capture.hidden.get(capture.layers[0])
    if hidden is None:
        raise RuntimeError("the capture recorded nothing: run the forward inside its context")
    if "lll_region" not in aux:
        raise KeyError("LLL needs lookhere_lll_region in the batch: use "
                       "GroundingCollator(..., lll=LLLConfig(...))")
    device = capture.mask.device
    region = aux["lll_region"].to(device)  # (B, C, K), or (B, K) for one concept
    if (region.shape[0], region.shape[-1]) != tuple(capture.mask.shape):
        raise ValueError(
            f"lookhere_lll_region is {tuple(region.shape)} but the batch has "
            f"{tuple(capture.mask.shape)} visual tokens: build it from this batch's layout")
    if config.region_threshold is not None:
        region = (region >= config.region_threshold).float()
    valid = aux["lll_valid"].to(device).bool() & capture.mask
    return lll_loss(hidden, region, aux["lll_concepts"].to(device),
                    capture.unembed, concept_mask=aux["lll_concepts_mask"].to(device),
                    valid=valid, sample_mask=aux["has_concept"].to(device), beta=config.beta,
                    chunk_size=config.chunk_size)
