"""What the experiments share: `TrainSpec` (one trained model: a fresh tiny model or a
checkpoint to fine-tune, data and optimiser), its Trainer plumbing (`training_args`, `fit`), and
`ExperimentConfig`, the JSON form of an experiment config that nests `TrainSpec` with the loss
and target configs; `shapes_defaults`, the Shapes scenes every experiment draws."""

from __future__ import annotations

import dataclasses
import functools
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from lookhere.models.tiny import build_tiny, resolve_size
from lookhere.train.arguments import trainer_args


@dataclass(frozen=True)
class ModelShape:
    """What an experiment checks of its model before building it."""

    family: str
    layers: int  # language-model layers
    heads: int  # attention heads per language-model layer
    image_size: int  # the vision input side, px
    patch_size: int


@dataclass(frozen=True)
class TrainSpec:
    """The model an experiment trains: a fresh tiny VLM (``family``, ``size``, random weights
    from ``seed``) or, with ``init``, a checkpoint fine-tuned; the training data seed and the
    optimiser (AdamW, cosine schedule with linear warm-up). Two runs with equal specs train the
    same initial weights on the same batches in the same order."""

    family: str = field(default="llava", metadata={"help": "model family (architecture)"})
    size: str = field(default="demo", metadata={"help": "tiny size preset (models.tiny)"})
    image_size: int = field(default=112, metadata={
        "help": "image side in px; must equal the model's input size"})
    steps: int = field(default=1000, metadata={"help": "optimizer steps per trained model"})
    batch_size: int = field(default=8, metadata={"help": "samples per step"})
    lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "linear warm-up share"})
    seed: int = field(default=0, metadata={
        "help": "model init and training seed; fine-tuning a checkpoint (init), also the order "
                "of the batches, the only thing a seed can change there"})
    data_seed: int = field(default=0, metadata={
        "help": "training data seed; held-out data use data_seed + 10000"})
    init: str = field(default="", metadata={
        "help": "fine-tune this checkpoint (a model folder, or lookhere:llava-mini, the shipped "
                "pretrained miniature) instead of training a fresh tiny model from scratch; its "
                "architecture replaces family and size"})

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.lr < 1:  # NaN fails too, before any training step
            raise ValueError(f"lr must be in (0, 1), got {self.lr!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        side = self.shape.image_size
        if side != self.image_size:
            raise ValueError(f"image_size {self.image_size} must equal the {self.model_name!r} "
                             f"model's input size {side}")

    @property
    def shape(self) -> ModelShape:
        """The model's family, layers and input geometry, from the size preset or the
        checkpoint's config (no weights read)."""
        if self.init:
            return checkpoint_shape(self.init)
        size = resolve_size(self.size)
        return ModelShape(self.family, size.layers, size.heads, size.image_size, size.patch_size)

    def describe(self, count: str = "a") -> str:
        """How the models start and train, for reports: ``count`` models "fine-tuned from the
        checkpoint X" or "tiny <family> models (preset P) trained from scratch"."""
        shape = self.shape
        arch = f"{shape.layers} LLM layers of {shape.heads} heads"
        models = "model" if count.lower() in ("a", "one") else "models"
        if self.init:
            return (f"{count} {models} fine-tuned {self.steps} steps (lr {self.lr:g}) from the "
                    f"pretrained checkpoint {self.init} ({arch})")
        return (f"{count} tiny {self.family} {models} (preset {self.size}, {arch}) trained "
                f"{self.steps} steps (lr {self.lr:g}) from scratch")

    @property
    def model_name(self) -> str:
        """The checkpoint fine-tuned, or ``tiny-<family>-<size>``."""
        return self.init or f"tiny-{self.family}-{self.size}"

    @property
    def samples(self) -> int:
        """Training samples seen: steps x batch size."""
        return self.steps * self.batch_size

    def build_model(self) -> tuple[torch.nn.Module, Any]:
        """The initial (model, processor): the checkpoint ``init`` (fp32, SDPA), or random
        weights from ``seed``."""
        if self.init:
            from lookhere.models.loading import load_model

            model, processor, _ = load_model(self.init, dtype=torch.float32)
            return model, processor
        return build_tiny(self.family, self.size, seed=self.seed)


@functools.lru_cache(maxsize=16)
def checkpoint_shape(name_or_path: str) -> ModelShape:
    """`ModelShape` of a checkpoint (a folder, a hub id or ``lookhere:<name>``), from its config;
    an unreadable or unsupported one is a ValueError naming ``init``."""
    from transformers import AutoConfig

    from lookhere.models.adapter import get_adapter
    from lookhere.models.pretrained import resolve

    try:
        config = AutoConfig.from_pretrained(resolve(name_or_path))
        family = get_adapter(config).family
        vision = config.vision_config
        text = config.text_config
        return ModelShape(family, text.num_hidden_layers, text.num_attention_heads,
                          vision.image_size, vision.patch_size)
    except (OSError, ValueError, AttributeError, KeyError, TypeError) as err:
        raise ValueError(f"init {name_or_path!r}: not a checkpoint of a supported VLM with one "
                         f"fixed input size ({err})") from None


def training_args(spec: TrainSpec, out_dir: Path, progress: bool = True) -> Any:
    """The experiments' `TrainingArguments` (AdamW, cosine with warm-up, no checkpoints)."""
    return trainer_args(out_dir, steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr,
                        warmup_ratio=spec.warmup_ratio, seed=spec.seed,
                        data_seed=sampler_seed(spec), progress=progress, log_points=30)


def sampler_seed(spec: TrainSpec) -> int:
    """The Trainer's ``data_seed`` (the order of the batches). A fresh model's seed already
    changes its initial weights, and its runs keep the data seed's order (as before ``init``
    existed); a checkpoint's weights are fixed, so there the seed shuffles the batches, or
    every seed would repeat the same run."""
    return spec.data_seed + spec.seed if spec.init else spec.data_seed


@dataclass(frozen=True)
class TrainRecord:
    """How a model of an experiment was trained, as its results file records it (``train``):
    a field that is None is left out of the JSON (an untrained control is ``{"steps": 0}``)."""

    steps: int  # optimizer steps
    seconds: float | None = None  # wall time of the training
    log: list[dict[str, float]] | None = None  # the Trainer's logged records with a loss
    lll: dict[str, Any] | None = None  # the condition's `LLLConfig` (the lens experiment)
    reused_from: str | None = None  # where a model trained elsewhere comes from

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainRecord:
        return cls(**data)


def fit(trainer: Any, steps: int, progress: bool = True) -> TrainRecord:
    """Train; the record: steps, seconds, and the logged losses (printed only with
    ``progress``: without its bar, the Trainer would print every logged dict)."""
    if not progress:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    trainer.train()
    return TrainRecord(steps, time.perf_counter() - start,
                       [r for r in trainer.state.log_history if "loss" in r])


class ExperimentConfig:
    """JSON for a frozen experiment-config dataclass whose fields may be config dataclasses
    (`TrainSpec`, `KLALConfig`, `LLLConfig`, `TargetConfig`): ``to_json`` nests them;
    ``from_json`` reads that, and the flat layout of results files written before the nesting
    (a key that is no field is the nested field of that name; ``RENAMED`` maps the others to
    ``"field.name"``)."""

    RENAMED: ClassVar[dict[str, str]] = {}

    def check_klal_layers(self) -> None:
        """KLAL's layers name layers of the experiment's model: refused before any training,
        not at its first step."""
        from lookhere.models.adapter import resolve_layers

        klal = getattr(self, "klal", None)
        if klal is not None and klal.layers is not None:
            resolve_layers(klal.layers, self.train.shape.layers)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Any:
        """The config a results file was made with (``results["config"]``)."""
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        nested = {n: hints[n] for n in fields if dataclasses.is_dataclass(hints[n])}
        given: dict[str, Any] = {}
        for key, value in data.items():
            path = key if key in fields else cls.RENAMED.get(key) or _owner(nested, key, cls)
            outer, _, inner = path.partition(".")
            if inner:
                given.setdefault(outer, {})[inner] = value
            else:
                given[outer] = value if outer not in nested else {**given.get(outer, {}),
                                                                   **value}
        kw = {}
        for name, value in given.items():
            if name in nested:
                base = fields[name].default_factory()
                kw[name] = dataclasses.replace(base, **value)
            else:
                kw[name] = tuple(value) if isinstance(value, list) \
                    and typing.get_origin(hints[name]) is tuple else value
        return cls(**kw)


def _owner(nested: dict[str, type], key: str, cls: type) -> str:
    owners = [n for n, t in nested.items() if key in {f.name for f in dataclasses.fields(t)}]
    if len(owners) != 1:
        raise ValueError(f"{cls.__name__}.from_json: unknown key {key!r}")
    return f"{owners[0]}.{key}"


class ShapesExperiment:
    """What the experiments on Shapes (heads, lens) share: the generator settings from the
    config's ``train`` (its image size) and ``shapes_options``, and their samples."""

    # the fields of the config dataclasses this is mixed into
    train: TrainSpec
    shapes_options: dict[str, Any]

    def shapes(self, mode: str) -> dict[str, Any]:
        """The Shapes settings in ``mode`` ('vqa' or 'rec'): `shapes_defaults`, then the
        overrides."""
        return {**shapes_defaults(self.train.image_size), **self.shapes_options, "mode": mode}

    def shapes_samples(self, mode: str, seed: int, n: int, start: int = 0) -> list[Any]:
        """Samples ``start .. start + n`` of the Shapes stream of ``seed`` in ``mode``."""
        from lookhere.data.dataset import TaskDataset
        from lookhere.data.synthetic import make_task

        task = make_task("shapes", seed=seed, **self.shapes(mode))
        return list(TaskDataset(task, n, start).materialise().samples)


def shapes_defaults(image_size: int) -> dict[str, Any]:
    """Shapes settings at the model's input size: 2-4 objects, radii 0.10 / 0.16 of the side so
    a small object (22 px at 112 px) spans about two 14 px patches and an IoU of 0.5 is
    reachable on the 8x8 grid (docs/results.md)."""
    return {"image_size": image_size, "min_objects": 2, "max_objects": 4,
            "small_radius": 0.10, "large_radius": 0.16}
