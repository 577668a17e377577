"""PaliGemma 2 (`PaliGemmaForConditionalGeneration` with a Gemma 2 language model), and PaliGemma.

The processor squashes every image to ``image_processor.size`` (SigLIP: no aspect preservation,
crop or pad) and writes the prompt as ``<image> * image_seq_length`` per image, ``<bos>``, the
text and a newline; the answer follows as the "suffix". The SigLIP tower's patches are the
visual tokens, one per ``patch_size`` px, row-major: one square grid per image.

Attention, as transformers computes it:
- The text config asks for bidirectional attention over the prefix (``use_bidirectional_attention``,
  so the attention modules have ``is_causal=False``). With ``token_type_ids`` (0 prefix: images
  and prompt; 1 suffix: the answer) every implementation builds the same block mask: the prefix
  attends both ways, the suffix causally. Without them, eager and SDPA part ways: eager builds a
  causal mask, while SDPA, when the batch has no padding, gets no mask and ``is_causal=False``,
  so every token attends every token. The probe follows what the model's attention actually
  receives (the mask, else the module's ``is_causal``), so its rows are SDPA's in both cases.
- Gemma 2 caps attention logits (``attn_logit_softcapping``), which SDPA lacks, and transformers
  refuses SDPA for it: PaliGemma 2's language model runs on eager attention
  (`attn_implementation`), which the probe wraps too. PaliGemma (Gemma 1) runs on SDPA.
- Gemma 2 also caps the final logits (``final_logit_softcapping``): `lm_head` returns the head
  with that cap, so the logit lens reproduces the model's logits.

The collator appends the answer with ``token_type_ids`` 1 (`answer_token_values`): the causal
suffix, as the processor's ``suffix=`` makes it, so the answer never sees itself ahead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

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

IMAGE = "<image>"


class SoftcappedHead(nn.Module):
    """An LM head followed by Gemma 2's final logit cap: ``cap * tanh(head(h) / cap)``.

    A view for the logit lens; it wraps the model's own head (no copy) and changes nothing in
    the model.
    """

    def __init__(self, head: nn.Module, cap: float) -> None:
        super().__init__()
        self.head, self.cap = head, float(cap)
        self.out_features = getattr(head, "out_features", None) or head.weight.shape[0]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(hidden) / self.cap) * self.cap


@register_adapter
class PaliGemmaAdapter(Adapter):
    # No chat template: the images, then the question; the processor adds <bos> after the last
    # image and a newline after the text. The answer ends with EOS (the collator's default).
    chat = ChatFormat("{images}{question}", "", "")
    family = "paligemma"
    model_types = ("paligemma",)
    answer_token_values: ClassVar[Mapping[str, int]] = {"attention_mask": 1, "token_type_ids": 1}

    @property
    def attn_implementation(self) -> str | dict[str, str]:
        """SDPA, or eager for a language model transformers runs only on eager (Gemma 2)."""
        from transformers.models.auto.modeling_auto import MODEL_MAPPING

        text_class = MODEL_MAPPING[type(self.text_config)]
        if getattr(text_class, "_supports_sdpa", False):
            return "sdpa"
        return {"text_config": "eager", "vision_config": "sdpa"}

    def lm_head(self, model: nn.Module) -> nn.Module:
        head = model.get_output_embeddings()
        cap = getattr(self.text_config, "final_logit_softcapping", None)
        return head if cap is None else SoftcappedHead(head, cap)

    def layout(self, batch: Mapping[str, Any], images: ImageSizes, processor: Any) -> VisualLayout:
        vision = self.config.vision_config
        patch = vision.patch_size
        side = vision.image_size // patch
        canvas_h, canvas_w = canvas_size(batch)
        if (canvas_h, canvas_w) != (vision.image_size, vision.image_size):
            raise ValueError(f"pixel_values are {canvas_w}x{canvas_h} but the vision tower takes "
                             f"{vision.image_size}x{vision.image_size} px images")
        per_image = side * side
        positions = self.visual_positions(batch["input_ids"])
        counts = [count_image_blocks(p, per_image, b) for b, p in enumerate(positions)]
        sizes = check_image_count(images, counts)
        ip = processor.image_processor
        return block_layout(positions, sizes, per_image, lambda size: squash_geometry(
            ip, size, side, (patch, patch), (canvas_w, canvas_h)))

    @classmethod
    def process(cls, processor: Any, texts: Any, images: ImageSizes, **kwargs: Any) -> Any:
        """The processor's batch without its ``labels`` (all -100 without a ``suffix``; lookhere
        writes its own)."""
        batch = super().process(processor, texts, images, **kwargs)
        batch.pop("labels", None)
        return batch

    @classmethod
    def build_tiny(cls, size: Any, seed: int) -> tuple[nn.Module, Any]:
        from transformers import (
            PaliGemmaConfig,
            PaliGemmaForConditionalGeneration,
            PaliGemmaProcessor,
            SiglipImageProcessorPil,
        )

        from lookhere.models.tiny import train_tokenizer

        tok = train_tokenizer([IMAGE], size.vocab_size, extra_words=size.extra_words)
        side = size.image_size // size.patch_size
        image_processor = SiglipImageProcessorPil(
            size={"height": size.image_size, "width": size.image_size},
            image_seq_length=side * side,
        )
        # The processor adds its 1,152 <locNNNN> / <segNNN> tokens: the vocabulary is final
        # only after it.
        processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
        config = PaliGemmaConfig(
            text_config=_gemma2_text_config(size, tok), vocab_size=len(tok),
            vision_config=dict(
                model_type="siglip_vision_model", hidden_size=size.vision_hidden,
                intermediate_size=2 * size.vision_hidden, num_hidden_layers=size.vision_layers,
                num_attention_heads=size.vision_heads, image_size=size.image_size,
                patch_size=size.patch_size, vision_use_head=False,
            ),
            image_token_index=processor.image_token_id, projection_dim=size.hidden,
            hidden_size=size.hidden,
        )
        attn = cls(config).attn_implementation
        model = PaliGemmaForConditionalGeneration._from_config(config, attn_implementation=attn)
        return model, processor

    @classmethod
    def tiny_prompt(cls, processor: Any, text: str, n_images: int) -> str:
        return IMAGE * n_images + text


def _gemma2_text_config(size: Any, tok: Any) -> dict[str, Any]:
    """PaliGemma 2's Gemma 2 language model in miniature, soft caps included."""
    head_dim = size.hidden // size.heads
    side = size.image_size // size.patch_size
    return dict(
        model_type="gemma2", hidden_size=size.hidden, intermediate_size=size.intermediate,
        num_hidden_layers=size.layers, num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads, head_dim=head_dim, query_pre_attn_scalar=head_dim,
        vocab_size=len(tok), max_position_embeddings=4096,
        # Sliding and full layers alternate (layer 0 sliding), the window half an image block so
        # that it clips attention in tests. Both logit caps (the real ones are 50 and 30) are
        # small enough to change the tiny model's scores, so a probe or lens that forgot them
        # fails its tests.
        layer_types=["sliding_attention" if i % 2 == 0 else "full_attention"
                     for i in range(size.layers)],
        sliding_window=max(4, side * side // 2),
        attn_logit_softcapping=2.0, final_logit_softcapping=3.0,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
