"""What ``lookhere train`` runs, torch-free: `TrainConfig` composes the model (`ModelArguments`,
`LoRAArguments`), the data (`DataArguments`), the grounding losses (`KLALConfig`, `LLLConfig`,
`TargetConfig`) and the final evaluation (`EvalArguments`). The optimiser, schedule, precision,
checkpoints and distribution are transformers' `TrainingArguments`, parsed beside it by
`HfArgumentParser`; no field of either is restated here.

A config file (YAML or JSON) has one mapping per section (``model``, ``lora``, ``data``,
``klal``, ``lll``, ``target``, ``eval``) and ``training`` for the `TrainingArguments` fields::

    model: {name: llava-hf/llava-1.5-7b-hf, dtype: bfloat16}
    lora: {r: 16}
    data: {format: refcoco, train: data/refer, eval_split: val}
    klal: {weight: 1.0}
    training: {output_dir: runs/llava-refcoco, learning_rate: 2.0e-4, bf16: true}
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lookhere.data.formats import STYLES
from lookhere.data.source import DataArguments
from lookhere.losses.config import KLALConfig, LLLConfig, TargetConfig

DTYPES = ("auto", "float32", "bfloat16", "float16")
TRAINING_SECTION = "training"


@dataclass(frozen=True)
class ModelArguments:
    """The model fine-tuned."""

    name: str = field(default="lookhere:llava-mini", metadata={
        "help": "a hub id, a local model folder, or lookhere:llava-mini (the shipped miniature)"})
    dtype: str = field(default="auto", metadata={
        "help": f"weights' dtype as loaded, one of {', '.join(DTYPES)} ('auto': the "
                "checkpoint's); mixed precision is TrainingArguments' --bf16"})

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("model.name must name a model (hub id, folder or lookhere:<name>)")
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype must be one of {DTYPES}, got {self.dtype!r}")


@dataclass(frozen=True)
class LoRAArguments:
    """LoRA on the language model's attention projections (PEFT); r = 0 fine-tunes every
    weight."""

    r: int = field(default=0, metadata={"help": "LoRA rank; 0 = full fine-tuning"})
    alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale alpha / r)"})
    dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    merge: bool = field(default=False, metadata={
        "help": "save the merged model (loadable as a plain checkpoint) instead of the adapter"})

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 0:
            raise ValueError(f"lora.r must be an int >= 0, got {self.r!r}")
        if self.alpha < 1:
            raise ValueError(f"lora.alpha must be >= 1, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def active(self) -> bool:
        return self.r > 0


@dataclass(frozen=True)
class EvalArguments:
    """The evaluation at the end of training (or alone, ``--eval-only``): `lookhere eval` on
    the eval split."""

    batch_size: int = field(default=8, metadata={"help": "samples per generation batch"})
    max_new_tokens: int = field(default=32, metadata={"help": "generated tokens per answer"})
    style: str = field(default="plain", metadata={
        "help": f"box and point answer style to parse: {', '.join(STYLES)}"})
    attention: bool = field(default=True, metadata={
        "help": "also measure the answer's attention ratio (a teacher-forced forward)"})

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"eval.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.style not in STYLES:
            raise ValueError(f"eval.style must be one of {STYLES}, got {self.style!r}")


def _off() -> LLLConfig:
    return LLLConfig(weight=0.0)


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``lookhere train`` runs besides the `TrainingArguments`."""

    model: ModelArguments = field(default_factory=ModelArguments)
    lora: LoRAArguments = field(default_factory=LoRAArguments)
    data: DataArguments = field(default_factory=DataArguments)
    klal: KLALConfig = field(default_factory=KLALConfig)
    lll: LLLConfig = field(default_factory=_off)
    target: TargetConfig = field(default_factory=TargetConfig)
    eval: EvalArguments = field(default_factory=EvalArguments)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        """The config of a mapping of sections; missing sections and fields keep their
        defaults; unknown ones, wrong types and invalid values are ValueErrors naming the
        dotted field (``klal.weight: ...``)."""
        return _build(cls, data, "")


def _build(cls: type, data: Any, where: str) -> Any:
    """``cls`` from the mapping ``data`` found at the dotted path ``where`` ('' at the top)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping of {cls.__name__} fields, "
                         f"got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where or 'config'}: unknown field(s) {unknown}; expected some of "
                         f"{sorted(names)}")
    values = {}
    for key, value in data.items():
        hint = hints[key]
        path = f"{where}.{key}" if where else key
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            values[key] = _build(hint, value, path)
        else:
            values[key] = _plain(value, hint, path)
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}" if where else str(err)) from None


def _plain(value: Any, hint: Any, where: str) -> Any:
    """A scalar or list from a file, as its field's type: lists become tuples; an int where a
    float is expected is a float; anything else of the wrong type is an error."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if value is None:
        if type(None) in typing.get_args(hint):
            return None
        raise ValueError(f"{where}: must not be null")
    base = args[0] if len(args) == 1 and typing.get_origin(hint) is not tuple else hint
    if typing.get_origin(base) is tuple:
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base in (int, float, str, bool) and (not isinstance(value, base)
                                            or (base is int and isinstance(value, bool))):
        raise ValueError(f"{where}: expected {base.__name__}, got {json.dumps(value)}")
    if base is float and not math.isfinite(value):
        raise ValueError(f"{where}: must be finite, got {value}")
    return value


def read_config_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(sections, training)`` of a YAML (``.yaml``/``.yml``) or JSON config file: the lookhere
    sections as a mapping and the ``training`` mapping of `TrainingArguments` fields. Errors are
    ValueErrors naming the file (and line, where the parser gives one)."""
    path = Path(path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise ValueError(f"{path}{line}: not valid YAML "
                             f"({getattr(err, 'problem', None) or err})") from None
    elif path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    else:
        raise ValueError(f"{path}: a config file ends in .yaml, .yml or .json")
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    sections = {f.name for f in dataclasses.fields(TrainConfig)} | {TRAINING_SECTION}
    unknown = sorted(set(data) - sections)
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {unknown}; expected some of "
                         f"{sorted(sections)}")
    training = data.pop(TRAINING_SECTION, None) or {}
    if not isinstance(training, dict):
        raise ValueError(f"{path}: section 'training' must be a mapping of TrainingArguments "
                         "fields")
    return data, training
