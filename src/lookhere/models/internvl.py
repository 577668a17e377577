"""InternVL (`InternVLForConditionalGeneration`, InternVL3): tiles plus a thumbnail, pixel-shuffled.

The processor (``GotOcr2ImageProcessor`` with ``crop_to_patches``) picks a ``cols x rows`` tile
arrangement for each image (the one of ``min_patches..max_patches`` tiles whose aspect ratio is
closest to the image's: ``get_optimal_tiled_canvas``), squashes the image to
``cols * T x rows * T`` and cuts it into ``T x T`` tiles, row-major; when there are several tiles it
appends the whole image squashed to ``T x T`` (the thumbnail). Each frame goes through the vision
tower, and a pixel shuffle (``downsample_ratio`` 0.5) merges 2 x 2 patches into one token: a tile
gives ``n x n`` tokens, ``n = T / patch * downsample_ratio``, row-major. The prompt holds

    <img> <IMG_CONTEXT> * (tiles [+ thumbnail]) * n² </img>

per image. An image is one `ImageLayout` with grid "global" (the thumbnail, or the one frame of
an image that was not tiled: n x n over the whole image) and, when tiled, grid "tiles": the tiles'
token grids stitched in image order into one ``(rows * n) x (cols * n)`` grid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import InternVLProcessor

from lookhere.models.adapter import (
    Adapter,
    ImageSizes,
    check_image_count,
    register_adapter,
    size_field,
)
from lookhere.models.idefics3 import stitched_index
from lookhere.models.layout import Grid, GridGeometry, ImageLayout, SampleLayout, VisualLayout
from lookhere.models.prompt import ChatFormat

START, END, CONTEXT, VIDEO = "<img>", "</img>", "<IMG_CONTEXT>", "<video>"
SPECIAL_TOKENS = [START, END, CONTEXT, VIDEO, "<|im_start|>", "<|im_end|>"]


class InternVLImageTextProcessor(InternVLProcessor):
    """`InternVLProcessor` for images and text (no torchvision needed).

    The real class also takes a video processor, and every video processor needs torchvision
    (absent here). `ProcessorMixin` reads its sub-processors and the settings it saves from
    ``__init__``'s signature: this one names no video processor.
    """

    def __init__(self, image_processor: Any = None, tokenizer: Any = None,
                 image_seq_length: int = 256, chat_template: str | None = None,
                 **kwargs: Any) -> None:
        # The parent hands video_processor=None on to ProcessorMixin, which zips the arguments
        # with get_attributes() (image_processor, tokenizer), so that None is dropped.
        super().__init__(image_processor, tokenizer, None, image_seq_length=image_seq_length,
                         chat_template=chat_template, **kwargs)


@register_adapter
class InternVLAdapter(Adapter):
    chat = ChatFormat("<|im_start|>user\n{images}\n{question}<|im_end|>\n<|im_start|>assistant\n",
                      "", "<|im_end|>\n")
    family = "internvl"
    model_types = ("internvl",)
    processor_class = InternVLImageTextProcessor

    def layout(self, batch: Mapping[str, Any], images: ImageSizes, processor: Any) -> VisualLayout:
        ids = batch["input_ids"]
        positions = self.visual_positions(ids)
        start_id = processor.start_image_token_id
        counts = [int((row == start_id).sum()) for row in ids]  # one <img> per image
        sizes = check_image_count(images, counts)
        tile, n = self._tile_and_side(processor)
        ip = processor.image_processor
        samples = []
        for b, (pos, ims) in enumerate(zip(positions, sizes, strict=True)):
            frames = _frames_per_image(ids[b], pos, start_id, n * n, b)
            layouts, first = [], 0
            for i, (size, n_frames) in enumerate(zip(ims, frames, strict=True)):
                cols, rows = _tiling(ip, size, tile, n_frames, b, i)
                layouts.append(_image_layout(pos, first, size, cols, rows, tile, n))
                first += n_frames * n * n
            samples.append(SampleLayout(visual_positions=pos, images=tuple(layouts)))
        return VisualLayout(samples=tuple(samples))

    def _tile_and_side(self, processor: Any) -> tuple[int, int]:
        """(tile side T in pixels, tokens per tile side n), checked against the processor."""
        size = processor.image_processor.size
        tile, height = size_field(size, "width"), size_field(size, "height")
        vision = self.config.vision_config
        patch = vision.patch_size[0] if isinstance(vision.patch_size, (list, tuple)) \
            else vision.patch_size
        n = round(tile / patch * self.config.downsample_ratio)
        if tile != height or processor.image_seq_length != n * n:
            raise ValueError(f"processor tiles of {tile}x{height} px with image_seq_length "
                             f"{processor.image_seq_length}, but the model makes {n}x{n} tokens "
                             f"of square {tile} px tiles (patch {patch}, downsample_ratio "
                             f"{self.config.downsample_ratio})")
        return tile, n

    @classmethod
    def build_tiny(cls, size: Any, seed: int) -> tuple[nn.Module, Any]:
        from transformers import (
            GotOcr2ImageProcessorPil,
            InternVLConfig,
            InternVLForConditionalGeneration,
            InternVLVisionConfig,
            PreTrainedTokenizerFast,
            Qwen2Config,
        )

        from lookhere.models.tiny import train_tokenizer

        base = train_tokenizer(SPECIAL_TOKENS, size.vocab_size, pad="<|endoftext|>",
                               eos="<|im_end|>", bos=None, extra_words=size.extra_words)
        # InternVLProcessor reads these named tokens (and their ids) from the tokenizer.
        tok = PreTrainedTokenizerFast(
            tokenizer_object=base.backend_tokenizer, pad_token="<|endoftext|>",
            eos_token="<|im_end|>", unk_token="<unk>", additional_special_tokens=SPECIAL_TOKENS,
            start_image_token=START, end_image_token=END, context_image_token=CONTEXT,
            video_token=VIDEO,
        )
        # TinySize.patch_size is the pixel side of one LLM token: vision patch / 0.5.
        patch = size.patch_size // 2
        vision = InternVLVisionConfig(
            hidden_size=size.vision_hidden, intermediate_size=2 * size.vision_hidden,
            num_hidden_layers=size.vision_layers, num_attention_heads=size.vision_heads,
            image_size=[size.image_size] * 2, patch_size=[patch] * 2,
        )
        text = Qwen2Config(
            hidden_size=size.hidden, intermediate_size=size.intermediate,
            num_hidden_layers=size.layers, num_attention_heads=size.heads,
            num_key_value_heads=size.kv_heads, vocab_size=len(tok), max_position_embeddings=4096,
            pad_token_id=tok.pad_token_id, bos_token_id=None, eos_token_id=tok.eos_token_id,
        )
        n = size.image_size // size.patch_size
        config = InternVLConfig(
            vision_config=vision, text_config=text, image_token_id=tok.context_image_token_id,
            image_seq_length=n * n, downsample_ratio=0.5,
        )
        model = InternVLForConditionalGeneration._from_config(config, attn_implementation="sdpa")
        # Tiles of image_size px, up to 4 of them (2 x 2, 1 x 4, ...), plus the thumbnail.
        image_processor = GotOcr2ImageProcessorPil(
            size={"height": size.image_size, "width": size.image_size},
            crop_to_patches=True, min_patches=1, max_patches=4,
        )
        processor = InternVLImageTextProcessor(image_processor=image_processor, tokenizer=tok,
                                               image_seq_length=n * n)
        return model, processor


def _frames_per_image(ids: torch.Tensor, pos: torch.Tensor, start_id: int, per_frame: int,
                      b: int) -> list[int]:
    """Frames (tiles and thumbnail) of each image: its <img> ... </img> run of image tokens."""
    starts = torch.nonzero(ids == start_id).flatten().tolist()
    frames = []
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(ids)
        n = int(((pos > start) & (pos < end)).sum())
        if n == 0 or n % per_frame:
            raise ValueError(f"sample {b}, image {i}: {n} image tokens after its {START} are not "
                             f"whole frames of {per_frame}; was the prompt expanded by this "
                             "model's processor?")
        frames.append(n // per_frame)
    return frames


def _tiling(ip: Any, size: tuple[int, int], tile: int, n_frames: int, b: int, i: int
            ) -> tuple[int, int]:
    """(cols, rows) of an image's tiles, (0, 0) when it was one frame; checked against the
    processor's arithmetic for its settings (``get_optimal_tiled_canvas``)."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
        get_optimal_tiled_canvas,
    )

    if n_frames == 1:
        return 0, 0
    w, h = size
    cols, rows = get_optimal_tiled_canvas((h, w), (tile, tile), ip.min_patches, ip.max_patches)
    if cols * rows + 1 != n_frames:
        raise ValueError(f"sample {b}, image {i}: the tokens hold {n_frames} frames but the "
                         f"processor's settings tile a {w}x{h} image {cols}x{rows} (+1 "
                         "thumbnail); were the images processed with other min/max_patches?")
    return cols, rows


def _image_layout(pos: torch.Tensor, start: int, size: tuple[int, int], cols: int, rows: int,
                  tile: int, n: int) -> ImageLayout:
    """Grids of one image whose tokens start at ``start`` within the sample's visual tokens."""
    w, h = size
    cell = tile / n
    n_tiles = cols * rows
    key = start + n_tiles * n * n + torch.arange(n * n)  # the thumbnail (or only frame): last
    geo = GridGeometry(rows=n, cols=n, cell_size=(cell, cell), scale=(tile / w, tile / h),
                       offset=(0.0, 0.0), image_size=(w, h))
    grids = [Grid(positions=pos[key], key_index=key, geometry=geo, name="global")]
    if n_tiles:
        key = start + stitched_index(rows, cols, n)
        geo = GridGeometry(rows=rows * n, cols=cols * n, cell_size=(cell, cell),
                           scale=(cols * tile / w, rows * tile / h), offset=(0.0, 0.0),
                           image_size=(w, h))
        grids.append(Grid(positions=pos[key], key_index=key, geometry=geo, name="tiles"))
    return ImageLayout(grids=tuple(grids), image_size=(w, h))
