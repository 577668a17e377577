"""A tiny random SAM built offline, shared by the refiner, end-to-end and CLI tests."""

import torch
from transformers import SamConfig, SamModel, SamProcessor
from transformers.models.sam import SamImageProcessorPil

SIDE, PATCH, DIM = 64, 8, 32  # SAM input side and patch: an 8 x 8 embedding, 32 x 32 logits


def tiny_sam(seed: int = 0) -> tuple[SamModel, SamProcessor]:
    """A ~76k-parameter SAM on 64 px inputs and its processor, built offline."""
    config = SamConfig(
        vision_config=dict(hidden_size=32, output_channels=DIM, num_hidden_layers=2,
                           num_attention_heads=2, image_size=SIDE, patch_size=PATCH,
                           window_size=4, global_attn_indexes=[1], num_pos_feats=DIM // 2,
                           mlp_dim=64),
        prompt_encoder_config=dict(hidden_size=DIM, image_size=SIDE, patch_size=PATCH,
                                   mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=DIM, mlp_dim=64, num_hidden_layers=2,
                                 num_attention_heads=2, iou_head_hidden_dim=16),
    )
    model = SamModel(config).eval()
    # SAM's own init (vision std 1e-10) gives logits of ~1e-5: all masks empty. Wider weights
    # give masks that depend on the image and the box; norms stay at their identity init.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    quarter = SIDE // 4
    processor = SamProcessor(SamImageProcessorPil(
        size={"longest_edge": SIDE}, pad_size={"height": SIDE, "width": SIDE},
        mask_size={"longest_edge": quarter}, mask_pad_size={"height": quarter, "width": quarter}))
    return model, processor
