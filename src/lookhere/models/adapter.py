"""The adapter interface: one small class per VLM family, chosen through a registry.

An adapter answers, for one family, the questions every lookhere method asks of a model:
where the language model's attention modules are, how many (KV) heads they have, where the
final norm and LM head are (for the logit lens), and, for a processed batch, where each image's
visual tokens sit and which original-image pixels each covers (`VisualLayout`).

Adding a family is one new module with an `Adapter` subclass decorated by `register_adapter`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from numbers import Integral
from typing import Any, ClassVar

import torch
from torch import nn

# the resolver is torch-free (configs check layers before any model): named here too
from lookhere.config.layers import resolve_layers  # noqa: F401
from lookhere.models.layout import Grid, GridGeometry, ImageLayout, SampleLayout, VisualLayout
from lookhere.models.prompt import ChatFormat

ImageSizes = Sequence[Sequence[Any]]  # per sample: PIL images or (width, height) pairs

_REGISTRY: dict[str, type[Adapter]] = {}
_FALLBACK: list[Callable[[Any], Adapter]] = []  # at most one: `register_fallback`


class UnsupportedModelError(ValueError):
    """The model's family has no registered adapter."""


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: add an adapter to the registry under ``cls.family``."""
    if not cls.family or not cls.model_types:
        raise ValueError(f"{cls.__name__} must set `family` and `model_types`")
    if cls.family in _REGISTRY:
        raise ValueError(f"adapter family {cls.family!r} is already registered")
    _REGISTRY[cls.family] = cls
    return cls


def register_fallback(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: the adapter `get_adapter` returns for a model no family claims.

    ``cls(config)`` raises `UnsupportedModelError` itself where the config lacks what it needs.
    It is not a family: `families` does not list it and the family tests do not run on it.
    """
    if _FALLBACK:
        raise ValueError(f"a fallback adapter is already registered: {_FALLBACK[0].__name__}")
    _FALLBACK.append(cls)
    return cls


def supported_families() -> str:
    """The registered families and their model types, for error messages."""
    return ", ".join(f"{c.family} ({'/'.join(c.model_types)})" for c in _REGISTRY.values())


def families() -> list[str]:
    """Registered family names, in registration order."""
    return list(_REGISTRY)


def adapter_class(family: str) -> type[Adapter]:
    if family not in _REGISTRY:
        raise UnsupportedModelError(f"unknown family {family!r}; supported: {', '.join(_REGISTRY)}")
    return _REGISTRY[family]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside DDP / FSDP-style (``.module``) and PEFT wrappers."""
    for _ in range(8):  # wrappers nest a few levels at most
        if hasattr(model, "get_base_model"):  # PEFT
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), nn.Module):  # DDP, DataParallel, ...
            model = model.module
        else:
            break
    return model


def get_adapter(model_or_config: nn.Module | Any) -> Adapter:
    """The adapter for a loaded (possibly wrapped) model or its config, by ``config.model_type``.

    A model type no family claims gets the fallback adapter (`lookhere.models.generic`) where
    one is registered; it raises `UnsupportedModelError`, listing the supported families and
    saying what to pass as ``adapter=``, when the config has no image token.
    """
    if isinstance(model_or_config, nn.Module):
        model_or_config = unwrap_model(model_or_config)
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    for cls in _REGISTRY.values():
        if model_type in cls.model_types:
            return cls(config)
    if _FALLBACK:
        return _FALLBACK[0](config)
    raise UnsupportedModelError(
        f"no lookhere adapter for model_type {model_type!r}; supported families: "
        f"{supported_families()}"
    )


class Adapter(ABC):
    """Family-specific knowledge about a VLM. Instances are cheap; they hold only the config."""

    family: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    #: Whether one prompt may hold several images (the probe tests use 2 where allowed).
    multi_image: ClassVar[bool] = True
    #: The chat turn for processors without a chat template (the tiny ones); mirrors the
    #: family's official template. Real checkpoints use their own template (models.prompt).
    chat: ClassVar[ChatFormat] = ChatFormat()
    #: Values of the processor's per-token entries on the answer tokens a collator appends
    #: after the prompt (entries not named get 0: text). PaliGemma's answer is its causal
    #: suffix (token_type_ids 1).
    answer_token_values: ClassVar[Mapping[str, int]] = {"attention_mask": 1}
    #: The processor class `load_processor` reads a checkpoint's processor with; None: the
    #: AutoProcessor. Families whose real processor needs torchvision (a video processor) name
    #: an image+text subclass here.
    processor_class: ClassVar[type | None] = None

    def __init__(self, config: Any) -> None:
        self.config = config
        self.text_config = config.get_text_config()

    # -- heads and modules ---------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.text_config.num_hidden_layers

    @property
    def num_heads(self) -> int:
        return self.text_config.num_attention_heads

    @property
    def num_kv_heads(self) -> int:
        return getattr(self.text_config, "num_key_value_heads", None) or self.num_heads

    @property
    def head_dim(self) -> int:
        tc = self.text_config
        return getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads

    @property
    def image_token_id(self) -> int:
        value = config_image_token_id(self.config)
        if value is None:
            raise AttributeError(f"{type(self.config).__name__} has no image token id")
        return value

    @property
    def attn_implementation(self) -> str | dict[str, str]:
        """What lookhere loads the model with (`models.loading`): SDPA, which the probe wraps."""
        return "sdpa"

    def language_model(self, model: nn.Module) -> nn.Module:
        """The decoder stack (has ``.layers`` and ``.norm``)."""
        return model.model.language_model

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return self.language_model(model).layers

    def attention_modules(self, model: nn.Module) -> list[nn.Module]:
        """The language model's self-attention modules, index = layer."""
        return [layer.self_attn for layer in self.decoder_layers(model)]

    def final_norm(self, model: nn.Module) -> nn.Module:
        return self.language_model(model).norm

    def lm_head(self, model: nn.Module) -> nn.Module:
        return model.get_output_embeddings()

    # -- visual tokens ---------------------------------------------------------------------------
    def visual_positions(self, input_ids: torch.Tensor) -> list[torch.Tensor]:
        """Per sample, the sorted sequence positions of every visual (image placeholder) token."""
        _check_input_ids(input_ids)
        return [torch.nonzero(row == self.image_token_id).flatten() for row in input_ids]

    @abstractmethod
    def layout(
        self, batch: Mapping[str, Any], images: ImageSizes, processor: Any
    ) -> VisualLayout:
        """Visual layout of a processed batch.

        Args:
            batch: the processor's output (``input_ids`` and the family's image tensors).
            images: per sample, the original images (PIL) or their ``(width, height)``, in prompt
                order; they give the original pixel frame the grids map to.
            processor: the processor that made ``batch``; its image settings (resize, crop,
                pad) define the pixel mapping.
        """

    # -- tiny models -------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def build_tiny(cls, size: Any, seed: int) -> tuple[nn.Module, Any]:
        """A random-weight model of the family's real class and a working offline processor."""

    @classmethod
    def load_processor(cls, path: str, **kwargs: Any) -> Any:
        """The family's processor from a local folder or hub id (``from_pretrained`` of
        ``processor_class``, else of the AutoProcessor)."""
        if cls.processor_class is not None:
            return cls.processor_class.from_pretrained(path, **kwargs)
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path, **kwargs)

    @classmethod
    def process(cls, processor: Any, texts: Sequence[str], images: ImageSizes,
                **kwargs: Any) -> Any:
        """Run the processor on prompts and their per-sample image lists (PIL).

        Images go in as nested per-sample lists: every supported processor accepts that, and
        some (Gemma3, SmolVLM, Idefics3) read a flat list as one sample holding every image.
        """
        nested = [list(ims) for ims in images]
        return processor(images=nested if any(nested) else None, text=list(texts),
                         return_tensors="pt", **kwargs)

    @classmethod
    def tiny_prompt(cls, processor: Any, text: str, n_images: int) -> str:
        """A raw prompt string with ``n_images`` image placeholders for the tiny processor."""
        return processor.image_token * n_images + text


def config_image_token_id(config: Any) -> int | None:
    """The image placeholder id of a VLM config (``image_token_id`` or ``image_token_index``, on
    the config or its text config), None when it has none."""
    configs = [config]
    text = getattr(config, "text_config", None)
    if text is not None:
        configs.append(text)
    for cfg in configs:
        for name in ("image_token_id", "image_token_index"):
            value = getattr(cfg, name, None)
            if isinstance(value, Integral) and not isinstance(value, bool):
                return int(value)
    return None


def image_size_of(image: Any) -> tuple[int, int]:
    """(width, height) of a PIL image or of a (width, height) pair."""
    if hasattr(image, "size") and not isinstance(image, (tuple, list)):
        w, h = image.size
    else:
        try:
            w, h = image
        except (TypeError, ValueError):
            raise TypeError(f"expected a PIL image or (width, height), got {image!r}") from None
    if int(w) <= 0 or int(h) <= 0:
        raise ValueError(f"image size must be positive (width, height), got {(w, h)}")
    return int(w), int(h)


def check_image_count(images: ImageSizes, counts: Sequence[int]) -> list[list[tuple[int, int]]]:
    """Validate ``images`` against the number of images found in each sample's tokens."""
    if len(images) != len(counts):
        raise ValueError(f"images has {len(images)} samples but the batch has {len(counts)}")
    sizes = []
    for b, (ims, n) in enumerate(zip(images, counts, strict=True)):
        if len(ims) != n:
            raise ValueError(f"sample {b}: images lists {len(ims)} images, the tokens hold {n}")
        sizes.append([image_size_of(im) for im in ims])
    return sizes


def size_field(size: Any, key: str) -> Any:
    """A field of an image processor's size setting (a dict or a ``SizeDict``), None if unset."""
    return size.get(key) if isinstance(size, Mapping) else getattr(size, key, None)


def resized_size(size: Any, w: int, h: int) -> tuple[int, int]:
    """(new_w, new_h) of the image processors' ``resize`` for "shortest_edge" or height/width.

    Mirrors ``get_resize_output_image_size(default_to_square=False)``, which truncates.
    """
    shortest = size_field(size, "shortest_edge")
    if shortest and not size_field(size, "longest_edge"):
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(shortest * long / short)
        return (shortest, new_long) if w <= h else (new_long, shortest)
    if size_field(size, "height") and size_field(size, "width"):
        return size_field(size, "width"), size_field(size, "height")
    raise ValueError(f"unsupported image processor size {size}")


def squash_geometry(image_processor: Any, image_size: tuple[int, int], side: int,
                    cell: tuple[float, float], canvas: tuple[int, int]) -> GridGeometry:
    """Pixel map of an image processor that resizes to exactly ``size`` (height, width), with no
    aspect preservation, crop or pad (Gemma3 without pan-and-scan, SigLIP / PaliGemma): each
    axis has its own scale and there is no offset; ``side x side`` cells of ``cell`` canvas
    pixels. ``canvas`` is the processed images' (width, height), checked against the resize.
    """
    w, h = image_size
    target = _resize_target(image_processor, w, h)
    if target != tuple(canvas):
        raise ValueError(
            f"pixel_values are {canvas[0]}x{canvas[1]} (w x h) but processor.image_processor "
            f"resizes to {target[0]}x{target[1]}; was the batch made by this processor?"
        )
    return GridGeometry(rows=side, cols=side, cell_size=cell, scale=(target[0] / w, target[1] / h),
                        offset=(0.0, 0.0), image_size=(w, h))


def _resize_target(image_processor: Any, w: int, h: int) -> tuple[int, int]:
    """(width, height) after the processor's resize (the image itself when it does not resize)."""
    if not getattr(image_processor, "do_resize", True):
        return w, h
    size = image_processor.size
    height, width = size_field(size, "height"), size_field(size, "width")
    if not (height and width):
        raise ValueError(
            f"processor.image_processor.size must be {{'height', 'width'}} (a plain resize), "
            f"got {size}"
        )
    return int(width), int(height)


def canvas_size(batch: Mapping[str, Any]) -> tuple[int, int]:
    """(height, width) of the processed images (``pixel_values``' last two dims); a ValueError
    naming the tensor when the batch lacks it (a batch of ``input_ids`` alone)."""
    pixels = batch.get("pixel_values")
    if not isinstance(pixels, torch.Tensor):
        raise ValueError("batch has no 'pixel_values'; pass the processor's output with images")
    h, w = pixels.shape[-2:]
    return int(h), int(w)


def count_image_blocks(pos: torch.Tensor, per_image: int, b: int) -> int:
    """Images in one sample whose image tokens form contiguous blocks of ``per_image``."""
    n = len(pos) // per_image
    blocks = pos[: n * per_image].view(n, per_image)
    if len(pos) % per_image or bool((blocks.diff(dim=1) != 1).any()):
        raise ValueError(
            f"sample {b}: the {len(pos)} image tokens do not form contiguous blocks of "
            f"{per_image}; was the prompt expanded by this model's processor?"
        )
    return n


def images_per_sample(tokens: Sequence[int], per_image: Sequence[int]) -> list[int]:
    """Split the batch's images (in order) among samples by their image-token counts.

    ``tokens[b]`` is sample b's number of image tokens, ``per_image[i]`` image i's block length.
    """
    counts, i = [], 0
    for b, n in enumerate(tokens):
        start, total = i, 0
        while total < n and i < len(per_image):
            total, i = total + per_image[i], i + 1
        if total != n:
            raise ValueError(
                f"sample {b}: {n} image tokens do not match the token blocks of its "
                f"{i - start} images ({total} tokens); was the prompt expanded by this processor?"
            )
        counts.append(i - start)
    if i != len(per_image):
        raise ValueError(f"the batch has {len(per_image)} images, the tokens hold only {i}")
    return counts


def block_layout(
    positions: Sequence[torch.Tensor],
    sizes: Sequence[Sequence[tuple[int, int]]],
    per_image: int,
    geometry: Callable[[tuple[int, int]], GridGeometry],
) -> VisualLayout:
    """Layout of families where each image is one block of ``per_image`` tokens and one grid."""
    samples = []
    for pos, ims in zip(positions, sizes, strict=True):
        layouts = []
        for i, size in enumerate(ims):
            key_index = torch.arange(i * per_image, (i + 1) * per_image)
            grid = Grid(positions=pos[key_index], key_index=key_index, geometry=geometry(size))
            layouts.append(ImageLayout(grids=(grid,), image_size=size))
        samples.append(SampleLayout(visual_positions=pos, images=tuple(layouts)))
    return VisualLayout(samples=tuple(samples))


def _check_input_ids(input_ids: torch.Tensor) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError("input_ids must be a (batch, seq) tensor")


def resolve_heads(heads: Sequence[Sequence[int]], n_layers: int, n_heads: int
                  ) -> list[tuple[int, int]]:
    """``(layer, head)`` int pairs, layers resolved as `resolve_layers` does (negative from the
    end), each checked to exist; ValueError naming the pair otherwise."""
    try:
        pairs = [(_index(layer), _index(head)) for layer, head in heads]
    except (TypeError, ValueError):
        raise ValueError(f"heads must be (layer, head) pairs of integers, got {heads!r}") from None
    if not pairs:
        raise ValueError("heads must name at least one (layer, head)")
    bad = [p for p in pairs if not (-n_layers <= p[0] < n_layers and 0 <= p[1] < n_heads)]
    if bad:
        raise ValueError(f"heads {bad} do not fit this model ({n_layers} layers x {n_heads} "
                         "heads)")
    return [(layer % n_layers, head) for layer, head in pairs]


def _index(value: Any) -> int:
    """An integer index (a float like 2.0 counts, 2.7 or True does not)."""
    if isinstance(value, bool) or not isinstance(value, (Integral, float)) or int(value) != value:
        raise ValueError(f"not an integer index: {value!r}")
    return int(value)
