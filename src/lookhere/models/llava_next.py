"""LLaVA-NeXT (`LlavaNextForConditionalGeneration`): "anyres", a base and a crops grid per image.

The processor makes two views of each image: a base view (the whole image squashed to the base
resolution) and a high-resolution canvas (the image resized keeping its aspect ratio to the best
"pinpoint" resolution, padded centred, cut into base-resolution crops). The model reassembles the
crops' patch features into one grid, drops whole rows or columns of padding (`unpad_image`), and
appends an ``image_newline`` token to every row. So the token block of one image is

    [base: rows0 * cols0] [crops row 0, newline] [crops row 1, newline] ...

The newline tokens carry the image token id, so they are visual positions, but belong to no grid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lookhere.models.adapter import (
    Adapter,
    ImageSizes,
    check_image_count,
    images_per_sample,
    register_adapter,
    resized_size,
    size_field,
)
from lookhere.models.layout import Grid, GridGeometry, ImageLayout, SampleLayout, VisualLayout
from lookhere.models.prompt import ChatFormat


@dataclass(frozen=True)
class AnyresGrids:
    """Both grids of one image and the length of its token block (newlines included)."""

    base: GridGeometry
    crops: GridGeometry

    @property
    def num_tokens(self) -> int:
        return self.base.rows * self.base.cols + self.crops.rows * (self.crops.cols + 1)

    def key_index(self, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices of the base and crops cells within the visual tokens, block starting at start."""
        n_base = self.base.rows * self.base.cols
        base = start + torch.arange(n_base)
        rows = torch.arange(self.crops.rows)[:, None] * (self.crops.cols + 1)  # skip newlines
        crops = start + n_base + (rows + torch.arange(self.crops.cols)).flatten()
        return base, crops


@register_adapter
class LlavaNextAdapter(Adapter):
    chat = ChatFormat("USER: {images}\n{question} ASSISTANT:", " ", "</s>")
    family = "llava_next"
    model_types = ("llava_next",)

    def layout(self, batch: Mapping[str, Any], images: ImageSizes, processor: Any) -> VisualLayout:
        if "image_sizes" not in batch or "pixel_values" not in batch:
            raise ValueError("batch must hold the processor's 'pixel_values' and 'image_sizes'")
        self._check_processor(processor, batch["pixel_values"])
        vision = self.config.vision_config
        plans = [
            anyres_grids(processor.image_processor, (int(w), int(h)), vision.patch_size)
            for h, w in torch.as_tensor(batch["image_sizes"]).tolist()  # (H, W), batch order
        ]
        positions = self.visual_positions(batch["input_ids"])
        counts = images_per_sample([len(p) for p in positions], [p.num_tokens for p in plans])
        sizes = check_image_count(images, counts)
        check_processed_sizes(sizes, [p.base.image_size for p in plans])
        samples, it = [], iter(plans)
        for pos, ims in zip(positions, sizes, strict=True):
            layouts, start = [], 0
            for size in ims:
                plan = next(it)
                layouts.append(anyres_image_layout(plan, pos, start, size))
                start += plan.num_tokens
            samples.append(SampleLayout(visual_positions=pos, images=tuple(layouts)))
        return VisualLayout(samples=tuple(samples))

    def _check_processor(self, processor: Any, pixel_values: torch.Tensor) -> None:
        """The processor must cut crops the way this model reassembles them."""
        ip, side = processor.image_processor, self.config.vision_config.image_size
        pinpoints = [list(p) for p in ip.image_grid_pinpoints]
        if pinpoints != [list(p) for p in self.config.image_grid_pinpoints]:
            raise ValueError(f"processor image_grid_pinpoints {pinpoints} differ from the model's "
                             f"{self.config.image_grid_pinpoints}")
        if tuple(pixel_values.shape[-2:]) != (side, side) or crop_side(ip) != side:
            raise ValueError(f"processor makes {tuple(pixel_values.shape[-2:])} px views from "
                             f"{crop_side(ip)} px crops; the vision tower expects {side} px")
        extra = getattr(processor, "num_additional_image_tokens", 0) - (
            getattr(processor, "vision_feature_select_strategy", None) == "default")
        if extra:
            raise ValueError(f"{extra} extra (CLS) tokens per base view are not supported")

    @classmethod
    def build_tiny(cls, size: Any, seed: int) -> tuple[nn.Module, Any]:
        from transformers import (
            CLIPVisionConfig,
            LlavaNextConfig,
            LlavaNextForConditionalGeneration,
            LlavaNextImageProcessorPil,
            LlavaNextProcessor,
        )

        from lookhere.models.tiny import llama_text_config, train_tokenizer

        tok = train_tokenizer(["<image>"], size.vocab_size)
        s = size.image_size
        pinpoints = [[s, s], [s, 2 * s], [2 * s, s], [2 * s, 2 * s]]  # (h, w): <= 2x2 crops
        vision = CLIPVisionConfig(
            hidden_size=size.vision_hidden, intermediate_size=2 * size.vision_hidden,
            num_hidden_layers=size.vision_layers, num_attention_heads=size.vision_heads,
            image_size=s, patch_size=size.patch_size,
        )
        text = llama_text_config(size, tok)
        config = LlavaNextConfig(
            vision_config=vision, text_config=text, image_grid_pinpoints=pinpoints,
            image_token_index=tok.convert_tokens_to_ids("<image>"),
            # -1: every CLIP layer gets a gradient when training from scratch (-2 breaks DDP).
            vision_feature_layer=-1, vision_feature_select_strategy="default",
        )
        model = LlavaNextForConditionalGeneration._from_config(config, attn_implementation="sdpa")
        image_processor = LlavaNextImageProcessorPil(
            size={"shortest_edge": s}, crop_size={"height": s, "width": s},
            image_grid_pinpoints=pinpoints,
        )
        processor = LlavaNextProcessor(
            image_processor=image_processor, tokenizer=tok, patch_size=size.patch_size,
            vision_feature_select_strategy="default", num_additional_image_tokens=1,
            image_token="<image>",
        )
        return model, processor


# -- pixel geometry -------------------------------------------------------------------------------
def anyres_grids(image_processor: Any, image_size: tuple[int, int], patch: int) -> AnyresGrids:
    """Base and (unpadded) crops grids of one ``(width, height)`` image.

    Mirrors `LlavaNextImageProcessorPil.get_image_patches` (best resolution, aspect-keeping
    resize, centred pad, crops) and the model's ``pack_image_features`` / ``unpad_image``.
    """
    return AnyresGrids(base=_base_geometry(image_processor, image_size, patch),
                       crops=_crops_geometry(image_processor, image_size, patch))


def _base_geometry(ip: Any, image_size: tuple[int, int], patch: int) -> GridGeometry:
    """The whole image squashed to the base size (scale differs per axis), then resize/crop."""
    w, h = image_size
    base_h, base_w = _base_size(ip)
    (fx, fy), (ox, oy), (out_w, out_h) = _view_steps(ip, base_w, base_h)
    return GridGeometry(rows=out_h // patch, cols=out_w // patch, cell_size=(patch, patch),
                        scale=(base_w / w * fx, base_h / h * fy), offset=(ox, oy),
                        image_size=(w, h))


def _crops_geometry(ip: Any, image_size: tuple[int, int], patch: int) -> GridGeometry:
    """The best-resolution canvas, minus the padded rows/cols that ``unpad_image`` drops."""
    from transformers.image_processing_utils import select_best_resolution

    w, h = image_size
    side = crop_side(ip)
    if _view_steps(ip, side, side) != ((1.0, 1.0), (0, 0), (side, side)):
        raise ValueError(f"the processor's resize/center-crop changes its {side} px crops; "
                         "the crops would not tile one grid")
    best_h, best_w = select_best_resolution((h, w), ip.image_grid_pinpoints)
    if best_h % side or best_w % side:
        raise ValueError(f"pinpoint {(best_h, best_w)} is not a multiple of the crop size {side}")
    new_h, new_w = _patch_output_size(h, w, best_h, best_w)
    paste_x, paste_y = (best_w - new_w) // 2, (best_h - new_h) // 2  # np.pad before = divmod
    per_crop = side // patch
    top, left, rows, cols = _unpad(best_h // side * per_crop, best_w // side * per_crop, h, w)
    return GridGeometry(rows=rows, cols=cols, cell_size=(patch, patch),
                        scale=(new_w / w, new_h / h),
                        offset=(paste_x - left * patch, paste_y - top * patch), image_size=(w, h))


def _patch_output_size(h: int, w: int, target_h: int, target_w: int) -> tuple[int, int]:
    """(new_h, new_w) as ``image_processing_utils.get_patch_output_size`` computes it."""
    scale_w, scale_h = target_w / w, target_h / h
    if scale_w < scale_h:
        return min(math.ceil(h * scale_w), target_h), target_w
    return target_h, min(math.ceil(w * scale_h), target_w)


def _unpad(rows: int, cols: int, h: int, w: int) -> tuple[int, int, int, int]:
    """(top, left, rows, cols) kept by the model's ``unpad_image`` on a rows x cols feature grid."""
    if w / h > cols / rows:
        new_rows = int(round(h * (cols / w), 7))
        pad = (rows - new_rows) // 2
        return pad, 0, rows - 2 * pad, cols
    new_cols = int(round(w * (rows / h), 7))
    pad = (cols - new_cols) // 2
    return 0, pad, rows, cols - 2 * pad


def _view_steps(ip: Any, w: int, h: int
                ) -> tuple[tuple[float, float], tuple[int, int], tuple[int, int]]:
    """Per-view resize then center crop of a w x h view: (scale, offset, output (w, h))."""
    fx = fy = 1.0
    ox = oy = 0
    if ip.do_resize:
        new_w, new_h = resized_size(ip.size, w, h)
        fx, fy, w, h = new_w / w, new_h / h, new_w, new_h
    if ip.do_center_crop:
        crop_w, crop_h = size_field(ip.crop_size, "width"), size_field(ip.crop_size, "height")
        # np center_crop starts at (dim - crop) // 2, padding first when negative: same shift.
        ox, oy, w, h = -((w - crop_w) // 2), -((h - crop_h) // 2), crop_w, crop_h
    return (fx, fy), (ox, oy), (w, h)



def _base_size(ip: Any) -> tuple[int, int]:
    """(height, width) the base view is squashed to (``size_tuple`` in ``_preprocess``)."""
    size = ip.size
    if size_field(size, "height") and size_field(size, "width"):
        return size_field(size, "height"), size_field(size, "width")
    return size_field(size, "shortest_edge"), size_field(size, "shortest_edge")


def crop_side(ip: Any) -> int:
    """Side of the high-resolution crops (``patch_size`` in ``_preprocess``)."""
    if ip.crop_size and size_field(ip.crop_size, "height"):
        return size_field(ip.crop_size, "height")
    return size_field(ip.size, "height") or size_field(ip.size, "shortest_edge")



# -- token bookkeeping ----------------------------------------------------------------------------
def check_processed_sizes(sizes: list[list[tuple[int, int]]], processed: list[tuple[int, int]]
                          ) -> None:
    """Each given image size must be the one the batch was processed at (``image_sizes``)."""
    flat = [s for ims in sizes for s in ims]
    for i, (given, seen) in enumerate(zip(flat, processed, strict=True)):
        if given != seen:
            raise ValueError(f"images: image {i} is {given[0]}x{given[1]} but the batch was "
                             f"processed from a {seen[0]}x{seen[1]} image (image_sizes)")


def anyres_image_layout(plan: AnyresGrids, pos: torch.Tensor, start: int,
                        size: tuple[int, int]) -> ImageLayout:
    """The base and crops grids of one image whose token block starts at ``start``."""
    base_idx, crops_idx = plan.key_index(start)
    grids = (
        Grid(positions=pos[base_idx], key_index=base_idx, geometry=plan.base, name="base"),
        Grid(positions=pos[crops_idx], key_index=crops_idx, geometry=plan.crops, name="crops"),
    )
    return ImageLayout(grids=grids, image_size=size)
