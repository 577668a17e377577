"""The viewer's model side, without any UI: answer a question about an image, then show where
each answer token looks, what the logit lens reads at any layer, and where the localization heads
point. `lookhere.view.app` puts a browser page on top; everything here is plain Python and
testable.

    viewer = Viewer(model, processor)
    ans = viewer.answer(image, "What colour is the circle?")   # greedy, then one cached forward
    viewer.token_map(0).overlay                 # token 0's attention, layers and heads averaged
    viewer.token_map(0, layer=2, head=1).map    # (rows, cols) one head
    viewer.lens_map("red", layer=-1).map        # p("red") at each visual token
    viewer.heads_box("the red circle").box      # with a HeadSpec: box and mask

`answer` generates with the evaluation's own greedy helper (`lookhere.eval.runner`), then runs one
teacher-forced forward over prompt + answer (the evaluation's collator) under the probe, reading
every layer's attention rows from each answer token over the visual tokens, and capturing every
layer's hidden states at the visual tokens. Both are cached, so a token click or a lens word is
numpy and one LM-head projection, not a forward. Attention never comes from
``output_attentions``.

A token's query is its own position, as KLAL's (``all_answer``); its map over the image is each
head's row renormalised over the visual tokens, averaged over the chosen heads, then layers (the
evaluation's Q, so the last token's averaged map is the figure-4 map and its ratio the runner's).
`TokenMap.image_share` is the row's raw mass on the image before renormalising.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from lookhere.capture import capture_hidden
from lookhere.collate import GroundingCollator, split_aux, to_device
from lookhere.data.concepts import concept_ids
from lookhere.data.sample import Geometry, Sample
from lookhere.eval.metrics import attention_ratio
from lookhere.eval.runner import generate_answers
from lookhere.heads.locate import check_heads, locate
from lookhere.heads.selection import HeadSpec
from lookhere.lens import DEFAULT_QUESTION, lens_log_probs
from lookhere.models.adapter import Adapter, get_adapter
from lookhere.models.layout import Grid, GridGeometry
from lookhere.models.prompt import chat_turn
from lookhere.probe import AttentionProbe
from lookhere.view.overlay import DISPLAY_SIZE, box_overlay, heat_overlay


class ViewError(ValueError):
    """A viewer request that cannot be served (no image yet, a token out of range, ...); the
    message says what to do."""


@dataclass(frozen=True)
class AnswerView:
    """The generated answer and the tokens that can be clicked: ``tokens[i]`` (decoded text) sits
    at sequence position ``positions[i]`` of the teacher-forced forward."""

    question: str
    text: str
    tokens: tuple[str, ...]
    positions: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class MapView:
    """A map over one grid of the image: ``map`` (rows, cols), the ``geometry`` that places it on
    the image, and ``overlay`` (the image with the map over it, `DISPLAY_SIZE` on its long side).
    ``title`` says what it is; ``info`` holds the request's settings (for JSON)."""

    kind: str  # "attention", "lens" or "heads"
    title: str
    map: np.ndarray
    geometry: GridGeometry
    overlay: Image.Image = field(repr=False)
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        g = self.geometry
        extent = g.grid_box_to_image((0, 0, g.cols, g.rows), clip=False)
        return {"kind": self.kind, "title": self.title, **self.info,
                "map": np.asarray(self.map, dtype=np.float64).tolist(),
                "grid": {"rows": g.rows, "cols": g.cols, "cell_size": list(g.cell_size),
                         "scale": list(g.scale), "offset": list(g.offset),
                         "image_size": list(g.image_size), "extent": extent.tolist()}}


@dataclass(frozen=True, eq=False)
class TokenMap(MapView):
    """An answer token's attention over the image. ``ratio``: the attention ratio on the image's
    target cells (None without a target geometry); ``image_share``: the raw attention mass on
    the visual tokens (mean over the chosen layers and heads)."""

    ratio: float | None = None
    image_share: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "ratio": self.ratio, "image_share": self.image_share}


@dataclass(frozen=True, eq=False)
class HeadsBox(MapView):
    """The localization heads' grounding of an expression: ``box`` xyxy image pixels, ``mask``
    (height, width) bool; ``map`` is their summed smoothed heatmap."""

    box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    mask: np.ndarray | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "box": list(self.box)}


@dataclass
class _Forward:
    """The cached teacher-forced forward of the current image + question."""

    rows: np.ndarray  # (L, H, Q, K) float32 probabilities: answer tokens' rows over visual keys
    hidden: torch.Tensor  # (L, K, D) decoder-layer outputs at the visual tokens
    grid: Grid  # image 0's primary grid
    target: np.ndarray | None  # (K,) bool target cells; None without a target geometry


class Viewer:
    """Answers, attention maps, lens maps and head groundings for one image at a time.

    Args:
        model, processor: a supported VLM (language model on SDPA; put in eval mode) and its
            processor.
        adapter: overrides the one found from the model.
        spec: a `HeadSpec` for `heads_box` (or set ``viewer.spec`` later).
        max_new_tokens: the generation budget of `answer`.
        size: the overlays' long side in pixels.
    """

    def __init__(self, model: nn.Module, processor: Any, adapter: Adapter | None = None,
                 spec: HeadSpec | None = None, max_new_tokens: int = 32,
                 size: int = DISPLAY_SIZE) -> None:
        self.model = model.eval()
        self.processor = processor
        self.adapter = adapter or get_adapter(model)
        self.spec: HeadSpec | None = None
        self.set_spec(spec)
        self.max_new_tokens = max_new_tokens
        self.size = size
        self.image: Image.Image | None = None
        self.geometry: Geometry | None = None
        self.last: AnswerView | None = None
        self._forward: _Forward | None = None
        self._heads: dict[str, HeadsBox] = {}

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers

    @property
    def num_heads(self) -> int:
        return self.adapter.num_heads

    def set_spec(self, spec: HeadSpec | None) -> None:
        """The `HeadSpec` that `heads_box` uses (None: none); ViewError when it was found on
        another model's shape or its heads do not fit this one."""
        if spec is not None:
            size = (self.num_layers, self.num_heads)
            found_on = np.shape(spec.counts)
            if len(found_on) == 2 and found_on != size:
                raise ViewError(f"the HeadSpec was found on a model of {found_on[0]} layers x "
                                f"{found_on[1]} heads ({spec.model!r}); this one has {size[0]} "
                                f"x {size[1]}")
            try:
                check_heads(spec.heads, self.adapter)
            except ValueError as err:
                raise ViewError(f"HeadSpec: {err}") from None
        self.spec, self._heads = spec, {}

    # -- the image and the answer --------------------------------------------------------------
    def set_image(self, image: Image.Image, geometry: Geometry | None = None) -> None:
        """A new image (RGB), with the target ``geometry`` of a sample when known (attention
        ratios need it); every cached result is dropped."""
        if not isinstance(image, Image.Image):
            raise ViewError(f"image must be a PIL image, got {type(image).__name__}")
        self.image = image.convert("RGB")
        self.geometry = geometry if geometry is not None and not geometry.is_empty() else None
        self.last, self._forward, self._heads = None, None, {}

    def answer(self, image: Image.Image | None, question: str,
               geometry: Geometry | None = None, given: str | None = None) -> AnswerView:
        """Greedy answer to ``question`` about ``image`` (None: the current image), and the
        cached forward that every `token_map` and `lens_map` reads. ``given``: an answer to
        read instead of generating one (a sample's gold answer, say)."""
        if image is not None:
            self.set_image(image, geometry)
        image = self._current()
        if not isinstance(question, str) or not question.strip():
            raise ViewError("type a question first")
        question = question.strip()
        text = self._generate(image, question) if given is None else given.strip()
        self._forward, positions, ids = self._run(question, text)
        tok = self.processor.tokenizer
        tokens = tuple(_shown(tok.decode([i])) for i in ids) if text else ()
        self.last = AnswerView(question, text, tokens, tuple(positions) if text else ())
        return self.last

    # -- maps ----------------------------------------------------------------------------------
    def token_map(self, token: int, layer: int | None = None, head: int | None = None
                  ) -> TokenMap:
        """Answer token ``token``'s attention over the image at ``layer`` (negative counts from
        the end; None: the layers' mean) and ``head`` (None: the heads' mean)."""
        if self.last is None or self._forward is None:
            raise ViewError("ask a question first: token maps are of the answer's tokens")
        n = len(self.last.tokens)
        if not n:
            raise ViewError("the answer is empty: there is no token to show")
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < n:
            raise ViewError(f"token must be an index in [0, {n}), got {token!r}")
        layers = self._layers(layer)
        heads = self._heads_of(head)
        fw = self._forward
        rows = fw.rows[np.ix_(layers, heads, [token])][:, :, 0]  # (l, h, K)
        share = rows.sum(-1, keepdims=True)  # (l, h, 1) mass on the image
        q = np.where(share > 0, rows / np.where(share > 0, share, 1), 0.0)
        seen = (share[..., 0] > 0).sum(1, keepdims=True)  # heads that see the image, per layer
        q = (q.sum(1) / np.maximum(seen, 1)).mean(0)  # (K,)
        ratio = None
        if fw.target is not None and fw.target.any():
            ratio = float(attention_ratio(torch.from_numpy(q), torch.from_numpy(fw.target)))
        grid_map = fw.grid.to_grid(torch.from_numpy(q)).numpy()  # (rows, cols)
        where = (f"layer {layers[0]}" if layer is not None else "mean of layers") + ", " + (
            f"head {heads[0]}" if head is not None else "mean of heads")
        title = f"attention of {self.last.tokens[token]!r} (token {token}), {where}"
        info = {"token": token, "token_text": self.last.tokens[token],
                "layer": None if layer is None else layers[0], "head": head,
                "question": self.last.question, "answer": self.last.text}
        return TokenMap("attention", title, grid_map, fw.grid.geometry,
                        self._overlay(grid_map, fw.grid.geometry), info, ratio,
                        float(share.mean()))

    def lens_map(self, word: str, layer: int = -1) -> MapView:
        """The logit lens's ``p(word)`` at each visual token at ``layer``'s output (negative
        counts from the end; the word's first token, `lookhere.lens`)."""
        if not isinstance(word, str) or not word.strip():
            raise ViewError("type a word for the lens")
        fw = self._forward if self._forward is not None else self._lens_forward()
        (index,) = self._layers(layer)
        try:
            ids = concept_ids(self.processor.tokenizer, word, "first")
        except ValueError as err:
            raise ViewError(f"word {word!r}: {err}") from None
        with torch.no_grad():
            logp = lens_log_probs(self.model, self.adapter, fw.hidden[index], [ids])  # (K, 1)
        p = fw.grid.to_grid(logp[:, 0].exp().float().cpu()).numpy()  # (rows, cols)
        word = " ".join(word.split())
        info = {"word": word, "token_ids": ids, "layer": index}
        return MapView("lens", f"logit lens: p({word!r}) at layer {index}", p, fw.grid.geometry,
                       self._overlay(p, fw.grid.geometry), info)

    def heads_box(self, expression: str) -> HeadsBox:
        """Box and mask of the referring ``expression`` from the `HeadSpec`'s heads
        (`lookhere.heads.locate`; one forward, cached per expression)."""
        if self.spec is None:
            raise ViewError("no HeadSpec: load one (a JSON file from `lookhere heads find`)")
        if not isinstance(expression, str) or not expression.strip():
            raise ViewError("type a referring expression, e.g. 'the red circle'")
        expression = " ".join(expression.split())
        if expression not in self._heads:
            image = self._current()
            sample = Sample(image=image, question=expression, answer="", structured={},
                            geometry=Geometry(), id="view")
            (g,) = locate(self.model, self.processor, self.adapter, self.spec, [sample])
            base = self._overlay(g.heatmap, g.geometry)
            overlay = box_overlay(base, image.size, g.box, g.pixel_mask)
            heads = [list(h) for h in self.spec.heads]
            info = {"expression": expression, "heads": heads}
            self._heads[expression] = HeadsBox(
                "heads", f"localization heads {heads}: {expression!r}", g.heatmap, g.geometry,
                overlay, info, tuple(float(v) for v in g.box), g.pixel_mask)
        return self._heads[expression]

    # -- internals -----------------------------------------------------------------------------
    def _generate(self, image: Image.Image, question: str) -> str:
        ask = Sample(image=image, question=question, answer="", structured={},
                     geometry=Geometry(), id="view")
        return generate_answers(self.model, self.processor, self.adapter, [ask], batch_size=1,
                                max_new_tokens=self.max_new_tokens, progress=False)["view"]

    def _current(self) -> Image.Image:
        if self.image is None:
            raise ViewError("upload or pick an image first")
        return self.image

    def _layers(self, layer: int | None) -> list[int]:
        n = self.num_layers
        if layer is None:
            return list(range(n))
        if isinstance(layer, bool) or not isinstance(layer, int) or not -n <= layer < n:
            raise ViewError(f"layer must be in [{-n}, {n}) for this model, got {layer!r}")
        return [layer % n]

    def _heads_of(self, head: int | None) -> list[int]:
        n = self.num_heads
        if head is None:
            return list(range(n))
        if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < n:
            raise ViewError(f"head must be in [0, {n}) for this model, got {head!r}")
        return [head]

    def _overlay(self, heat: np.ndarray, geometry: GridGeometry) -> Image.Image:
        return heat_overlay(self._current(), heat, geometry, size=self.size)

    @torch.no_grad()
    def _run(self, question: str, text: str) -> tuple[_Forward, list[int], list[int]]:
        """The teacher-forced forward of prompt + ``text``: (cache, the answer's content
        positions, their token ids)."""
        image = self._current()
        sample = Sample(image=image, question=question, answer=text, structured={},
                        geometry=self.geometry or Geometry(), id="view")
        batch = GroundingCollator(self.processor, self.adapter)([sample])
        inputs, aux = split_aux(batch)
        inputs.pop("labels", None)  # no loss needed
        positions = torch.nonzero(aux["answer_mask"][0]).flatten().tolist()
        ids = inputs["input_ids"][0, positions].tolist()
        # a sample always has a query: the last prompt token stands in for an empty answer
        queries = [positions or [int(inputs["attention_mask"][0].sum()) - 1]]
        device = next(self.model.parameters()).device
        with AttentionProbe(self.model, queries=queries, keys="visual") as probe, \
                capture_hidden(self.model, self.adapter, "all") as cap:
            self.model(**to_device(inputs, device))
        rows = np.stack([probe.rows[layer][0].cpu().numpy()
                         for layer in range(self.num_layers)])  # (L, H, Q, K)
        layout = self.adapter.layout(inputs, [[image]], self.processor)
        target = aux["target_cells"][0].numpy() if bool(aux["has_target"][0]) else None
        return _Forward(rows, _hidden(cap, self.num_layers), layout.samples[0].images[0].primary,
                        target), positions, ids

    @torch.no_grad()
    def _lens_forward(self) -> _Forward:
        """Hidden states of the current image alone (no question asked yet): the lens's own
        prompt. The visual tokens come before any question, so their states are the same."""
        image = self._current()
        prompt = chat_turn(self.adapter, self.processor, DEFAULT_QUESTION).prompt
        batch = self.adapter.process(self.processor, [prompt], [[image]])
        device = next(self.model.parameters()).device
        with capture_hidden(self.model, self.adapter, "all") as cap:
            self.model(**to_device(dict(batch), device))
        layout = self.adapter.layout(batch, [[image]], self.processor)
        empty = np.zeros((self.num_layers, self.num_heads, 0, 0), dtype=np.float32)
        self._forward = _Forward(empty, _hidden(cap, self.num_layers),
                                 layout.samples[0].images[0].primary, None)
        return self._forward


def _hidden(cap: Any, n_layers: int) -> torch.Tensor:
    """(L, K, D): the captured states of the one sample, every layer."""
    return torch.stack([cap.hidden[layer][0] for layer in range(n_layers)])


def _shown(text: str) -> str:
    """A token as it is shown: without surrounding spaces; a space-only one as a space mark."""
    return text.strip() or "\u2423"
