"""Attention that reads a shared prefix's KV cache in place, instead of a copy per row.

Scoring C candidates on an example continues that example's prefix C times. Hugging Face's
cache path copies the prefix keys and values into every row, concatenates them with the
new ones and, with grouped-query attention, repeats them per query head: five copies of the
prefix per row and layer, the larger part of the time when the prefix holds demonstrations.
Here the rows of a batch are grouped by prefix, C rows each; their queries attend to the
prefix's keys with one matrix product per prefix and to their own keys separately, and one
softmax covers both. Registered with transformers' AttentionInterface and switched on only
inside :func:`prefix_forward`, for architectures checked against the copying path.

Inside it the gated MLPs also skip work a score does not need (:class:`_LeanMLP`): without a graph
the activation and the product run in place, and the last layer's MLP (three quarters of its
FLOPs) runs only at the positions the caller reads (nowhere when a prefix is encoded for its KV
cache: no layer reads the last MLP's output).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch

NAME = "autoprompt_prefix"
# checked against the copying path in tests/test_bench.py; others take that path
SUPPORTED = {"llama", "mistral", "qwen2", "qwen3"}


@dataclass
class _Prefix:
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer [n_prefixes, kv_heads, width, head_dim]
    rows: torch.Tensor  # [batch]: the prefix of each row
    groups: torch.Tensor | None  # [n_groups]: the prefix of each run of equal rows, when runs are equal
    per_group: int


class _Model(Protocol):
    """What this module reads of a LanguageModel (models.base imports this module, not the reverse)."""

    hf_model: torch.nn.Module

    @property
    def dtype(self) -> torch.dtype: ...


_ACTIVE: contextvars.ContextVar[_Prefix | None] = contextvars.ContextVar("autoprompt_prefix", default=None)


def supported(model: _Model) -> bool:
    config = model.hf_model.config
    return (getattr(config, "model_type", None) in SUPPORTED and not getattr(config, "sliding_window", None)
            and _register())


def _register() -> bool:
    try:
        from transformers import AttentionInterface
    except ImportError:
        return False
    AttentionInterface.register(NAME, prefix_attention)
    return True


def prefix_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """query [B, Hq, S, D], key/value [B, Hkv, S, D] of the new tokens; the prefix comes from
    the active context; ``attention_mask`` is additive, [B, 1, S, P + S]. -> [B, S, Hq, D]."""
    ctx = _ACTIVE.get()
    if ctx is None:
        raise RuntimeError("prefix attention used outside prefix_forward")
    pk, pv = ctx.layers[module.layer_idx]
    B, Hq, S, D = query.shape
    Hkv, P = key.shape[1], pk.shape[2]
    G = Hq // Hkv  # query heads per KV head: query head h reads KV head h // G
    q = query.reshape(B, Hkv, G * S, D)
    if ctx.groups is not None:  # rows come in runs of C with the same prefix: no per-row copy of it
        E, C = len(ctx.groups), ctx.per_group
        keys, values = pk[ctx.groups], pv[ctx.groups]  # [E, Hkv, P, D]
        qe = q.reshape(E, C, Hkv, G * S, D).transpose(1, 2).reshape(E, Hkv, C * G * S, D)
        pre = torch.matmul(qe, keys.transpose(-1, -2))  # [E, Hkv, C*G*S, P]
        pre = pre.reshape(E, Hkv, C, G * S, P).transpose(1, 2).reshape(B, Hkv, G * S, P)
    else:
        keys, values = pk[ctx.rows], pv[ctx.rows]
        pre = torch.matmul(q, keys.transpose(-1, -2))  # [B, Hkv, G*S, P]
    own = torch.matmul(q, key.transpose(-1, -2))  # [B, Hkv, G*S, S]
    scores = torch.cat([pre, own], dim=-1).reshape(B, Hkv, G, S, P + S) * scaling + attention_mask[:, :, None]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype).reshape(B, Hkv, G * S, P + S)
    if ctx.groups is not None:
        p_pre = probs[..., :P].reshape(E, C, Hkv, G * S, P).transpose(1, 2).reshape(E, Hkv, C * G * S, P)
        out = torch.matmul(p_pre, values).reshape(E, Hkv, C, G * S, D).transpose(1, 2).reshape(B, Hkv, G * S, D)
    else:
        out = torch.matmul(probs[..., :P], values)
    out = out + torch.matmul(probs[..., P:], value)
    return out.reshape(B, Hq, S, D).transpose(1, 2).contiguous(), None


def prefix_forward(model: _Model, layers, prefix_mask: torch.Tensor, rows: torch.Tensor,
                   input_ids: torch.Tensor | None, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                   inputs_embeds: torch.Tensor | None = None,
                   needed: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Last hidden states of continuations of cached prefixes ([n_prefixes, width] mask; ``rows``
    picks each row's prefix; ``attention_mask`` [B, S] covers the new tokens only). ``needed``:
    the (row, position) pairs the caller reads; the others' states are then not final."""
    B, S = attention_mask.shape
    pmask = prefix_mask[rows].bool()  # [B, P]
    causal = torch.ones(S, S, dtype=torch.bool, device=attention_mask.device).tril()
    own = causal[None] & attention_mask.bool()[:, None, :]  # [B, S, S]
    own |= torch.eye(S, dtype=torch.bool, device=own.device)[None]  # a padded query still sees itself: no NaN
    allowed = torch.cat([pmask[:, None, :].expand(B, S, pmask.shape[1]), own], dim=-1)  # [B, S, P+S]
    dtype = model.dtype
    additive = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    additive.masked_fill_(~allowed, torch.finfo(dtype).min)
    groups, per_group = _runs(rows)
    token = _ACTIVE.set(_Prefix(layers, rows, groups, per_group))
    try:
        with _implementation(model.hf_model.config, NAME), lean_mlps(model, needed):
            out = model.hf_model.base_model(input_ids=input_ids, inputs_embeds=inputs_embeds,
                                            attention_mask=additive[:, None], position_ids=position_ids,
                                            use_cache=False)
    finally:
        _ACTIVE.reset(token)
    return out.last_hidden_state


def _runs(rows: torch.Tensor) -> tuple[torch.Tensor | None, int]:
    """(the prefix of each run, run length) when ``rows`` is runs of equal length of distinct prefixes."""
    values, counts = torch.unique_consecutive(rows, return_counts=True)
    if len(values) and bool((counts == counts[0]).all()) and len(torch.unique(values)) == len(values):
        return values, int(counts[0])
    return None, 0


class _LeanMLP(torch.nn.Module):
    """A gated MLP, ``down(act(gate(x)) * up(x))``, as transformers' Llama-family MLPs compute it:
    without a graph in place (no two more [tokens, intermediate] buffers); with ``needed`` only at
    those (row, position) pairs (zero elsewhere: the last layer's, whose other rows no one reads)."""

    def __init__(self, mlp: torch.nn.Module, needed: tuple[torch.Tensor, torch.Tensor] | None):
        super().__init__()
        self.mlp, self.needed = mlp, needed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.needed is None:
            return self._gated(x)
        out = torch.zeros_like(x)
        out[self.needed] = self._gated(x[self.needed])
        return out

    def _gated(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mlp
        if torch.is_grad_enabled():
            return m.down_proj(m.act_fn(m.gate_proj(x)) * m.up_proj(x))
        gate = m.gate_proj(x)
        gate = torch.nn.functional.silu(gate, inplace=True) if _is_silu(m.act_fn) else m.act_fn(gate)
        return m.down_proj(gate.mul_(m.up_proj(x)))


def _is_silu(act) -> bool:
    return isinstance(act, torch.nn.SiLU) or type(act).__name__ == "SiLUActivation"


def gated_mlp(mlp: torch.nn.Module | None) -> bool:
    """Whether ``mlp`` is the gated MLP :class:`_LeanMLP` computes (its class's forward says so)."""
    return (mlp is not None and _gated_forward(type(mlp)) and callable(getattr(mlp, "act_fn", None))
            and all(isinstance(getattr(mlp, n, None), torch.nn.Linear) for n in ("gate_proj", "up_proj", "down_proj")))


@functools.cache
def _gated_forward(cls: type) -> bool:
    try:
        source = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False
    return "self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))" in source


@contextmanager
def lean_mlps(model: _Model, needed: tuple[torch.Tensor, torch.Tensor] | None):
    """Each decoder layer's gated MLP as a :class:`_LeanMLP` for the duration (the last layer's only
    at ``needed``: none when only the KV cache is wanted); layers of any other shape keep theirs."""
    layers = list(getattr(model.hf_model.base_model, "layers", []))
    swapped = [(layer, layer.mlp) for layer in layers if gated_mlp(getattr(layer, "mlp", None))]
    try:
        for layer, mlp in swapped:
            layer.mlp = _LeanMLP(mlp, needed if layer is layers[-1] else None)
        yield
    finally:
        for layer, mlp in swapped:
            layer.mlp = mlp


@contextmanager
def _implementation(config, name: str):
    previous = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous
