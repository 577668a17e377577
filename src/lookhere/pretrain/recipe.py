"""LLaVA-1.5's recipe in miniature: vision, alignment and instruction stages on Scenes.

LLaVA-1.5 starts from a contrastively pretrained CLIP tower and a pretrained Vicuna, trains the
projector alone on captions (stage 1), then the projector and the language model on an
instruction mix (stage 2), the tower frozen throughout. lookhere has neither pretrained part, so
the miniature has three stages (docs/methods.md, "Pretraining"):

1. ``vision``: the CLIP tower alone, dense per-patch labels (`DensePatchObjective`: colour,
   shape, size and glyph on one tower layer, the boxes on the last; LLaVA reads both), then the
   projector's first layer set from the dense heads (`lookhere.pretrain.projector`);
2. ``align``: captions naming every object with its box; the projector *and* the language model
   trained (a from-scratch language model must learn the language too);
3. ``instruct``: the Scenes skill mix; projector and language model trained.

LLaVA-1.5 freezes the tower in both, and so does the default here; ``tower_stages`` trains it
too (as LLaVA-OneVision and Qwen2-VL do), which made the language loss rewrite the tower around
colour and forget the boxes (docs/results.md, 6.5).

Stages 2-3 use the plain ``transformers.Trainer`` with next-token prediction only: no KLAL and
no LLL term (the papers' base models never saw them). Every stage draws fresh samples from a
disjoint index range of the Scenes generator, resumes from its last Trainer checkpoint, and
saves its model with ``save_pretrained``; a finished stage is skipped on a rerun.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lookhere.data.dataset import TaskDataset
from lookhere.data.synthetic import make_task
from lookhere.io import write_json
from lookhere.models.adapter import get_adapter
from lookhere.models.tiny import build_tiny, save_tiny
from lookhere.pretrain.config import (  # noqa: F401 (the configs, named here too)
    PROJECTOR_INITS,
    STAGE_MODES,
    STAGES,
    PretrainConfig,
    StageConfig,
)
from lookhere.pretrain.conversation import ConversationCollator
from lookhere.pretrain.projector import held_out_pixels, init_from_heads
from lookhere.pretrain.vision import DensePatchCollator, DensePatchObjective
from lookhere.train.arguments import trainer_args

#: first sample index of each stage in the Scenes stream, so no two stages share a sample
STAGE_START = {"vision": 0, "align": 10_000_000, "instruct": 20_000_000}
#: scenes (after the vision stage's own) whose logits centre and scale the projector's init
PROJECTOR_INIT_SCENES = 64


@dataclass
class StageRecord:
    """What a stage did: steps, seconds of training and the logged losses."""

    stage: str
    steps: int
    seconds: float
    log: list[dict[str, float]]
    resumed_from: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def stage_dataset(config: PretrainConfig, stage: str, world_size: int = 1) -> TaskDataset:
    """The stage's samples: ``steps * batch * processes`` fresh Scenes from its own range."""
    sc = config.stage(stage)
    task = make_task("scenes", seed=config.data_seed, **config.scenes(stage))
    return TaskDataset(task, sc.steps * sc.batch_size * world_size, start=STAGE_START[stage])


def training_args(config: PretrainConfig, stage: str, out_dir: Path, progress: bool) -> Any:
    sc = config.stage(stage)
    return trainer_args(out_dir, steps=sc.steps, batch_size=sc.batch_size, lr=sc.lr,
                        warmup_ratio=sc.warmup_ratio, seed=config.seed,
                        data_seed=config.data_seed, progress=progress, log_points=50,
                        save_steps=config.save_steps, workers=config.workers, bf16=config.bf16)


def last_checkpoint(out_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(out_dir)) if out_dir.is_dir() else None


def ntp_trainer(model: Any, processor: Any, dataset: Any, args: Any, tower: bool = False,
                tower_lr_scale: float = 1.0) -> Any:
    """The stock ``Trainer`` on next-token prediction over `Sample`s (their conversations, every
    answer in the loss): projector and language model trained, the vision tower frozen (as in
    LLaVA-1.5) unless ``tower``, then at ``tower_lr_scale`` times the stage's learning rate. The
    batches hold plain model inputs only: no KLAL or LLL term can be computed."""
    from transformers import Trainer

    model.model.vision_tower.requires_grad_(tower)
    model.train()
    collate = ConversationCollator(processor, get_adapter(model))
    optimizers = (None, None)
    if tower and tower_lr_scale != 1.0:
        optimizers = (tower_optimizer(model, args, tower_lr_scale), None)
    return Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate,
                   optimizers=optimizers)


def tower_optimizer(model: Any, args: Any, scale: float) -> torch.optim.Optimizer:
    """AdamW as the Trainer builds it (no weight decay here), the tower's parameters in a group
    of their own at ``scale`` times the learning rate; the Trainer's schedule scales both."""
    tower = {id(p) for p in model.model.vision_tower.parameters()}
    trained = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trained if id(p) not in tower], "lr": args.learning_rate},
              {"params": [p for p in trained if id(p) in tower],
               "lr": args.learning_rate * scale}]
    return torch.optim.AdamW(groups, lr=args.learning_rate, weight_decay=args.weight_decay,
                             betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)


def run_stage(config: PretrainConfig, stage: str, out_dir: Path, progress: bool = True
              ) -> StageRecord:
    """Train one stage from the previous stage's model (or fresh weights); save ``final/``."""
    from transformers import LlavaForConditionalGeneration, Trainer

    stage_dir = out_dir / stage
    if stage == "vision":
        model, processor = build_tiny(config.family, config.size, seed=config.seed)
        read_layers(model, config.feature_layers, seed=config.seed)
    else:
        prev = out_dir / STAGES[STAGES.index(stage) - 1] / "final"
        if not (prev / "config.json").is_file():
            raise FileNotFoundError(f"stage {stage!r} starts from {prev}, which does not exist: "
                                    "run the earlier stages first")
        model, processor = load_stage_model(prev)
    if config.family != "llava" or not isinstance(model, LlavaForConditionalGeneration):
        raise ValueError("the pretraining recipe builds LLaVA-1.5's class (family 'llava')")
    args = training_args(config, stage, stage_dir, progress)
    dataset = stage_dataset(config, stage, args.world_size)
    if stage == "vision":
        tower = model.model.vision_tower
        trained = DensePatchObjective(tower, tower.config.hidden_size, config.box_weight,
                                      config.attribute_layer).train()
        side = tower.config.image_size // tower.config.patch_size
        trainer = Trainer(model=trained, args=args, train_dataset=dataset,
                          data_collator=DensePatchCollator(processor.image_processor,
                                                           side * side))
    else:
        tower = stage in config.tower_stages
        trainer = ntp_trainer(model, processor, dataset, args, tower=tower,
                              tower_lr_scale=config.tower_lr_scale)
    resume = last_checkpoint(stage_dir)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - start
    if stage == "vision" and config.projector_init == "heads":
        init_projector(config, model, processor, trained.eval(), args.world_size)
    record = StageRecord(stage, config.stage(stage).steps, seconds,
                         [r for r in trainer.state.log_history if "loss" in r], resume)
    if trainer.is_world_process_zero():
        model.eval()
        save_tiny(model, processor, stage_dir / "final")
        write_json(record.to_json(), stage_dir / "record.json")
    trainer.accelerator.wait_for_everyone()
    return record


def init_projector(config: PretrainConfig, model: Any, processor: Any,
                   objective: DensePatchObjective, world_size: int) -> None:
    """The projector's first layer from the dense heads, scaled on scenes no stage trains on."""
    sc = config.stage("vision")
    task = make_task("scenes", seed=config.data_seed, **config.scenes("vision"))
    first = STAGE_START["vision"] + sc.steps * sc.batch_size * world_size
    samples = [task.sample(first + i) for i in range(PROJECTOR_INIT_SCENES)]
    init_from_heads(model.model.multi_modal_projector, objective, config.feature_layers,
                    held_out_pixels(processor, samples))


def read_layers(model: Any, layers: list[int], seed: int) -> None:
    """Make LLaVA read the tower's ``layers``, concatenated along channels (transformers' own
    ``vision_feature_layer`` list), with a fresh projector of the wider input (seeded)."""
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    if layers == [model.config.vision_feature_layer]:
        return
    model.config.vision_feature_layer = layers if len(layers) > 1 else layers[0]
    torch.manual_seed(seed)
    dtype = model.model.multi_modal_projector.linear_1.weight.dtype
    projector = LlavaMultiModalProjector(model.config).to(dtype)
    projector.apply(model._init_weights)  # the initialisation the model's own projector had
    model.model.multi_modal_projector = projector


def load_stage_model(path: str | Path) -> tuple[Any, Any]:
    """(model, processor) saved by a stage, with SDPA attention."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(str(path), attn_implementation="sdpa")
    return model, AutoProcessor.from_pretrained(str(path))


def run(config: PretrainConfig, out_dir: str | Path, stages: Sequence[str] = STAGES,
        progress: bool = True) -> list[StageRecord]:
    """Every requested stage in order; finished stages (``<stage>/final``) are skipped.

    ``out_dir/config.json`` pins the recipe: a rerun with other settings is refused, so a
    resumed run never mixes two recipes.
    """
    out_dir = Path(out_dir)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"stages must be among {STAGES}, got {unknown}")
    _pin_config(config, out_dir)
    records = []
    for stage in STAGES:
        if stage not in stages:
            continue
        if (out_dir / stage / "final" / "config.json").is_file():
            if progress:
                print(f"[pretrain] {stage}: done already ({out_dir / stage / 'final'})")
            continue
        if progress:
            print(f"[pretrain] {stage}: {config.stage(stage).steps} steps", flush=True)
        records.append(run_stage(config, stage, out_dir, progress))
    return records


def _pin_config(config: PretrainConfig, out_dir: Path) -> None:
    path = out_dir / "config.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != json.loads(json.dumps(config.to_json())):
            raise ValueError(f"{out_dir} holds a run with other settings ({path}); resume it with "
                             "those settings or choose another --out")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(config.to_json(), path)

