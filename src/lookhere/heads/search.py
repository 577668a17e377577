"""Scoring every head of a model on samples: one SDPA forward per batch under the probe.

For each sample, the prefill prompt (images, then the expression, no assistant turn) runs once;
the probe records the last text token's attention over the visual tokens for every head of every
layer, ``(B, H, K)`` per layer: O(layers * heads * visual tokens) memory, never the L x L maps.
Per (sample, layer, head) `score_samples` keeps, in a `HeadScores`:

- ``S_img``, the row's sum;
- the spatial entropy of the row on the sample's first image. ``grids="primary"`` (default) uses
  the image's primary grid (its first: the whole image at the coarsest level). ``grids="all"``
  scores every grid of the image (LLaVA-NeXT base + crops, Idefics3 global + tiles; Qwen has one)
  separately and takes the mean of the finite per-grid entropies weighted by the head's attention
  mass on each grid (`lookhere.heads.scoring.pooled_entropy`). Grids are not pooled into one
  component count because the same object appears once per grid and would be counted twice;
- the max of the primary grid's bottom row (the authors' code drops a head whose bottom row has a
  cell above 0.05: `select_heads(bottom_row_limit=...)`).

The search is sharded and resumable. Batches are numbered; under ``torch.distributed`` (torchrun,
accelerate) rank r scores batches r, r + W, ...; the shards are gathered and merged in batch order,
so every rank holds the scores of one process. With ``scores_dir`` every finished batch is saved
as ``batch_{index:06d}.npz`` (atomically, byte-identical for the same scores) next to a
``search.json`` fingerprint, and a rerun skips the batches already on disk: after a kill -9 it
scores only the rest and ends with the files and the `HeadSpec` of an uninterrupted run. The
fingerprint keys on content, never on a path: the weights (`weights_digest`), the samples' ids,
questions and pixels (`samples_digest`) and the scoring settings. A batch file that cannot be
read (cut short by a writer other than `HeadScores.save`) is scored again.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from lookhere.collate import to_device
from lookhere.data.sample import Sample, samples_digest
from lookhere.heads.scoring import HeadScores, Weight, pooled_entropy, spatial_entropy
from lookhere.heads.selection import HeadSpec, TauMode, check_options, select_heads
from lookhere.io import write_json
from lookhere.maps import MeanRule
from lookhere.models.adapter import Adapter
from lookhere.models.fingerprint import weights_digest
from lookhere.models.layout import ImageLayout
from lookhere.models.prompt import prefill_prompt
from lookhere.probe import AttentionProbe

Grids = Literal["primary", "all"]
FINGERPRINT = "search.json"


@torch.no_grad()
def score_samples(model: nn.Module, processor: Any, adapter: Adapter, samples: Sequence[Sample],
                  *, batch_size: int = 8, threshold: MeanRule = "mean", weight: Weight = "area",
                  grids: Grids = "primary", scores_dir: str | Path | None = None,
                  progress: bool = True) -> HeadScores:
    """`HeadScores` ``(N, L, H)`` for every head on every sample, in sample order.

    Sharded over the ranks when ``torch.distributed`` is initialised (every rank returns all the
    scores); with ``scores_dir``, resumable (see the module docstring): a digest of the
    weights (`weights_digest`: new weights in the same folder are another search) goes into its
    fingerprint, not the model's path or name (the same weights moved are the same search).
    """
    _check_args(samples, batch_size, threshold, weight, grids)
    rank, world = _world()
    folder = None
    if scores_dir is not None:
        fingerprint = _fingerprint(adapter, samples, batch_size, threshold, weight, grids)
        fingerprint["weights_sha256"] = weights_digest(model)
        folder = _open_scores_dir(scores_dir, fingerprint, write=rank == 0)
    indices = range(rank, -(-len(samples) // batch_size), world)  # this rank's batches
    mine: dict[int, HeadScores] = {}
    for b in tqdm(indices, desc="score heads", disable=not progress or rank != 0, leave=False):
        path = None if folder is None else folder / f"batch_{b:06d}.npz"
        mine[b] = _load_or_score(model, processor, adapter, samples[b * batch_size:][:batch_size],
                                 path, threshold, weight, grids)
    return _gather(mine, world)


@torch.no_grad()
def score_batch(model: nn.Module, processor: Any, adapter: Adapter, samples: Sequence[Sample],
                threshold: MeanRule = "mean", weight: Weight = "area",
                grids: Grids = "primary") -> HeadScores:
    """`HeadScores` of one batch: one probe forward."""
    rows, layout = prefill_attention(model, processor, adapter, samples)
    rows = torch.stack([rows[layer] for layer in sorted(rows)], 1)  # (B, L, H, K)
    per_sample = [_image_scores(rows[i], s.images[0], threshold, weight, grids)
                  for i, s in enumerate(layout.samples)]
    entropy, bottom = (np.stack(v) for v in zip(*per_sample, strict=True))  # (B, L, H) each
    return HeadScores(rows.sum(-1).numpy(), entropy, bottom, tuple(s.id for s in samples))


@torch.no_grad()
def prefill_attention(model: nn.Module, processor: Any, adapter: Adapter,
                      samples: Sequence[Sample], layers: Sequence[int] | None = None
                      ) -> tuple[dict[int, torch.Tensor], Any]:
    """One probe forward on the samples' prefill prompts: per layer, the last text token's
    attention over the visual tokens, ``(B, H, K)`` float64 on the CPU, and the batch's
    `VisualLayout`."""
    images = [[s.image] for s in samples]
    prompts = [prefill_prompt(adapter, processor, s.question) for s in samples]
    batch = adapter.process(processor, prompts, images, padding=True)
    with AttentionProbe(model, layers=layers, queries="last_text") as probe:
        model(**to_device(batch, next(model.parameters()).device))
    rows = {layer: r[:, :, 0].double().cpu() for layer, r in probe.rows.items()}
    return rows, adapter.layout(batch, images, processor)


def find_heads(model: nn.Module, processor: Any, adapter: Adapter, samples: Sequence[Sample],
               *, model_id: str = "", top_k: int = 3, per_sample: int = 10,
               tau: TauMode = "mean_curve", threshold: MeanRule = "mean",
               weight: Weight = "area", grids: Grids = "primary",
               bottom_row_limit: float | None = None, skip_layers: Sequence[int] = (0, 1),
               batch_size: int = 8, scores_dir: str | Path | None = None,
               progress: bool = True) -> HeadSpec:
    """Score every head on ``samples`` and select the localization heads (the paper's defaults).

    Under ``torch.distributed`` every rank returns the same `HeadSpec`, equal to one process's.
    ``scores_dir`` makes the scoring resumable; its scores do not depend on the selection options
    (top_k, per_sample, tau, bottom_row_limit, skip_layers), so those may change between runs.
    """
    check_options(top_k, per_sample, tau, bottom_row_limit)  # before hours of scoring
    model_id = model_id or getattr(model.config, "_name_or_path", "")
    scores = score_samples(model, processor, adapter, samples, batch_size=batch_size,
                           threshold=threshold, weight=weight, grids=grids,
                           scores_dir=scores_dir, progress=progress)
    selection = select_heads(scores.s_img, scores.entropy, top_k, per_sample, skip_layers, tau,
                             scores.bottom_row, bottom_row_limit)
    settings = {"top_k": top_k, "per_sample": per_sample, "tau": tau, "threshold": threshold,
                "weight": weight, "grids": grids, "bottom_row_limit": bottom_row_limit,
                "skip_layers": [int(v) for v in skip_layers], "batch_size": batch_size}
    return HeadSpec.from_selection(model_id, selection, len(samples), settings)


def _image_scores(rows: torch.Tensor, image: ImageLayout, threshold: MeanRule, weight: Weight,
                  grids: Grids) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` (L, H, K) -> (entropy, bottom-row max), each (L, H), on one image's grids."""
    chosen = image.grids if grids == "all" else image.grids[:1]
    maps = [g.to_grid(rows).numpy() for g in chosen]  # G x (L, H, rows, cols)
    entropies = np.stack([_map_entropies(m, threshold, weight) for m in maps])  # (G, L, H)
    masses = np.stack([m.sum((-2, -1)) for m in maps])  # (G, L, H)
    return pooled_entropy(entropies, masses), maps[0][..., -1, :].max(-1)


def _map_entropies(maps: np.ndarray, threshold: MeanRule, weight: Weight) -> np.ndarray:
    """(L, H, rows, cols) -> (L, H) spatial entropies."""
    flat = maps.reshape(-1, *maps.shape[-2:])
    return np.array([spatial_entropy(m, threshold, weight) for m in flat]).reshape(maps.shape[:2])


# -- sharding and resuming ---------------------------------------------------------------------
def _world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(mine: dict[int, HeadScores], world: int) -> HeadScores:
    """Every rank's batches, merged in batch order on every rank.

    ``all_gather_object`` works on gloo and nccl (for nccl each rank must have set its own
    device with ``torch.cuda.set_device``, as torchrun scripts and accelerate do).
    """
    if world > 1:
        shards: list[Any] = [None] * world
        dist.all_gather_object(shards, mine)
        mine = {b: s for shard in shards for b, s in shard.items()}
    return HeadScores.concat([mine[b] for b in sorted(mine)])


def _fingerprint(adapter: Adapter, samples: Sequence[Sample], batch_size: int,
                 threshold: MeanRule, weight: Weight, grids: Grids) -> dict[str, Any]:
    """What the saved scores depend on, by content: the model's shape (its weights are added
    by the caller), the scoring settings, the ordered samples (ids, questions, pixels) and the
    batches (padding changes the numbers in the last bits)."""
    ids = [s.id for s in samples]
    if any(not i for i in ids) or len(set(ids)) != len(ids):
        raise ValueError("scores_dir needs samples with unique, non-empty ids")
    digest = hashlib.sha256(json.dumps(ids).encode()).hexdigest()
    return {"family": adapter.family, "num_layers": adapter.num_layers,
            "num_heads": adapter.num_heads, "threshold": threshold, "weight": weight,
            "grids": grids, "num_samples": len(ids), "sample_ids_sha256": digest,
            "samples_sha256": samples_digest(samples), "batch_size": batch_size}


def _open_scores_dir(scores_dir: str | Path, fingerprint: dict[str, Any], write: bool) -> Path:
    """Check (or, on rank 0, write) the folder's fingerprint; a different search is an error."""
    folder = Path(scores_dir)
    path = folder / FINGERPRINT
    if path.exists():
        saved = json.loads(path.read_text())
        diff = sorted(k for k in fingerprint.keys() | saved.keys()
                      if fingerprint.get(k) != saved.get(k))
        if diff:
            raise ValueError(f"scores_dir {folder} holds another search (differs in {diff}: "
                             f"{ {k: saved.get(k) for k in diff} } there, "
                             f"{ {k: fingerprint.get(k) for k in diff} } now); use a new folder")
    elif write:
        write_json(fingerprint, path)
    return folder


def _load_or_score(model: nn.Module, processor: Any, adapter: Adapter, batch: Sequence[Sample],
                   path: Path | None, threshold: MeanRule, weight: Weight, grids: Grids
                   ) -> HeadScores:
    """The batch's scores from ``path`` if saved there, else scored (and saved when a path)."""
    scores = _cached(path, [s.id for s in batch], adapter)
    if scores is None:
        scores = score_batch(model, processor, adapter, batch, threshold, weight, grids)
        if path is not None:
            scores.save(path)
    return scores


def _cached(path: Path | None, ids: list[str], adapter: Adapter) -> HeadScores | None:
    """The saved scores of a batch, or None when it is not on disk yet or cannot be read."""
    if path is None or not path.exists():
        return None
    try:
        scores = HeadScores.load(path)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None  # cut short or damaged: scored again and saved over it
    if list(scores.sample_ids) != ids:
        raise ValueError(f"{path} holds samples {list(scores.sample_ids)}, expected {ids}")
    if scores.s_img.shape[1:] != (adapter.num_layers, adapter.num_heads):
        raise ValueError(f"{path} holds scores of shape {scores.s_img.shape}, expected "
                         f"({len(ids)}, {adapter.num_layers}, {adapter.num_heads})")
    return scores


def _check_args(samples: Sequence[Sample], batch_size: int, threshold: str, weight: str,
                grids: str) -> None:
    if not samples:
        raise ValueError("samples must not be empty")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if threshold not in ("mean", "two_mean"):
        raise ValueError(f"threshold must be 'mean' or 'two_mean', got {threshold!r}")
    if weight not in ("area", "mass"):
        raise ValueError(f"weight must be 'area' or 'mass', got {weight!r}")
    if grids not in ("primary", "all"):
        raise ValueError(f"grids must be 'primary' or 'all', got {grids!r}")
