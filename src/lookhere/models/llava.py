"""LLaVA-1.5 (`LlavaForConditionalGeneration`): one square grid per image, one contiguous block."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import nn

from lookhere.models.adapter import (
    Adapter,
    ImageSizes,
    block_layout,
    canvas_size,
    check_image_count,
    count_image_blocks,
    register_adapter,
    resized_size,
    size_field,
)
from lookhere.models.layout import GridGeometry, VisualLayout
from lookhere.models.prompt import ChatFormat


@register_adapter
class LlavaAdapter(Adapter):
    chat = ChatFormat("USER: {images}\n{question} ASSISTANT:", " ", "</s>")
    family = "llava"
    model_types = ("llava",)

    def layout(self, batch: Mapping[str, Any], images: ImageSizes, processor: Any) -> VisualLayout:
        ids = batch["input_ids"]
        side_h, side_w = canvas_size(batch)
        patch = self.config.vision_config.patch_size
        rows, cols = side_h // patch, side_w // patch
        per_image = rows * cols
        positions = self.visual_positions(ids)
        counts = [count_image_blocks(p, per_image, b) for b, p in enumerate(positions)]
        sizes = check_image_count(images, counts)
        ip = processor.image_processor
        return block_layout(positions, sizes, per_image,
                            lambda size: llava_geometry(ip, size, rows, cols, patch))

    @classmethod
    def build_tiny(cls, size: Any, seed: int) -> tuple[nn.Module, Any]:
        from transformers import (
            CLIPVisionConfig,
            LlavaConfig,
            LlavaForConditionalGeneration,
            LlavaImageProcessorPil,
            LlavaProcessor,
        )

        from lookhere.models.tiny import llama_text_config, train_tokenizer

        tok = train_tokenizer(["<image>"], size.vocab_size, extra_words=size.extra_words)
        vision = CLIPVisionConfig(
            hidden_size=size.vision_hidden, intermediate_size=2 * size.vision_hidden,
            num_hidden_layers=size.vision_layers, num_attention_heads=size.vision_heads,
            image_size=size.image_size, patch_size=size.patch_size,
        )
        text = llama_text_config(size, tok)
        config = LlavaConfig(
            vision_config=vision, text_config=text,
            image_token_index=tok.convert_tokens_to_ids("<image>"),
            # -1: every CLIP layer gets a gradient when training from scratch (-2 breaks DDP).
            vision_feature_layer=-1, vision_feature_select_strategy="default",
        )
        model = LlavaForConditionalGeneration._from_config(config, attn_implementation="sdpa")
        image_processor = LlavaImageProcessorPil(
            size={"shortest_edge": size.image_size},
            crop_size={"height": size.image_size, "width": size.image_size},
        )
        processor = LlavaProcessor(
            image_processor=image_processor, tokenizer=tok, patch_size=size.patch_size,
            vision_feature_select_strategy="default", num_additional_image_tokens=1,
            image_token="<image>",
        )
        return model, processor


def llava_geometry(image_processor: Any, image_size: tuple[int, int], rows: int, cols: int,
                   patch: int) -> GridGeometry:
    """Pixel map of `LlavaImageProcessor`: optional pad-to-square, resize, center crop.

    Mirrors the processor's integer arithmetic (``pad_to_square``, ``get_resize_output_image_size``,
    ``center_crop``), so a grid cell maps to the exact pixels the vision tower saw.
    """
    w, h = image_size
    sx = sy = 1.0
    ox = oy = 0.0
    cur_w, cur_h = float(w), float(h)
    if getattr(image_processor, "do_pad", False):
        side = max(w, h)  # pad_to_square centres the image: start = (max - dim) // 2
        ox, oy = (side - w) // 2, (side - h) // 2
        cur_w = cur_h = float(side)
    if getattr(image_processor, "do_resize", True):
        new_w, new_h = resized_size(image_processor.size, int(cur_w), int(cur_h))
        fx, fy = new_w / cur_w, new_h / cur_h
        sx, sy, ox, oy = sx * fx, sy * fy, ox * fx, oy * fy
        cur_w, cur_h = float(new_w), float(new_h)
    if getattr(image_processor, "do_center_crop", False):
        crop = image_processor.crop_size
        ox += _crop_shift(int(cur_w), size_field(crop, "width"))
        oy += _crop_shift(int(cur_h), size_field(crop, "height"))
    return GridGeometry(rows=rows, cols=cols, cell_size=(patch, patch), scale=(sx, sy),
                        offset=(ox, oy), image_size=(w, h))



def _crop_shift(dim: int, crop: int) -> int:
    """Canvas shift of ``center_crop`` along one axis (it pads first when the image is smaller)."""
    start = (dim - crop) // 2
    pad = math.ceil((max(crop, dim) - dim) / 2)
    return pad - max(0, start + pad)

