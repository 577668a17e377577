"""The synthetic-task interface: a config dataclass and a deterministic ``sample(index)``."""

from __future__ import annotations

import numbers
import zlib
from abc import ABC, abstractmethod
from dataclasses import asdict, fields
from typing import Any, ClassVar

import numpy as np

from lookhere.data.sample import Sample

TASKS: dict[str, type[SyntheticTask]] = {}


def register_task(cls: type[SyntheticTask]) -> type[SyntheticTask]:
    """Class decorator: add a task to the registry under ``cls.name``."""
    old = TASKS.get(cls.name)
    if old is not None and old.__qualname__ != cls.__qualname__:
        raise ValueError(f"task {cls.name!r} is already registered by {old.__qualname__}")
    if old is not None:  # the same class registered again (a module reloaded): keep the first
        return cls
    TASKS[cls.name] = cls
    return cls


class SyntheticTask(ABC):
    """A generator whose sample ``index`` depends only on (seed, index, config).

    So samples can be made lazily, in any order, or in parallel workers, with identical results
    (byte-identical images). Subclasses set ``name`` and ``config_class`` (a dataclass whose
    fields carry ``metadata={"help": ...}`` and validate in ``__post_init__``).
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = object

    def __init__(self, config: Any = None, seed: int = 0, **overrides: Any) -> None:
        if config is None:
            config = self.config_class(**overrides)
        elif overrides:
            raise TypeError("pass either a config or keyword overrides, not both")
        if not isinstance(config, self.config_class):
            raise TypeError(f"config must be a {self.config_class.__name__}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.config, self.seed = config, seed

    def rng(self, index: int) -> np.random.Generator:
        """The generator for one sample: a function of (task name, seed, index) only."""
        if not isinstance(index, (int, np.integer)) or index < 0:
            raise ValueError(f"index must be a non-negative int, got {index!r}")
        return np.random.default_rng([zlib.crc32(self.name.encode()), self.seed, int(index)])

    def sample_id(self, index: int) -> str:
        return f"{self.name}-s{self.seed}-{index:07d}"

    @abstractmethod
    def sample(self, index: int) -> Sample:
        """Sample ``index`` (deterministic)."""

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)


def make_task(name: str, seed: int = 0, **config: Any) -> SyntheticTask:
    """A registered task by name, with config overrides."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))}")
    cls = TASKS[name]
    known = {f.name for f in fields(cls.config_class)}
    unknown = set(config) - known
    if unknown:
        raise ValueError(f"unknown {name} settings {sorted(unknown)}; known: {sorted(known)}")
    defaults = cls.config_class()
    for key, value in config.items():
        _check_type(name, key, value, getattr(defaults, key))
    return cls(seed=seed, **config)


#: a default's type -> the types a setting may have in its place (bool first: it is an int)
_KINDS = {bool: (bool,), int: (numbers.Integral,), float: (numbers.Real,), str: (str,),
          tuple: (tuple, list)}


def _check_type(task: str, key: str, value: Any, default: Any) -> None:
    """A setting must have its default's kind (an int where an int is, a number where a float
    is), so a string never reaches a comparison deep in the generator."""
    want = next((k for k in _KINDS if isinstance(default, k)), None)  # bool before int
    if want is None:
        return
    ok = isinstance(value, _KINDS[want]) and not (want is not bool and isinstance(value, bool))
    if not ok:
        raise ValueError(f"{task} setting {key!r} must be of type {want.__name__} (like its "
                         f"default {default!r}), got {value!r}")
