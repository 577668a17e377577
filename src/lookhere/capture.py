"""Hidden-state capture: the language model's decoder-layer outputs at chosen positions.

The hooks layer beside `lookhere.probe` (attention rows): forward hooks on the decoder layers,
installed by a context manager and removed on exit. The logit lens and the Logit Lens Loss read
the captured states through `HiddenCapture.unembed`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lookhere.models.adapter import Adapter, resolve_layers, unwrap_model
from lookhere.models.layout import pad_positions


class HiddenCapture:
    """Records decoder-layer outputs during forward passes; use through `capture_hidden`.

    After each forward: ``hidden[layer]`` is ``(B, K, D)`` in the model's dtype (zeros at padded
    slots), still attached to the autograd graph when gradients are enabled; ``positions`` and
    ``mask`` are ``(B, K)``: the sequence positions read and which of them are real.
    """

    def __init__(self, model: nn.Module, adapter: Adapter, layers: Sequence[int] | str,
                 positions: str | torch.Tensor | Sequence[Sequence[int]] = "visual") -> None:
        self.model = unwrap_model(model)
        self.adapter = adapter
        self.layers = resolve_layers(layers, adapter.num_layers)
        if isinstance(positions, str) and positions not in ("visual", "all"):
            raise ValueError(f"positions must be 'visual', 'all' or explicit positions, "
                             f"got {positions!r}")
        self._spec = positions if isinstance(positions, str) else _explicit(positions)
        self.hidden: dict[int, torch.Tensor] = {}
        self.positions: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        self._handles: list[Any] = []

    def __enter__(self) -> HiddenCapture:
        blocks = self.adapter.decoder_layers(self.model)
        self._handles.append(
            self.model.register_forward_pre_hook(self._pre_forward, with_kwargs=True))
        for layer in self.layers:
            self._handles.append(blocks[layer].register_forward_hook(self._hook(layer)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., D) hidden states -> (..., V) logits: the final norm, then the LM head."""
        return self.adapter.lm_head(self.model)(self.adapter.final_norm(self.model)(hidden))

    def _pre_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.hidden, self.positions, self.mask = {}, None, None
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if self._spec == "all":
            return  # every position: set on the first layer
        if self._spec == "visual":
            if input_ids is None:
                raise ValueError("positions='visual' needs input_ids in the forward")
            pos, mask = pad_positions(self.adapter.visual_positions(input_ids))
        else:
            pos, mask = self._spec
        device = input_ids.device if input_ids is not None else pos.device
        self.positions, self.mask = pos.to(device), mask.to(device)

    def _hook(self, layer: int):
        def record(module: nn.Module, args: tuple, output: Any) -> None:
            # Under gradient checkpointing the layer runs again in backward; keep the first record.
            if torch._C._current_graph_task_id() != -1:
                return
            h = output[0] if isinstance(output, tuple) else output  # (B, L, D)
            self.hidden[layer] = self._select(h)
        return record

    def _select(self, h: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        if self._spec == "all":
            self.positions = torch.arange(n, device=h.device).expand(b, n)
            self.mask = torch.ones(b, n, dtype=torch.bool, device=h.device)
            return h
        if self.positions is None:
            raise ValueError("capture_hidden hooks the model it was given: call that model's "
                             "forward (with input_ids), not an inner module")
        if self.positions.shape[0] != b or (self.positions.numel() and self.positions.max() >= n):
            raise ValueError(f"capture positions {tuple(self.positions.shape)} do not fit the "
                             f"layer's hidden states {tuple(h.shape)}")
        idx = self.positions[..., None].expand(b, self.positions.shape[1], d)
        return h.gather(1, idx).masked_fill(~self.mask[..., None], 0)  # (B, K, D)


def capture_hidden(model: nn.Module, adapter: Adapter, layers: Sequence[int] | str,
                   positions: str | torch.Tensor | Sequence[Sequence[int]] = "visual"
                   ) -> HiddenCapture:
    """Context manager recording the language model's hidden states at decoder-layer outputs.

    ``layers``: indices (negative count from the end), or ``"all"`` to ask for every layer;
    only those are kept. ``positions``: ``"visual"`` (each sample's image tokens, from
    ``input_ids``), ``"all"`` (the full ``(B, L, D)`` states), or explicit positions as a
    ``(B, K)`` tensor or per-sample lists. The final norm is *not* applied: ``hidden[L - 1]`` is
    the input of the final norm. Forward hooks on the decoder layers are removed on exit.

        with capture_hidden(model, adapter, [-1]) as cap:
            model(**batch)
        cap.hidden[adapter.num_layers - 1]  # (B, K, D)
    """
    return HiddenCapture(model, adapter, layers, positions)


def _explicit(spec: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(spec, torch.Tensor):
        if spec.dim() != 2 or spec.dtype not in (torch.int32, torch.int64) or (spec < 0).any():
            raise ValueError("positions must be a (batch, n) tensor of non-negative integers")
        return spec.long(), torch.ones_like(spec, dtype=torch.bool)
    rows = [torch.as_tensor(list(r), dtype=torch.long) for r in spec]
    if any((r < 0).any() for r in rows):
        raise ValueError("positions must be non-negative")
    return pad_positions(rows)

