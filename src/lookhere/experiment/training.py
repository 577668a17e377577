"""What the experiments share: `TrainSpec` (one tiny model trained from scratch: model, data
and optimiser), its Trainer plumbing (`training_args`, `fit`), and `ExperimentConfig`, the JSON
form of an experiment config that nests `TrainSpec` with the loss and target configs."""

from __future__ import annotations

import dataclasses
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from lookhere.models.tiny import build_tiny, resolve_size
from lookhere.train.arguments import trainer_args


@dataclass(frozen=True)
class TrainSpec:
    """A tiny VLM trained from scratch: its family and size, the training data seed, and the
    optimiser (AdamW, cosine schedule with linear warm-up). Two runs with equal specs train the
    same initial weights on the same batches in the same order."""

    family: str = field(default="llava", metadata={"help": "model family (architecture)"})
    size: str = field(default="demo", metadata={"help": "tiny size preset (models.tiny)"})
    image_size: int = field(default=112, metadata={
        "help": "image side in px; must equal the tiny model's input size"})
    steps: int = field(default=1000, metadata={"help": "optimizer steps per trained model"})
    batch_size: int = field(default=8, metadata={"help": "samples per step"})
    lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "linear warm-up share"})
    seed: int = field(default=0, metadata={"help": "model init and training seed"})
    data_seed: int = field(default=0, metadata={
        "help": "training data seed; held-out data use data_seed + 10000"})

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.lr < 1:  # NaN fails too, before any training step
            raise ValueError(f"lr must be in (0, 1), got {self.lr!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        side = resolve_size(self.size).image_size
        if side != self.image_size:
            raise ValueError(f"image_size {self.image_size} must equal the {self.size!r} model's "
                             f"input size {side}")

    @property
    def samples(self) -> int:
        """Training samples seen: steps x batch size."""
        return self.steps * self.batch_size

    def build_model(self) -> tuple[torch.nn.Module, Any]:
        """The initial (model, processor): random weights from ``seed``."""
        return build_tiny(self.family, self.size, seed=self.seed)


def training_args(spec: TrainSpec, out_dir: Path, progress: bool = True) -> Any:
    """The experiments' `TrainingArguments` (AdamW, cosine with warm-up, no checkpoints)."""
    return trainer_args(out_dir, steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr,
                        warmup_ratio=spec.warmup_ratio, seed=spec.seed,
                        data_seed=spec.data_seed, progress=progress, log_points=30)


def fit(trainer: Any, steps: int) -> dict[str, Any]:
    """Train; the record: steps, seconds, and the logged losses."""
    start = time.perf_counter()
    trainer.train()
    return {"steps": steps, "seconds": time.perf_counter() - start,
            "log": [r for r in trainer.state.log_history if "loss" in r]}


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
        from lookhere.models.tiny import resolve_size

        klal = getattr(self, "klal", None)
        if klal is not None and klal.layers is not None:
            resolve_layers(klal.layers, resolve_size(self.train.size).layers)

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
