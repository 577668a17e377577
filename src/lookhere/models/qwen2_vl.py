"""Qwen2.5-VL and Qwen2-VL: one rectangular, image-size-dependent grid per image.

The image processor resizes each image (``smart_resize``: both sides a multiple of
``patch_size * merge_size``, pixel count within ``[min_pixels, max_pixels]``) with no crop or pad,
cuts it into 14 px patches, and the vision tower merges 2x2 patches into one language-model token.
So one visual token covers a 28x28 px cell of the resized canvas, tokens run row-major over the
merged grid, and ``image_grid_thw = [1, H'/14, W'/14]`` gives the exact canvas size ``W' x H'``.

Both families share this module; they differ only in their transformers classes and in the
vision tower's config (Qwen2.5-VL adds window attention).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor

from lookhere.models.adapter import (
    Adapter,
    ImageSizes,
    check_image_count,
    images_per_sample,
    register_adapter,
    size_field,
)
from lookhere.models.layout import Grid, GridGeometry, ImageLayout, SampleLayout, VisualLayout
from lookhere.models.prompt import ChatFormat

# Qwen's chat and vision markers; each image is <|vision_start|><|image_pad|><|vision_end|>.
QWEN_SPECIAL_TOKENS = [
    "<|im_start|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>",
]
QWEN_PAD, QWEN_EOS = "<|endoftext|>", "<|im_end|>"


# -- processors without a video processor ------------------------------------------------------
class ImageTextOnly:
    """Mixin: build a Qwen processor from an image processor and a tokenizer only.

    The real processors also take a video processor, and every video processor needs torchvision
    (absent here). `ProcessorMixin` reads its sub-processors from ``__init__``'s signature, so this
    signature also makes ``save_pretrained`` / ``from_pretrained`` skip the video processor.
    """

    def __init__(self, image_processor: Any = None, tokenizer: Any = None,
                 chat_template: str | None = None, **kwargs: Any) -> None:
        # The parent passes video_processor=None positionally; ProcessorMixin zips the arguments
        # with get_attributes() (image_processor, tokenizer), so that None is dropped.
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)


class Qwen2_5_VLImageTextProcessor(ImageTextOnly, Qwen2_5_VLProcessor):  # noqa: N801
    """`Qwen2_5_VLProcessor` for images and text (no torchvision needed)."""


class Qwen2VLImageTextProcessor(ImageTextOnly, Qwen2VLProcessor):
    """`Qwen2VLProcessor` for images and text (no torchvision needed)."""


def merger_tower(size: Any) -> dict[str, Any]:
    """The tiny vision tower of Qwen2.5-VL and Qwen3-VL (``hidden_size`` is the tower's width,
    ``out_hidden_size`` the merger's output, the LM's), 2 x 2 merge, 2 frames per patch."""
    return dict(depth=size.vision_layers, hidden_size=size.vision_hidden,
                intermediate_size=2 * size.vision_hidden, num_heads=size.vision_heads,
                out_hidden_size=size.hidden, patch_size=size.patch_size, spatial_merge_size=2,
                temporal_patch_size=2)


# -- adapters ----------------------------------------------------------------------------------
class QwenVLAdapter(Adapter):
    """Shared layout and tiny-model logic of Qwen2-VL, Qwen2.5-VL and Qwen3-VL (`qwen3_vl`)."""

    chat = ChatFormat("<|im_start|>user\n{images}{question}<|im_end|>\n<|im_start|>assistant\n",
                      "", "<|im_end|>\n")

    processor_class = Qwen2VLImageTextProcessor

    def layout(self, batch: Mapping[str, Any], images: ImageSizes, processor: Any) -> VisualLayout:
        ip = processor.image_processor
        patch, merge = _patch_and_merge(ip, self.config)
        thw = _grid_thw(batch)  # (n_images, 3) over the whole batch, prompt order
        positions = self.visual_positions(batch["input_ids"])
        per_image = (thw.prod(-1) // merge**2).tolist()  # tokens of each image
        counts = images_per_sample([len(p) for p in positions], per_image)
        sizes = check_image_count(images, counts)
        samples, first = [], 0
        for pos, ims in zip(positions, sizes, strict=True):
            layouts, start = [], 0
            for i, size in enumerate(ims):
                _, gh, gw = thw[first + i].tolist()  # t is 1 for still images
                geo = qwen_geometry(size, (gw * patch, gh * patch), merge * patch)
                key_index = torch.arange(start, start + geo.rows * geo.cols)
                grid = Grid(positions=pos[key_index], key_index=key_index, geometry=geo)
                layouts.append(ImageLayout(grids=(grid,), image_size=size))
                start += len(key_index)
            first += len(ims)
            samples.append(SampleLayout(visual_positions=pos, images=tuple(layouts)))
        return VisualLayout(samples=tuple(samples))

    @classmethod
    def tiny_prompt(cls, processor: Any, text: str, n_images: int) -> str:
        image = f"<|vision_start|>{processor.image_token}<|vision_end|>"
        return image * n_images + text

    @classmethod
    def build_tiny(cls, size: Any, seed: int) -> tuple[nn.Module, Any]:
        from transformers import Qwen2VLImageProcessorPil

        from lookhere.models.tiny import train_tokenizer

        tok = train_tokenizer(QWEN_SPECIAL_TOKENS, size.vocab_size, pad=QWEN_PAD, eos=QWEN_EOS,
                              bos=None)
        ids = {f"{name}_token_id": tok.convert_tokens_to_ids(f"<|{token}|>") for name, token in (
            ("image", "image_pad"), ("video", "video_pad"),
            ("vision_start", "vision_start"), ("vision_end", "vision_end"),
        )}
        config = cls._tiny_config(size, _tiny_text_config(size, tok), **ids)
        model = cls._model_class()._from_config(config, attn_implementation="sdpa")
        # min/max pixels of one and four image_size squares: 2x2 to 4x4 tokens at 56 px.
        image_processor = Qwen2VLImageProcessorPil(
            min_pixels=size.image_size**2, max_pixels=(2 * size.image_size) ** 2,
            patch_size=size.patch_size, merge_size=2, temporal_patch_size=2,
        )
        return model, cls.processor_class(image_processor=image_processor, tokenizer=tok)

    @classmethod
    def _model_class(cls) -> type[nn.Module]:
        raise NotImplementedError

    @classmethod
    def _tiny_config(cls, size: Any, text: dict[str, Any], **token_ids: int) -> Any:
        raise NotImplementedError


@register_adapter
class Qwen2_5_VLAdapter(QwenVLAdapter):  # noqa: N801
    family = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    processor_class = Qwen2_5_VLImageTextProcessor

    @classmethod
    def _model_class(cls) -> type[nn.Module]:
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration

    @classmethod
    def _tiny_config(cls, size: Any, text: dict[str, Any], **token_ids: int) -> Any:
        from transformers import Qwen2_5_VLConfig

        vision = dict(
            **merger_tower(size),
            # Windows of 2x2 merged tokens, smaller than most test grids, so the tower's window
            # permutation (and its inverse) really runs; odd blocks attend globally.
            window_size=2 * 2 * size.patch_size,
            fullatt_block_indexes=list(range(1, size.vision_layers, 2)),
        )
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **token_ids)


@register_adapter
class Qwen2VLAdapter(QwenVLAdapter):
    family = "qwen2_vl"
    model_types = ("qwen2_vl",)
    processor_class = Qwen2VLImageTextProcessor

    @classmethod
    def _model_class(cls) -> type[nn.Module]:
        from transformers import Qwen2VLForConditionalGeneration

        return Qwen2VLForConditionalGeneration

    @classmethod
    def _tiny_config(cls, size: Any, text: dict[str, Any], **token_ids: int) -> Any:
        from transformers import Qwen2VLConfig

        # Qwen2-VL's tower: width is `embed_dim`, `hidden_size` is the merger's output (LM width).
        vision = dict(
            depth=size.vision_layers, embed_dim=size.vision_hidden, hidden_size=size.hidden,
            mlp_ratio=2, num_heads=size.vision_heads, patch_size=size.patch_size,
            spatial_merge_size=2, temporal_patch_size=2,
        )
        return Qwen2VLConfig(text_config=text, vision_config=vision, **token_ids)


def _tiny_text_config(size: Any, tok: Any) -> dict[str, Any]:
    half = size.hidden // size.heads // 2  # rotary frequencies per head
    t = half // 4  # real models split 64 as [16, 24, 24]: temporal, height, width
    h = (half - t) // 2
    return dict(
        vocab_size=len(tok), hidden_size=size.hidden, intermediate_size=size.intermediate,
        num_hidden_layers=size.layers, num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                         "mrope_section": [t, h, half - t - h]},
        pad_token_id=tok.pad_token_id, bos_token_id=None, eos_token_id=tok.eos_token_id,
    )


# -- geometry ----------------------------------------------------------------------------------
def qwen_geometry(image_size: tuple[int, int], canvas_size: tuple[int, int], cell: int
                  ) -> GridGeometry:
    """Pixel map of the Qwen image processor: a plain resize of ``W x H`` to the canvas ``W' x H'``.

    ``canvas_size`` comes from ``image_grid_thw`` (``gw * patch``, ``gh * patch``), which is exact;
    PIL's resize maps pixel edges to pixel edges, so the offset is 0.
    """
    (w, h), (cw, ch) = image_size, canvas_size
    if cw % cell or ch % cell:
        raise ValueError(f"canvas {cw}x{ch} is not a multiple of the {cell} px token cell")
    return GridGeometry(rows=ch // cell, cols=cw // cell, cell_size=(cell, cell),
                        scale=(cw / w, ch / h), offset=(0.0, 0.0), image_size=(w, h))


def qwen_resized_size(image_processor: Any, width: int, height: int) -> tuple[int, int]:
    """(W', H') that the processor resizes a ``width x height`` image to (``smart_resize``).

    Mirrors transformers' ``smart_resize`` (factor ``patch_size * merge_size``, min/max pixels
    from ``size["shortest_edge"]`` / ``size["longest_edge"]``), including Python's round-half-even.
    `layout` reads the canvas from ``image_grid_thw`` instead; this predicts it without an image.
    """
    factor = image_processor.patch_size * image_processor.merge_size
    size = image_processor.size
    lo, hi = size_field(size, "shortest_edge"), size_field(size, "longest_edge")
    if max(width, height) / min(width, height) > 200:
        raise ValueError(f"aspect ratio of {width}x{height} exceeds 200, the processor rejects it")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > hi:
        beta = math.sqrt(height * width / hi)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < lo:
        beta = math.sqrt(lo / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return w_bar, h_bar



def _patch_and_merge(image_processor: Any, config: Any) -> tuple[int, int]:
    patch, merge = int(image_processor.patch_size), int(image_processor.merge_size)
    model_merge = config.vision_config.spatial_merge_size
    if merge != model_merge:
        raise ValueError(f"processor merge_size {merge} != model spatial_merge_size {model_merge}")
    return patch, merge


def _grid_thw(batch: Mapping[str, Any]) -> torch.Tensor:
    thw = batch.get("image_grid_thw")
    if thw is None:
        raise ValueError("batch has no image_grid_thw; pass the processor's output with images")
    thw = torch.as_tensor(thw).long()
    if thw.dim() != 2 or thw.shape[-1] != 3:
        raise ValueError(f"image_grid_thw must be (n_images, 3), got {tuple(thw.shape)}")
    return thw
