"""Scores of attention heads for localization (Kang et al., CVPR 2025; methods.md section 3).

Pure functions on attention maps, independent of any model:

- `image_attention_sum`: ``S_img``, the attention mass a head puts on the image tokens;
- `chord_knee`: the maximum-curvature point of a sorted curve by the chord method (the point
  farthest from the straight line through the first and last points), which gives tau;
- `spatial_entropy`: binarise a head's map, find 8-connected components, and take the entropy of
  the components' shares (area by default; ``weight="mass"``: the authors' code exactly,
  `authors_entropy`);
- `pooled_entropy`: one entropy per head from the entropies of its maps on several grids of the
  same image (LLaVA-NeXT base + crops, Idefics3 tiles + global), weighted by the head's attention
  mass on each grid;
- `HeadScores`: the per-sample ``(N, L, H)`` scores of a search, mergeable across shards and
  saved as ``.npz``.

A map that has no cell above its threshold (a constant map) has no component; its entropy is
``inf``, so it is never among the most concentrated heads.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from lookhere.io import atomic_path
from lookhere.maps import MARGIN, MeanRule, binarise, check_map, components

Weight = Literal["area", "mass"]


def image_attention_sum(rows: torch.Tensor) -> torch.Tensor:
    """``S_img``: ``(..., K)`` attention probabilities over the visual keys -> ``(...)`` sums.

    Rows must be the un-renormalised probabilities (the share of the whole softmax that lands on
    image tokens), e.g. `AttentionProbe(queries="last_text").rows[layer][:, :, 0]`.
    """
    if rows.dim() < 1:
        raise ValueError("rows must have a key dimension")
    if (rows < 0).any() or not torch.isfinite(rows).all():
        raise ValueError("rows must be finite probabilities >= 0")
    return rows.sum(-1)


def chord_knee(values: np.ndarray | torch.Tensor) -> tuple[int, float]:
    """(index, value) of the maximum-curvature point of an ascending curve, by the chord method.

    The curve is ``(i, values[i])`` with both axes scaled to [0, 1]; the knee is the point farthest
    from the chord between its first and last points (ties: the first). Sorts the input.
    """
    v = np.sort(np.asarray(values, dtype=np.float64).reshape(-1))
    if v.size < 3:
        raise ValueError(f"chord_knee needs at least 3 values, got {v.size}")
    if not np.isfinite(v).all():
        raise ValueError("chord_knee needs finite values")
    span = v[-1] - v[0]
    if span == 0:
        return 0, float(v[0])  # a flat curve has no knee: every head passes
    x = np.linspace(0.0, 1.0, v.size)
    y = (v - v[0]) / span
    dist = np.abs(y - x) / np.sqrt(2.0)  # distance to the chord y = x
    i = int(np.argmax(dist))
    return i, float(v[i])


def spatial_entropy(attn_map: np.ndarray, threshold: MeanRule = "mean",
                    weight: Weight = "area") -> float:
    """``H = -sum_n P(C_n) log P(C_n)`` over the foreground's 8-connected components.

    ``weight="area"`` (the paper): the foreground is `binarise`'s and ``P(C_n)`` the component's
    share of its area. Lower is more concentrated; one component gives 0; no foreground gives
    ``inf``. ``weight="mass"`` is the authors' rule (`authors_entropy`; with
    ``threshold="two_mean"``, their code's).
    """
    a = check_map(attn_map)
    if weight == "mass":
        return authors_entropy(a, threshold)
    if weight != "area":
        raise ValueError(f"weight must be 'area' or 'mass', got {weight!r}")
    labels, n = components(binarise(a, threshold))
    if n == 0:
        return float("inf")
    p = np.bincount(labels.ravel(), minlength=n + 1)[1:] / float((labels > 0).sum())
    return float(-(p * np.log(p)).sum())


def authors_entropy(attn_map: np.ndarray, threshold: MeanRule = "two_mean") -> float:
    """The spatial entropy of the authors' code (LocalizationHeads, ``spatial_entropy``).

    ``B = relu(A - t)`` with ``t`` twice the mean (``"two_mean"``, their code) or the mean
    (``"mean"``, their first release); the components are those of ``B > 0.001``; each weighs
    its sum of ``B`` divided by the sum of ``B`` over the *whole* map (cells in (0, 0.001] count
    in the total, not in any component, so the shares need not sum to 1). ``inf`` when ``B``
    has no mass, as for a constant map; **0.0** when it has mass but no cell clears the margin,
    which their code returns (a bug: such a head looks perfectly concentrated) and which is kept
    here only, for exactness. Computed in float64 (their code binarises and sums a float32 copy
    of ``B``: the values agree to float32 rounding).
    """
    a = check_map(attn_map)
    if threshold not in ("mean", "two_mean"):
        raise ValueError(f"threshold must be 'mean' or 'two_mean', got {threshold!r}")
    if np.ptp(a) == 0:
        # B is 0 in exact arithmetic; the float mean can round below the constant and leave
        # rounding noise in B, which would score 0.0 instead of inf
        return float("inf")
    b = np.maximum(a - (2.0 if threshold == "two_mean" else 1.0) * a.mean(), 0.0)
    total = b.sum()
    if not total > 0:
        return float("inf")
    labels, n = components(b > MARGIN)
    sums = np.bincount(labels.ravel(), weights=b.ravel(), minlength=n + 1)[1:]
    p = sums[sums > 0] / total
    return float(-(p * np.log(p)).sum()) if p.size else 0.0


def pooled_entropy(entropies: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """``(G, ...)`` per-grid entropies and attention masses -> ``(...)`` pooled entropy.

    The mean of the finite per-grid entropies weighted by the head's attention mass on each grid;
    ``inf`` where no grid has a finite entropy. Each grid is scored on its own rather than pooling
    the components of all grids, because the same object appears once per grid (in the base image
    and again in a crop) and would be counted as several components.
    """
    e = np.asarray(entropies, dtype=np.float64)
    m = np.asarray(masses, dtype=np.float64)
    if e.shape != m.shape or e.ndim < 1 or e.shape[0] < 1:
        raise ValueError(f"entropies and masses must both be (G, ...), got {e.shape}, {m.shape}")
    if e.shape[0] == 1:
        return e[0].copy()  # one grid: exactly its entropy
    finite = np.isfinite(e)
    w = np.where(finite, m, 0.0)
    total = w.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (np.where(finite, e, 0.0) * w).sum(0) / total
    return np.where(total > 0, out, np.inf)


@dataclass(frozen=True, eq=False)
class HeadScores:
    """Per-sample scores of every head: ``S_img``, spatial entropy and the bottom-row maximum.

    Each array is ``(N, L, H)`` float64; ``sample_ids`` names the N samples in order. Shards of
    a search merge exactly with `concat`; `save` / `load` use ``.npz`` without pickles.
    """

    s_img: np.ndarray  # (N, L, H) attention share on the image tokens
    entropy: np.ndarray  # (N, L, H) spatial entropy (inf: no foreground)
    bottom_row: np.ndarray  # (N, L, H) max attention over the primary grid's bottom row
    sample_ids: tuple[str, ...]

    def __post_init__(self) -> None:
        arrays = [np.asarray(getattr(self, k), dtype=np.float64) for k in _SCORE_FIELDS]
        if arrays[0].ndim != 3 or any(a.shape != arrays[0].shape for a in arrays):
            raise ValueError("s_img, entropy and bottom_row must all be (N, L, H), got "
                             f"{[a.shape for a in arrays]}")
        ids = tuple(str(i) for i in self.sample_ids)
        if len(ids) != arrays[0].shape[0]:
            raise ValueError(f"sample_ids has {len(ids)} ids for {arrays[0].shape[0]} samples")
        for k, a in zip(_SCORE_FIELDS, arrays, strict=True):
            object.__setattr__(self, k, a)
        object.__setattr__(self, "sample_ids", ids)

    def __len__(self) -> int:
        return len(self.sample_ids)

    @classmethod
    def concat(cls, parts: Sequence[HeadScores]) -> HeadScores:
        """The scores of ``parts`` one after the other (shards in batch order)."""
        if not parts:
            raise ValueError("concat needs at least one HeadScores")
        arrays = [np.concatenate([getattr(p, k) for p in parts]) for k in _SCORE_FIELDS]
        return cls(*arrays, tuple(i for p in parts for i in p.sample_ids))

    def save(self, path: str | Path) -> Path:
        """Atomic ``.npz`` write (sample ids as a unicode array), byte for byte the same for the
        same scores: the zip entries carry a fixed date instead of the clock's (`np.savez`
        stamps the time), so a resumed search's files equal an uninterrupted one's."""
        arrays = {k: getattr(self, k) for k in _SCORE_FIELDS}
        arrays["sample_ids"] = np.array(self.sample_ids, dtype=np.str_)
        with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
            for name, array in arrays.items():
                entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with z.open(entry, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, array, allow_pickle=False)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> HeadScores:
        with np.load(path, allow_pickle=False) as z:
            missing = {*_SCORE_FIELDS, "sample_ids"} - set(z.files)
            if missing:
                raise ValueError(f"{path}: not a HeadScores file, missing {sorted(missing)}")
            return cls(*(z[k] for k in _SCORE_FIELDS), tuple(z["sample_ids"].tolist()))


_SCORE_FIELDS = ("s_img", "entropy", "bottom_row")
