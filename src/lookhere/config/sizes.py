"""Tiny size presets: the knobs each family turns into its own config classes (`TinySize`), the
named presets of the tests, the demo, the experiments and the shipped miniature (`TINY_SIZES`),
and `resolve_size`. `lookhere.models.tiny` builds the models."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class TinySize:
    """Size knobs every family interprets for its own config classes."""

    hidden: int = 64  # language model hidden size
    layers: int = 2  # language model layers
    heads: int = 4  # attention heads
    kv_heads: int = 2  # KV heads (GQA where the family allows it)
    intermediate: int = 128  # MLP width
    vision_hidden: int = 32
    vision_layers: int = 1
    vision_heads: int = 2
    image_size: int = 56  # vision input side, pixels
    patch_size: int = 14
    vocab_size: int = 512  # an upper bound: the BPE stops merging when the corpus runs out
    extra_words: tuple[str, ...] = ()  # words added to the tokenizer's corpus (whole tokens)

    def __post_init__(self) -> None:
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError(f"hidden % heads and heads % kv_heads must be 0: {self}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size must be a multiple of patch_size: {self}")


TINY_SIZES: dict[str, TinySize] = {
    # ~0.3M parameters: every test.
    "test": TinySize(),
    # ~1M parameters: `make demo`. About 0.1 s per training step (batch 8, 112 px, one CPU
    # thread), so a run of 1,000 steps from scratch takes 2 minutes.
    "demo": TinySize(
        hidden=128, layers=2, heads=4, kv_heads=4, intermediate=512, vision_hidden=128,
        vision_layers=2, vision_heads=4, image_size=112, patch_size=14, vocab_size=1024,
    ),
    # ~1.3M parameters: the localization-heads experiment. The demo size with 4 LLM layers,
    # since the head search skips layers 0-1.
    "heads": TinySize(
        hidden=128, layers=4, heads=4, kv_heads=4, intermediate=512, vision_hidden=128,
        vision_layers=2, vision_heads=4, image_size=112, patch_size=14, vocab_size=1024,
    ),
    # ~3.7M parameters: the pretrained miniature (`lookhere pretrain`, shipped in the package).
    # 96 px images in 8 px patches: a 12x12 grid, so the Scenes objects (19-31 px) span 2-4
    # cells and a cell-level box can reach IoU 0.5 (docs/methods.md, "Grid fineness").
    "mini": TinySize(
        hidden=192, layers=6, heads=6, kv_heads=6, intermediate=512, vision_hidden=128,
        vision_layers=4, vision_heads=4, image_size=96, patch_size=8, vocab_size=1024,
        extra_words=tuple(
            "describe written marker markers curve leads end from object objects nearest "
            "medium size colour shape point to is at of the Where What Is How Point Describe "
            "USER ASSISTANT"
            .split()),
    ),
    # ~13M parameters: the first demo size; bench/probe.py's "tiny" shapes. About 5x slower.
    "small": TinySize(
        hidden=384, layers=6, heads=6, kv_heads=6, intermediate=1024, vision_hidden=256,
        vision_layers=4, vision_heads=4, image_size=112, patch_size=14, vocab_size=1024,
    ),
}


def resolve_size(size: str | TinySize | dict[str, Any]) -> TinySize:
    """A preset name, a `TinySize`, or a dict of overrides on the "test" preset."""
    if isinstance(size, TinySize):
        return size
    if isinstance(size, str):
        if size not in TINY_SIZES:
            raise ValueError(f"size must be one of {sorted(TINY_SIZES)} or a TinySize: {size!r}")
        return TINY_SIZES[size]
    if isinstance(size, dict):
        unknown = set(size) - set(asdict(TINY_SIZES["test"]))
        if unknown:
            raise ValueError(f"unknown TinySize fields: {sorted(unknown)}")
        return replace(TINY_SIZES["test"], **size)
    raise TypeError(f"size must be a preset name, TinySize or dict, got {type(size).__name__}")
