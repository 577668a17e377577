"""Training with auxiliary grounding losses: config, the trainer, LoRA."""

from lookhere.train.config import KLALConfig
from lookhere.train.lora import apply_lora
from lookhere.train.trainer import GroundingTrainer

__all__ = ["GroundingTrainer", "KLALConfig", "apply_lora"]
