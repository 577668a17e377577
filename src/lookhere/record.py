"""`FlatRecord`: the JSON form of a typed result whose fields are plain JSON values."""

from __future__ import annotations

import dataclasses
from typing import Any, Self


class FlatRecord:
    """Mixin for a dataclass of JSON-ready fields (numbers, strings, lists, dicts): its JSON
    is its fields, and back. A result with nested records writes its own pair instead."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return cls(**data)
