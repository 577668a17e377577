"""Configuration of the auxiliary grounding losses added to next-token prediction."""

from __future__ import annotations

from dataclasses import dataclass, field

KLAL_QUERIES = ("last_answer", "answer_start", "all_answer")


@dataclass(frozen=True)
class KLALConfig:
    """The KL Attention Loss term of ``L = L_NTP + weight * L_KLAL`` (methods.md section 1)."""

    weight: float = field(default=1.0, metadata={
        "help": "lambda, the weight of KLAL in the total loss (the paper: 1.0); 0 turns it off."})
    query: str = field(default="last_answer", metadata={
        "help": "Query position(s): 'last_answer' (the paper's), 'answer_start' (the position "
                "that predicts the first answer token) or 'all_answer' (mean over answer tokens)."})
    layers: tuple[int, ...] | None = field(default=None, metadata={
        "help": "Language-model layers to supervise (negative counts from the end); None = all."})
    heads: tuple[tuple[int, int], ...] | None = field(default=None, metadata={
        "help": "(layer, head) pairs to average instead of all heads, e.g. localization heads; "
                "the layers used are those named."})
    monitor: bool = field(default=False, metadata={
        "help": "With weight 0, still compute and log KLAL (not trained on), to compare runs."})

    def __post_init__(self) -> None:
        if not (self.weight >= 0 and self.weight < float("inf")):
            raise ValueError(f"KLALConfig.weight must be finite and >= 0, got {self.weight}")
        if self.query not in KLAL_QUERIES:
            raise ValueError(f"KLALConfig.query must be one of {KLAL_QUERIES}, got {self.query!r}")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(v) for v in self.layers))
            if not self.layers:
                raise ValueError("KLALConfig.layers must name at least one layer, or be None")
        if self.heads is not None:
            pairs = tuple((int(a), int(b)) for a, b in self.heads)
            if not pairs:
                raise ValueError("KLALConfig.heads must name at least one pair, or be None")
            object.__setattr__(self, "heads", pairs)

    @property
    def active(self) -> bool:
        """Whether a step needs the probe (trained on, or monitored)."""
        return self.weight > 0 or self.monitor

    def probe_layers(self) -> tuple[int, ...] | None:
        """Layers the probe must record."""
        if self.heads is not None:
            return tuple(sorted({layer for layer, _ in self.heads}))
        return self.layers
