"""LLaVA-1.5 (`LlavaForConditionalGeneration`): one square grid per image, one contiguous block."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from lookhere.models.adapter import Adapter, ImageSizes, check_image_count, register_adapter
from lookhere.models.layout import Grid, GridGeometry, ImageLayout, SampleLayout, VisualLayout


@register_adapter
class LlavaAdapter(Adapter):
    family = "llava"
    model_types = ("llava",)

    def layout(self, batch: Mapping[str, Any], images: ImageSizes, processor: Any) -> VisualLayout:
        ids = batch["input_ids"]
        side_h, side_w = batch["pixel_values"].shape[-2:]
        patch = self.config.vision_config.patch_size
        rows, cols = side_h // patch, side_w // patch
        per_image = rows * cols
        samples = []
        positions = self.visual_positions(ids)
        counts = [_count_blocks(p, per_image, b) for b, p in enumerate(positions)]
        sizes = check_image_count(images, counts)
        for pos, ims in zip(positions, sizes, strict=True):
            layouts = []
            for i, size in enumerate(ims):
                geo = llava_geometry(processor.image_processor, size, rows, cols, patch)
                key_index = torch.arange(i * per_image, (i + 1) * per_image)
                grid = Grid(positions=pos[key_index], key_index=key_index, geometry=geo)
                layouts.append(ImageLayout(grids=(grid,), image_size=size))
            samples.append(SampleLayout(visual_positions=pos, images=tuple(layouts)))
        return VisualLayout(samples=tuple(samples))

    @classmethod
    def build_tiny(cls, size: Any, seed: int) -> tuple[nn.Module, Any]:
        from transformers import (
            CLIPVisionConfig,
            LlamaConfig,
            LlavaConfig,
            LlavaForConditionalGeneration,
            LlavaImageProcessorPil,
            LlavaProcessor,
        )

        from lookhere.models.tiny import train_tokenizer

        tok = train_tokenizer(["<image>"], size.vocab_size)
        vision = CLIPVisionConfig(
            hidden_size=size.vision_hidden, intermediate_size=2 * size.vision_hidden,
            num_hidden_layers=size.vision_layers, num_attention_heads=size.vision_heads,
            image_size=size.image_size, patch_size=size.patch_size,
        )
        text = LlamaConfig(
            hidden_size=size.hidden, intermediate_size=size.intermediate,
            num_hidden_layers=size.layers, num_attention_heads=size.heads,
            num_key_value_heads=size.kv_heads, vocab_size=len(tok), max_position_embeddings=4096,
            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
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
        new_w, new_h = _resized_size(image_processor.size, int(cur_w), int(cur_h))
        fx, fy = new_w / cur_w, new_h / cur_h
        sx, sy, ox, oy = sx * fx, sy * fy, ox * fx, oy * fy
        cur_w, cur_h = float(new_w), float(new_h)
    if getattr(image_processor, "do_center_crop", False):
        crop = image_processor.crop_size
        ox += _crop_shift(int(cur_w), _get(crop, "width"))
        oy += _crop_shift(int(cur_h), _get(crop, "height"))
    return GridGeometry(rows=rows, cols=cols, cell_size=(patch, patch), scale=(sx, sy),
                        offset=(ox, oy), image_size=(w, h))


def _get(d: Any, key: str) -> Any:
    return d[key] if isinstance(d, Mapping) else getattr(d, key)


def _resized_size(size: Any, w: int, h: int) -> tuple[int, int]:
    """(new_w, new_h) as ``get_resize_output_image_size(default_to_square=False)`` computes it."""
    shortest = _get(size, "shortest_edge") if _has(size, "shortest_edge") else None
    if shortest:
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = shortest, int(shortest * long / short)
        return (new_short, new_long) if w <= h else (new_long, new_short)
    return _get(size, "width"), _get(size, "height")


def _has(d: Any, key: str) -> bool:
    return (key in d and d[key] is not None) if isinstance(d, Mapping) else \
        getattr(d, key, None) is not None


def _crop_shift(dim: int, crop: int) -> int:
    """Canvas shift of ``center_crop`` along one axis (it pads first when the image is smaller)."""
    start = (dim - crop) // 2
    pad = math.ceil((max(crop, dim) - dim) / 2)
    return pad - max(0, start + pad)


def _count_blocks(pos: torch.Tensor, per_image: int, b: int) -> int:
    if len(pos) % per_image:
        raise ValueError(
            f"sample {b}: {len(pos)} image tokens is not a multiple of {per_image} per image; "
            "was the prompt expanded by the processor?"
        )
    return len(pos) // per_image
