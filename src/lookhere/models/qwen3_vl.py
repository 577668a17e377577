"""Qwen3-VL (`Qwen3VLForConditionalGeneration`): Qwen2-VL's pixel layout, a new vision tower.

The image processor is Qwen2-VL's (``smart_resize``, no crop or pad; the real checkpoints cut
16 px patches where Qwen2-VL cuts 14 px ones) and the prompt is the same
``<|vision_start|><|image_pad|>*n<|vision_end|>`` block, so the layout (one rectangular grid per
image, one token per ``patch * merge`` px cell, row-major) is `qwen2_vl`'s. What differs is in
the model and does not move a token: the tower adds learned position embeddings (interpolated
to each image's grid) and feeds "deepstack" features of some of its layers into the first
language-model layers at the visual positions; M-RoPE interleaves its sections.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import Qwen3VLProcessor

from lookhere.models.adapter import register_adapter
from lookhere.models.qwen2_vl import ImageTextOnly, QwenVLAdapter, merger_tower


class Qwen3VLImageTextProcessor(ImageTextOnly, Qwen3VLProcessor):
    """`Qwen3VLProcessor` for images and text (no torchvision needed)."""


@register_adapter
class Qwen3VLAdapter(QwenVLAdapter):
    family = "qwen3_vl"
    model_types = ("qwen3_vl",)
    processor_class = Qwen3VLImageTextProcessor

    @classmethod
    def _model_class(cls) -> type[nn.Module]:
        from transformers import Qwen3VLForConditionalGeneration

        return Qwen3VLForConditionalGeneration

    @classmethod
    def _tiny_config(cls, size: Any, text: dict[str, Any], **token_ids: int) -> Any:
        from transformers import Qwen3VLConfig

        side = size.image_size // size.patch_size
        text = {**text, "head_dim": size.hidden // size.heads,
                "rope_parameters": {**text["rope_parameters"], "mrope_interleaved": True}}
        vision = dict(
            **merger_tower(size),
            # a learned side x side grid of position embeddings, interpolated per image; the
            # first tower layer's features go to the first LM layer (deepstack)
            num_position_embeddings=side * side, deepstack_visual_indexes=[0],
        )
        return Qwen3VLConfig(text_config=text, vision_config=vision, **token_ids)
