"""Training with auxiliary grounding losses: config, the trainer, LoRA."""

from lookhere.losses.config import KLALConfig, LLLConfig
from lookhere.train.lora import apply_lora
from lookhere.train.trainer import GroundingTrainer

__all__ = ["GroundingTrainer", "KLALConfig", "LLLConfig", "apply_lora"]
