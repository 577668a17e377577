"""A content fingerprint of a model's weights, for caches that must not outlive the weights.

A cache keyed by a path or a hub id returns stale results once the weights in that folder change
(a fine-tune saved over its base, a re-run of `lookhere pretrain`). The fingerprint hashes every
parameter's name, shape and dtype with two float64 sums of its values (plain and squared,
reduced where the weights live, one host copy for the whole model): cheap next to one forward
pass, even at 7B, and any training step changes it.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn


@torch.no_grad()
def weights_digest(model: nn.Module) -> str:
    """sha256 hex digest of the model's parameters and buffers (names, shapes, dtypes, sums)."""
    names, sums = [], []
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        names.append(f"{name}:{tuple(t.shape)}:{t.dtype}")
        x = t.detach().to(torch.float64) if t.is_floating_point() else t.detach().double()
        sums.append(torch.stack([x.sum(), (x * x).sum()]))
    values = torch.stack(sums).cpu().numpy().tobytes() if sums else b""
    return hashlib.sha256("\n".join(names).encode() + values).hexdigest()
