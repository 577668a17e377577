"""Gemma 3 (`Gemma3ForConditionalGeneration`): one square, average-pooled grid per image.

The processor squashes every image to ``image_processor.size`` (no aspect preservation, no crop)
and replaces each ``<start_of_image>`` in the prompt by
``"\\n\\n<start_of_image>" + "<image_soft_token>" * mm_tokens_per_image + "<end_of_image>\\n\\n"``.
The SigLIP features (``image_size / patch_size`` patches per side) are average-pooled to
``sqrt(mm_tokens_per_image)`` tokens per side, so one visual token covers
``image_size / sqrt(mm_tokens_per_image)`` canvas pixels. Pan-and-scan (extra crops of wide or tall
images, each with its own token block) is not supported: `layout` raises on it.
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
    block_layout,
    canvas_size,
    check_image_count,
    count_image_blocks,
    register_adapter,
    squash_geometry,
)
from lookhere.models.layout import VisualLayout
from lookhere.models.prompt import ChatFormat

BOI, EOI, IMAGE = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
SPECIAL_TOKENS = [BOI, EOI, IMAGE, "<start_of_turn>", "<end_of_turn>"]


@register_adapter
class Gemma3Adapter(Adapter):
    chat = ChatFormat(
        "<start_of_turn>user\n{images}{question}<end_of_turn>\n<start_of_turn>model\n", "",
        "<end_of_turn>\n")
    family = "gemma3"
    model_types = ("gemma3",)

    # ``image_token_id`` (the soft token, ``config.image_token_index``), ``language_model``
    # (model.model.language_model), ``final_norm`` (its ``.norm``) and ``lm_head`` are the base
    # class defaults. Note that ``Gemma3Processor.image_token_id`` is the *begin-of-image* id.

    @property
    def tokens_per_side(self) -> int:
        n = int(self.config.mm_tokens_per_image)
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"config.mm_tokens_per_image must be a perfect square, got {n}")
        return side

    def layout(self, batch: Mapping[str, Any], images: ImageSizes, processor: Any) -> VisualLayout:
        image_processor = processor.image_processor
        _check_no_pan_and_scan(image_processor)
        side = self.tokens_per_side
        per_image = side * side
        canvas_h, canvas_w = canvas_size(batch)
        cell = (canvas_w / side, canvas_h / side)
        positions = self.visual_positions(batch["input_ids"])
        counts = [count_image_blocks(p, per_image, b) for b, p in enumerate(positions)]
        sizes = _check_images(images, counts)
        canvas = (canvas_w, canvas_h)
        return block_layout(positions, sizes, per_image,
                            lambda size: squash_geometry(image_processor, size, side, cell, canvas))

    @classmethod
    def build_tiny(cls, size: Any, seed: int) -> tuple[nn.Module, Any]:
        from transformers import Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil

        tok = _tiny_tokenizer(size.vocab_size)
        config = _tiny_config(size, tok)
        model = Gemma3ForConditionalGeneration._from_config(config, attn_implementation="sdpa")
        _init_projection(model, config, seed)
        image_processor = Gemma3ImageProcessorPil(
            size={"height": size.image_size, "width": size.image_size}, do_pan_and_scan=False,
        )
        processor = _gemma3_processor(image_processor, tok, config.mm_tokens_per_image)
        return model, processor


def _check_no_pan_and_scan(image_processor: Any) -> None:
    if getattr(image_processor, "do_pan_and_scan", False):
        raise ValueError(
            "Gemma3 pan-and-scan is not supported: set processor.image_processor.do_pan_and_scan "
            "= False (its extra crops add token blocks that lookhere does not map to pixels)"
        )


def _check_images(images: ImageSizes, counts: list[int]) -> list[list[tuple[int, int]]]:
    """`check_image_count`, with a hint when the tokens hold more blocks than there are images."""
    try:
        return check_image_count(images, counts)
    except ValueError as err:
        if len(images) == len(counts) and sum(counts) > sum(len(ims) for ims in images):
            raise ValueError(
                f"{err} (pan-and-scan crops, do_pan_and_scan=True in the processor call, add "
                "token blocks; pan-and-scan is not supported)"
            ) from None
        raise




# -- tiny model ----------------------------------------------------------------------------------
def _tiny_tokenizer(vocab_size: int) -> Any:
    """The shared BPE, re-wrapped so it exposes Gemma's named tokens (``tokenizer.boi_token``...).

    `Gemma3Processor` reads ``boi_token``, ``eoi_token``, ``image_token`` (and their ids) from the
    tokenizer; named ``*_token`` kwargs become model-specific special tokens that survive
    ``save_pretrained``.
    """
    from transformers import PreTrainedTokenizerFast

    from lookhere.models.tiny import train_tokenizer

    base = train_tokenizer(SPECIAL_TOKENS, vocab_size, eos="<eos>", bos="<bos>")
    return PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer, pad_token="<pad>", eos_token="<eos>",
        bos_token="<bos>", unk_token="<unk>", additional_special_tokens=SPECIAL_TOKENS,
        boi_token=BOI, eoi_token=EOI, image_token=IMAGE,
    )


def _tiny_config(size: Any, tok: Any) -> Any:
    from transformers import Gemma3Config, Gemma3TextConfig, SiglipVisionConfig

    side = size.image_size // size.patch_size  # visual tokens per side: one per `patch_size` px
    # SigLIP patches of half the token cell, pooled 2x2 like the real model's 4x4 (when possible).
    vision_patch = size.patch_size // 2 if size.patch_size % 2 == 0 else size.patch_size
    vision = SiglipVisionConfig(
        hidden_size=size.vision_hidden, intermediate_size=2 * size.vision_hidden,
        num_hidden_layers=size.vision_layers, num_attention_heads=size.vision_heads,
        image_size=size.image_size, patch_size=vision_patch, vision_use_head=False,
    )
    head_dim = size.hidden // size.heads
    # Alternate sliding / full layers (layer 0 sliding); the window is half an image block, so
    # it really clips attention in tests (8 tokens at the "test" size).
    layer_types = ["full_attention" if i % 2 else "sliding_attention" for i in range(size.layers)]
    text = Gemma3TextConfig(
        hidden_size=size.hidden, intermediate_size=size.intermediate,
        num_hidden_layers=size.layers, num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads, head_dim=head_dim, query_pre_attn_scalar=head_dim,
        vocab_size=len(tok), max_position_embeddings=4096, layer_types=layer_types,
        sliding_window=max(4, side * side // 2),
        final_logit_softcapping=None, attn_logit_softcapping=None,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=side * side,
        boi_token_index=tok.boi_token_id, eoi_token_index=tok.eoi_token_id,
        image_token_index=tok.image_token_id,
    )


def _init_projection(model: nn.Module, config: Any, seed: int) -> None:
    """Random vision->text projection: Gemma3 zero-initialises it, which hides the image."""
    weight = model.model.multi_modal_projector.mm_input_projection_weight
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight.copy_(torch.randn(weight.shape, generator=gen) * config.initializer_range)


def _gemma3_processor(image_processor: Any, tok: Any, image_seq_length: int) -> Any:
    from transformers import Gemma3Processor

    return Gemma3Processor(image_processor=image_processor, tokenizer=tok,
                           image_seq_length=image_seq_length)
