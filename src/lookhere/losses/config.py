"""Configuration of the auxiliary grounding losses added to next-token prediction: `KLALConfig`,
its target map's weights (`TargetConfig`, used by `lookhere.targets`) and `LLLConfig`. Torch-free:
experiment configs nest them, and ``--help`` shows their defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from lookhere.data.concepts import CONCEPT_SCOPES

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

    def monitored(self) -> KLALConfig:
        """The same term at weight 0, still computed and logged: the NTP baseline's KLAL, so its
        log shows what KLAL would have been without training on it."""
        return replace(self, weight=0.0, monitor=True)

    def probe_layers(self) -> tuple[int, ...] | None:
        """Layers the probe must record."""
        if self.heads is not None:
            return tuple(sorted({layer for layer, _ in self.heads}))
        return self.layers


@dataclass(frozen=True)
class TargetConfig:
    """Unnormalised weights of the ground-truth map (defaults: methods.md, [ours])."""

    target: float = field(default=1.0, metadata={"help": "weight of a fully covered target cell"})
    neighbour: float = field(
        default=0.5, metadata={"help": "weight of the 8-neighbour ring around target cells"})
    floor: float = field(default=0.01, metadata={"help": "weight of every other cell (> 0)"})

    def __post_init__(self) -> None:
        for name in ("target", "neighbour", "floor"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"TargetConfig.{name} must be finite and >= 0, got {v}")
        if not self.target >= self.neighbour >= self.floor:
            raise ValueError(
                f"TargetConfig needs target >= neighbour >= floor, got {self.target}, "
                f"{self.neighbour}, {self.floor}"
            )


LLL_TOKEN_RULES = ("first", "sum")
LLL_ATTRIBUTES = ("shape", "colour")
LLL_SCOPES = CONCEPT_SCOPES  # defined with the collator that builds the concepts


@dataclass(frozen=True)
class LLLConfig:
    """The Logit Lens Loss term of ``L = L_NTP + weight * L_LLL`` (methods.md section 2).

    Pass the same config to `GroundingCollator(lll=...)` (it builds each sample's concept ids
    and region) and to `GroundingTrainer(lll=...)` (it computes the term).
    """

    weight: float = field(default=1.0, metadata={
        "help": "mu, the weight of LLL in the total loss; 0 turns it off."})
    layer: int = field(default=-1, metadata={
        "help": "Decoder layer whose output hidden states (before the final norm) are read "
                "through the lens; negative counts from the end, -1 = the last layer."})
    beta: float = field(default=1.0, metadata={
        "help": "beta, the weight of the outside term -log(1 - p(C|h)) against the inside term."})
    region_threshold: float | None = field(default=None, metadata={
        "help": "None: a token's region weight is the fraction of its cell the concept's objects "
                "cover (soft; binary regions give the plain formula). A number t in (0, 1]: "
                "tokens with coverage >= t are inside, all others outside."})
    concept: tuple[str, ...] = field(default=LLL_ATTRIBUTES, metadata={
        "help": "Object attributes whose words are concepts; with scope 'target', in order of "
                "preference: the first one that all the sample's target objects share gives the "
                "concept word (Shapes: "
                f"{', '.join(LLL_ATTRIBUTES)})."})
    scope: str = field(default="image", metadata={
        "help": "Which concepts a sample trains: 'image' = every word of the `concept` "
                "attributes among the image's objects, each with its own region, the loss "
                "averaged over them; 'target' = the one word its question's objects share "
                "(the `concept` order above). Samples without objects use their "
                "meta['concept'] either way."})
    token_rule: str = field(default="first", metadata={
        "help": "Concept token ids of a word (the rules of lookhere.lens; whitespace-only tokens "
                "skipped): 'first' = its first token mid-sentence; 'sum' = the distinct first "
                "tokens of its surface forms (case, with and without a leading space), whose "
                "probabilities p(C) sums."})
    chunk_size: int = field(default=256, metadata={
        "help": "Visual tokens unembedded at a time (each chunk's logits are recomputed in "
                "backward, never kept)."})
    monitor: bool = field(default=False, metadata={
        "help": "With weight 0, still compute and log LLL (not trained on), to compare runs."})

    def __post_init__(self) -> None:
        for name in ("weight", "beta"):
            v = getattr(self, name)
            if not (v >= 0 and v < float("inf")):
                raise ValueError(f"LLLConfig.{name} must be finite and >= 0, got {v}")
        if isinstance(self.layer, bool) or int(self.layer) != self.layer:
            raise ValueError(f"LLLConfig.layer must be an int, got {self.layer!r}")
        object.__setattr__(self, "layer", int(self.layer))
        t = self.region_threshold
        if t is not None and not 0 < t <= 1:
            raise ValueError(f"LLLConfig.region_threshold must be None or in (0, 1], got {t}")
        concept = (self.concept,) if isinstance(self.concept, str) else tuple(self.concept)
        if not concept or any(a not in LLL_ATTRIBUTES for a in concept) \
                or len(set(concept)) != len(concept):
            raise ValueError(f"LLLConfig.concept must be distinct attributes from "
                             f"{LLL_ATTRIBUTES}, got {self.concept!r}")
        object.__setattr__(self, "concept", concept)
        if self.scope not in LLL_SCOPES:
            raise ValueError(f"LLLConfig.scope must be one of {LLL_SCOPES}, got {self.scope!r}")
        if self.token_rule not in LLL_TOKEN_RULES:
            raise ValueError(f"LLLConfig.token_rule must be one of {LLL_TOKEN_RULES}, "
                             f"got {self.token_rule!r}")
        if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) \
                or self.chunk_size < 1:
            raise ValueError(f"LLLConfig.chunk_size must be a positive int, got "
                             f"{self.chunk_size!r}")

    @property
    def active(self) -> bool:
        """Whether a step needs the hidden states (trained on, or monitored)."""
        return self.weight > 0 or self.monitor
