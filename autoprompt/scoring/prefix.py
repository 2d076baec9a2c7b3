"""KV caches of shared prefixes: each example's tokens before the first trigger, computed once and
continued by every candidate; and the head all prefixes share (instruction, demonstrations)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from autoprompt.runtime import tuned
from autoprompt.scoring.batching import pack_batches, pad_right
from autoprompt.scoring.caches import Caches
from autoprompt.scoring.encode import encode_examples

if TYPE_CHECKING:
    from autoprompt.data import Example
    from autoprompt.models import LanguageModel
    from autoprompt.prompt import Prompt

COMMON_PREFIX_MIN = 8  # a prefix all sequences share is computed once from this many tokens on


class PrefixCache:
    """KV caches of shared prefixes, computed once, right-padded to one width."""

    def __init__(self, model: LanguageModel, prefixes: list[list[int]],
                 batch_tokens: int | None = None, caches: Caches | None = None) -> None:
        self.model = model
        self.index = {tuple(p): i for i, p in enumerate(prefixes)}
        width = max(len(p) for p in prefixes)
        self.lengths = torch.tensor([len(p) for p in prefixes], device=model.device)
        self.mask = torch.zeros(len(prefixes), width, dtype=torch.long, device=model.device)
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        head = common_head(prefixes)  # instruction and demonstrations every prefix starts with: encoded once
        head_kv = head_cache(model, prefixes[0][:head], caches) if head else None
        for batch in pack_batches([len(p) - head for p in prefixes], batch_tokens or model.batch_tokens):
            ids, mask = pad_right([prefixes[i][head:] for i in batch], model.pad_id, model.device)
            if head_kv is None:
                kv = model.prefix_cache(ids, mask)  # per layer: [batch, kv_heads, len, head_dim]
            else:
                rows = len(batch)
                past = [(k.expand(rows, -1, -1, -1).contiguous(), v.expand(rows, -1, -1, -1).contiguous())
                        for k, v in head_kv]
                positions = head + torch.arange(ids.shape[1], device=model.device)[None, :].expand(rows, -1)
                full_mask = torch.cat([torch.ones(rows, head, dtype=mask.dtype, device=mask.device), mask], dim=1)
                kv = model.prefix_cache(ids, full_mask, past=past, position_ids=positions)
                mask = full_mask
            if not self.layers:
                self.layers = [tuple(torch.zeros((len(prefixes), k.shape[1], width, k.shape[3]), dtype=k.dtype,
                                                 device=k.device) for _ in range(2)) for k, _ in kv]
            index = torch.as_tensor(batch, device=model.device)
            for (keys, values), (k, v) in zip(self.layers, kv, strict=False):
                keys[index, :, : k.shape[2]] = k
                values[index, :, : v.shape[2]] = v
            self.mask[index, : mask.shape[1]] = mask

    @classmethod
    def for_examples(cls, model: LanguageModel, prompt: Prompt, examples: list[Example],
                     caches: Caches | None = None) -> PrefixCache | None:
        """The KV cache of each example's tokens before the first trigger, to score many
        trigger sequences on the same examples (None when there is nothing to share)."""
        encoded = encode_examples(model, prompt, examples, caches)
        if not model.is_causal or not encoded or not encoded[0].trigger_positions:
            return None
        with torch.inference_mode(), tuned(model.device):
            return cls(model, [e.input_ids[: e.trigger_positions[0]] for e in encoded], caches=caches)

    def inputs(self, prefix_rows: list[int], mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward arguments for continuations of the given prefixes ([batch, len] mask)."""
        index = torch.as_tensor(prefix_rows, device=self.model.device)
        position_ids = self.lengths[index][:, None] + torch.arange(mask.shape[1], device=mask.device)[None, :]
        return {"prefix": (self, index), "attention_mask": mask, "position_ids": position_ids}


def common_head(prefixes: list[list[int]], min_length: int = COMMON_PREFIX_MIN) -> int:
    """Length of the tokens every prefix starts with, short of the shortest prefix (0: fewer
    than ``min_length``, or a single prefix)."""
    if len(prefixes) < 2:
        return 0
    length = min(len(p) for p in prefixes) - 1  # every prefix keeps a token of its own
    if length < min_length:
        return 0
    heads = np.array([p[:length] for p in prefixes])
    differs = (heads != heads[0]).any(axis=0)
    length = int(np.argmax(differs)) if differs.any() else length
    return length if length >= min_length else 0


def head_cache(model: LanguageModel, head: list[int], caches: Caches | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The KV cache of one shared head, [1, kv_heads, len, head_dim] per layer; kept in ``caches``
    (the last one), so a search that keeps its demonstrations encodes them once."""
    key = (id(model), tuple(head), model.dtype)
    kept = caches.get("head", key) if caches is not None else None
    if kept is not None:
        return kept
    ids = torch.as_tensor([head], device=model.device)
    with torch.inference_mode(False), torch.no_grad():  # plain tensors: the gradient's forward reads them too
        kv = [(k.clone(), v.clone()) for k, v in model.prefix_cache(ids, torch.ones_like(ids))]
    return caches.keep("head", key, kv) if caches is not None else kv
