"""LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`): LLaVA-NeXT's anyres, two twists.

A prompt with one image is processed as in LLaVA-NeXT (`llava_next`): a base view (the image
squashed to the base size) and a high-resolution canvas (aspect-keeping resize to the best
pinpoint, centred pad, base-size crops) whose patch features the model reassembles, unpads and
ends with a newline token per row. Twist one: when the unpadded crops grid holds more than
``vision_aspect_ratio`` ("anyres_max_N") base grids (times 1.1²), the model shrinks it by a
bilinear ``interpolate`` to ``int(rows // r) x int(cols // r)``, ``r = sqrt(rows * cols /
(N * side²))``; each token then covers ``rows / new_rows`` patches. Twist two: a prompt with
several images gets one view per image, padded to a square (centred) and squashed to the base
size, and its token block is that grid plus one newline token.

    one image:      [base: side²] [crops row 0, newline] [crops row 1, newline] ...
    several images: [view: side²] [newline]     per image

The newline tokens carry the image token id, so they are visual positions, but belong to no grid.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import LlavaOnevisionProcessor

from lookhere.models.adapter import (
    Adapter,
    ImageSizes,
    check_image_count,
    images_per_sample,
    register_adapter,
)
from lookhere.models.layout import Grid, GridGeometry, ImageLayout, SampleLayout, VisualLayout
from lookhere.models.llava_next import (
    AnyresGrids,
    anyres_grids,
    anyres_image_layout,
    check_processed_sizes,
)
from lookhere.models.prompt import ChatFormat

SPECIAL_TOKENS = ["<image>", "<video>", "<|im_start|>", "<|im_end|>"]


class LlavaOnevisionImageTextProcessor(LlavaOnevisionProcessor):
    """`LlavaOnevisionProcessor` for images and text (no torchvision needed).

    The real class also takes a video processor, and every video processor needs torchvision
    (absent here). `ProcessorMixin` reads its sub-processors and the settings it saves from
    ``__init__``'s signature: this one names the image settings and no video processor.
    """

    def __init__(self, image_processor: Any = None, tokenizer: Any = None,
                 num_image_tokens: int | None = None,
                 vision_feature_select_strategy: str | None = None,
                 chat_template: str | None = None, image_token: str = "<image>",
                 video_token: str = "<video>", vision_aspect_ratio: str = "anyres_max_9",
                 **kwargs: Any) -> None:
        # The parent hands video_processor=None on to ProcessorMixin, which zips the arguments
        # with get_attributes() (image_processor, tokenizer), so that None is dropped.
        super().__init__(image_processor, tokenizer, None, num_image_tokens=num_image_tokens,
                         vision_feature_select_strategy=vision_feature_select_strategy,
                         chat_template=chat_template, image_token=image_token,
                         video_token=video_token, vision_aspect_ratio=vision_aspect_ratio,
                         **kwargs)


@register_adapter
class LlavaOnevisionAdapter(Adapter):
    chat = ChatFormat("<|im_start|>user\n{images}\n{question}<|im_end|>\n<|im_start|>assistant\n",
                      "", "<|im_end|>\n")
    family = "llava_onevision"
    model_types = ("llava_onevision",)
    processor_class = LlavaOnevisionImageTextProcessor

    def layout(self, batch: Mapping[str, Any], images: ImageSizes, processor: Any) -> VisualLayout:
        for key in ("pixel_values", "image_sizes"):
            if key not in batch:
                raise ValueError(f"batch has no {key!r}; pass the processor's output with images")
        side = self._check_processor(processor)
        ip, patch = processor.image_processor, self.config.vision_config.patch_size
        sizes_hw = torch.as_tensor(batch["image_sizes"]).tolist()  # (H, W) per image, batch order
        positions = self.visual_positions(batch["input_ids"])
        per_sample = batch.get("batch_num_images")
        if per_sample is None:  # the model then tiles every image (its single-image path)
            plans = [self._single(ip, (int(w), int(h)), patch, side) for h, w in sizes_hw]
            counts = images_per_sample([len(p) for p in positions],
                                       [p.num_tokens for p in plans])
        else:
            counts = [int(n) for n in torch.as_tensor(per_sample).tolist()]
        sizes = check_image_count(images, counts)
        check_processed_sizes(sizes, [(int(w), int(h)) for h, w in sizes_hw])
        samples = []
        for b, (pos, ims) in enumerate(zip(positions, sizes, strict=True)):
            layouts, start = [], 0
            for size in ims:
                if len(ims) == 1:
                    plan = self._single(ip, size, patch, side)
                    layouts.append(anyres_image_layout(plan, pos, start, size))
                    start += plan.num_tokens
                else:
                    layouts.append(_view_layout(pos, start, size, side, patch))
                    start += side * side + 1  # the view, then one newline token
            if start != len(pos):
                raise ValueError(f"sample {b}: the tokens hold {len(pos)} image tokens but its "
                                 f"{len(ims)} images make {start}; was the batch made by this "
                                 "processor, with these settings?")
            samples.append(SampleLayout(visual_positions=pos, images=tuple(layouts)))
        return VisualLayout(samples=tuple(samples))

    def _single(self, ip: Any, size: tuple[int, int], patch: int, side: int) -> AnyresGrids:
        """Anyres grids of a prompt's only image, crops shrunk as the model shrinks them."""
        plan = anyres_grids(ip, size, patch)
        crops = plan.crops
        max_grids = int(self.config.vision_aspect_ratio.removeprefix("anyres_max_"))
        ratio = math.sqrt(crops.rows * crops.cols / (max_grids * side * side))
        if ratio > 1.1:
            rows, cols = int(crops.rows // ratio), int(crops.cols // ratio)
            cell = (patch * crops.cols / cols, patch * crops.rows / rows)
            crops = dataclasses.replace(crops, rows=rows, cols=cols, cell_size=cell)
        return dataclasses.replace(plan, crops=crops)

    def _check_processor(self, processor: Any) -> int:
        """The processor must count tokens and cut views the way this model packs them; the
        base grid's side in tokens."""
        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size
        ip = processor.image_processor
        if [list(p) for p in ip.image_grid_pinpoints] != \
                [list(p) for p in self.config.image_grid_pinpoints]:
            raise ValueError(f"processor image_grid_pinpoints {ip.image_grid_pinpoints} differ "
                             f"from the model's {self.config.image_grid_pinpoints}")
        strategy = self.config.vision_feature_select_strategy
        tokens = getattr(processor, "num_image_tokens", None)
        if tokens is None or tokens - (strategy == "default") != side * side:
            raise ValueError(f"processor.num_image_tokens is {tokens}, but the vision tower gives "
                             f"{side}x{side} tokens per view (strategy {strategy!r})")
        if getattr(processor, "vision_aspect_ratio", None) != self.config.vision_aspect_ratio:
            raise ValueError(f"processor.vision_aspect_ratio {processor.vision_aspect_ratio!r} "
                             f"differs from the model's {self.config.vision_aspect_ratio!r}")
        return side

    @classmethod
    def build_tiny(cls, size: Any, seed: int) -> tuple[nn.Module, Any]:
        from transformers import (
            LlavaOnevisionConfig,
            LlavaOnevisionForConditionalGeneration,
            LlavaOnevisionImageProcessorPil,
            Qwen2Config,
            SiglipVisionConfig,
        )

        from lookhere.models.tiny import train_tokenizer

        tok = train_tokenizer(SPECIAL_TOKENS, size.vocab_size, pad="<|endoftext|>",
                              eos="<|im_end|>", bos=None, extra_words=size.extra_words)
        s, side = size.image_size, size.image_size // size.patch_size
        pinpoints = [[s, s], [s, 2 * s], [2 * s, s], [2 * s, 2 * s]]  # (h, w): <= 2x2 crops
        vision = SiglipVisionConfig(
            hidden_size=size.vision_hidden, intermediate_size=2 * size.vision_hidden,
            num_hidden_layers=size.vision_layers, num_attention_heads=size.vision_heads,
            image_size=s, patch_size=size.patch_size, vision_use_head=False,
        )
        text = Qwen2Config(
            hidden_size=size.hidden, intermediate_size=size.intermediate,
            num_hidden_layers=size.layers, num_attention_heads=size.heads,
            num_key_value_heads=size.kv_heads, vocab_size=len(tok), max_position_embeddings=4096,
            pad_token_id=tok.pad_token_id, bos_token_id=None, eos_token_id=tok.eos_token_id,
        )
        config = LlavaOnevisionConfig(
            vision_config=vision, text_config=text, image_grid_pinpoints=pinpoints,
            image_token_index=tok.convert_tokens_to_ids("<image>"),
            video_token_index=tok.convert_tokens_to_ids("<video>"),
            vision_feature_layer=-1, vision_feature_select_strategy="full",
        )
        model = LlavaOnevisionForConditionalGeneration._from_config(
            config, attn_implementation="sdpa")
        image_processor = LlavaOnevisionImageProcessorPil(
            size={"height": s, "width": s}, image_grid_pinpoints=pinpoints,
        )
        processor = LlavaOnevisionImageTextProcessor(
            image_processor=image_processor, tokenizer=tok, num_image_tokens=side * side,
            vision_feature_select_strategy="full", vision_aspect_ratio=config.vision_aspect_ratio,
        )
        return model, processor


def multi_image_geometry(image_size: tuple[int, int], side: int, patch: int) -> GridGeometry:
    """The view of an image in a several-image prompt: ``pad_to_square`` (centred, the pad
    starts at ``(long - short) // 2``), then squashed to the base size ``side * patch``."""
    w, h = image_size
    long = max(w, h)
    scale = side * patch / long
    ox, oy = (long - w) // 2 * scale, (long - h) // 2 * scale
    return GridGeometry(rows=side, cols=side, cell_size=(patch, patch), scale=(scale, scale),
                        offset=(ox, oy), image_size=(w, h))


def _view_layout(pos: torch.Tensor, start: int, size: tuple[int, int], side: int,
                 patch: int) -> ImageLayout:
    key = start + torch.arange(side * side)  # the newline after it belongs to no grid
    grid = Grid(positions=pos[key], key_index=key,
                geometry=multi_image_geometry(size, side, patch), name="base")
    return ImageLayout(grids=(grid,), image_size=size)
