"""The logit lens on visual tokens: per-concept heatmaps, token-norm maps and their figures.

A visual token's hidden state ``h_s`` at the output of a decoder layer, read through the language
model's final norm and LM head, is a distribution over the vocabulary (Neo et al., arXiv
2410.07149). The probability of a concept's token at every visual token, reshaped to the
adapter's grids, is a heatmap of "where is the cat" (methods.md section 2):

    p(C | h_s) = sum_{t in ids(C)} softmax(float32(lm_head(final_norm(h_s))))[t]

- ``h_s``: the decoder layer's output (the residual stream), *before* the final norm; at the last
  layer it is the input of the final norm, so the last layer's lens is the model's own next-token
  distribution at that position.
- ``final_norm`` / ``lm_head``: `Adapter.final_norm` / `Adapter.lm_head`, run in the model's dtype
  exactly as the model computes its logits; the logits are cast to fp32 before the softmax, which
  runs over the LM head's full output (padded vocabulary included, as the model's own softmax).
  No VLM class supported here applies a final logit soft-cap (Gemma3ForConditionalGeneration
  does not), so none is applied.
- ``ids(C)``: `concept_ids` with the ``"first"`` or ``"sum"`` rule.

`lens_log_probs` is that computation on any hidden states (with gradients, for the Logit Lens
Loss); `lens_maps` runs images through the model and returns the maps; `capture_hidden` is the
context manager that records decoder-layer outputs at the visual tokens.

    result = lens_maps(model, processor, adapter, images, ["circle", "red"], layers=[-1, 8])
    result.map(image=0, layer=-1, concept="circle")  # (rows, cols) on the image's first grid
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lookhere.capture import capture_hidden
from lookhere.data.concepts import Rule, concept_ids
from lookhere.io import atomic_path, safe_name
from lookhere.losses.lll import concept_log_probs
from lookhere.maps import Segmentation, Threshold, segment
from lookhere.models.adapter import Adapter, resolve_layers, unwrap_model
from lookhere.models.layout import GridGeometry
from lookhere.record import FlatRecord

DEFAULT_QUESTION = "Describe the image."


def lens_log_probs(model: nn.Module, adapter: Adapter, hidden: torch.Tensor,
                   ids: Sequence[Sequence[int]], chunk_size: int = 256) -> torch.Tensor:
    """``log p(C | h)`` for hidden states ``(..., D)`` and C id sets: ``(..., C)`` fp32.

    ``log p(C | h) = logsumexp_{t in ids[c]} log_softmax(lm_head(final_norm(h)).float())[t]``.
    Rows are projected ``chunk_size`` at a time, so the vocabulary-sized logits take
    O(chunk_size x V) memory. Differentiable (for the Logit Lens Loss): under autograd each chunk
    is checkpointed, so backward also holds one chunk's logits at a time (one extra LM-head
    projection per chunk in backward).
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if hidden.dim() < 1:
        raise ValueError("hidden must be a (..., hidden_size) tensor")
    inner = unwrap_model(model)
    norm, head = adapter.final_norm(inner), adapter.lm_head(inner)
    vocab = getattr(head, "out_features", None) or head.weight.shape[0]
    table, table_mask = _id_table(ids, vocab, hidden.device)  # (C, M)
    params = [*norm.parameters(), *head.parameters()]
    grad = torch.is_grad_enabled() and (hidden.requires_grad
                                        or any(p.requires_grad for p in params))
    h = hidden.reshape(-1, hidden.shape[-1])  # (N, D)
    n = h.shape[0]
    logp, _ = concept_log_probs(
        h, table.expand(n, *table.shape), table_mask.expand(n, *table.shape),
        lambda rows: head(norm(rows)), chunk_size=chunk_size, checkpoint=grad,
        complement=False)  # (N, C)
    return logp.reshape(*hidden.shape[:-1], len(ids))


def _id_table(ids: Sequence[Sequence[int]], vocab: int, device: torch.device
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-concept id lists -> ``(C, M)`` ids (padded) and their mask, checked."""
    if isinstance(ids, (str, bytes)) or not len(ids):
        raise ValueError("ids must be a non-empty list of per-concept id lists")
    groups = []
    for c, group in enumerate(ids):
        group = list(group)
        if not group or len(set(group)) != len(group):
            raise ValueError(f"ids[{c}] must be a non-empty list of distinct token ids: {group}")
        if any(not 0 <= int(t) < vocab for t in group):
            raise ValueError(f"ids[{c}] = {group} has ids outside the LM head's {vocab} outputs")
        groups.append([int(t) for t in group])
    m = max(map(len, groups))
    table = torch.tensor([g + [0] * (m - len(g)) for g in groups], device=device)
    mask = torch.tensor([[True] * len(g) + [False] * (m - len(g)) for g in groups],
                        device=device)
    return table, mask


@dataclass(frozen=True)
class LensResult:
    """Lens heatmaps of a list of images.

    ``maps[i][g]`` is ``(n_layers, C, rows, cols)`` fp32 probabilities on the CPU: image ``i``'s
    grid ``g`` (the adapter's grid order: the first is the whole image at the coarsest level),
    layers in the order of ``layers``, concepts in the order of ``concepts``.
    ``geometries[i][g]`` maps that grid to image pixels (for overlays).
    """

    maps: tuple[tuple[torch.Tensor, ...], ...]
    geometries: tuple[tuple[GridGeometry, ...], ...]
    grid_names: tuple[tuple[str, ...], ...]
    layers: tuple[int, ...]  # non-negative decoder-layer indices
    concepts: tuple[str, ...]
    concept_ids: tuple[tuple[int, ...], ...]
    rule: str
    prompt: str  # the full prompt text each image was run with
    layers_total: int  # the language model's layer count (resolves negative layer indices)

    def map(self, image: int, layer: int, concept: str | int = 0, grid: int = 0) -> torch.Tensor:
        """One ``(rows, cols)`` map; ``layer`` may be negative, ``concept`` a name or index."""
        if isinstance(concept, str):
            if concept not in self.concepts:
                raise ValueError(f"concept {concept!r} is not in {self.concepts}")
            concept = self.concepts.index(concept)
        return self.maps[image][grid][layer_index(self.layers, layer, self.layers_total), concept]

    def pick(self, image: int) -> LensResult:
        """The same result for image ``image`` alone (e.g. to draw it on its own)."""
        if not 0 <= image < len(self.maps):
            raise ValueError(f"image {image} is out of range: the result has {len(self.maps)}")
        return dataclasses.replace(self, maps=self.maps[image:image + 1],
                                   geometries=self.geometries[image:image + 1],
                                   grid_names=self.grid_names[image:image + 1])

    def segment(self, image: int, layer: int, concept: str | int = 0, grid: int = 0,
                threshold: Threshold = "mean") -> Segmentation:
        """The map's mask (`lookhere.maps.segment` with ``threshold``) on its grid and image."""
        heat = self.map(image, layer, concept, grid).numpy()  # (rows, cols)
        return segment(heat, self.geometries[image][grid], threshold)

    def records(self, names: Sequence[str], words: Sequence[Sequence[str]] | None = None
                ) -> list[LensMap]:
        """Every map on each image's first grid as a `LensMap`: image ``i`` is called
        ``names[i]`` and keeps ``words[i]`` (default: every concept); ordered by image, word,
        layer."""
        if len(names) != len(self.maps) or (words is not None and len(words) != len(names)):
            raise ValueError(f"names (and words) must give one entry per image: "
                             f"{len(self.maps)} images")
        out = []
        for i, name in enumerate(names):
            for word in self.concepts if words is None else words[i]:
                for layer in self.layers:
                    m = self.map(i, layer, word)  # (rows, cols)
                    out.append(LensMap(name, word, layer, list(m.shape), m.tolist()))
        return out


@dataclass(frozen=True)
class TokenNorms:
    """L2 norms of visual tokens' hidden states: ``maps[i][g]`` is ``(n_layers, rows, cols)``
    fp32 on the CPU, laid out like `LensResult`."""

    maps: tuple[tuple[torch.Tensor, ...], ...]
    geometries: tuple[tuple[GridGeometry, ...], ...]
    grid_names: tuple[tuple[str, ...], ...]
    layers: tuple[int, ...]
    prompt: str
    layers_total: int

    def map(self, image: int, layer: int, grid: int = 0) -> torch.Tensor:
        """One ``(rows, cols)`` map; ``layer`` may be negative."""
        return self.maps[image][grid][layer_index(self.layers, layer, self.layers_total)]


def layer_index(layers: tuple[int, ...], layer: int, total: int) -> int:
    key = layer % total if -total <= layer < total else None
    if key not in layers:
        raise ValueError(f"layer {layer} is not in this result's layers {layers}")
    return layers.index(key)


@dataclass(frozen=True)
class LensMap(FlatRecord):
    """One lens heatmap: ``p(word | h)`` of each visual token of an image's first grid at the
    output of one decoder layer."""

    image: str  # the image's name: a dataset sample's id, or an image file's stem
    word: str
    layer: int  # non-negative decoder-layer index
    grid: list[int]  # [rows, cols]
    probs: list[list[float]]  # (rows, cols) probabilities

    def __post_init__(self) -> None:
        rows, cols = self.grid
        if len(self.probs) != rows or any(len(r) != cols for r in self.probs):
            raise ValueError(f"lens map {self.image!r}/{self.word!r}/L{self.layer}: probs must "
                             f"be {rows} rows of {cols} values (its grid)")


def lens_file(image: str, word: str, layer: int, suffix: str = ".png") -> Path:
    """Where `lookhere lens` puts a picture of one map, relative to its folder:
    ``<image>/<word>_L<layer><suffix>``, each name made safe for a file system."""
    return Path(safe_name(image)) / f"{safe_name(word)}_L{layer}{suffix}"


@dataclass(frozen=True)
class LensMapSet:
    """The lens maps of one run (what `lookhere lens` writes as JSON): the model, the token
    rule, the prompt, the layers, each word's token ids, and the maps."""

    model: str
    rule: str
    prompt: str
    layers: list[int]  # non-negative decoder-layer indices
    ids: dict[str, list[int]]  # word -> the token ids whose probabilities are summed
    maps: list[LensMap]

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "rule": self.rule, "prompt": self.prompt,
                "layers": list(self.layers), "ids": dict(self.ids),
                "maps": [m.to_json() for m in self.maps]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LensMapSet:
        return cls(data["model"], data["rule"], data["prompt"], list(data["layers"]),
                   {w: list(i) for w, i in data["ids"].items()},
                   [LensMap.from_json(m) for m in data["maps"]])

    def save(self, path: str | Path) -> Path:
        """Compact JSON (one line: a probability per value), written atomically."""
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_json()) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> LensMapSet:
        return cls.from_json(json.loads(Path(path).read_text()))


def lens_maps(model: nn.Module, processor: Any, adapter: Adapter, images: Sequence[Any],
              concepts: Sequence[str], layers: Sequence[int] | str, rule: Rule = "first",
              prompt: str | None = None, batch_size: int = 8, chunk_size: int = 256
              ) -> LensResult:
    """Logit-lens heatmaps of ``concepts`` at ``layers`` for each PIL image (see the module doc).

    Each image is one sample: the family's chat turn with the image and the question ``prompt``
    (default ``"Describe the image."``), right padded, ``batch_size`` samples per forward. In
    the causal families the image precedes the question, so the visual tokens' states do not
    depend on it (it keeps the input a normal chat turn); in PaliGemma's bidirectional prefix
    they do. The model runs in eval mode, without gradients.
    """
    ids = _check_concepts(processor, concepts, rule)
    n = adapter.num_layers
    layer_ids = resolve_layers(layers, n)

    def per_sample(hidden: dict[int, torch.Tensor]) -> torch.Tensor:  # {layer: (K, D)}
        stacked = torch.stack([hidden[layer] for layer in layer_ids])  # (L, K, D)
        logp = lens_log_probs(model, adapter, stacked, ids, chunk_size)  # (L, K, C)
        return logp.exp().transpose(1, 2)  # (L, C, K)

    maps, geos, names, text = _run(model, processor, adapter, images, layer_ids, prompt,
                                   batch_size, per_sample)
    return LensResult(maps, geos, names, layer_ids, tuple(" ".join(c.split()) for c in concepts),
                      tuple(tuple(i) for i in ids), rule, text, n)


def token_norms(model: nn.Module, processor: Any, adapter: Adapter, images: Sequence[Any],
                layers: Sequence[int] | str, prompt: str | None = None, batch_size: int = 8
                ) -> TokenNorms:
    """L2 norm of each visual token's hidden state (decoder-layer output, before the final norm)
    per layer, on the adapter's grids (the KLAL paper's figure 5). Runs like `lens_maps`."""
    layer_ids = resolve_layers(layers, adapter.num_layers)

    def per_sample(hidden: dict[int, torch.Tensor]) -> torch.Tensor:
        return torch.stack([hidden[layer].float().norm(dim=-1) for layer in layer_ids])  # (L, K)

    maps, geos, names, text = _run(model, processor, adapter, images, layer_ids, prompt,
                                   batch_size, per_sample)
    return TokenNorms(maps, geos, names, layer_ids, text, adapter.num_layers)


def _run(model, processor, adapter, images, layers, prompt, batch_size, per_sample):
    """Batches of images -> per image, per grid, ``per_sample(hidden)`` reshaped to the grid."""
    from lookhere.models.prompt import chat_turn

    images = check_images(images)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    text = chat_turn(adapter, processor, DEFAULT_QUESTION if prompt is None else prompt).prompt
    device = next(model.parameters()).device
    maps, geos, names = [], [], []
    with _inference(model):
        for start in range(0, len(images), batch_size):
            chunk = [[im] for im in images[start:start + batch_size]]
            batch = _process_right_padded(adapter, processor, [text] * len(chunk), chunk)
            layout = adapter.layout(batch, chunk, processor)
            pos, mask = layout.key_positions()  # (B, K)
            with capture_hidden(model, adapter, layers, positions=pos) as cap:
                model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v
                         for k, v in batch.items()})
            for b, sample in enumerate(layout.samples):
                k = int(mask[b].sum())
                values = per_sample({layer: h[b, :k] for layer, h in cap.hidden.items()})
                values = values.float().cpu()  # (..., K)
                grids = sample.images[0].grids
                maps.append(tuple(g.to_grid(values) for g in grids))
                geos.append(tuple(g.geometry for g in grids))
                names.append(tuple(g.name for g in grids))
    return tuple(maps), tuple(geos), tuple(names), text


@contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and no gradients; the model's mode is restored on exit."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _process_right_padded(adapter: Adapter, processor: Any, texts: list[str],
                          images: list[list[Any]]) -> Any:
    """Right padding keeps every real token at its unbatched position (so batched == alone)."""
    tok = processor.tokenizer
    saved = tok.padding_side
    tok.padding_side = "right"
    try:
        return adapter.process(processor, texts, images, padding=True)
    finally:
        tok.padding_side = saved


def check_images(images: Any) -> list[Any]:
    from PIL import Image

    if isinstance(images, Image.Image) or not isinstance(images, Sequence) or not images:
        raise ValueError("images must be a non-empty list of PIL images (one per sample)")
    for i, im in enumerate(images):
        if not isinstance(im, Image.Image):
            raise ValueError(f"images[{i}] must be a PIL image, got {type(im).__name__}")
    return list(images)


def _check_concepts(processor: Any, concepts: Any, rule: str) -> list[list[int]]:
    if isinstance(concepts, str) or not isinstance(concepts, Sequence) or not concepts:
        raise ValueError(f"concepts must be a non-empty list of words or phrases, "
                         f"got {concepts!r}")
    tok = getattr(processor, "tokenizer", processor)
    return [concept_ids(tok, c, rule) for c in concepts]

