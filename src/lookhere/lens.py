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

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lookhere.models.adapter import Adapter, unwrap_model
from lookhere.models.layout import GridGeometry, pad_positions

Rule = Literal["first", "sum"]
RULES: tuple[str, ...] = ("first", "sum")
DEFAULT_QUESTION = "Describe the image."
# Context word for encoding a concept mid-sentence: "a cat" minus "a" is " cat" as a tokenizer
# sees it inside a sentence, also for SentencePiece tokenizers that add a dummy prefix space.
_CONTEXT = "a"


# ---------------------------------------------------------------------------------------------
# Concept tokens.


def concept_ids(tokenizer: Any, concept: str, rule: Rule = "first") -> list[int]:
    """Token ids whose lens probabilities are summed into ``p(concept | h_s)``.

    A logit-lens distribution is a *next-token* distribution, so only a token that can start the
    concept word is evidence that the patch "says" it; later tokens of a multi-token word are
    predictions conditional on the first and would be counted out of context.

    - ``"first"``: one id, the first token of the concept as it appears mid-sentence (after a
      space: the tokenizer's encoding of ``"a " + concept`` minus that of ``"a"``).
    - ``"sum"``: the distinct first tokens of the concept's surface forms: as given, with its
      first letter upper-cased and lower-cased, each mid-sentence (leading space) and at the start
      of a line (no space, as an assistant answer begins in chat templates). Distinct ids at one
      position are exclusive events, so their summed probability is a probability (<= 1): that
      the next word starts as the concept in any of these spellings.

    Leading tokens that decode to whitespace only are skipped in both rules: a tokenizer that
    splits the space off as its own token (the tiny BPE does for most words) would otherwise give
    every concept the same "first token", the space. Raises ValueError for an empty concept, an
    unknown rule, or a concept that encodes to no usable token (nothing but whitespace, unknown
    or special tokens).
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if not isinstance(concept, str) or not concept.strip():
        raise ValueError(f"concept must be a non-empty word or phrase, got {concept!r}")
    word = " ".join(concept.split())
    if rule == "first":
        return [_first_token(tokenizer, word, mid_sentence=True)]
    forms = dict.fromkeys([word, word[0].upper() + word[1:], word[0].lower() + word[1:]])
    ids = [_first_token(tokenizer, f, mid) for f in forms for mid in (True, False)]
    return list(dict.fromkeys(ids))


def _first_token(tokenizer: Any, word: str, mid_sentence: bool) -> int:
    ids = _encode(tokenizer, word, mid_sentence)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for i in ids:
        if i in special:
            raise ValueError(f"concept {word!r} encodes to special token {i}; not a word")
        if tokenizer.decode([i]).strip():
            return int(i)
    raise ValueError(f"the tokenizer cannot encode concept {word!r} into a word token "
                     f"(got ids {ids})")


def _encode(tokenizer: Any, word: str, mid_sentence: bool) -> list[int]:
    def enc(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    if not mid_sentence:
        return enc(word)
    prefix, full = enc(_CONTEXT), enc(f"{_CONTEXT} {word}")
    if full[: len(prefix)] == prefix and len(full) > len(prefix):
        return full[len(prefix):]
    return enc(" " + word)  # the context merged into the word: encode the spaced word alone


# ---------------------------------------------------------------------------------------------
# Hidden states.


class HiddenCapture:
    """Records decoder-layer outputs during forward passes; use through `capture_hidden`.

    After each forward: ``hidden[layer]`` is ``(B, K, D)`` in the model's dtype (zeros at padded
    slots), still attached to the autograd graph when gradients are enabled; ``positions`` and
    ``mask`` are ``(B, K)``: the sequence positions read and which of them are real.
    """

    def __init__(self, model: nn.Module, adapter: Adapter, layers: Sequence[int] | str,
                 positions: str | torch.Tensor | Sequence[Sequence[int]] = "visual") -> None:
        self.model = unwrap_model(model)
        self.adapter = adapter
        self.layers = resolve_layers(layers, adapter.num_layers)
        if isinstance(positions, str) and positions not in ("visual", "all"):
            raise ValueError(f"positions must be 'visual', 'all' or explicit positions, "
                             f"got {positions!r}")
        self._spec = positions if isinstance(positions, str) else _explicit(positions)
        self.hidden: dict[int, torch.Tensor] = {}
        self.positions: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        self._handles: list[Any] = []

    def __enter__(self) -> HiddenCapture:
        blocks = self.adapter.decoder_layers(self.model)
        self._handles.append(
            self.model.register_forward_pre_hook(self._pre_forward, with_kwargs=True))
        for layer in self.layers:
            self._handles.append(blocks[layer].register_forward_hook(self._hook(layer)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., D) hidden states -> (..., V) logits: the final norm, then the LM head."""
        return self.adapter.lm_head(self.model)(self.adapter.final_norm(self.model)(hidden))

    def _pre_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.hidden, self.positions, self.mask = {}, None, None
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if self._spec == "all":
            return  # every position: set on the first layer
        if self._spec == "visual":
            if input_ids is None:
                raise ValueError("positions='visual' needs input_ids in the forward")
            pos, mask = pad_positions(self.adapter.visual_positions(input_ids))
        else:
            pos, mask = self._spec
        device = input_ids.device if input_ids is not None else pos.device
        self.positions, self.mask = pos.to(device), mask.to(device)

    def _hook(self, layer: int):
        def record(module: nn.Module, args: tuple, output: Any) -> None:
            # Under gradient checkpointing the layer runs again in backward; keep the first record.
            if torch._C._current_graph_task_id() != -1:
                return
            h = output[0] if isinstance(output, tuple) else output  # (B, L, D)
            self.hidden[layer] = self._select(h)
        return record

    def _select(self, h: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        if self._spec == "all":
            self.positions = torch.arange(n, device=h.device).expand(b, n)
            self.mask = torch.ones(b, n, dtype=torch.bool, device=h.device)
            return h
        if self.positions is None:
            raise ValueError("capture_hidden hooks the model it was given: call that model's "
                             "forward (with input_ids), not an inner module")
        if self.positions.shape[0] != b or (self.positions.numel() and self.positions.max() >= n):
            raise ValueError(f"capture positions {tuple(self.positions.shape)} do not fit the "
                             f"layer's hidden states {tuple(h.shape)}")
        idx = self.positions[..., None].expand(b, self.positions.shape[1], d)
        return h.gather(1, idx).masked_fill(~self.mask[..., None], 0)  # (B, K, D)


def capture_hidden(model: nn.Module, adapter: Adapter, layers: Sequence[int] | str,
                   positions: str | torch.Tensor | Sequence[Sequence[int]] = "visual"
                   ) -> HiddenCapture:
    """Context manager recording the language model's hidden states at decoder-layer outputs.

    ``layers``: indices (negative count from the end), or ``"all"`` to ask for every layer;
    only those are kept. ``positions``: ``"visual"`` (each sample's image tokens, from
    ``input_ids``), ``"all"`` (the full ``(B, L, D)`` states), or explicit positions as a
    ``(B, K)`` tensor or per-sample lists. The final norm is *not* applied: ``hidden[L - 1]`` is
    the input of the final norm. Forward hooks on the decoder layers are removed on exit.

        with capture_hidden(model, adapter, [-1]) as cap:
            model(**batch)
        cap.hidden[adapter.num_layers - 1]  # (B, K, D)
    """
    return HiddenCapture(model, adapter, layers, positions)


def resolve_layers(layers: Sequence[int] | str, n: int) -> tuple[int, ...]:
    """Layer indices in ``[0, n)``, in the given order, without duplicates; ``"all"``: all."""
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


def _explicit(spec: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(spec, torch.Tensor):
        if spec.dim() != 2 or spec.dtype not in (torch.int32, torch.int64) or (spec < 0).any():
            raise ValueError("positions must be a (batch, n) tensor of non-negative integers")
        return spec.long(), torch.ones_like(spec, dtype=torch.bool)
    rows = [torch.as_tensor(list(r), dtype=torch.long) for r in spec]
    if any((r < 0).any() for r in rows):
        raise ValueError("positions must be non-negative")
    return pad_positions(rows)


# ---------------------------------------------------------------------------------------------
# The lens.


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
    flat_ids, owner = _flatten_ids(ids, vocab, hidden.device)

    def chunk_log_probs(rows: torch.Tensor) -> torch.Tensor:  # (n, D) -> (n, C)
        logits = head(norm(rows)).float()  # (n, V): the model's own computation, then fp32
        logp = torch.log_softmax(logits, dim=-1)[:, flat_ids]  # (n, T)
        return _logsumexp_groups(logp, owner, len(ids))

    params = [*norm.parameters(), *head.parameters()]
    grad = torch.is_grad_enabled() and (hidden.requires_grad
                                        or any(p.requires_grad for p in params))
    h = hidden.reshape(-1, hidden.shape[-1])  # (N, D)
    out = [checkpoint(chunk_log_probs, rows, use_reentrant=False) if grad
           else chunk_log_probs(rows) for rows in h.split(chunk_size)]
    logp = torch.cat(out) if out else h.new_zeros(0, len(ids), dtype=torch.float32)
    return logp.reshape(*hidden.shape[:-1], len(ids))


def _flatten_ids(ids: Sequence[Sequence[int]], vocab: int, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """All ids in one tensor and, for each, the index of its concept."""
    if isinstance(ids, (str, bytes)) or not len(ids):
        raise ValueError("ids must be a non-empty list of per-concept id lists")
    flat, owner = [], []
    for c, group in enumerate(ids):
        group = list(group)
        if not group or len(set(group)) != len(group):
            raise ValueError(f"ids[{c}] must be a non-empty list of distinct token ids: {group}")
        if any(not 0 <= int(t) < vocab for t in group):
            raise ValueError(f"ids[{c}] = {group} has ids outside the LM head's {vocab} outputs")
        flat += [int(t) for t in group]
        owner += [c] * len(group)
    return (torch.tensor(flat, device=device), torch.tensor(owner, device=device))


def _logsumexp_groups(logp: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
    """(N, T) log-probs, (T,) group of each column -> (N, n) log of each group's summed prob."""
    cols = [logp[:, owner == c].logsumexp(-1) for c in range(n)]
    return torch.stack(cols, -1)


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
        return self.maps[image][grid][_layer_index(self.layers, layer, self.layers_total), concept]


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
        return self.maps[image][grid][_layer_index(self.layers, layer, self.layers_total)]


def _layer_index(layers: tuple[int, ...], layer: int, total: int) -> int:
    key = layer % total if -total <= layer < total else None
    if key not in layers:
        raise ValueError(f"layer {layer} is not in this result's layers {layers}")
    return layers.index(key)


def lens_maps(model: nn.Module, processor: Any, adapter: Adapter, images: Sequence[Any],
              concepts: Sequence[str], layers: Sequence[int] | str, rule: Rule = "first",
              prompt: str | None = None, batch_size: int = 8, chunk_size: int = 256
              ) -> LensResult:
    """Logit-lens heatmaps of ``concepts`` at ``layers`` for each PIL image (see the module doc).

    Each image is one sample: the family's chat turn with the image and the question ``prompt``
    (default ``"Describe the image."``), right padded, ``batch_size`` samples per forward. In
    every supported family the image precedes the question and attention is causal, so the
    visual tokens' states do not depend on the question; it is there to keep the input a
    normal chat turn. The model runs in eval mode, without gradients.
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
    from lookhere.data.prompt import chat_turn

    images = _check_images(images)
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


def _check_images(images: Any) -> list[Any]:
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


# ---------------------------------------------------------------------------------------------
# Figures.


def plot_lens_maps(result: LensResult | TokenNorms, images: Sequence[Any], path: str | Path,
                   *, concepts: Sequence[str] | None = None, layers: Sequence[int] | None = None,
                   grid: int = 0, scale: Literal["panel", "shared"] = "panel") -> Path:
    """Overlay figure: one row per image, the image then one panel per (concept, layer).

    Each map is drawn (nearest upsampling, ``inferno``) over the faded image at its grid's pixel
    extent; ``scale="panel"`` scales each map to its own max (shown in the title),
    ``"shared"`` puts every panel on one 0..max scale. A `TokenNorms` result draws one panel per
    layer. Written atomically; the format follows the path's suffix (.png, .pdf, .svg).
    """
    from lookhere.report import new_figure, save_figure

    images = _check_images(images)
    if len(images) != len(result.maps):
        raise ValueError(f"images has {len(images)} images, the result {len(result.maps)}")
    if scale not in ("panel", "shared"):
        raise ValueError(f"scale must be 'panel' or 'shared', got {scale!r}")
    panels = _panels(result, concepts, layers)  # [(title, concept index | None, layer)]
    cells = [[_panel_map(result, i, c, layer, grid) for _, c, layer in panels]
             for i in range(len(images))]
    top = max(float(m.max()) for row in cells for m in row) if scale == "shared" else None
    rows, cols = len(images), 1 + len(panels)
    fig = new_figure(2.4 * cols + 0.6, 2.5 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, image in enumerate(images):
        w, h = image.size
        axes[i][0].imshow(image.convert("RGB"), extent=(0, w, h, 0))
        axes[i][0].set_title(f"image {i}", fontsize=9)
        extent = result.geometries[i][grid].grid_box_to_image(
            (0, 0, result.geometries[i][grid].cols, result.geometries[i][grid].rows), clip=False)
        for j, ((title, _, _), m) in enumerate(zip(panels, cells[i], strict=True), start=1):
            vmax = top if top is not None else float(m.max())
            _overlay(axes[i][j], image, m.numpy(), extent, vmax)
            axes[i][j].set_title(f"{title} (max {float(m.max()):.3g})", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    kind = "token norm" if isinstance(result, TokenNorms) else f"p(concept), rule={result.rule}"
    fig.suptitle(f"Logit lens: {kind}; maps scaled to "
                 f"{'each panel max' if top is None else f'{top:.3g}'}", fontsize=10)
    return save_figure(fig, path)


def _panels(result: LensResult | TokenNorms, concepts: Sequence[str] | None,
            layers: Sequence[int] | None) -> list[tuple[str, int | None, int]]:
    chosen = list(result.layers) if layers is None else list(layers)
    chosen = [result.layers[_layer_index(result.layers, layer, result.layers_total)]
              for layer in chosen]
    if isinstance(result, TokenNorms):
        return [(f"|h| L{layer}", None, layer) for layer in chosen]
    names = list(result.concepts) if concepts is None else list(concepts)
    unknown = [c for c in names if c not in result.concepts]
    if unknown:
        raise ValueError(f"concepts {unknown} are not in the result's {result.concepts}")
    return [(f"{c} L{layer}", result.concepts.index(c), layer) for c in names for layer in chosen]


def _panel_map(result: LensResult | TokenNorms, i: int, c: int | None, layer: int,
               grid: int) -> torch.Tensor:
    if not 0 <= grid < len(result.maps[i]):
        raise ValueError(f"grid {grid} is out of range: image {i} has {len(result.maps[i])}")
    return result.map(i, layer, grid=grid) if c is None else result.map(i, layer, c, grid)


def _overlay(ax: Any, image: Any, m: Any, extent: Any, vmax: float) -> None:
    import numpy as np

    w, h = image.size
    grey = np.asarray(image.convert("L"))
    # Faded image: grey levels squeezed into the light end, so the heatmap dominates.
    ax.imshow(grey, cmap="gray", vmin=-255, vmax=255, extent=(0, w, h, 0))
    x0, y0, x1, y1 = extent
    ax.imshow(m, cmap="inferno", vmin=0, vmax=vmax if vmax > 0 else 1, alpha=0.65,
              interpolation="nearest", extent=(x0, x1, y1, y0))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
