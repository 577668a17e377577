"""SmolVLM and Idefics3: each image is split into tiles plus one squashed global image.

Both processors (the same arithmetic in ``image_processing_pil_{idefics3,smolvlm}.py``) resize an
image so its longest edge is ``size["longest_edge"]``, round both sides up to multiples of the tile
``T = max_image_size["longest_edge"]``, cut that canvas into a row-major array of ``T x T`` tiles
and append the whole image squashed to ``T x T`` (the global image). Each frame goes through the
vision tower; the connector pixel-shuffles ``scale_factor x scale_factor`` patches into one token,
so a tile gives ``n x n`` tokens with ``n = T / (patch * scale_factor)``, row-major. The prompt is

    <fake><row_1_col_1><image>*n² <fake><row_1_col_2><image>*n² ... (a newline after each row)
    <newline><fake><global-img><image>*n²<fake>

An image is one `ImageLayout` with grid "global" (n x n over the whole image) and, when it was
split, grid "tiles": the tiles' token grids stitched in image order into one
``(tile_rows * n) x (tile_cols * n)`` grid over the resized canvas.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from lookhere.models.adapter import (
    Adapter,
    ImageSizes,
    check_image_count,
    register_adapter,
    size_field,
)
from lookhere.models.layout import Grid, GridGeometry, ImageLayout, SampleLayout, VisualLayout
from lookhere.models.prompt import ChatFormat

MAX_IMAGE_SIZE = 4096  # the processors' absolute bound on the resized image (image_processing_*.py)
GLOBAL_TAG = "<global-img>"
# The real checkpoints' added tokens; the processors write <row_r_col_c> for up to 6 x 6 tiles.
SPECIAL_TOKENS = [
    "<fake_token_around_image>", "<image>", "<end_of_utterance>", GLOBAL_TAG,
    *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
]


@dataclass(frozen=True)
class TileSplit:
    """How the processor splits one image: a canvas of ``tile_rows x tile_cols`` tiles."""

    tile_rows: int  # 0 when the image was not split (global frame only)
    tile_cols: int
    canvas: tuple[int, int]  # (width, height) of the resized image the tiles are cut from


class _Idefics3Family(Adapter):
    chat = ChatFormat("<|im_start|>User:{images}{question}<end_of_utterance>\nAssistant:", " ",
                      "<end_of_utterance>\n")
    """Shared adapter code; subclasses name the transformers classes of their family."""

    _classes: ClassVar[dict[str, str]] = {}  # role -> transformers class name

    def language_model(self, model: nn.Module) -> nn.Module:
        return model.model.text_model  # a LlamaModel: .layers, .norm

    def final_norm(self, model: nn.Module) -> nn.Module:
        return model.model.text_model.norm

    def lm_head(self, model: nn.Module) -> nn.Module:
        return model.lm_head

    # -- layout --------------------------------------------------------------------------------
    def layout(self, batch: Mapping[str, Any], images: ImageSizes, processor: Any) -> VisualLayout:
        ids = batch["input_ids"]
        positions = self.visual_positions(ids)
        tag_id = _global_tag_id(processor)
        counts = [int((row == tag_id).sum()) for row in ids]  # one <global-img> per image
        sizes = check_image_count(images, counts)
        tile, n = self._tile_and_side(processor)
        samples = []
        for b, (pos, ims) in enumerate(zip(positions, sizes, strict=True)):
            splits = [split_plan(processor.image_processor, size) for size in ims]
            expected = sum((s.tile_rows * s.tile_cols + 1) * n * n for s in splits)
            if expected != len(pos):
                raise ValueError(
                    f"sample {b}: the tokens hold {len(pos)} image tokens but the processor's "
                    f"settings give {expected}; were `images` processed with other kwargs?"
                )
            layouts, start = [], 0
            for size, split in zip(ims, splits, strict=True):
                layouts.append(_image_layout(pos, start, size, split, tile, n))
                start += (split.tile_rows * split.tile_cols + 1) * n * n
            _check_global_tags(ids[b], layouts, tag_id, b)
            samples.append(SampleLayout(visual_positions=pos, images=tuple(layouts)))
        return VisualLayout(samples=tuple(samples))

    def _tile_and_side(self, processor: Any) -> tuple[int, int]:
        """(tile side T in pixels, tokens per tile side n), checked against the processor."""
        tile = int(size_field(processor.image_processor.max_image_size, "longest_edge"))
        cell = self.config.vision_config.patch_size * self.config.scale_factor
        if tile % cell:
            raise ValueError(f"processor tile size {tile} is not a multiple of patch*scale {cell}")
        n = tile // cell
        seq_len = getattr(processor, "image_seq_len", n * n)
        if seq_len != n * n:
            raise ValueError(
                f"processor.image_seq_len is {seq_len} but tiles of {tile} px give {n}x{n} tokens "
                f"(patch {self.config.vision_config.patch_size}, scale {self.config.scale_factor})"
            )
        return tile, n

    # -- tiny models -------------------------------------------------------------------------------
    @classmethod
    def build_tiny(cls, size: Any, seed: int) -> tuple[nn.Module, Any]:
        import transformers

        from lookhere.models.tiny import llama_text_config, train_tokenizer

        tok = train_tokenizer(SPECIAL_TOKENS, size.vocab_size)
        # TinySize.patch_size is the pixel side of one LLM token: vision patch * scale_factor.
        scale = 2 if size.patch_size % 2 == 0 else 1
        patch = size.patch_size // scale
        vision = getattr(transformers, cls._classes["vision_config"])(
            hidden_size=size.vision_hidden, intermediate_size=2 * size.vision_hidden,
            num_hidden_layers=size.vision_layers, num_attention_heads=size.vision_heads,
            image_size=size.image_size, patch_size=patch,
        )
        text = llama_text_config(size, tok)
        config = getattr(transformers, cls._classes["config"])(
            vision_config=vision, text_config=text, scale_factor=scale,
            image_token_id=tok.convert_tokens_to_ids("<image>"),
        )
        model_cls = getattr(transformers, cls._classes["model"])
        model = model_cls._from_config(config, attn_implementation="sdpa")
        # Tiles of image_size px; the longest edge at 2 tiles splits images into up to 2 x 2.
        image_processor = getattr(transformers, cls._classes["image_processor"])(
            size={"longest_edge": 2 * size.image_size},
            max_image_size={"longest_edge": size.image_size},
        )
        n = size.image_size // size.patch_size
        processor = cls._processor_class()(
            image_processor=image_processor, tokenizer=tok, image_seq_len=n * n
        )
        return model, processor

    @classmethod
    def _processor_class(cls) -> type:
        import transformers

        return getattr(transformers, cls._classes["processor"])

    @classmethod
    def load_processor(cls, path: str, **kwargs: Any) -> Any:
        return cls._processor_class().from_pretrained(path, **kwargs)


@register_adapter
class SmolVLMAdapter(_Idefics3Family):
    family = "smolvlm"
    model_types = ("smolvlm",)
    _classes = {
        "config": "SmolVLMConfig", "vision_config": "SmolVLMVisionConfig",
        "model": "SmolVLMForConditionalGeneration", "image_processor": "SmolVLMImageProcessorPil",
    }

    @classmethod
    def _processor_class(cls) -> type:
        return smolvlm_image_processor_class()


@register_adapter
class Idefics3Adapter(_Idefics3Family):
    family = "idefics3"
    model_types = ("idefics3",)
    _classes = {
        "config": "Idefics3Config", "vision_config": "Idefics3VisionConfig",
        "model": "Idefics3ForConditionalGeneration", "image_processor": "Idefics3ImageProcessorPil",
        "processor": "Idefics3Processor",
    }


@functools.cache
def smolvlm_image_processor_class() -> type:
    """`SmolVLMProcessor` for images only.

    The real class needs a video processor (torchvision) and ``num2words`` (video prompts) in its
    ``__init__``; this subclass takes only the image processor and the tokenizer and otherwise
    runs the real image and prompt code. Built lazily so importing lookhere stays light.
    """
    from transformers import ProcessorMixin, SmolVLMProcessor

    class SmolVLMImageOnlyProcessor(SmolVLMProcessor):
        def __init__(self, image_processor: Any, tokenizer: Any, image_seq_len: int = 169,
                     chat_template: str | None = None, **kwargs: Any) -> None:
            # The same attributes as SmolVLMProcessor.__init__, minus the video ones.
            self.fake_image_token = getattr(
                tokenizer, "fake_image_token", "<fake_token_around_image>"
            )
            self.image_token = getattr(tokenizer, "image_token", "<image>")
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.end_of_utterance_token = getattr(
                tokenizer, "end_of_utterance_token", "<end_of_utterance>"
            )
            self.global_image_token = getattr(tokenizer, "global_image_token", GLOBAL_TAG)
            self.image_seq_len = image_seq_len
            ProcessorMixin.__init__(
                self, image_processor, tokenizer, chat_template=chat_template, **kwargs
            )

    return SmolVLMImageOnlyProcessor


# -- the processor's resize arithmetic ---------------------------------------------------------
def split_plan(image_processor: Any, image_size: tuple[int, int]) -> TileSplit:
    """How the processor splits an image of ``(width, height)``, mirroring its integer arithmetic.

    ``resize`` (longest edge, keep aspect) -> ``resize_for_vision_encoder`` (sides up to
    multiples of the tile) -> ``split_images`` (tiles, only when a side exceeds one tile).
    """
    w, h = image_size
    tile = int(size_field(image_processor.max_image_size, "longest_edge"))
    if not getattr(image_processor, "do_image_splitting", True):
        return TileSplit(0, 0, (tile, tile))
    if getattr(image_processor, "do_resize", True):
        h, w = _resize_to_size(h, w, image_processor.size)
    h, w = _resize_for_vision_encoder(h, w, tile)
    if h > tile or w > tile:
        return TileSplit(h // tile, w // tile, (w, h))
    return TileSplit(0, 0, (w, h))


def _resize_to_size(h: int, w: int, size: Any) -> tuple[int, int]:
    """(h, w) after the processor's ``resize(size=...)``."""
    longest = size_field(size, "longest_edge")
    if longest:
        h, w = _rescale_to_max_len(h, w, int(longest))
        return _scale_below_upper_bound(h, w, MAX_IMAGE_SIZE)
    height, width = size_field(size, "height"), size_field(size, "width")
    if height and width:
        return int(height), int(width)
    raise ValueError(f"size must have 'longest_edge' or 'height' and 'width', got {size!r}")


def _rescale_to_max_len(h: int, w: int, max_len: int) -> tuple[int, int]:
    """``_resize_output_size_rescale_to_max_len``: longest edge -> max_len, short side even."""
    aspect = w / h
    if w >= h:
        w = max_len
        h = int(w / aspect)
        h += h % 2
    else:
        h = max_len
        w = int(h * aspect)
        w += w % 2
    return max(h, 1), max(w, 1)


def _scale_below_upper_bound(h: int, w: int, max_len: int) -> tuple[int, int]:
    """``_resize_output_size_scale_below_upper_bound``."""
    aspect = w / h
    if w >= h and w > max_len:
        w = max_len
        h = int(w / aspect)
    elif h > w and h > max_len:
        h = max_len
        w = int(h * aspect)
    return max(h, 1), max(w, 1)


def _resize_for_vision_encoder(h: int, w: int, tile: int) -> tuple[int, int]:
    """``resize_for_vision_encoder``: long side up to a tile multiple, short side follows."""
    aspect = w / h
    if w >= h:
        w = math.ceil(w / tile) * tile
        h = math.ceil(int(w / aspect) / tile) * tile
    else:
        h = math.ceil(h / tile) * tile
        w = math.ceil(int(h * aspect) / tile) * tile
    return h, w


# -- grids -------------------------------------------------------------------------------------
def _image_layout(pos: torch.Tensor, start: int, size: tuple[int, int], split: TileSplit,
                  tile: int, n: int) -> ImageLayout:
    """Grids of one image whose tokens start at ``start`` within the sample's visual tokens."""
    w, h = size
    cell = tile / n
    n_tiles = split.tile_rows * split.tile_cols
    key = start + n_tiles * n * n + torch.arange(n * n)  # the global frame comes last
    geo = GridGeometry(rows=n, cols=n, cell_size=(cell, cell), scale=(tile / w, tile / h),
                       offset=(0.0, 0.0), image_size=(w, h))
    grids = [Grid(positions=pos[key], key_index=key, geometry=geo, name="global")]
    if n_tiles:
        key = start + stitched_index(split.tile_rows, split.tile_cols, n)
        cw, ch = split.canvas
        geo = GridGeometry(rows=split.tile_rows * n, cols=split.tile_cols * n,
                           cell_size=(cell, cell), scale=(cw / w, ch / h), offset=(0.0, 0.0),
                           image_size=(w, h))
        grids.append(Grid(positions=pos[key], key_index=key, geometry=geo, name="tiles"))
    return ImageLayout(grids=tuple(grids), image_size=(w, h))


def stitched_index(tile_rows: int, tile_cols: int, n: int) -> torch.Tensor:
    """(tile_rows*n * tile_cols*n,) token index, row-major over the stitched canvas grid.

    Tile (tr, tc) is the ``tr * tile_cols + tc``-th block of ``n*n`` tokens; its token (a, b)
    sits at ``a * n + b`` within the block and at canvas cell (tr*n + a, tc*n + b).
    """
    r = torch.arange(tile_rows * n)
    c = torch.arange(tile_cols * n)
    block = (r[:, None] // n) * tile_cols + c[None, :] // n  # (R, C) tile index
    within = (r[:, None] % n) * n + c[None, :] % n  # (R, C)
    return (block * n * n + within).flatten()


def _check_global_tags(ids: torch.Tensor, layouts: list[ImageLayout], tag_id: int, b: int) -> None:
    """Each image's global block must follow its <global-img> tag, or the split plan is wrong."""
    for i, im in enumerate(layouts):
        first = int(im.grids[0].positions[0])
        if first == 0 or int(ids[first - 1]) != tag_id:
            raise ValueError(
                f"sample {b}, image {i}: the global image's tokens do not follow {GLOBAL_TAG}; "
                "the processor's split differs from its settings (other call kwargs?)"
            )


def _global_tag_id(processor: Any) -> int:
    tag = getattr(processor, "global_image_token", None) or getattr(
        processor, "global_image_tag", GLOBAL_TAG
    )
    tok = processor.tokenizer
    tag_id = tok.convert_tokens_to_ids(tag)
    if tag_id is None or tag_id == tok.unk_token_id:
        raise ValueError(f"the processor's tokenizer has no {tag!r} token")
    return int(tag_id)


