"""Tiny offline VLMs of the real Hugging Face classes: the embedded default and the test fixture.

Nothing here downloads anything. Each family's adapter builds its model from config objects with
random weights (`Adapter.build_tiny`), a byte-level BPE tokenizer trained here with ``tokenizers``
on a small built-in corpus, and the family's real processor class where it constructs offline.

>>> model, processor = build_tiny("llava", size="test", seed=0)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

# Words the synthetic tasks and prompts use; the BPE learns them as whole tokens.
_CORPUS_WORDS = (
    "what which where is are the a an of in on at to and or yes no left right top bottom above "
    "below row column cell colour color red green blue yellow purple orange black white gray "
    "pink brown cyan marker line lines curve curves intersect intersection cross start starts "
    "end ends number letter circle square triangle star diamond hexagon cross small large big "
    "shape object image picture point box question answer user assistant system describe "
    "trace tracing grid patch there how many find the"
).split()


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


def build_tiny(family: str, size: str | TinySize | dict[str, Any] = "test", seed: int = 0
               ) -> tuple[nn.Module, Any]:
    """Build ``(model, processor)`` for a registered family, offline, with random weights.

    The model runs with SDPA attention and is in eval mode.
    """
    from lookhere.models.adapter import adapter_class

    cls = adapter_class(family)
    torch.manual_seed(seed)
    model, processor = cls.build_tiny(resolve_size(size), seed)
    return model.eval(), processor


def train_tokenizer(special_tokens: list[str], vocab_size: int, *, pad: str = "<pad>",
                    eos: str = "</s>", bos: str | None = "<s>", unk: str = "<unk>",
                    extra_words: tuple[str, ...] = ()) -> Any:
    """A byte-level BPE tokenizer trained offline, wrapped as a transformers fast tokenizer.

    ``special_tokens`` are added as single, never-split tokens (image placeholders, chat markers).
    Byte-level BPE encodes any text, so an unseen word costs more tokens but never fails.
    ``extra_words`` join the built-in corpus (none: the tokenizer of every earlier preset).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    base = [t for t in (pad, eos, bos, unk) if t]
    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=base + list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    corpus = _corpus(extra_words)
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=pad, eos_token=eos, bos_token=bos, unk_token=unk,
        additional_special_tokens=list(special_tokens),
    )
    return fast


def llama_text_config(size: TinySize, tok: Any) -> Any:
    """The Llama language-model config that LLaVA, LLaVA-NeXT and Idefics3 share."""
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=size.hidden, intermediate_size=size.intermediate,
        num_hidden_layers=size.layers, num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads, vocab_size=len(tok), max_position_embeddings=4096,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )


def _corpus(extra_words: tuple[str, ...] = ()) -> list[str]:
    words = list(_CORPUS_WORDS) + [w for w in extra_words if w not in _CORPUS_WORDS]
    numbers = [str(i) for i in range(0, 101)]
    letters = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    lines = [" ".join(words), " ".join(numbers), " ".join(letters)]
    lines += [f"row {r}, column {c}" for r in range(1, 25) for c in range(1, 25)]
    lines += [f"{w} {n}" for w in words for n in ("1", "2", "3")]
    return lines * 3


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_tiny(model: nn.Module, processor: Any, path: str | Path) -> Path:
    """``save_pretrained`` of model and processor into one new folder, atomically."""
    from lookhere.io import atomic_dir

    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return Path(path)
