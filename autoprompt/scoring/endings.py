"""Where a generated answer ends, as token masks over the vocabulary, computed once per tokenizer:

- ``ending_tokens``: what ``generate`` stops a row at once it has said something (the end of text, any
  token with a newline);
- ``stop_tokens``: tokens that hold one of the task's stop strings, after which the answer is cut anyway,
  so a row stops there too (the same answers, fewer steps);
- ``end_tokens``: what may follow an answer for it to end right there (a newline, a stop string, the end
  of text or of the chat turn). The whole-target objective reads log p(answer) + log p(any of these):
  the likelihood of exactly what exact match judges, whichever way the model ends.

A target's ids end with ``END`` where that last probability is read (``answer_token_log_probs``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from autoprompt.models import LanguageModel
    from autoprompt.prompt import Prompt

END = -1  # the last id of a target that is read with its end: "the answer ends here"


def _mask(model: LanguageModel, key: tuple, test) -> torch.Tensor:
    masks = model.__dict__.setdefault("_ending_masks", {})
    if key not in masks:
        mask = torch.tensor([bool(test(t)) for t in model.token_texts])
        eos = model.tokenizer.eos_token_id
        if key[0] != "stop" and eos is not None and eos < model.vocab_size:
            mask[eos] = True
        if key[0] == "ending" and model.tokenizer.pad_token_id is not None and model.tokenizer.pad_token_id < model.vocab_size:
            mask[model.tokenizer.pad_token_id] = True
        masks[key] = mask.to(model.device)
    return masks[key]


def ending_tokens(model: LanguageModel) -> torch.Tensor:
    """Tokens at which generation stops once a row has said something: end of text, any newline. [vocab] bool"""
    return _mask(model, ("ending",), lambda t: "\n" in t)


def stop_tokens(model: LanguageModel, stop: tuple[str, ...]) -> torch.Tensor | None:
    """Tokens holding a stop string (one without spaces at its ends, which ``cut`` could strip away): the
    answer is cut at or before them, so generating past them changes nothing. [vocab] bool, or None."""
    inner = tuple(s for s in stop if s and s == s.strip())
    if not inner:
        return None
    return _mask(model, ("stop", inner), lambda t: any(s in t for s in inner))


def end_tokens(model: LanguageModel, stop: tuple[str, ...] = ()) -> torch.Tensor:
    """Tokens that end an answer right where it is (``cut(answer + token) == answer``): end of text or of
    the chat turn, a token whose text starts (after spaces) with a newline, or with a stop string. [vocab] bool"""
    return _mask(model, ("end", stop), lambda t: t.lstrip(" \t").startswith("\n") or any(t.startswith(s) for s in stop))


def answer_ends(model: LanguageModel, prompt: Prompt) -> torch.Tensor:
    """``end_tokens`` with the prompt's stop strings."""
    return end_tokens(model, prompt.generation.stop if prompt.generation is not None else ())


def answer_token_log_probs(log_probs: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor,
                           ends: torch.Tensor | None = None) -> torch.Tensor:
    """log p of each query's token, [q], from ``log_probs`` [rows, vocab] at ``rows`` [q]; a query for
    ``END`` reads log p(any token of ``ends``). Differentiable."""
    picked = log_probs[rows, tokens.clamp(min=0)]
    is_end = tokens == END
    if not bool(is_end.any()):
        return picked
    if ends is None:
        raise ValueError("a target read with its end needs the end tokens")
    where = is_end.nonzero()[:, 0]
    ended = torch.logsumexp(log_probs[rows[where]][:, ends], dim=1)
    return picked.index_put((where,), ended)
