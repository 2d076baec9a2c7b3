"""Scores of answers at [P]: label log-probabilities (classification) and target log-probabilities
and ranks (free-form answers), for one prompt or for many trigger candidates at once."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from autoprompt.data import Example
from autoprompt.errors import TemplateError
from autoprompt.runtime import cpu_tuned
from autoprompt.scoring.caches import Caches
from autoprompt.scoring.encode import encode_examples, label_word_ids, target_ids
from autoprompt.scoring.endings import answer_ends
from autoprompt.scoring.engine import Queries
from autoprompt.scoring.prefix import PrefixCache
from autoprompt.template import Encoded

if TYPE_CHECKING:
    from autoprompt.models import LanguageModel
    from autoprompt.prompt import Prompt

CONTENT_FREE = ("N/A", "")
TOP_ANSWERS = 32  # first-token answers kept per input: what a first-token ensemble averages
# a channel score is the input's mean log-likelihood per token, sharpened by this (chosen on SST-2 dev, with 0
# and 4 demonstrations: 1 and 0.25 did as well or a little worse; test was not used)
CHANNEL_TEMPERATURE = 0.5
BATCH_INPUTS = 64  # train inputs whose mean label distribution a batch calibration divides out


@cpu_tuned
def score_labels(model: LanguageModel, prompt: Prompt, examples: list[Example], *,
                 candidates: np.ndarray | None = None, prefix_cache: PrefixCache | None = None,
                 batch_tokens: int | None = None, progress: bool = False, over: str = "vocab",
                 caches: Caches | None = None) -> np.ndarray:
    """Log-probability of each label at [P], [n_examples, n_labels].

    A label's log-prob is log-sum-exp over its words; a multi-token word is scored by
    teacher forcing (causal LMs), the sum of its tokens' log-probs. With ``candidates``
    (trigger ids, [n_candidates, n_slots]) every candidate is scored on every example in
    one go, sharing each example's prefix, and the result is [n_candidates, n_examples, n_labels].

    ``over="labels"``: normalised over the labels instead of the vocabulary. When every label
    word is one token, the output head then computes only the label words' rows."""
    if prompt.channel:
        if candidates is not None:
            raise TemplateError("a channel prompt has no triggers to try")
        return channel_scores(model, prompt, examples, batch_tokens=batch_tokens, progress=progress)
    if over not in ("vocab", "labels"):
        raise ValueError(f"over must be 'vocab' or 'labels', not {over!r}")
    encoded, split = _candidate_encodings(model, prompt, examples, candidates, prefix_cache, caches)
    words = label_word_ids(model, prompt)
    flat_words = [w for label_words in words for w in label_words]
    word_label = np.repeat(np.arange(len(words)), [len(ws) for ws in words])
    head_rows = None
    if over == "labels" and all(len(w) == 1 for w in flat_words):
        head_rows = sorted({w[0] for w in flat_words})  # the rest of the vocabulary cancels out
    queries = Queries(prefix_cache=prefix_cache, head_rows=head_rows, caches=caches)
    for i, enc in enumerate(encoded):
        for j, word in enumerate(flat_words):
            queries.add_answer(enc, word, out_index=i * len(flat_words) + j, causal=model.is_causal, split_at=split[i])
    word_log_probs = queries.run(model, batch_tokens, progress).reshape(len(encoded), len(flat_words))
    scores = np.full((len(encoded), len(words)), -np.inf)
    for label in range(len(words)):
        scores[:, label] = _logsumexp(word_log_probs[:, word_label == label])
    if over == "labels":
        scores = log_normalize(scores)
    if prompt.calibration:
        scores = calibrate(scores, prompt.calibration)
    return scores if candidates is None else scores.reshape(len(candidates), len(examples), len(words))


def channel_scores(model: LanguageModel, prompt: Prompt, examples: list[Example], *, batch_tokens: int | None = None,
                   progress: bool = False) -> np.ndarray:
    """A channel prompt's label log-probs, [n_examples, n_labels]: the input's log-likelihood after each label
    word, per token of the input, over CHANNEL_TEMPERATURE, normalised over the labels (and calibrated). One
    batched pass per label and input; the demonstrations and everything before the label word are shared."""
    if not model.is_causal:
        raise TemplateError(f"a channel prompt scores the input's likelihood after the label: {model.name} is a "
                            "masked LM; it needs a causal LM")
    form, rows, n_labels = prompt.channel_form(), prompt.channel_rows(examples), len(prompt.labels)
    queries = _target_queries(model, form, rows, batch_tokens=batch_tokens, progress=progress)
    tokens = np.bincount(queries.out, minlength=len(rows))  # each input's tokens, as scored (one query per token)
    per_token = (queries.log_probs / tokens).reshape(len(examples), n_labels)
    scores = log_normalize(per_token / CHANNEL_TEMPERATURE)
    return calibrate(scores, prompt.calibration) if prompt.calibration else scores


def calibrate(scores: np.ndarray, calibration: tuple[float, ...] | np.ndarray) -> np.ndarray:
    """Contextual calibration: label log-probs renormalised over the labels, the content-free
    input's subtracted, renormalised again. [n, labels] -> [n, labels]."""
    return log_normalize(log_normalize(scores) - np.asarray(calibration)[None, :])


def content_free_calibration(model: LanguageModel, prompt: Prompt, caches: Caches | None = None) -> tuple[float, ...]:
    """The calibration of a classification prompt: the mean label distribution it gives
    content-free inputs (every field "N/A", then every field empty), as log-probs."""
    examples = [Example({f: text for f in prompt.fields}, None, f"content-free {text!r}") for text in CONTENT_FREE]
    return mean_label_distribution(model, prompt, examples, caches)


def batch_calibration(model: LanguageModel, prompt: Prompt, train: list[Example], *, seed: int | str,
                      caches: Caches | None = None) -> tuple[float, ...]:
    """Batch calibration (Zhou et al. 2024): the mean label distribution the prompt gives BATCH_INPUTS
    train inputs (a seeded sample, its own demonstrations left out; their labels are not read), as
    log-probs. Divided out like the content-free one, it removes the prompt's bias toward a label as
    real inputs show it, where "N/A" can mislead (many demonstrations, other label words)."""
    # (a train split of demonstrations only, as a "similar" prompt's pool can be: all of it, since a pool prompt
    # never shows an input itself; no train split: the content-free inputs)
    sample = batch_inputs(prompt, train, seed)
    if not sample:
        return content_free_calibration(model, prompt, caches)
    return mean_label_distribution(model, prompt, sample, caches)


def batch_inputs(prompt: Prompt, train: list[Example], seed: int | str) -> list[Example]:
    """The BATCH_INPUTS train inputs a batch calibration measures (a seeded sample, the prompt's own
    demonstrations left out when train has others; labels removed)."""
    shown = [(d.fields, d.answer) for d in prompt.demonstrations]
    pool = [e for e in train if (e.fields, e.answer) not in shown] or list(train)
    sample = random.Random(f"{seed}-batch-calibration").sample(pool, min(BATCH_INPUTS, len(pool)))
    return [Example(e.fields, None, e.source) for e in sample]


def channel_calibration(model: LanguageModel, prompt: Prompt, train: list[Example], *,
                        seed: int | str) -> tuple[float, ...]:
    """A channel prompt's calibration, whatever the kind asked: its label log-probs' mean over the batch
    calibration's train inputs (each label word's own pull on the input's likelihood, as real inputs show it)."""
    sample = batch_inputs(prompt, train, seed)
    if not sample:
        return ()
    return tuple(float(v) for v in channel_scores(model, replace(prompt, calibration=()), sample).mean(axis=0))


def measured_calibration(model: LanguageModel, prompt: Prompt, kind: str, train: list[Example], *,
                         seed: int | str, caches: Caches | None = None) -> tuple[float, ...]:
    """A calibration of a kind ("none", "contextual", "batch") for a classification prompt (a channel prompt's
    is always its channel_calibration)."""
    if prompt.channel:
        return channel_calibration(model, prompt, train, seed=seed)
    if kind == "contextual":
        return content_free_calibration(model, prompt, caches)
    if kind == "batch":
        return batch_calibration(model, prompt, train, seed=seed, caches=caches)
    return ()


def mean_label_distribution(model: LanguageModel, prompt: Prompt, examples: list[Example],
                            caches: Caches | None = None) -> tuple[float, ...]:
    """The uncalibrated prompt's label distribution averaged over inputs, as log-probs."""
    raw = replace(prompt, calibration=())
    probs = np.exp(log_normalize(score_labels(model, raw, examples, caches=caches))).mean(axis=0)
    return tuple(float(v) for v in np.log(probs))


def log_normalize(scores: np.ndarray) -> np.ndarray:
    return scores - _logsumexp(scores)[:, None]


def _logsumexp(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1)
    return m + np.log(np.exp(x - m[:, None]).sum(axis=1))


@cpu_tuned
def score_targets(model: LanguageModel, prompt: Prompt, examples: list[Example], *,
                  candidates: np.ndarray | None = None, prefix_cache: PrefixCache | None = None,
                  batch_tokens: int | None = None, progress: bool = False, caches: Caches | None = None,
                  first_token: bool = False, end: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Free-form answers: log p(target) [n], rank of its first token at [P] [n], top-1 token id [n].
    (``first_token``: log p of the target's first token only; ``end``: of the target and the token
    that ends it, see ``target_ids``.)

    With ``candidates`` each array is [n_candidates * n_examples], candidate-major."""
    queries = _target_queries(model, prompt, examples, candidates=candidates, prefix_cache=prefix_cache,
                              batch_tokens=batch_tokens, progress=progress, caches=caches, first_token=first_token,
                              end=end)
    return queries.log_probs, queries.first_rank, queries.first_top


@cpu_tuned
def answer_words(model: LanguageModel, prompt: Prompt, examples: list[Example], *, top_n: int = TOP_ANSWERS,
                 prefix_cache: PrefixCache | None = None, batch_tokens: int | None = None, progress: bool = False,
                 caches: Caches | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """score_targets' three arrays, and what a first-token ensemble averages: the words (decoded, stripped) of
    the ``top_n`` likeliest first tokens at [P] and of the target's first token last, [n, top_n + 1], and
    their probabilities, [n, top_n + 1]."""
    queries = _target_queries(model, prompt, examples, prefix_cache=prefix_cache, batch_tokens=batch_tokens,
                              progress=progress, caches=caches, top_n=top_n)
    ids = np.concatenate([queries.first_top_ids, queries.first_token[:, None]], axis=1)  # [n, top_n + 1]
    tokens, where = np.unique(ids, return_inverse=True)  # each token decoded once
    words = np.array([model.tokenizer.decode([int(t)]).strip() for t in tokens], dtype=object)[where.reshape(ids.shape)]
    probs = np.exp(np.concatenate([queries.first_top_log_probs, queries.first_log_prob[:, None]], axis=1))
    return queries.log_probs, queries.first_rank, queries.first_top, words, probs


def _target_queries(model: LanguageModel, prompt: Prompt, examples: list[Example], *,
                    candidates: np.ndarray | None = None, prefix_cache: PrefixCache | None = None,
                    batch_tokens: int | None = None, progress: bool = False, caches: Caches | None = None,
                    first_token: bool = False, end: bool = False, top_n: int = 0) -> Queries:
    """The targets' queries, run: ``log_probs``, ``first_rank``, ``first_top`` (and with ``top_n`` the top tokens)."""
    encoded, split = _candidate_encodings(model, prompt, examples, candidates, prefix_cache, caches)
    targets = [t[:1] if first_token else t for t in target_ids(model, prompt, examples, end=end)]
    queries = Queries(want_rank=True, prefix_cache=prefix_cache, caches=caches, top_n=top_n,
                      ends=answer_ends(model, prompt) if end and model.is_causal else None)
    for i, enc in enumerate(encoded):
        queries.add_answer(enc, targets[i % len(examples)], out_index=i, causal=model.is_causal, split_at=split[i])
    queries.log_probs = queries.run(model, batch_tokens, progress)
    return queries


def _candidate_encodings(model: LanguageModel, prompt: Prompt, examples: list[Example], candidates: np.ndarray | None,
                         prefix_cache: PrefixCache | None = None, caches: Caches | None = None
                         ) -> tuple[list[Encoded], list[int | None]]:
    """Encodings of every (candidate, example), candidate-major, rendered once per example
    (a candidate only swaps trigger ids); and where each may split into a shared prefix."""
    encoded = encode_examples(model, prompt, examples, caches)
    if candidates is None:
        if prefix_cache is not None:  # the prefixes before the first trigger are already encoded
            return encoded, [e.trigger_positions[0] for e in encoded]
        return encoded, [None] * len(encoded)
    candidates = np.asarray(candidates)
    if candidates.ndim != 2 or candidates.shape[1] != len(prompt.trigger_ids):
        raise TemplateError(f"candidates must be [n, {len(prompt.trigger_ids)}] trigger ids, got {candidates.shape}")
    out = []
    for trigger_ids in candidates.tolist():
        for enc in encoded:
            ids = list(enc.input_ids)
            for pos, token in zip(enc.trigger_positions, trigger_ids, strict=False):
                ids[pos] = token
            out.append(Encoded(ids, enc.trigger_positions, enc.answer_position))
    # everything before the first slot the candidates differ in is the same for all of them
    varying = np.nonzero((candidates != candidates[:1]).any(axis=0))[0]
    slot = int(varying[0]) if len(varying) else candidates.shape[1] - 1
    split = [e.trigger_positions[slot] if (model.is_causal and e.trigger_positions and len(candidates) > 1) else None
             for e in out]
    return out, split


def task_loss(label_scores: torch.Tensor, gold: torch.Tensor, kind: str = "vocab") -> torch.Tensor:
    """The one task loss, [n]: -log p(gold label). ``vocab``: the label's probability over the
    whole vocabulary (AutoPrompt); ``labels``: renormalised over the label set."""
    if kind == "labels":
        label_scores = torch.log_softmax(label_scores, dim=-1)
    elif kind != "vocab":
        raise ValueError(f"unknown loss {kind!r}")
    return -label_scores.gather(1, gold[:, None])[:, 0]
