"""The pretraining recipe's configs, torch-free: `PretrainConfig` (the whole recipe, checked
against its size preset) and `StageConfig` (one stage's optimisation); the stages, the label
maps of the vision stage (`LABEL_CLASSES`, which size a projector start from the dense heads).
``lookhere pretrain train --help`` builds its options from these without torch;
`lookhere.pretrain.recipe` runs them and names them too."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from lookhere.config.sizes import resolve_size
from lookhere.data.synthetic.scenes import (
    BOX_BINS,
    BOX_EDGES,
    COLOUR_CLASSES,
    GLYPH_CLASSES,
    SHAPE_CLASSES,
    SIZE_CLASSES,
)

STAGES = ("vision", "align", "instruct")
STAGE_MODES = {"vision": "vision", "align": "caption", "instruct": "instruct"}
PROJECTOR_INITS = ("heads", "random")
#: the vision stage's label maps and their classes (`lookhere.pretrain.vision`)
LABEL_CLASSES = {"colour": len(COLOUR_CLASSES), "shape": len(SHAPE_CLASSES),
                 "size": len(SIZE_CLASSES), "glyph": len(GLYPH_CLASSES),
                 **{f"box_{e}": BOX_BINS + 1 for e in BOX_EDGES}}


@dataclass(frozen=True)
class StageConfig:
    """One stage's optimisation (AdamW, cosine schedule with warm-up)."""

    steps: int = field(metadata={"help": "Optimiser steps."})
    lr: float = field(metadata={"help": "Peak learning rate."})
    batch_size: int = field(default=16, metadata={"help": "Samples per step and process."})
    warmup_ratio: float = field(default=0.03, metadata={"help": "Warm-up, fraction of steps."})

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {self.steps!r}")
        if not (0 < self.lr < 1):
            raise ValueError(f"lr must be in (0, 1), got {self.lr!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")


@dataclass(frozen=True)
class PretrainConfig:
    """The whole recipe. The defaults are the shipped checkpoint's (its model card)."""

    family: str = field(default="llava", metadata={"help": "Model family (LLaVA-1.5's class)."})
    size: str = field(default="mini", metadata={"help": "Tiny size preset."})
    seed: int = field(default=0, metadata={"help": "Seed of the initial weights and the Trainer."})
    data_seed: int = field(default=0, metadata={"help": "Seed of the Scenes generator."})
    vision: StageConfig = field(default_factory=lambda: StageConfig(1500, 2e-3, 32))
    align: StageConfig = field(default_factory=lambda: StageConfig(800, 1e-3, 16))
    instruct: StageConfig = field(default_factory=lambda: StageConfig(7000, 1e-3, 32))
    box_weight: float = field(default=1.0, metadata={
        "help": "Weight of each of the 4 box-edge maps in the vision stage's dense loss (the "
                "other 4 maps weigh 1)."})
    attribute_layer: int = field(default=-3, metadata={
        "help": "Tower layer (a hidden-state index, as LLaVA's vision_feature_layer) whose patch "
                "tokens predict colour, shape, size and glyph in the vision stage; the box maps "
                "read the last layer. Below -1, the language model reads both layers, "
                "concatenated (vision_feature_layer=[attribute_layer, -1])."})
    projector_init: str = field(default="heads", metadata={
        "help": "How the vision stage leaves the projector: 'heads' (its first layer starts as the "
                "dense heads, every label map loud; lookhere.pretrain.projector) or 'random'."})
    tower_stages: tuple[str, ...] = field(default=(), metadata={
        "help": "Next-token stages that train the vision tower too (align, instruct; 'none': "
                "frozen in both, as LLaVA-1.5)."})
    tower_lr_scale: float = field(default=1.0, metadata={
        "help": "The tower's learning rate in those stages, as a fraction of the stage's lr "
                "(LLaVA-OneVision trains its tower at 1/5 of the language model's)."})
    turns: int = field(default=4, metadata={
        "help": "Most questions per instruction sample, one conversation about one image."})
    save_steps: int = field(default=250, metadata={"help": "Checkpoint every this many steps."})
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision (GPU)."})
    workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})

    def __post_init__(self) -> None:
        for name in STAGES:
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, StageConfig(**value))
        size = resolve_size(self.size)
        if (not isinstance(self.attribute_layer, int)
                or not -size.vision_layers <= self.attribute_layer <= -1):
            raise ValueError(f"attribute_layer must be an int in [-{size.vision_layers}, -1] (the "
                             f"{self.size!r} tower has {size.vision_layers} layers), got "
                             f"{self.attribute_layer!r}")
        stages = tuple(self.tower_stages)
        object.__setattr__(self, "tower_stages", () if stages == ("none",) else stages)
        if not 0 < self.tower_lr_scale <= 1:
            raise ValueError(f"tower_lr_scale must be in (0, 1], got {self.tower_lr_scale!r}")
        if any(s not in STAGES[1:] for s in self.tower_stages):
            raise ValueError(f"tower_stages must be among {STAGES[1:]} (or 'none'), got "
                             f"{list(stages)}")
        if self.projector_init not in PROJECTOR_INITS:
            raise ValueError(f"projector_init must be one of {PROJECTOR_INITS}, got "
                             f"{self.projector_init!r}")
        logits = sum(LABEL_CLASSES.values())
        if self.projector_init == "heads" and size.hidden < logits:
            raise ValueError(f"projector_init='heads' needs a language model of at least {logits} "
                             f"hidden units (one per dense label), the {self.size!r} size has "
                             f"{size.hidden}: use projector_init='random'")
        if not 0 <= self.box_weight:
            raise ValueError(f"box_weight must be >= 0, got {self.box_weight!r}")
        if self.save_steps < 1 or self.workers < 0 or self.turns < 1:
            raise ValueError("save_steps and turns must be >= 1 and workers >= 0")

    @property
    def feature_layers(self) -> list[int]:
        """The tower layers the language model reads (LLaVA's ``vision_feature_layer``)."""
        return [-1] if self.attribute_layer == -1 else [self.attribute_layer, -1]

    def stage(self, name: str) -> StageConfig:
        if name not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {name!r}")
        return getattr(self, name)

    def scenes(self, stage: str) -> dict[str, Any]:
        """The Scenes settings of a stage, at the model's input size and patch."""
        size = resolve_size(self.size)
        extra = {"turns": self.turns} if stage == "instruct" else {}
        return {"mode": STAGE_MODES[stage], "image_size": size.image_size,
                "patch_size": size.patch_size, **extra}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PretrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown PretrainConfig fields: {sorted(unknown)}")
        return cls(**data)
