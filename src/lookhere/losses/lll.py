"""The Logit Lens Loss (LLL, Esmaeilkhani & Latecki, arXiv 2602.01530): keep visual tokens local.

A visual token's hidden state ``h_s`` read through the final norm and the LM head gives a
distribution over the vocabulary; ``p(C | h_s)`` is the summed probability of the concept's token
ids (the logit lens, as in `lookhere.lens`). The loss (methods.md section 2, the project's
documented formula) raises it inside the concept's region and lowers it outside:

    L_LLL = mean_{s in region} -log p(C | h_s) + beta * mean_{s outside} -log(1 - p(C | h_s))

Choices where the paper is silent (docs/methods.md):

- **soft regions.** ``region`` holds weights ``w_s`` in [0, 1] (e.g. the fraction of a token's
  cell an object covers). A token counts inside with weight ``w_s`` and outside with weight
  ``1 - w_s``; each mean is weighted (``sum w * loss / sum w``). Binary regions give the formula
  above exactly. Per token this is a binary cross-entropy with the soft label ``w_s``, so a
  boundary cell is pushed toward the fraction of it the object covers.
- **log space.** ``log p = logsumexp(concept logits) - logsumexp(all logits)`` and
  ``log(1 - p) = logsumexp(the other logits) - logsumexp(all logits)``, both in fp32. The second
  is exact however close p is to 1: ``log1p(-p)`` would be ``-inf`` once p rounds to 1 (fp32, a
  logit gap of ~17), so no guard or clamp is needed. The price is one more logsumexp per token.
- **chunks and recomputation.** Tokens are unembedded ``chunk_size`` at a time, and with
  ``checkpoint`` each chunk runs under non-reentrant activation checkpointing: backward keeps
  only the chunk's hidden states and recomputes its ``(chunk, V)`` logits, so the logits of all
  visual tokens (7B: 576 x 32k fp32 = 74 MB per sample, Qwen's 152k vocabulary 5x more) never
  exist at once, in forward or backward. The cost is one more LM-head matmul per chunk.
- **several concepts per sample.** ``region`` may be ``(B, C, K)`` and ``concept_ids``
  ``(B, C, M)``: C (concept, region) pairs per sample, e.g. every word that names an object of
  the image. Each pair gets the formula above; a sample's loss is the mean over its pairs that
  have a concept and a region. Each token is unembedded once for all C concepts.
- **masks.** Only valid tokens (``valid``) of samples that have a concept and a non-empty region
  are unembedded; the others get no gradient at all. Samples (and pairs) without one leave the
  mean (they are not zeros in it), like KLAL's samples without target. A region that covers
  every valid token has no outside term.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

Unembed = Callable[[torch.Tensor], torch.Tensor]  # (..., D) hidden -> (..., V) logits


def lll_loss(
    hidden: torch.Tensor,
    region: torch.Tensor,
    concept_ids: torch.Tensor,
    unembed: Unembed,
    concept_mask: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    sample_mask: torch.Tensor | None = None,
    beta: float = 1.0,
    chunk_size: int = 256,
    checkpoint: bool = True,
) -> torch.Tensor:
    """Scalar LLL: the mean of `lll_per_sample` over the samples that have a concept and region.

    Returns a zero that keeps the graph to ``hidden`` when no sample qualifies. Arguments are
    those of `lll_per_sample`.
    """
    per_sample, ok = lll_per_sample(hidden, region, concept_ids, unembed, concept_mask, valid,
                                    sample_mask, beta, chunk_size, checkpoint)
    if not ok.any():
        return hidden.float().sum() * 0.0
    return per_sample[ok].mean()


def lll_per_sample(
    hidden: torch.Tensor,
    region: torch.Tensor,
    concept_ids: torch.Tensor,
    unembed: Unembed,
    concept_mask: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    sample_mask: torch.Tensor | None = None,
    beta: float = 1.0,
    chunk_size: int = 256,
    checkpoint: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample LLL ``(B,)`` fp32 and its validity ``(B,)`` bool.

    Args:
        hidden: ``(B, K, D)`` hidden states of each sample's visual tokens at the chosen layer
            (a decoder layer's output, before the final norm); any float dtype.
        region: ``(B, K)`` bool, or float weights in [0, 1]: how much each token belongs to the
            concept's region (see the module doc); 0 at invalid tokens. ``(B, C, K)`` for C
            concepts per sample.
        concept_ids: ``(B, M)`` integer token ids of each sample's concept (``(B, C, M)`` with
            a concept axis); ``p(C | h)`` sums their probabilities. Distinct within a row (among
            the unmasked ones).
        unembed: hidden -> logits, i.e. the final norm then the LM head.
        concept_mask: shaped like ``concept_ids``, bool, real (non-padding) ids; default all.
        valid: ``(B, K)`` bool, real visual tokens of the region's image; default all.
        sample_mask: ``(B,)`` bool, samples that have a concept; default all.
        beta: weight of the outside term, finite and >= 0.
        chunk_size: visual tokens unembedded at a time.
        checkpoint: recompute each chunk's logits in backward instead of keeping them (only
            when autograd records).
    A (concept, region) pair counts when it has a concept id and some region weight; a sample's
    loss is the mean over its pairs that count. Samples with none, or ``sample_mask`` False,
    get 0 and False.
    """
    b, k, _ = _check_hidden(hidden)
    weights = _check_region(region, b, k)  # (B, C, K)
    ids, id_mask = _check_concepts(concept_ids, concept_mask, b, weights.shape[1])  # (B, C, M)
    valid = _mask("valid", valid, (b, k), hidden.device)
    sample_mask = _mask("sample_mask", sample_mask, (b,), hidden.device)
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be finite and >= 0, got {beta}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if (weights * ~valid[:, None]).any():
        raise ValueError("region puts weight on tokens that valid marks invalid")

    pair_ok = sample_mask[:, None] & id_mask.any(2) & (weights.sum(2) > 0)  # (B, C)
    ok = pair_ok.any(1)  # (B,)
    # Pairs that do not count get a placeholder id (so every row has one) and zero weight.
    placeholder = torch.zeros_like(id_mask)
    placeholder[..., 0] = True
    id_mask = torch.where(pair_ok[..., None], id_mask, placeholder)
    ids = torch.where(pair_ok[..., None], ids, 0)
    tokens = valid & ok[:, None]  # (B, K): the tokens that are unembedded
    bi, ki = tokens.nonzero(as_tuple=True)  # (N,), (N,)
    log_p, log_q = concept_log_probs(hidden[bi, ki], ids[bi], id_mask[bi], unembed,
                                     chunk_size, checkpoint)  # (N, C), (N, C)
    c = weights.shape[1]
    nll_in = hidden.new_zeros(b, k, c, dtype=torch.float32).index_put((bi, ki), -log_p)
    nll_out = hidden.new_zeros(b, k, c, dtype=torch.float32).index_put((bi, ki), -log_q)
    counted = tokens[:, None] & pair_ok[..., None]  # (B, C, K)
    w_in = weights * counted
    w_out = (1.0 - weights) * counted
    inside = (w_in * nll_in.transpose(1, 2)).sum(2) / w_in.sum(2).clamp(min=_TINY)  # (B, C)
    outside = (w_out * nll_out.transpose(1, 2)).sum(2) / w_out.sum(2).clamp(min=_TINY)
    per_pair = torch.where(pair_ok, inside + beta * outside, 0.0)  # 0 outside: nothing there
    per_sample = per_pair.sum(1) / pair_ok.sum(1).clamp(min=1)
    return torch.where(ok, per_sample, 0.0), ok


def concept_log_probs(
    hidden: torch.Tensor,
    concept_ids: torch.Tensor,
    concept_mask: torch.Tensor,
    unembed: Unembed,
    chunk_size: int = 256,
    checkpoint: bool = True,
    complement: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p(C | h), log(1 - p(C | h)))`` in fp32 for ``(N, D)`` hidden states.

    ``concept_ids``/``concept_mask`` are ``(N, M)`` (each token's concept ids; outputs
    ``(N,)``) or ``(N, C, M)`` (C concepts per token; outputs ``(N, C)``), every row with at
    least one real id. Chunked and optionally checkpointed (see the module doc). The one chunked
    unembedding of lookhere: the logit lens (`lookhere.lens.lens_log_probs`) reads it too, with
    ``complement=False`` (the second output is then empty, ``(N, 0)``, and costs nothing).
    """
    if not bool(concept_mask.any(-1).all()):
        raise ValueError("concept_mask must mark at least one real id in every row")
    squeeze = concept_ids.dim() == 2
    if squeeze:
        concept_ids, concept_mask = concept_ids[:, None], concept_mask[:, None]
    if hidden.shape[0] == 0:
        empty = hidden.new_zeros(concept_ids.shape[:2], dtype=torch.float32)
        empty = empty + hidden.float().sum() * 0.0
        out = (empty, empty)
    else:
        recompute = checkpoint and torch.is_grad_enabled()
        parts = []
        for start in range(0, hidden.shape[0], chunk_size):
            sl = slice(start, start + chunk_size)
            args = (hidden[sl], concept_ids[sl], concept_mask[sl])
            fn = _ChunkLogProbs(unembed, complement)
            parts.append(_checkpoint(fn, *args, use_reentrant=False) if recompute else fn(*args))
        out = (torch.cat([o[0] for o in parts]), torch.cat([o[1] for o in parts]))
    if squeeze:
        return out[0][:, 0], (out[1][:, 0] if complement else out[1])
    return out


class _ChunkLogProbs:
    """One chunk: ``(n, D)`` hidden, ``(n, C, M)`` ids -> ``(n, C)`` log p and log(1 - p), fp32."""

    def __init__(self, unembed: Unembed, complement: bool = True) -> None:
        self.unembed = unembed
        self.complement = complement

    def __call__(self, h: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.unembed(h).float()  # (n, V)
        v = logits.shape[-1]
        if int(ids[mask].max()) >= v:
            raise ValueError(f"concept_ids holds ids >= the vocabulary size {v}")
        lse = logits.logsumexp(-1)  # (n,)
        # Padding ids point at the row's first real id, so the scatter below only ever writes
        # -inf onto concept ids (no write conflicts).
        first = ids.gather(2, mask.float().argmax(2, keepdim=True))  # (n, C, 1)
        ids = torch.where(mask, ids, first)  # (n, C, M)
        n, c, m = ids.shape
        picked = logits.gather(1, ids.reshape(n, c * m)).reshape(n, c, m)
        lse_c = picked.masked_fill(~mask, float("-inf")).logsumexp(-1)  # (n, C)
        if not self.complement:
            return lse_c - lse[:, None], lse_c.new_zeros(n, 0)
        # one concept at a time: peak memory stays one (n, V) copy whatever C is
        rest = torch.stack([logits.scatter(1, ids[:, j], float("-inf")).logsumexp(-1)
                            for j in range(c)], 1)  # (n, C): the non-concept logits
        return lse_c - lse[:, None], rest - lse[:, None]


_TINY = torch.finfo(torch.float32).tiny


def _check_hidden(hidden: torch.Tensor) -> tuple[int, int, int]:
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        raise ValueError("hidden must be a (B, K, D) tensor")
    if not hidden.is_floating_point():
        raise ValueError(f"hidden must be floating point, got {hidden.dtype}")
    return tuple(hidden.shape)


def _check_region(region: torch.Tensor, b: int, k: int) -> torch.Tensor:
    """``(B, C, K)`` float weights (C = 1 for a ``(B, K)`` region)."""
    ok = isinstance(region, torch.Tensor) and region.dim() in (2, 3) \
        and region.shape[0] == b and region.shape[-1] == k
    if not ok:
        got = tuple(region.shape) if isinstance(region, torch.Tensor) else type(region).__name__
        raise ValueError(f"region must be (B, K) = {(b, k)} or (B, C, K), got {got}")
    w = region.float()
    if not torch.isfinite(w).all() or (w < 0).any() or (w > 1).any():
        raise ValueError("region must be bool or weights in [0, 1]")
    return w if w.dim() == 3 else w[:, None]


def _check_concepts(ids: torch.Tensor, mask: torch.Tensor | None, b: int, c: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, C, M)`` long ids and bool mask, for ``(B, M)`` (when C = 1) or ``(B, C, M)``."""
    want = f"(B={b}, M)" if c == 1 else f"(B={b}, C={c}, M) like region"
    if not isinstance(ids, torch.Tensor) or ids.dim() not in (2, 3) or ids.shape[0] != b \
            or (ids.dim() == 3 and ids.shape[1] != c) or (ids.dim() == 2 and c != 1):
        raise ValueError(f"concept_ids must be a {want} tensor")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
        raise ValueError(f"concept_ids must hold integer token ids, got {ids.dtype}")
    if ids.shape[-1] == 0:
        raise ValueError("concept_ids must have at least one column (M >= 1)")
    mask = _mask("concept_mask", mask, tuple(ids.shape), ids.device)
    if (ids[mask] < 0).any():
        raise ValueError("concept_ids must be >= 0 where concept_mask is True")
    ids = ids.long()
    if ids.dim() == 2:
        ids, mask = ids[:, None], mask[:, None]
    # distinct real ids per row: sort them, padding pushed to the end as -1 .. -M
    pad = -torch.arange(1, ids.shape[2] + 1, device=ids.device).expand_as(ids)
    s = torch.where(mask, ids, pad).sort(2).values
    if (s[..., 1:] == s[..., :-1]).any():
        raise ValueError("concept_ids repeats an id within a row (p(C) would count it twice)")
    return ids, mask


def _mask(name: str, mask: torch.Tensor | None, shape: tuple[int, ...], device: torch.device
          ) -> torch.Tensor:
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != shape:
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{name} must be {shape}, got {got}")
    return mask.bool()
