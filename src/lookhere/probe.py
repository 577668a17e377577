"""The attention probe: selected attention rows from a normal SDPA forward, with gradients.

Research code usually reads attention with ``output_attentions=True`` under eager attention, which
materialises every layer's full (B, H, L, L) map. The probe computes only the rows it is asked for:

    with AttentionProbe(model, queries="last_text") as probe:
        model(**batch)
    probe.rows[layer]  # (batch, heads, queries, keys) fp32, keys = each sample's visual tokens

How: inside the context, the language model's attention implementation is switched to a function
registered with transformers' ``AttentionInterface``. That function receives the query after RoPE /
M-RoPE, the key before GQA repetition and the mask that SDPA would get; it computes the wanted
rows (softmax over *all* keys in fp32) and then calls transformers' own ``sdpa_attention_forward``
with untouched arguments, so the model's outputs are bit-identical to a run without the probe.
On exit the original implementation is restored and the hooks are removed.

A language model that transformers runs only on eager attention (Gemma 2, whose logit
soft-capping SDPA lacks: PaliGemma 2) is probed the same way: the registered function computes
the rows, soft-capping included, then calls the model's own ``eager_attention_forward``.

Gradient checkpointing works with non-reentrant checkpointing (transformers' default), provided
``backward()`` runs inside the context: recomputation must see the probe again.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from lookhere.models.adapter import Adapter, get_adapter, resolve_layers, unwrap_model
from lookhere.models.layout import pad_positions

QueryRole = Literal["last_answer", "answer_start", "all_answer", "last_text"]
QUERY_ROLES: tuple[str, ...] = ("last_answer", "answer_start", "all_answer", "last_text")
IGNORE_INDEX = -100

# implementation probed -> the name the probe registers for it (each wraps it bit-exactly)
_IMPL_NAMES = {"sdpa": "lookhere_probe", "eager": "lookhere_probe_eager"}
# attention module -> active probe; weak so a dropped model never stays alive through us
_ACTIVE: weakref.WeakKeyDictionary[nn.Module, AttentionProbe] = weakref.WeakKeyDictionary()


class ProbeError(RuntimeError):
    """The model cannot be probed, or the probe was used wrongly."""


@dataclass(frozen=True)
class Positions:
    """Padded positions that the probe takes as they are: ``index`` ``(B, N)`` long (0 at
    padding) and ``mask`` ``(B, N)`` bool (False at padding), on the model's device and inside
    the forward's sequence, as `query_positions` and `visual_positions` build them from its
    ``input_ids``.

    Only their shapes are checked, never their values, so using them costs no host sync (on a
    GPU: no wait for the device) and no host-to-device copy: the training hot path passes these.
    Lists and plain tensors are checked instead (their bounds, once per forward).
    """

    index: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.index, torch.Tensor) or self.index.dim() != 2 \
                or self.index.dtype not in (torch.int32, torch.int64):
            raise ValueError("Positions.index must be a (batch, n) integer tensor")
        if not isinstance(self.mask, torch.Tensor) or self.mask.dtype != torch.bool \
                or self.mask.shape != self.index.shape:
            raise ValueError(f"Positions.mask must be a bool tensor shaped like index "
                             f"{tuple(self.index.shape)}")


class AttentionProbe:
    """Context manager that records attention rows of chosen layers during a forward pass.

    Args:
        model: a VLM with a registered adapter (or pass ``adapter``), language model on SDPA.
        layers: layer indices to record (negative counts from the end); ``None`` = all layers.
        queries: a role (``last_answer``, ``answer_start``, ``all_answer``, ``last_text``), or
            explicit positions: a ``(B, Q)`` long tensor, a list of per-sample position lists,
            or `Positions` (taken unchecked: no host sync). Answer roles read ``labels``
            (answer tokens != -100) from the forward's arguments.
        keys: ``"visual"`` (each sample's visual tokens, from ``input_ids``), ``"all"`` (every
            key position), or explicit positions like ``queries``.
        end_token_ids: token ids that end an answer (EOS, end-of-turn) and so are never the
            ``last_answer`` query; defaults to the model's EOS ids.
        adapter: overrides the adapter found from the model's config.
        log_probs: record log-probabilities instead of probabilities (``-inf`` at padded
            queries and keys). Losses want these: a key whose probability underflows to 0 in
            fp32 still has a finite log-probability, so renormalising over visual keys stays
            finite and differentiable.

    After each forward: ``rows[layer]`` is ``(B, H, Q, K)`` fp32 with zeros (or ``-inf`` under
    ``log_probs``) at padded queries and keys; ``query_positions``/``query_mask`` are ``(B, Q)``;
    ``key_positions``/``key_mask`` are ``(B, K)``, all on the device of ``input_ids``.

    Host syncs (on a GPU, each makes the host wait for the device): none inside the layers. Per
    forward, ``keys="visual"`` costs one (the widest sample's count of visual tokens sets K), as
    do ``all_answer`` (the most answer tokens set Q) and explicit tensor positions (their bounds
    check); `Positions` and the other roles cost none.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[int] | None = None,
        queries: str | torch.Tensor | Sequence[Sequence[int]] = "last_text",
        keys: str | torch.Tensor | Sequence[Sequence[int]] = "visual",
        end_token_ids: Sequence[int] | None = None,
        adapter: Adapter | None = None,
        log_probs: bool = False,
    ) -> None:
        # Hooks go on the inner model: DDP / accelerate / PEFT wrappers call it with the same
        # keyword arguments, so positions resolve the same way under any wrapper.
        self.model = unwrap_model(model)
        self.adapter = adapter or get_adapter(self.model)
        n = self.adapter.num_layers
        self.layers = frozenset(resolve_layers(layers, n))
        self.queries = _check_spec("queries", queries, QUERY_ROLES)
        self.keys = _check_spec("keys", keys, ("visual", "all"))
        self.end_token_ids = (
            set(end_token_ids) if end_token_ids is not None else _eos_ids(self.model)
        )
        self.log_probs = bool(log_probs)
        self.rows: dict[int, torch.Tensor] = {}
        self.query_positions = self.query_mask = None
        self.key_positions = self.key_mask = None
        self._modules = self.adapter.attention_modules(self.model)
        self._saved: list[tuple[Any, str]] = []
        self._handles: list[Any] = []
        self._grad_at_entry = False
        self._calls = 0

    # -- context -----------------------------------------------------------------------------------
    def __enter__(self) -> AttentionProbe:
        configs = {id(m.config): m.config for m in self._modules}.values()
        for cfg in configs:
            impl = cfg._attn_implementation
            if impl not in _IMPL_NAMES:
                raise ProbeError(
                    f"the probe needs the language model on attn_implementation='sdpa' (or "
                    f"'eager' where transformers has no SDPA for it), got {impl!r}; "
                    "load with attn_implementation='sdpa' or call "
                    "model.set_attn_implementation({'text_config': 'sdpa'})"
                )
        for m in self._modules:
            if not hasattr(m, "layer_idx") or m in _ACTIVE:
                why = "already inside another probe" if m in _ACTIVE else "has no layer_idx"
                raise ProbeError(f"cannot probe {type(m).__name__}: it {why}")
            if m.config._attn_implementation == "eager":
                _eager_function(m)  # fails here, before any forward, if there is none
        lm = self.adapter.language_model(self.model)
        if not getattr(lm, "_supports_attention_backend", False):
            raise ProbeError(
                f"{type(lm).__name__} does not dispatch "
                "attention through transformers' AttentionInterface, so it cannot be probed"
            )
        _register_impl()
        for cfg in configs:
            self._saved.append((cfg, cfg._attn_implementation))
            cfg._attn_implementation = _IMPL_NAMES[cfg._attn_implementation]
        for m in self._modules:
            _ACTIVE[m] = self
        hook = self.model.register_forward_pre_hook(self._pre_forward, with_kwargs=True)
        self._handles.append(hook)
        self._handles.append(self.model.register_forward_hook(self._post_forward))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for cfg, impl in self._saved:
            cfg._attn_implementation = impl
        self._saved.clear()
        for m in self._modules:
            if _ACTIVE.get(m) is self:
                del _ACTIVE[m]

    # -- positions ---------------------------------------------------------------------------------
    def _pre_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        attn = kwargs.get("attention_mask")
        labels = kwargs.get("labels")
        self.rows = {}
        self._calls = 0
        self._grad_at_entry = torch.is_grad_enabled()
        qpos, qmask, self._max_q = self._resolve_queries(input_ids, attn, labels)
        kpos, kmask, self._max_k = self._resolve_keys(input_ids)
        # Everything the layers need, on the model's device, once per forward: the layers make
        # no host-device sync or copy. Bounds are Python ints (None: in bounds by construction).
        device = input_ids.device if input_ids is not None else qpos.device
        self.query_positions, self.query_mask = qpos.to(device), qmask.to(device)
        self.key_positions, self.key_mask = kpos.to(device), kmask.to(device)
        # (B, 1, Q, K) True at padded queries and keys: they get 0 (or -inf) in every layer
        self._padding = ~(self.query_mask[:, None, :, None] & self.key_mask[:, None, None, :])

    def _post_forward(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self._calls == 0:
            raise ProbeError(
                "the forward pass never reached the probe: the language model's attention layers "
                "do not dispatch through transformers' AttentionInterface"
            )

    def _resolve_queries(self, input_ids, attn, labels
                         ) -> tuple[torch.Tensor, torch.Tensor, int | None]:
        """(positions, mask, largest position or None when in bounds by construction)."""
        if not isinstance(self.queries, str):
            return _explicit_positions("queries", self.queries)
        if input_ids is None:
            raise ProbeError("query roles need input_ids in the forward; pass explicit positions")
        return (*query_positions(self.queries, input_ids, attn, labels, self.end_token_ids), None)

    def _resolve_keys(self, input_ids) -> tuple[torch.Tensor, torch.Tensor, int | None]:
        if not isinstance(self.keys, str):
            return _explicit_positions("keys", self.keys)
        if input_ids is None:
            raise ProbeError("keys='visual' needs input_ids in the forward, or explicit keys")
        if self.keys == "all":
            b, n = input_ids.shape
            pos = torch.arange(n, device=input_ids.device).expand(b, n)
            return pos, torch.ones(b, n, dtype=torch.bool, device=input_ids.device), None
        pos, mask = visual_positions(self.adapter, input_ids)
        if mask.shape[1] == 0:
            raise ProbeError("keys='visual' but the batch holds no image tokens")
        return pos, mask, None

    # -- recording (called from the attention function) ---------------------------------------
    def _record(self, module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                mask: torch.Tensor | None, scaling: float | None, kwargs: dict) -> None:
        self._calls += 1
        layer = module.layer_idx
        if layer not in self.layers:
            return
        in_backward = torch._C._current_graph_task_id() != -1
        if self._grad_at_entry and not torch.is_grad_enabled() and not in_backward:
            raise ProbeError(
                "reentrant gradient checkpointing runs layers without autograd, so probe rows "
                "would carry no gradient; use activation_checkpointing_enable("
                "activation_checkpointing_kwargs={'use_reentrant': False}) (the default)"
            )
        causal = getattr(module, "is_causal", True) if kwargs.get("is_causal") is None \
            else kwargs["is_causal"]
        _check_bounds(self._max_q, query.shape[2], self._max_k, key.shape[2])  # ints: no sync
        rows = attention_rows(
            query, key, mask, self.query_positions, self.key_positions,
            scaling=scaling, is_causal=causal, check=False,
            sliding_window=kwargs.get("sliding_window"), position_bias=kwargs.get("position_bias"),
            softcap=kwargs.get("softcap"), log=self.log_probs,
        )
        rows = rows.masked_fill(self._padding, float("-inf") if self.log_probs else 0.0)
        # Under checkpointing the layer runs again during backward: the rows must be recomputed
        # (autograd needs their saved tensors) but the ones the user holds stay the record.
        if not in_backward:
            self.rows[layer] = rows


def attention_rows(
    query: torch.Tensor,  # (B, H, L, D), after RoPE
    key: torch.Tensor,  # (B, H_kv, S, D), before GQA repetition
    mask: torch.Tensor | None,  # None | bool (B, 1|H, L, S) True=attend | additive float
    query_positions: torch.Tensor,  # (B, Q) indices into L
    key_positions: torch.Tensor,  # (B, K) indices into S
    scaling: float | None = None,
    is_causal: bool = True,
    sliding_window: int | None = None,
    position_bias: torch.Tensor | None = None,
    check: bool = True,
    log: bool = False,
    softcap: float | None = None,
) -> torch.Tensor:
    """Attention probabilities of selected query rows over selected keys: ``(B, H, Q, K)`` fp32.

    The softmax runs over all S keys in fp32, exactly as SDPA would weigh them (same mask, same
    causal rule, same scale); only then are the K wanted keys gathered. A query with no allowed key
    gets a row of zeros instead of NaN. ``log=True`` returns log-probabilities (``-inf`` for
    disallowed keys and empty rows). ``check=False`` skips the bounds check (a host sync)
    for callers that checked already. ``softcap`` caps the scores as eager attention does
    (``softcap * tanh(scores / softcap)``, before bias and mask: Gemma 2).
    """
    b, h, seq_q, d = query.shape
    h_kv, seq_k = key.shape[1], key.shape[2]
    if h % h_kv:
        raise ProbeError(f"query heads ({h}) must be a multiple of key heads ({h_kv})")
    if check:
        _check_bounds(_max(query_positions), seq_q, _max(key_positions), seq_k)
    g, n_q = h // h_kv, query_positions.shape[1]
    scale = d**-0.5 if scaling is None else scaling
    idx = query_positions[:, None, :, None].expand(b, h, n_q, d)
    q = query.gather(2, idx).view(b, h_kv, g * n_q, d)  # (B, Hkv, G*Q, D)
    scores = _fp32_scores(q, key) * scale  # (B, Hkv, G*Q, S) fp32
    scores = scores.reshape(b, h, n_q, seq_k)  # (B, H, Q, S)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if position_bias is not None:
        scores = scores + _gather_rows(position_bias, query_positions, h).float()
    allowed = _allowed(mask, query_positions, b, h, seq_q, seq_k, is_causal, sliding_window)
    if mask is not None and mask.dtype != torch.bool:
        bias = _gather_rows(mask, query_positions, h)  # (B, 1|H, Q, S)
        scores = scores + bias.float()
        # An additive mask hides a key with its dtype's minimum (eager's masks): the softmax
        # gives it exactly 0, as -inf would, but its log-probability must be -inf too.
        allowed = bias > torch.finfo(bias.dtype).min
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    kidx = key_positions[:, None, None, :].expand(b, h, n_q, key_positions.shape[1])
    if mask is None and position_bias is None:
        # Only the causal rule (and a window) limit the keys, and a query always sees itself:
        # no row is empty, so the guard below (four more ops per layer) is not needed.
        probs = torch.log_softmax(scores, dim=-1) if log else torch.softmax(scores, dim=-1)
        return probs.gather(3, kidx)  # (B, H, Q, K)
    empty = torch.isneginf(scores).all(-1, keepdim=True)  # (B, H, Q, 1) rows with no key
    if log:
        probs = torch.log_softmax(scores.masked_fill(empty, 0.0), dim=-1)
        probs = probs.masked_fill(empty, float("-inf"))
    else:
        probs = torch.softmax(scores.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)
    return probs.gather(3, kidx)  # (B, H, Q, K)


def _max(t: torch.Tensor) -> int:
    return int(t.max()) if t.numel() else 0


def _check_bounds(max_q: int | None, seq_q: int, max_k: int | None, seq_k: int) -> None:
    """Positions against this forward's lengths; None: known to be in bounds."""
    if max_q is not None and max_q >= seq_q:
        raise ProbeError(
            f"query position {max_q} is outside this forward's {seq_q} queries (the probe reads "
            "full-sequence forwards, not cached decoding steps)"
        )
    if max_k is not None and max_k >= seq_k:
        raise ProbeError(f"key position {max_k} is outside {seq_k} keys")


def _fp32_scores(q: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """``q @ key^T`` in fp32: a plain matmul when both are fp32 and autocast is off (autograd
    then keeps the same tensors, with no Python in the backward), else `_Fp32Scores`."""
    if q.dtype == key.dtype == torch.float32 and not torch.is_autocast_enabled(q.device.type):
        return q @ key.transpose(-1, -2)
    return _Fp32Scores.apply(q, key)


class _Fp32Scores(torch.autograd.Function):
    """``q @ k^T`` in fp32 that saves q and k in their own dtype.

    A plain ``q.float() @ k.float().T`` would keep an fp32 copy of every layer's keys alive for
    backward; here autograd keeps the bf16/fp16 key that SDPA saves anyway, and the casts are
    redone in backward. In fp32 both are the same.
    """

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(q, k)
        # Under autocast (Trainer bf16) the matmul would silently run in bf16 again.
        with torch.autocast(device_type=q.device.type, enabled=False):
            return q.float() @ k.float().transpose(-1, -2)  # (B, Hkv, M, S)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k = ctx.saved_tensors
        grad = grad.float()
        grad_q = (grad @ k.float()).to(q.dtype) if ctx.needs_input_grad[0] else None
        grad_k = (grad.transpose(-1, -2) @ q.float()).to(k.dtype) \
            if ctx.needs_input_grad[1] else None
        return grad_q, grad_k


def _allowed(mask, qpos, b, h, seq_q, seq_k, is_causal, window) -> torch.Tensor | None:
    """(B, H|1, Q, S) bool of keys each selected query may attend, or None for all."""
    if mask is not None:
        return _gather_rows(mask, qpos, h) if mask.dtype == torch.bool else None
    if not (is_causal and seq_q > 1):
        return None  # SDPA attends every key: decoding step or bidirectional layer
    s = torch.arange(seq_k, device=qpos.device)
    # SDPA's is_causal is aligned top-left: query i sees keys 0..i.
    ok = s[None, None, :] <= qpos[:, :, None]  # (B, Q, S)
    if window:
        ok &= qpos[:, :, None] - s[None, None, :] < window
    return ok[:, None]


def _gather_rows(t: torch.Tensor, qpos: torch.Tensor, h: int) -> torch.Tensor:
    """Rows ``qpos`` of a (B|1, 1|H, L, S) mask or bias -> (B, 1|H, Q, S)."""
    b = qpos.shape[0]
    t = t.expand(b, *t.shape[1:])
    idx = qpos[:, None, :, None].expand(b, t.shape[1], qpos.shape[1], t.shape[-1])
    return t.gather(2, idx)


def query_positions(
    role: str,
    input_ids: torch.Tensor,  # (B, L)
    attention_mask: torch.Tensor | None = None,  # (B, L) 1 = real token
    labels: torch.Tensor | None = None,  # (B, L) token ids on answer tokens, -100 elsewhere
    end_token_ids: Sequence[int] | set[int] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Query positions for a role: ``(B, Q)`` long positions and ``(B, Q)`` bool mask, on the
    device of ``input_ids``.

    - ``last_text``: the last real token (prefill-only grounding prompts);
    - ``last_answer``: the last answer token, not counting end tokens (EOS, end-of-turn);
    - ``answer_start``: the position whose output predicts the first answer token;
    - ``all_answer``: every answer token except end tokens.
    A sample without answer tokens gets a masked-out query (position 0). Computed on the device
    for the whole batch; only ``all_answer`` makes a host sync (the most answer tokens of any
    sample set Q).
    """
    if role not in QUERY_ROLES:
        raise ValueError(f"query role must be one of {QUERY_ROLES}, got {role!r}")
    b, n = input_ids.shape
    idx = torch.arange(n, device=input_ids.device)  # (L,)
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None \
        else attention_mask.bool()
    if role == "last_text":
        return _last(real, idx)
    if labels is None:
        raise ProbeError(f"query role {role!r} needs `labels` in the forward (answer tokens "
                         "!= -100), or explicit query positions")
    if labels.shape != input_ids.shape:
        raise ValueError(
            f"labels {tuple(labels.shape)} must match input_ids {tuple(input_ids.shape)}"
        )
    answer = (labels != IGNORE_INDEX) & real  # (B, L)
    if role == "answer_start":
        first = torch.where(answer, idx, n).min(1).values  # (B,); n when there is no answer
        ok = (first >= 1) & (first < n)
        return torch.where(ok, first - 1, 0)[:, None], ok[:, None]
    content = answer
    for end in sorted(end_token_ids):  # compared as Python ints: no host-to-device copy
        content = content & (input_ids != end)
    if role == "last_answer":
        return _last(content, idx)
    pos, mask = true_positions(content)
    if pos.shape[1] == 0:  # no sample has an answer: keep one masked query column
        return pos.new_zeros(b, 1), mask.new_zeros(b, 1)
    return pos, mask


def visual_positions(adapter: Adapter, input_ids: torch.Tensor, width: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's visual-token positions, padded: ``(B, K)`` long and ``(B, K)`` bool, on
    the device of ``input_ids``; the batch form of `Adapter.visual_positions`. ``width`` = K when
    the caller knows it (e.g. the width of the batch's KLAL target), which saves the one host
    sync that finding it costs."""
    return true_positions(input_ids == adapter.image_token_id, width)


def true_positions(flags: torch.Tensor, width: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``flags`` ``(B, L)`` bool, the positions of its True entries in order, padded
    with 0 to ``width`` columns: ``(B, width)`` long and the ``(B, width)`` bool mask. ``width``
    None: the most True entries of any row (one host sync). Rows with more than ``width`` keep
    their first ``width``."""
    b, n = flags.shape
    count = flags.sum(1)  # (B,)
    if width is None:
        width = int(count.max()) if b else 0
    idx = torch.arange(n, device=flags.device)
    # True entries sort first (key = their position), the others after them (position + L)
    order = torch.where(flags, idx, idx + n).sort(1).values[:, :width]  # (B, min(width, L))
    if width > n:
        order = torch.nn.functional.pad(order, (0, width - n), value=2 * n)
    mask = torch.arange(width, device=flags.device) < count[:, None]  # (B, width)
    return torch.where(mask, order, 0), mask


def _last(flags: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The last True position of each row: ``(B, 1)`` (0 where none) and its ``(B, 1)`` mask."""
    last = torch.where(flags, idx, -1).max(1).values  # (B,); -1 where no entry is True
    return last.clamp(min=0)[:, None], (last >= 0)[:, None]


def _explicit_positions(name: str, spec: Any) -> tuple[torch.Tensor, torch.Tensor, int | None]:
    """(positions, mask, largest position or None) of explicit positions: `Positions` as they
    are; a tensor's values checked on the device (one host sync); lists checked on the host."""
    if isinstance(spec, Positions):
        return spec.index.long(), spec.mask, None
    if isinstance(spec, torch.Tensor):
        if spec.dim() != 2 or spec.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{name} must be a (batch, n) integer tensor, got {tuple(spec.shape)}")
        low, high = (int(v) for v in torch.stack([spec.min(), spec.max()]).tolist()) \
            if spec.numel() else (0, 0)
        if low < 0:
            raise ValueError(f"{name} positions must be >= 0")
        return spec.long(), torch.ones_like(spec, dtype=torch.bool), high
    rows = [[int(v) for v in r] for r in spec]
    if any(v < 0 for r in rows for v in r):
        raise ValueError(f"{name} positions must be >= 0")
    pos, mask = pad_positions([torch.tensor(r, dtype=torch.long) for r in rows])
    return pos, mask, max((v for r in rows for v in r), default=0)


def _check_spec(name: str, spec: Any, roles: Sequence[str]) -> Any:
    if isinstance(spec, str):
        if spec not in roles:
            raise ValueError(
                f"{name} must be one of {tuple(roles)} or explicit positions, got {spec!r}"
            )
        return spec
    if isinstance(spec, (Positions, torch.Tensor, Sequence)):
        return spec
    raise TypeError(f"{name} must be a role name, Positions, a (batch, n) tensor or a list of "
                    "lists")


def _eos_ids(model: nn.Module) -> set[int]:
    ids: set[int] = set()
    for cfg in (getattr(model, "generation_config", None), model.config.get_text_config()):
        eos = getattr(cfg, "eos_token_id", None)
        ids.update([eos] if isinstance(eos, int) else (eos or []))
    return ids


def _probe_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                     value: torch.Tensor, attention_mask: torch.Tensor | None,
                     scaling: float | None = None, dropout: float = 0.0, **kwargs: Any):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    probe = _ACTIVE.get(module)
    if probe is not None:
        probe._record(module, query, key, attention_mask, scaling, kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                  dropout=dropout, **kwargs)


def _probe_eager_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                           value: torch.Tensor, attention_mask: torch.Tensor | None,
                           scaling: float | None = None, dropout: float = 0.0, **kwargs: Any):
    probe = _ACTIVE.get(module)
    if probe is not None:
        probe._record(module, query, key, attention_mask, scaling, kwargs)
    return _eager_function(module)(module, query, key, value, attention_mask, scaling=scaling,
                                   dropout=dropout, **kwargs)


def _eager_function(module: nn.Module) -> Callable[..., Any]:
    """The ``eager_attention_forward`` of the attention module's own modeling file: what the
    model runs under ``attn_implementation="eager"`` (eager is no registered function)."""
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if not callable(fn):
        raise ProbeError(f"{type(module).__name__} runs on eager attention, but its module "
                         f"{type(module).__module__} has no eager_attention_forward to wrap; "
                         "load the model with attn_implementation='sdpa'")
    return fn


def _register_impl() -> None:
    """Register the probe's attention and mask functions under their own names (idempotent).

    The mask must be registered too: transformers builds no mask for an unknown name, and
    padding would then be silently ignored. Each name gets the mask of the implementation it
    wraps (eager's is additive and never None).
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    functions = {"sdpa": _probe_attention, "eager": _probe_eager_attention}
    for impl, name in _IMPL_NAMES.items():
        AttentionInterface.register(name, functions[impl])
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[impl])
