"""Greedy generation, batched over examples with a KV cache: each batch is left-padded (positions follow
the attention mask), one forward over the prompts, then one token per step for every row at once, until
every row has stopped (a newline after its first words, the end of text, a stop string) or the token
budget is spent. A loop over tokens, not over examples."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from autoprompt.errors import TemplateError
from autoprompt.runtime import cpu_tuned
from autoprompt.scoring.batching import MAX_ROWS, pack_batches
from autoprompt.scoring.caches import Caches
from autoprompt.scoring.encode import encode_examples
from autoprompt.scoring.endings import ending_tokens, stop_tokens

if TYPE_CHECKING:
    from autoprompt.data import Example
    from autoprompt.models import LanguageModel
    from autoprompt.prompt import Prompt


@cpu_tuned
def generate(model: LanguageModel, prompt: Prompt, examples: list[Example], *, caches: Caches | None = None,
             batch_tokens: int | None = None, max_new_tokens: int | None = None) -> list[str]:
    """The answer the model generates for each example after the prompt (greedy), cut where it stops."""
    if not model.is_causal:
        raise TemplateError(f"{model.name} is a masked LM: generated answers need a causal LM")
    settings = prompt.generation
    budget_new = max_new_tokens or (settings.max_new_tokens if settings else 16)
    stop = settings.stop if settings else ()
    inputs = [e.input_ids for e in encode_examples(model, prompt, examples, caches)]
    out: list[str] = [""] * len(inputs)
    ends, cut_at = ending_tokens(model), stop_tokens(model, stop)
    budget = batch_tokens or model.batch_tokens
    lengths = [len(ids) + budget_new for ids in inputs]
    with torch.inference_mode():
        for batch in pack_batches(lengths, budget, max_rows=MAX_ROWS):
            limit = budget_new if model.max_length is None else min(
                budget_new, model.max_length - max(len(inputs[i]) for i in batch))
            tokens = greedy_tokens(model, [inputs[i] for i in batch], max(limit, 1), ends, cut_at)
            for i, new in zip(batch, tokens, strict=True):
                out[i] = cut(model.tokenizer.decode(new), stop)
    return out


def greedy_tokens(model: LanguageModel, inputs: list[list[int]], max_new_tokens: int,
                  ends: torch.Tensor | None = None, cut_at: torch.Tensor | None = None) -> list[list[int]]:
    """The greedy continuation of each input, [rows][tokens], up to ``max_new_tokens``; a row is done at a
    token of ``ends`` (a bool mask over the vocabulary) once it has generated something else before, or
    just after a token of ``cut_at`` (kept: one that holds a stop string)."""
    from transformers import DynamicCache

    device, rows = model.device, len(inputs)
    width = max(len(ids) for ids in inputs)
    ids = torch.full((rows, width), model.pad_id, dtype=torch.long)
    mask = torch.zeros((rows, width), dtype=torch.long)
    for r, row in enumerate(inputs):  # left padding: every row's next token is read at the last position
        ids[r, width - len(row):] = torch.as_tensor(row)
        mask[r, width - len(row):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    cache = DynamicCache()
    generated = torch.zeros((rows, 0), dtype=torch.long, device=device)
    started = torch.zeros(rows, dtype=torch.bool, device=device)  # has said something besides an ending
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    step_ids = ids
    for _ in range(max_new_tokens):
        hidden = model.hf_model.base_model(input_ids=step_ids, attention_mask=mask, position_ids=positions,
                                            use_cache=True, **{model._cache_argument: cache}).last_hidden_state
        next_ids = model.head_logits(hidden[:, -1]).argmax(dim=-1)  # [rows]
        next_ids = torch.where(done, torch.full_like(next_ids, model.pad_id), next_ids)
        generated = torch.cat([generated, next_ids[:, None]], dim=1)
        if ends is not None:
            is_end = ends[next_ids]
            done |= is_end & started
            started |= ~is_end
        if cut_at is not None:
            done |= cut_at[next_ids]
        if bool(done.all()):
            break
        step_ids, positions = next_ids[:, None], positions[:, -1:] + 1
        mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype, device=device)], dim=1)
    return [_until_end(row, ends, cut_at) for row in generated.tolist()]


def _until_end(tokens: list[int], ends: torch.Tensor | None, cut_at: torch.Tensor | None = None) -> list[int]:
    """A row's tokens up to (not with) its first ending token after some other token, or up to (with)
    its first token of ``cut_at``."""
    started = False
    for k, token in enumerate(tokens):
        is_end = ends is not None and bool(ends[token])
        if is_end and started:
            return tokens[:k]
        if cut_at is not None and bool(cut_at[token]):
            return tokens[: k + 1]
        started |= not is_end
    return tokens


def cut(text: str, stop: tuple[str, ...] = ()) -> str:
    """A generated answer up to its end: the first newline after some text, or a stop string; stripped."""
    body = text.lstrip()
    ends = [body.find("\n")] + [body.find(s) for s in stop]
    ends = [e for e in ends if e >= 0]
    return (body[: min(ends)] if ends else body).strip()
