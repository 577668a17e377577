"""The KL Attention Loss (KLAL, Esmaeilkhani & Latecki 2025): pull attention toward a target map.

For each selected layer l, the query's attention row of each head h is renormalised over the
visual tokens, ``alpha^(l,h)``, and averaged over heads, ``Q^(l) = mean_h alpha^(l,h)``. The loss is
the forward KL with the ground truth first, averaged over layers (methods.md section 1):

    L_KLAL = mean_l KL(P || Q^(l)) = mean_l sum_k P_k (log P_k - log Q^(l)_k)

Everything runs in log space from the probe's log-probabilities (``AttentionProbe(...,
log_probs=True)``): renormalising over visual keys is a ``logsumexp``, and the head average is a
``logsumexp`` over heads, so a key whose probability underflows in fp32 keeps a finite log and
a gradient. Choices where the paper is silent (docs/methods.md):

- several query positions (``all_answer``): the KL of each query, averaged over the queries;
- a head with no visual key it may attend (all ``-inf``) leaves the head average; a query with no
  such head, a padded query and a sample without target leave the mean (they are not zeros in it);
- a target cell that no head can see at all (a sliding window that hides it) gets
  ``log Q = log(float32 tiny)`` (about -87): a large but finite cost, with no gradient through it.
  Cells that are merely improbable keep their exact log and gradient.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

_LOG_TINY = math.log(torch.finfo(torch.float32).tiny)  # about -87.3
_SUM_TOL = 1e-2  # a target row's sum may differ from 1 by this (one rounded to bf16: ~0.4%)

LayerRows = Mapping[int, torch.Tensor] | Sequence[torch.Tensor] | torch.Tensor


def klal_loss(
    log_attn: LayerRows,
    target: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    query_mask: torch.Tensor | None = None,
    sample_mask: torch.Tensor | None = None,
    heads: Sequence[tuple[int, int]] | None = None,
    check: bool = True,
) -> torch.Tensor:
    """Scalar KLAL: the mean of `klal_per_sample` over the samples that have a target.

    Returns a zero that keeps the graph (so every process still runs backward) when no sample in
    the batch has a target. Arguments are those of `klal_per_sample`. Without ``check`` the
    whole computation runs on the device with no host sync.
    """
    per_sample, valid = klal_per_sample(log_attn, target, key_mask, query_mask, sample_mask, heads,
                                        check)
    # invalid samples are 0 in per_sample: a sum over the valid count, with no host sync
    return per_sample.sum() / valid.sum().clamp(min=1)


def klal_per_sample(
    log_attn: LayerRows,
    target: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    query_mask: torch.Tensor | None = None,
    sample_mask: torch.Tensor | None = None,
    heads: Sequence[tuple[int, int]] | None = None,
    check: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample KLAL ``(B,)`` fp32 and its validity ``(B,)`` bool.

    Args:
        log_attn: per layer, ``(B, H, Q, K)`` attention log-probabilities of the query rows over
            the visual keys, as `AttentionProbe(log_probs=True).rows` gives them: a mapping layer
            -> tensor, a sequence of tensors, or one ``(L, B, H, Q, K)`` tensor. Only their ratios
            over K matter (they are renormalised over the valid keys).
        target: ``(B, K)`` target distribution P over the same keys (`lookhere.targets`); each
            row with a target sums to 1 and is 0 at invalid keys.
        key_mask: ``(B, K)`` bool, valid (non-padding) keys; default all.
        query_mask: ``(B, Q)`` bool, valid queries; default all.
        sample_mask: ``(B,)`` bool, samples that have a target; default all.
        heads: ``(layer, head)`` pairs to average (e.g. localization heads); the layers used
            are those named. Default: every head of every given layer.
        check: refuse values that give a meaningless number (see `_check_values`; one host
            sync). Shapes are checked either way. False for callers whose inputs are right by
            construction, e.g. the trainer's probe rows and collator targets after its first
            step: the loss then makes no host sync.
    Invalid samples get 0 in the first output and False in the second. All layers are computed
    as one stacked ``(L, B, H, Q, K)`` tensor, not in a loop.
    """
    layers = _as_layers(log_attn)
    b, h, q, k = next(iter(layers.values())).shape
    target = _check_target(target, b, k)
    key_mask = _mask("key_mask", key_mask, (b, k), target.device)
    query_mask = _mask("query_mask", query_mask, (b, q), target.device)
    sample_mask = _mask("sample_mask", sample_mask, (b,), target.device)
    chosen = _head_sets(heads, layers, h)
    for layer in chosen:
        if layers[layer].shape != (b, h, q, k):
            raise ValueError(f"log_attn[{layer}] is {tuple(layers[layer].shape)}, "
                             f"expected {(b, h, q, k)}")
    if check:
        _check_values({layer: layers[layer] for layer in chosen}, target, key_mask, sample_mask)
    rows = torch.stack([layers[layer] for layer in chosen])  # (L, B, H, Q, K)
    if any(sel is not None for sel in chosen.values()):
        # Heads left out become rows of -inf, which head_mean drops like a head that sees no
        # key. The mask is filled on the device element by element: no host-to-device copy.
        left_out = torch.ones(len(chosen), h, dtype=torch.bool, device=rows.device)  # (L, H)
        for i, sel in enumerate(chosen.values()):
            for head in range(h) if sel is None else sel:
                left_out[i, head] = False
        rows = rows.masked_fill(left_out[:, None, :, None, None], float("-inf"))
    kl, ok = _layer_kl(rows, target, key_mask)  # (L, B, Q) each
    ok = ok & query_mask  # (L, B, Q)
    n = ok.sum(-1)  # (L, B) valid queries
    kl = torch.where(ok, kl, 0.0).sum(-1) / n.clamp(min=1)  # (L, B) mean over queries
    ok = n > 0
    n_layers = ok.sum(0)  # (B,)
    per_sample = torch.where(ok, kl, 0.0).sum(0) / n_layers.clamp(min=1)
    valid = sample_mask & (n_layers > 0)
    return torch.where(valid, per_sample, 0.0), valid


def head_mean(log_rows: torch.Tensor, key_mask: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """``log Q``, the paper's head-averaged attention over the visual keys, in log space.

    Rows ``(..., B, H, Q, K)`` of attention log-probabilities -> ``log Q`` ``(..., B, Q, K)``:
    each head's row renormalised over the valid keys (``key_mask`` (B, K)), averaged over the
    heads that see some valid key; a key no head sees gets a floor value. Also the validity
    ``(..., B, Q)``: some head sees some key. Shared by the loss and the attention ratio
    (`lookhere.eval.runner`), so both read the same Q.
    """
    x = log_rows.float().masked_fill(~key_mask[:, None, None, :], float("-inf"))
    head_ok = torch.isfinite(x).any(-1, keepdim=True)  # (..., B, H, Q, 1): some visual key seen
    # Rows with no finite entry go through logsumexp as zeros (its backward would be NaN on an
    # all -inf row, and NaN * 0 is still NaN); they are dropped right after.
    x = x.masked_fill(~head_ok, 0.0)
    log_alpha = x - torch.logsumexp(x, -1, keepdim=True)  # renormalised over visual keys
    log_alpha = log_alpha.masked_fill(~head_ok, float("-inf"))
    n_heads = head_ok.sum(-3)  # (..., B, Q, 1)
    # A key no head sees (padding, a window hiding it) would give logsumexp an all -inf column,
    # whose backward is NaN: fill it with zeros, then give such keys the floor value.
    seen = torch.isfinite(log_alpha).any(-3)  # (..., B, Q, K)
    log_alpha = log_alpha.masked_fill(~seen.unsqueeze(-3), 0.0)
    log_q = torch.logsumexp(log_alpha, -3) - torch.log(n_heads.clamp(min=1))  # (..., B, Q, K)
    return torch.where(seen, log_q, _LOG_TINY), n_heads[..., 0] > 0


def _layer_kl(log_rows: torch.Tensor, target: torch.Tensor, key_mask: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(P || mean_h alpha_h): rows ``(..., B, H, Q, K)`` -> KL and validity ``(..., B, Q)``."""
    log_q, ok = head_mean(log_rows, key_mask)
    p = target[:, None, :].float()  # (B, 1, K)
    log_p = torch.log(p.clamp(min=torch.finfo(torch.float32).tiny))
    kl = torch.where(p > 0, p * (log_p - log_q), 0.0).sum(-1)  # (..., B, Q)
    return kl, ok


def _as_layers(log_attn: LayerRows) -> dict[int, torch.Tensor]:
    if isinstance(log_attn, torch.Tensor):
        if log_attn.dim() != 5:
            raise ValueError(
                f"log_attn tensor must be (L, B, H, Q, K), got {tuple(log_attn.shape)}"
            )
        log_attn = list(log_attn)
    layers = dict(log_attn) if isinstance(log_attn, Mapping) else dict(enumerate(log_attn))
    if not layers:
        raise ValueError("log_attn holds no layer")
    for layer, rows in layers.items():
        if not isinstance(rows, torch.Tensor) or rows.dim() != 4:
            raise ValueError(f"log_attn[{layer}] must be a (B, H, Q, K) tensor")
    return layers


def _check_target(target: torch.Tensor, b: int, k: int) -> torch.Tensor:
    if target.shape != (b, k):
        raise ValueError(f"target must be (B, K) = {(b, k)}, got {tuple(target.shape)}")
    if not target.is_floating_point():
        raise ValueError(f"target must be a floating-point distribution, got {target.dtype}")
    return target


def _check_values(layers: Mapping[int, torch.Tensor], target: torch.Tensor,
                  key_mask: torch.Tensor, sample_mask: torch.Tensor) -> None:
    """Refuse values that would give a number that means nothing: a target that is not a
    distribution (negative, NaN, inf, or a row of a sample with a target not summing to 1, all
    zeros included) or mass on invalid keys, and log-attention holding NaN or +inf (-inf is a
    zero probability) at a valid key (padding keys are ignored). Checked on the device with one
    host sync."""
    off = ((target.float().sum(-1) - 1).abs() > _SUM_TOL) & sample_mask
    valid = key_mask[:, None, None, :]
    bad = {layer: ((torch.isnan(rows) | (rows == float("inf"))) & valid).any()
           for layer, rows in layers.items()}
    problems = {
        "target must be finite and >= 0": ~torch.isfinite(target).all() | (target < 0).any(),
        "target puts mass on keys that key_mask marks invalid": (target * ~key_mask).any(),
        "target rows must sum to 1 for each sample with a target (sample_mask)": off.any(),
        **{f"log_attn[{layer}] holds NaN or +inf (log-probabilities are finite or -inf)": flag
           for layer, flag in bad.items()},
    }
    flags = torch.stack(list(problems.values())).tolist()  # the one sync
    for message, bad in zip(problems, flags, strict=True):
        if bad and message.startswith("target rows"):
            i = int(off.nonzero()[0, 0])
            message += f"; row {i} sums to {target[i].float().sum().item():.6g}"
        if bad:
            raise ValueError(message)


def _mask(name: str, mask: torch.Tensor | None, shape: tuple[int, ...], device: torch.device
          ) -> torch.Tensor:
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name} must be {shape}, got {tuple(mask.shape)}")
    return mask.bool()


def _head_sets(heads: Sequence[tuple[int, int]] | None, layers: Mapping[int, torch.Tensor],
               n_heads: int) -> dict[int, list[int] | None]:
    """layer -> head indices to average (None = all), in layer order."""
    if heads is None:
        return {layer: None for layer in sorted(layers)}
    chosen: dict[int, list[int]] = {}
    for pair in heads:
        if len(pair) != 2:
            raise ValueError(f"heads must hold (layer, head) pairs, got {pair!r}")
        layer, head = (int(v) for v in pair)
        if layer not in layers:
            raise ValueError(f"heads names layer {layer}, but log_attn has layers {sorted(layers)}")
        if not 0 <= head < n_heads:
            raise ValueError(f"heads names head {head}; layers have {n_heads} heads")
        chosen.setdefault(layer, [])
        if head not in chosen[layer]:
            chosen[layer].append(head)
    if not chosen:
        raise ValueError("heads must name at least one (layer, head) pair, or be None")
    return {layer: sorted(chosen[layer]) for layer in sorted(chosen)}
