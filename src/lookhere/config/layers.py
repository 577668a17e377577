"""Layer indices: `resolve_layers`, the one resolver of layer indices (negative from the end) for
the probe, the hidden-state capture, the lens, the head checks and the configs that name
layers (torch-free, so a config checks its layers before any model is built)."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral


def resolve_layers(layers: Sequence[int] | str | None, n: int) -> tuple[int, ...]:
    """Layer indices in ``[0, n)``, in the given order, without duplicates (negative indices
    count from the end); ``"all"`` or None: every layer. The one resolver of the probe, the
    hidden-state capture, the lens and the head checks."""
    if layers is None:
        return tuple(range(n))
    if isinstance(layers, str):
        if layers != "all":
            raise ValueError(f"layers must be a list of layer indices or 'all', got {layers!r}")
        return tuple(range(n))
    out: list[int] = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, Integral) or not -n <= layer < n:
            raise ValueError(f"layers: {layer!r} is not a layer of this {n}-layer language "
                             f"model (valid: {-n}..{n - 1})")
        if int(layer) % n not in out:
            out.append(int(layer) % n)
    if not out:
        raise ValueError("layers must name at least one layer")
    return tuple(out)
