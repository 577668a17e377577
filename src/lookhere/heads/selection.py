"""Selecting localization heads from per-sample scores, and the `HeadSpec` that records them.

The search (methods.md section 3) scores every head on N samples: ``S_img`` and the spatial
entropy of its map. Selection is then a pure function of those ``(N, L, H)`` arrays, so shards
computed by several processes merge exactly by concatenation:

1. tau = the chord-method knee of the heads' ``S_img`` averaged over samples and sorted
   without layers 0 and 1 (``tau="mean_curve"``, the paper), or of each sample's own curve over
   every head, layers 0 and 1 dropped afterwards (``"per_sample"``, the authors' code);
2. per sample, among the heads with ``S_img >= tau``, the ``per_sample`` (10) with the lowest
   finite entropy are counted once (optionally, as in the authors' code, a head whose map has a
   bottom-row cell above ``bottom_row_limit`` is not eligible on that sample);
3. the ``top_k`` (3) most counted heads are the localization heads (ties: the higher mean
   ``S_img``, then the lower (layer, head)).
"""

from __future__ import annotations

import json
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lookhere.heads.scoring import chord_knee
from lookhere.io import write_json

TauMode = Literal["mean_curve", "per_sample"]


@dataclass(frozen=True)
class Selection:
    """The outcome of `select_heads`."""

    heads: list[tuple[int, int]]  # the top-k (layer, head), most frequent first
    counts: np.ndarray  # (L, H) times each head was among a sample's selected heads
    tau: float  # the S_img threshold (the mean over samples for tau="per_sample")
    mean_s_img: np.ndarray  # (L, H)
    mean_entropy: np.ndarray  # (L, H) over the samples where it is finite (nan if never)


def select_heads(s_img: np.ndarray, entropy: np.ndarray, top_k: int = 3, per_sample: int = 10,
                 skip_layers: Sequence[int] = (0, 1), tau: TauMode = "mean_curve",
                 bottom_row: np.ndarray | None = None, bottom_row_limit: float | None = None
                 ) -> Selection:
    """Localization heads from per-sample ``S_img`` and entropy, both ``(N, L, H)``.

    With ``bottom_row_limit`` (the authors' code uses 0.05; default None, the paper: off), a head
    is not eligible on a sample where ``bottom_row`` ``(N, L, H)``, the max of its map's bottom
    grid row, exceeds the limit.
    """
    check_options(top_k, per_sample, tau, bottom_row_limit)
    s_img, entropy = _check_scores(s_img, entropy)
    n_layers, n_heads = s_img.shape[1:]
    allowed = _allowed(n_layers, n_heads, skip_layers, top_k)  # (L, H)
    if per_sample >= allowed.sum():
        # Every head above tau is then counted on every sample: the entropy criterion is void.
        warnings.warn(f"per_sample={per_sample} >= the {int(allowed.sum())} candidate heads: "
                      "every head with S_img >= tau is counted, so the spatial entropy plays no "
                      "part in the selection (the paper counts 10 of ~1,000 heads)", stacklevel=2)
    taus = _taus(s_img, allowed, tau)  # (N,)
    eligible = allowed & (s_img >= taus[:, None, None]) & np.isfinite(entropy)  # (N, L, H)
    bottom = None if bottom_row is None else _check_bottom_row(bottom_row, s_img.shape)
    if bottom_row_limit is not None:
        if bottom is None:
            raise ValueError("bottom_row_limit needs the bottom_row scores, (N, L, H)")
        eligible &= bottom <= bottom_row_limit
    counts = _count(entropy, eligible, per_sample)
    mean_s = s_img.mean(0)
    finite = np.isfinite(entropy)
    with np.errstate(invalid="ignore"):
        mean_e = np.where(finite, entropy, 0.0).sum(0) / finite.sum(0)
    flat = sorted(np.flatnonzero(allowed).tolist(),  # skipped layers are never ranked
                  key=lambda j: (-counts.ravel()[j], -mean_s.ravel()[j], j))
    heads = [tuple(int(v) for v in divmod(j, n_heads)) for j in flat[:top_k]]
    return Selection(heads, counts, float(taus.mean()), mean_s, mean_e)


def check_options(top_k: int, per_sample: int, tau: str,
                  bottom_row_limit: float | None = None) -> None:
    """Raise ValueError on a selection option that `select_heads` would refuse."""
    if top_k < 1 or per_sample < 1:
        raise ValueError(f"need top_k >= 1 and per_sample >= 1, got top_k={top_k}, "
                         f"per_sample={per_sample}")
    if tau not in ("mean_curve", "per_sample"):
        raise ValueError(f"tau must be 'mean_curve' or 'per_sample', got {tau!r}")
    limit = bottom_row_limit
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Real)
                              or not 0 <= limit < np.inf):
        raise ValueError(f"bottom_row_limit must be None or a finite number >= 0, got {limit!r}")


def _allowed(n_layers: int, n_heads: int, skip_layers: Sequence[int], top_k: int) -> np.ndarray:
    allowed = np.ones((n_layers, n_heads), dtype=bool)
    for layer in skip_layers:
        if not 0 <= layer < n_layers:
            raise ValueError(f"skip_layers names layer {layer} of a {n_layers}-layer model")
        allowed[layer] = False
    if allowed.sum() < max(3, top_k):
        raise ValueError(f"skip_layers leaves {int(allowed.sum())} heads; top_k={top_k} and the "
                         "knee need more")
    return allowed


def _taus(s_img: np.ndarray, allowed: np.ndarray, tau: TauMode) -> np.ndarray:
    """(N,) the S_img threshold of each sample."""
    if tau == "mean_curve":
        return np.full(len(s_img), chord_knee(s_img.mean(0)[allowed])[1])
    # "per_sample", the authors' code: each sample's knee over *every* head; the skipped layers
    # drop out afterwards (`allowed` in the eligibility)
    return np.array([chord_knee(s.ravel())[1] for s in s_img])


def _count(entropy: np.ndarray, eligible: np.ndarray, per_sample: int) -> np.ndarray:
    """(L, H) times each head is among a sample's ``per_sample`` lowest-entropy eligible heads."""
    counts = np.zeros(entropy.shape[1:], dtype=np.int64)
    for e, ok in zip(entropy, eligible, strict=True):
        idx = np.flatnonzero(ok)
        # lowest entropy first; ties broken by the flat index (stable sort)
        order = idx[np.argsort(e.ravel()[idx], kind="stable")][:per_sample]
        counts.ravel()[order] += 1
    return counts


@dataclass
class HeadSpec:
    """Localization heads of one model, with how they were found; saved as JSON."""

    model: str
    heads: list[tuple[int, int]]
    tau: float
    num_samples: int
    counts: list[list[int]]  # (L, H)
    mean_s_img: list[list[float]]
    mean_entropy: list[list[float | None]]
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_selection(cls, model: str, selection: Selection, num_samples: int,
                       settings: dict[str, Any] | None = None) -> HeadSpec:
        ent = [[None if not np.isfinite(v) else float(v) for v in row]
               for row in selection.mean_entropy]
        return cls(model, [tuple(map(int, h)) for h in selection.heads], selection.tau,
                   int(num_samples), selection.counts.tolist(), selection.mean_s_img.tolist(),
                   ent, dict(settings or {}))

    def save(self, path: str | Path) -> Path:
        """Atomic JSON write."""
        return write_json(self.to_json(), path)

    @classmethod
    def load(cls, path: str | Path) -> HeadSpec:
        return cls.from_json(json.loads(Path(path).read_text()), source=str(path))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "HeadSpec") -> HeadSpec:
        """The spec of ``to_json``'s dict, checked (``source`` names it in the errors)."""
        data = dict(data)
        missing = {"model", "heads", "tau", "num_samples", "counts"} - set(data)
        if missing:
            raise ValueError(f"{source}: not a HeadSpec, missing {sorted(missing)}")
        counts = np.asarray(data["counts"])
        if counts.ndim != 2:
            raise ValueError(f"{source}: counts must be a (layers, heads) table")
        if not isinstance(data["heads"], list) or not all(
                isinstance(h, list | tuple) and len(h) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in h)
                for h in data["heads"]):
            raise ValueError(f"{source}: heads must be a list of [layer, head] integer pairs, got "
                             f"{data['heads']!r}")
        tau = data["tau"]
        if isinstance(tau, bool) or not isinstance(tau, int | float) or not np.isfinite(tau):
            raise ValueError(f"{source}: tau must be a finite number, got {tau!r}")
        if not isinstance(data["num_samples"], int) or data["num_samples"] < 0:
            raise ValueError(f"{source}: num_samples must be an int >= 0, got "
                             f"{data['num_samples']!r}")
        heads = [tuple(h) for h in data["heads"]]
        for layer, head in heads:
            if not (0 <= layer < counts.shape[0] and 0 <= head < counts.shape[1]):
                raise ValueError(f"{source}: head ({layer}, {head}) is outside the "
                                 f"{counts.shape[0]} x {counts.shape[1]} model")
        data["heads"] = heads
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def _check_scores(s_img: Any, entropy: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(s_img, dtype=np.float64)
    e = np.asarray(entropy, dtype=np.float64)
    if s.ndim != 3 or s.shape != e.shape or s.shape[0] < 1:
        raise ValueError(f"s_img and entropy must both be (N, L, H) with N >= 1, got {s.shape} "
                         f"and {e.shape}")
    if not np.isfinite(s).all() or (s < 0).any() or (s > 1 + 1e-6).any():
        raise ValueError("s_img must hold attention shares in [0, 1]")
    if np.isnan(e).any() or (e < 0).any():
        raise ValueError("entropy must be >= 0 (inf for a map without foreground), never NaN")
    return s, e


def _check_bottom_row(bottom_row: Any, shape: tuple[int, ...]) -> np.ndarray:
    b = np.asarray(bottom_row, dtype=np.float64)
    if b.shape != shape:
        raise ValueError(f"bottom_row must be (N, L, H) = {shape}, got {b.shape}")
    if not np.isfinite(b).all() or (b < 0).any():
        raise ValueError("bottom_row must hold finite attention values >= 0")
    return b
