"""The fallback adapter: any Hugging Face VLM that no family adapter claims.

The probe, KLAL's attention rows and the logit lens need only what every VLM in transformers
shares, and this adapter finds it without family knowledge:

- the image placeholder id: ``image_token_id`` or ``image_token_index`` on the config or on its
  text config (the visual tokens are the positions holding it);
- the language model's decoder stack: ``model.get_decoder()`` (or its ``.model``) when that
  holds the layers, else the one module in the model whose ``.layers`` are
  ``num_hidden_layers`` layers with a ``self_attn`` that knows its ``layer_idx``;
- the final norm (the decoder's ``.norm``) and the LM head (``get_output_embeddings()``).

Pixel geometry is family knowledge (resize, crop, pad, tiling, pooling), so `layout` infers a
grid only in the one case that needs none: an image whose tokens form one contiguous block of a
square number ``n * n``, read as an ``n x n`` grid over the whole image, row-major (the image
squashed to a square canvas, as SigLIP-style processors do; Pixtral on a square image). It is a
guess: a resampler's latents (Idefics2's 64) are square in number but not a grid, so maps of such
a model need its own adapter. Anything else raises a ValueError naming ``adapter=``: only
drawing maps (targets, lens maps, head maps) needs the grid, the probe does not. Where the
fallback cannot find something, the error says what to pass as ``adapter=`` instead: an
`Adapter` subclass for the family.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from lookhere.models.adapter import (
    Adapter,
    ImageSizes,
    UnsupportedModelError,
    check_image_count,
    config_image_token_id,
    register_fallback,
    supported_families,
    unwrap_model,
)
from lookhere.models.layout import Grid, GridGeometry, ImageLayout, SampleLayout, VisualLayout

# What to pass instead, for every error of this module.
ADAPTER_HINT = (
    "pass adapter= an instance of an Adapter subclass for this family (lookhere.models.adapter."
    "Adapter; override {what}), or use a registered family: {families}"
)


def _hint(what: str) -> str:
    return ADAPTER_HINT.format(what=what, families=supported_families())


@register_fallback
class GenericAdapter(Adapter):
    """Adapter for a VLM class without a registered family (see the module docstring)."""

    family = "generic"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        if config_image_token_id(config) is None:
            raise UnsupportedModelError(
                f"no lookhere adapter for model_type {getattr(config, 'model_type', None)!r}, "
                f"and its {type(config).__name__} has no image_token_id / image_token_index "
                f"to find the visual tokens by; {_hint('image_token_id')}"
            )

    # -- modules ---------------------------------------------------------------------------------
    def language_model(self, model: nn.Module) -> nn.Module:
        """The decoder stack: ``get_decoder()`` (or its ``.model``) if it holds the layers, else
        the one module of the model that does."""
        model = unwrap_model(model)
        n = self.num_layers
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
        for cand in (decoder, getattr(decoder, "model", None)):
            if isinstance(cand, nn.Module) and _holds_layers(cand, n):
                return cand
        found = [name for name, m in model.named_modules() if _holds_layers(m, n)]
        if len(found) == 1:
            return model.get_submodule(found[0])
        why = (f"several modules hold {n} decoder layers ({', '.join(found)})" if found else
               f"no module holds `.layers` of {n} (num_hidden_layers) decoder layers with "
               "`self_attn.layer_idx`")
        raise UnsupportedModelError(
            f"the fallback adapter cannot find the language model of {type(model).__name__}: "
            f"{why}; {_hint('language_model(model)')}"
        )

    def final_norm(self, model: nn.Module) -> nn.Module:
        norm = getattr(self.language_model(model), "norm", None)
        if not isinstance(norm, nn.Module):
            raise UnsupportedModelError(
                f"the fallback adapter finds no final norm (`.norm`) on the language model of "
                f"{type(unwrap_model(model)).__name__}; {_hint('final_norm(model)')}"
            )
        return norm

    # -- layout ------------------------------------------------------------------------------------
    def layout(self, batch: Mapping[str, Any], images: ImageSizes, processor: Any) -> VisualLayout:
        """Square grids of images whose tokens are one contiguous ``n * n`` block each."""
        positions = self.visual_positions(batch["input_ids"])
        blocks = [_runs(p) for p in positions]  # per sample: contiguous runs of image tokens
        if len(images) == len(blocks):
            for b, (runs, ims) in enumerate(zip(blocks, images, strict=True)):
                if len(runs) != len(ims):
                    raise ValueError(
                        f"sample {b}: {len(ims)} images but its image tokens form {len(runs)} "
                        f"contiguous blocks, so the fallback adapter (no lookhere adapter for "
                        f"model_type {self.config.model_type!r}) cannot tell the images' tokens "
                        f"apart; {_hint('layout()')}"
                    )
        sizes = check_image_count(images, [len(r) for r in blocks])
        samples = []
        for b, (pos, runs, ims) in enumerate(zip(positions, blocks, sizes, strict=True)):
            layouts, start = [], 0
            for i, (run, size) in enumerate(zip(runs, ims, strict=True)):
                key_index = torch.arange(start, start + run)
                geo = self._square_geometry(run, size, b, i)
                grid = Grid(positions=pos[key_index], key_index=key_index, geometry=geo)
                layouts.append(ImageLayout(grids=(grid,), image_size=size))
                start += run
            samples.append(SampleLayout(visual_positions=pos, images=tuple(layouts)))
        return VisualLayout(samples=tuple(samples))

    def _square_geometry(self, n_tokens: int, size: tuple[int, int], b: int, i: int
                         ) -> GridGeometry:
        side = math.isqrt(n_tokens)
        if side * side != n_tokens:
            raise ValueError(
                f"sample {b}, image {i}: the fallback adapter (no lookhere adapter for "
                f"model_type {self.config.model_type!r}) cannot infer the grid of {n_tokens} "
                f"image tokens (not a square); {_hint('layout()')}"
            )
        w, h = size
        # The whole image squashed onto side x side cells of one (grid) unit each.
        return GridGeometry(rows=side, cols=side, cell_size=(1.0, 1.0),
                            scale=(side / w, side / h), offset=(0.0, 0.0), image_size=(w, h))

    @classmethod
    def build_tiny(cls, size: Any, seed: int) -> tuple[nn.Module, Any]:
        raise UnsupportedModelError("the fallback adapter builds no tiny model: it serves "
                                    "model classes lookhere does not know")


def _holds_layers(module: nn.Module, n: int) -> bool:
    """Whether ``module.layers`` are ``n`` decoder layers whose attention knows its index."""
    layers = getattr(module, "layers", None)
    return (isinstance(layers, nn.ModuleList) and len(layers) == n and n > 0 and all(
        hasattr(getattr(layer, "self_attn", None), "layer_idx") for layer in layers))


def _runs(pos: torch.Tensor) -> list[int]:
    """Lengths of the contiguous runs of sorted positions (one image's block each)."""
    if not len(pos):
        return []
    cuts = torch.nonzero(pos.diff() != 1).flatten() + 1
    edges = [0, *cuts.tolist(), len(pos)]
    return [hi - lo for lo, hi in zip(edges, edges[1:], strict=False)]
