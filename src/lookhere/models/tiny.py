"""Tiny offline VLMs of the real Hugging Face classes: the embedded default and the test fixture.

Nothing here downloads anything. Each family's adapter builds its model from config objects with
random weights (`Adapter.build_tiny`), a byte-level BPE tokenizer trained here with ``tokenizers``
on a small built-in corpus, and the family's real processor class where it constructs offline.

>>> model, processor = build_tiny("llava", size="test", seed=0)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

# the presets live in a torch-free module (configs check sizes without torch); named here too
from lookhere.config.sizes import TINY_SIZES, TinySize, resolve_size  # noqa: F401

# Words the synthetic tasks and prompts use; the BPE learns them as whole tokens.
_CORPUS_WORDS = (
    "what which where is are the a an of in on at to and or yes no left right top bottom above "
    "below row column cell colour color red green blue yellow purple orange black white gray "
    "pink brown cyan marker line lines curve curves intersect intersection cross start starts "
    "end ends number letter circle square triangle star diamond hexagon cross small large big "
    "shape object image picture point box question answer user assistant system describe "
    "trace tracing grid patch there how many find the"
).split()


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
