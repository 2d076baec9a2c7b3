"""The batched scoring engine: log-probabilities of answers at [P], predictions, metrics.

Every search calls this thousands of times. Sequences are sorted by length and packed into
batches by a token budget, run under ``torch.inference_mode``, and the output head is
applied only at the positions that predict answer tokens.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from autoprompt.errors import TemplateError
from autoprompt.runtime import cpu_tuned, tuned
from autoprompt.template import Encoded

if TYPE_CHECKING:
    from autoprompt.model import LanguageModel
    from autoprompt.prompt import Prompt
    from autoprompt.task import Example

log = logging.getLogger(__name__)

DEFAULT_BATCH_TOKENS = 4096
MAX_ROWS = 256  # rows per batch: bounds the copied prefix KV cache
COMMON_PREFIX_MIN = 8  # a prefix all sequences share is computed once from this many tokens on


@dataclass
class Evaluation:
    """What scoring a prompt on examples gives: metrics, predictions and the raw scores."""

    metrics: dict[str, float]
    predictions: list[str]
    label_log_probs: np.ndarray | None = None  # [n_examples, n_labels], classification
    target_log_probs: np.ndarray | None = None  # [n_examples], free-form: log p(target)
    target_ranks: np.ndarray | None = None  # [n_examples], rank of the target's first token
    labels: list[str] = field(default_factory=list)


def render_template(model: LanguageModel, prompt: Prompt) -> str:
    """The template the model really reads: instruction, demos and chat wrapping written in.
    (With per-input demonstrations, ``demo_k`` > 0, it shows the first k of the pool.)"""
    return prompt.model_template(model.tokenizer)


def encode_examples(model: LanguageModel, prompt: Prompt, examples: list[Example]) -> list[Encoded]:
    """Token ids of each example under the prompt (triggers in place, answer excluded)."""
    if prompt.demo_k:  # each input with its own nearest demonstrations
        chosen = nearest_demonstrations(model, prompt, examples)
        templates = [render_template(model, replace(prompt, demonstrations=d, demo_k=0)) for d in chosen]
    else:
        templates = [render_template(model, prompt)] * len(examples)
    out = []
    for example, template in zip(examples, templates, strict=True):
        try:
            out.append(model.renderer.render(template, example.fields, list(prompt.trigger_ids)))
        except TemplateError as exc:
            where = f"{example.source}: " if example.source else ""
            raise type(exc)(f"{where}{exc}") from None
    return out


@cpu_tuned
def embed_texts(model: LanguageModel, texts: list[str], batch_tokens: int | None = None) -> torch.Tensor:
    """The model's own embedding of each text: its last hidden states, mean-pooled, unit length. [n, hidden]"""
    ids = [model.renderer.field_ids(t)[: model.max_length] or [model.pad_id] for t in texts]
    out = None
    with torch.inference_mode():
        for batch in pack_batches([len(i) for i in ids], batch_tokens or model.batch_tokens, max_rows=MAX_ROWS):
            input_ids, mask = pad_right([ids[i] for i in batch], model.pad_id, model.device)
            states = model.hidden_states(input_ids, mask).float()
            pooled = (states * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True)
            if out is None:
                out = torch.zeros(len(texts), pooled.shape[1])
            out[torch.as_tensor(batch)] = pooled.cpu()
    return torch.nn.functional.normalize(out, dim=1)


def _example_text(example: Example) -> str:
    return " ".join(str(v) for v in example.fields.values())


def nearest_demonstrations(model: LanguageModel, prompt: Prompt, examples: list[Example]) -> list[tuple[Example, ...]]:
    """For each example, the prompt's ``demo_k`` most similar pool demonstrations by cosine of the
    model's embeddings, most similar last (next to the input); never the example itself."""
    pool = prompt.demonstrations
    key = hashlib.sha256(json.dumps([[d.fields, d.answer] for d in pool], sort_keys=True).encode()).hexdigest()
    cache = model.__dict__.setdefault("_demo_embeddings", {})
    if key not in cache:
        cache.clear()  # one pool at a time: a search moves from pool to pool
        cache[key] = embed_texts(model, [_example_text(d) for d in pool])
    pool_vectors = cache[key]
    similarity = embed_texts(model, [_example_text(e) for e in examples]) @ pool_vectors.T  # [n, pool]
    in_pool: dict[str, list[int]] = {}
    for j, demo in enumerate(pool):
        in_pool.setdefault(json.dumps(demo.fields, sort_keys=True), []).append(j)
    for i, example in enumerate(examples):  # an input that is in the pool is not its own demonstration
        similarity[i, in_pool.get(json.dumps(example.fields, sort_keys=True), [])] = -float("inf")
    top = similarity.topk(prompt.demo_k, dim=1).indices.flip(1)  # ascending: the nearest comes last
    return [tuple(pool[j] for j in row) for row in top.tolist()]


def label_word_ids(model: LanguageModel, prompt: Prompt) -> list[list[list[int]]]:
    """Token ids of every label word, [label][word] -> ids, as the answer at [P]."""
    template = render_template(model, prompt)
    ids = [[model.renderer.answer_ids(w, template) for w in words] for words in (prompt.verbalizer or {}).values()]
    for label, words, word_ids in zip(prompt.labels, prompt.verbalizer.values(), ids, strict=False):
        for word, token_ids in zip(words, word_ids, strict=False):
            if not token_ids:
                raise TemplateError(f"label {label!r}: the word {word!r} gives no tokens")
            if not model.is_causal and len(token_ids) != 1:
                pieces = model.tokenizer.convert_ids_to_tokens(token_ids)
                raise TemplateError(f"label {label!r}: the word {word!r} is {len(token_ids)} tokens {pieces} "
                                    f"for {model.name}; a masked LM needs single-token label words")
    owner: dict[tuple[int, ...], str] = {}
    for label, words, word_ids in zip(prompt.labels, prompt.verbalizer.values(), ids, strict=False):
        for word, token_ids in zip(words, word_ids, strict=False):
            other = owner.setdefault(tuple(token_ids), label)
            if other != label:  # e.g. "good" and " good": the same tokens as the answer
                raise TemplateError(f"labels {other!r} and {label!r} both answer with the tokens of {word!r} for "
                                    f"{model.name}: no prompt can tell those labels apart")
    return ids


@cpu_tuned
def score_labels(model: LanguageModel, prompt: Prompt, examples: list[Example], *,
                 candidates: np.ndarray | None = None, prefix_cache: PrefixCache | None = None,
                 batch_tokens: int | None = None, progress: bool = False, over: str = "vocab") -> np.ndarray:
    """Log-probability of each label at [P], [n_examples, n_labels].

    A label's log-prob is log-sum-exp over its words; a multi-token word is scored by
    teacher forcing (causal LMs), the sum of its tokens' log-probs. With ``candidates``
    (trigger ids, [n_candidates, n_slots]) every candidate is scored on every example in
    one go, sharing each example's prefix, and the result is [n_candidates, n_examples, n_labels].

    ``over="labels"``: normalised over the labels instead of the vocabulary. When every label
    word is one token, the output head then computes only the label words' rows."""
    if over not in ("vocab", "labels"):
        raise ValueError(f"over must be 'vocab' or 'labels', not {over!r}")
    encoded, split = _candidate_encodings(model, prompt, examples, candidates, prefix_cache)
    words = label_word_ids(model, prompt)
    flat_words = [w for label_words in words for w in label_words]
    word_label = np.repeat(np.arange(len(words)), [len(ws) for ws in words])
    head_rows = None
    if over == "labels" and all(len(w) == 1 for w in flat_words):
        head_rows = sorted({w[0] for w in flat_words})  # the rest of the vocabulary cancels out
    queries = _Queries(prefix_cache=prefix_cache, head_rows=head_rows)
    for i, enc in enumerate(encoded):
        for j, word in enumerate(flat_words):
            queries.add_answer(enc, word, out_index=i * len(flat_words) + j, causal=model.is_causal, split_at=split[i])
    word_log_probs = queries.run(model, batch_tokens, progress).reshape(len(encoded), len(flat_words))
    scores = np.full((len(encoded), len(words)), -np.inf)
    for label in range(len(words)):
        scores[:, label] = _logsumexp(word_log_probs[:, word_label == label])
    if over == "labels":
        scores = _log_normalize(scores)
    if prompt.calibration:
        scores = calibrate(scores, prompt.calibration)
    return scores if candidates is None else scores.reshape(len(candidates), len(examples), len(words))


def calibrate(scores: np.ndarray, calibration: tuple[float, ...] | np.ndarray) -> np.ndarray:
    """Contextual calibration: label log-probs renormalised over the labels, the content-free
    input's subtracted, renormalised again. [n, labels] -> [n, labels]."""
    return _log_normalize(_log_normalize(scores) - np.asarray(calibration)[None, :])


CONTENT_FREE = ("N/A", "")


def content_free_calibration(model: LanguageModel, prompt: Prompt) -> tuple[float, ...]:
    """The calibration of a classification prompt: the mean label distribution it gives
    content-free inputs (every field "N/A", then every field empty), as log-probs."""
    from autoprompt.task import Example

    raw = replace(prompt, calibration=())
    examples = [Example({f: text for f in prompt.fields}, None, f"content-free {text!r}") for text in CONTENT_FREE]
    probs = np.exp(_log_normalize(score_labels(model, raw, examples))).mean(axis=0)
    return tuple(float(v) for v in np.log(probs))


def _log_normalize(scores: np.ndarray) -> np.ndarray:
    return scores - _logsumexp(scores)[:, None]


@cpu_tuned
def score_targets(model: LanguageModel, prompt: Prompt, examples: list[Example], *,
                  candidates: np.ndarray | None = None, prefix_cache: PrefixCache | None = None,
                  batch_tokens: int | None = None, progress: bool = False
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Free-form answers: log p(target) [n], rank of its first token at [P] [n], top-1 token id [n].

    With ``candidates`` each array is [n_candidates * n_examples], candidate-major."""
    encoded, split = _candidate_encodings(model, prompt, examples, candidates, prefix_cache)
    template = render_template(model, prompt)
    targets = []
    for example in examples:
        target = model.renderer.answer_ids(example.answer or "", template)
        if not target:
            raise TemplateError(f"{example.source}: empty target")
        targets.append(target if model.is_causal else target[:1])  # a masked LM fills one slot
    queries = _Queries(want_rank=True, prefix_cache=prefix_cache)
    for i, enc in enumerate(encoded):
        queries.add_answer(enc, targets[i % len(examples)], out_index=i, causal=model.is_causal, split_at=split[i])
    log_probs = queries.run(model, batch_tokens, progress)
    return log_probs, queries.first_rank, queries.first_top


def _candidate_encodings(model: LanguageModel, prompt: Prompt, examples: list[Example], candidates: np.ndarray | None,
                         prefix_cache: PrefixCache | None = None) -> tuple[list[Encoded], list[int | None]]:
    """Encodings of every (candidate, example), candidate-major, rendered once per example
    (a candidate only swaps trigger ids); and where each may split into a shared prefix."""
    encoded = encode_examples(model, prompt, examples)
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


def evaluate(model: LanguageModel, prompt: Prompt, examples: list[Example], *, metric: str = "accuracy",
             prefix_cache: PrefixCache | None = None, batch_tokens: int | None = None,
             progress: bool = False) -> Evaluation:
    """Score a prompt on labelled examples: predictions and metrics."""
    if prompt.is_classification:
        for example in examples:
            if example.answer not in prompt.labels:
                raise TemplateError(f"{example.source}: label {example.answer!r} is not one of the prompt's labels "
                                    f"({', '.join(prompt.labels)})")
        scores = score_labels(model, prompt, examples, prefix_cache=prefix_cache, batch_tokens=batch_tokens,
                              progress=progress)
        labels = prompt.labels
        predicted = [labels[k] for k in scores.argmax(axis=1)]
        gold = [e.answer for e in examples]
        metrics = {"accuracy": accuracy(predicted, gold), "macro_f1": macro_f1(predicted, gold, labels),
                   "mean_gold_log_prob": float(np.mean(scores[np.arange(len(gold)), [labels.index(g) for g in gold]]))}
        return Evaluation(_ordered(metrics, metric), predicted, label_log_probs=scores, labels=labels)
    log_probs, ranks, top = score_targets(model, prompt, examples, prefix_cache=prefix_cache,
                                          batch_tokens=batch_tokens, progress=progress)
    predicted = [model.tokenizer.decode([t]).strip() for t in top]
    metrics = {"precision@1": precision_at_1(ranks), "mrr": mrr(ranks), "mean_target_log_prob": float(np.mean(log_probs))}
    return Evaluation(_ordered(metrics, metric), predicted, target_log_probs=log_probs, target_ranks=ranks)


def _ordered(metrics: dict[str, float], first: str) -> dict[str, float]:
    return {first: metrics[first], **metrics} if first in metrics else metrics


# --- metrics: pure functions ---------------------------------------------------------------

def accuracy(predicted: list[str], gold: list[str]) -> float:
    return float(np.mean([p == g for p, g in zip(predicted, gold, strict=True)])) if gold else 0.0


def macro_f1(predicted: list[str], gold: list[str], labels: list[str]) -> float:
    f1s = []
    for label in labels:
        tp = sum(p == label and g == label for p, g in zip(predicted, gold, strict=False))
        fp = sum(p == label and g != label for p, g in zip(predicted, gold, strict=False))
        fn = sum(p != label and g == label for p, g in zip(predicted, gold, strict=False))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(f1s)) if f1s else 0.0


def precision_at_1(ranks: np.ndarray) -> float:
    return float(np.mean(np.asarray(ranks) == 0)) if len(ranks) else 0.0


def mrr(ranks: np.ndarray) -> float:
    return float(np.mean(1.0 / (np.asarray(ranks) + 1))) if len(ranks) else 0.0


def _logsumexp(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1)
    return m + np.log(np.exp(x - m[:, None]).sum(axis=1))


# --- the engine ------------------------------------------------------------------------------

class _Queries:
    """Answer-token queries grouped by the sequence they need, run in packed batches.

    One sequence serves every word that shares its prefix, so single-token label words all
    read the same forward pass. A sequence may start with a shared prefix (the tokens before
    the first trigger): its KV cache is computed once and reused by every sequence that
    starts with it."""

    def __init__(self, want_rank: bool = False, prefix_cache: PrefixCache | None = None,
                 head_rows: list[int] | None = None) -> None:
        self.prefix_cache = prefix_cache
        self.head_rows = head_rows  # the only vocabulary rows asked for (logits, not log-probs)  # prefixes encoded earlier; else computed in run()
        self.prefixes: list[list[int]] = []
        self._prefix_index: dict[tuple[int, ...], int] = prefix_cache.index if prefix_cache else {}
        self.sequences: list[tuple[int, list[int]]] = []  # (prefix index or -1, the rest of the ids)
        self._seq_index: dict[tuple[int, tuple[int, ...]], int] = {}
        self.seq, self.pos, self.token, self.out, self.is_first = [], [], [], [], []
        self.want_rank = want_rank

    def add_answer(self, enc: Encoded, answer: list[int], *, out_index: int, causal: bool,
                   split_at: int | None = None) -> None:
        ids = enc.input_ids + answer[:-1] if causal else enc.input_ids
        prefix = -1
        if split_at:
            key = tuple(ids[:split_at])
            if self.prefix_cache is not None:
                if key not in self._prefix_index:
                    raise TemplateError("an example's prefix is not in the given prefix cache")
                prefix = self._prefix_index[key]
            else:
                prefix = self._prefix_index.setdefault(key, len(self.prefixes))
                if prefix == len(self.prefixes):
                    self.prefixes.append(list(key))
            ids = ids[split_at:]
        seq = self._seq_index.setdefault((prefix, tuple(ids)), len(self.sequences))
        if seq == len(self.sequences):
            self.sequences.append((prefix, ids))
        for k, token in enumerate(answer):
            self.seq.append(seq)
            self.pos.append(enc.answer_position + k - (split_at or 0))  # relative to the sequence's own ids
            self.token.append(token)
            self.out.append(out_index)
            self.is_first.append(k == 0)

    def share_common_prefix(self, min_length: int = COMMON_PREFIX_MIN) -> int:
        """When every sequence starts with the same tokens (an instruction, demonstrations),
        make them one prefix whose KV cache is computed once. Returns its length (0: none)."""
        if self.prefix_cache is not None or self.prefixes or len(self.sequences) < 2 or not self.pos:
            return 0
        first = self.sequences[0][1]
        length = min(min(len(ids) for _, ids in self.sequences), min(self.pos))  # queries stay after it
        if length < min_length:
            return 0
        heads = np.array([ids[:length] for _, ids in self.sequences])  # [n, length]
        differs = (heads != heads[0]).any(axis=0)
        length = int(np.argmax(differs)) if differs.any() else length
        if length < min_length:
            return 0
        self.prefixes = [list(first[:length])]
        self.sequences = [(0, ids[length:]) for _, ids in self.sequences]
        self.pos = [p - length for p in self.pos]
        return length

    def run(self, model: LanguageModel, batch_tokens: int | None, progress: bool) -> np.ndarray:
        """Sum of answer-token log-probs per out_index; fills first_rank/first_top if asked.
        (With ``head_rows``: sums of those rows' logits, to be normalised by the caller.)"""
        if model.is_causal:  # a masked LM's prefix attends to what follows it: nothing to share
            self.share_common_prefix()
        seq, pos, token = (np.asarray(a, dtype=np.int64) for a in (self.seq, self.pos, self.token))
        if self.head_rows is not None:
            vocab_rows = torch.as_tensor(self.head_rows, device=model.device)
            token = np.searchsorted(np.asarray(self.head_rows), token)  # vocabulary id -> column
        else:
            vocab_rows = None
        token_log_probs = np.zeros(len(seq))
        ranks = np.zeros(len(seq), dtype=np.int64)
        tops = np.zeros(len(seq), dtype=np.int64)
        order = np.argsort(seq, kind="stable")  # queries grouped by sequence
        starts = np.searchsorted(seq[order], np.arange(len(self.sequences) + 1))
        row_of_seq = np.zeros(len(self.sequences), dtype=np.int64)
        explicit = batch_tokens is not None
        budget = batch_tokens if explicit else model.batch_tokens
        with torch.inference_mode():
            prefix_kv = self.prefix_cache or (PrefixCache(model, self.prefixes, budget) if self.prefixes else None)
            pending = self._batches(budget)
            bar = tqdm(total=len(self.sequences), desc="scoring", unit="seq", disable=not progress, leave=False)
            while pending:
                batch = pending.pop(0)
                ids, mask = pad_right([self.sequences[s][1] for s in batch], model.pad_id, model.device)
                row_of_seq[batch] = np.arange(len(batch))
                q = np.concatenate([order[starts[s] : starts[s + 1]] for s in batch])  # queries of this batch
                rows = torch.as_tensor(row_of_seq[seq[q]], device=model.device)
                positions = torch.as_tensor(pos[q], device=model.device)
                prefix_rows = [self.sequences[s][0] for s in batch]
                try:
                    past = prefix_kv.inputs(prefix_rows, mask) if prefix_rows[0] >= 0 else {"attention_mask": mask}
                    log_probs = model.log_probs_at(ids, rows=rows, positions=positions, vocab_rows=vocab_rows, **past)
                except torch.cuda.OutOfMemoryError:  # raised on CUDA only
                    if len(batch) == 1:
                        raise
                    torch.cuda.empty_cache()
                    budget = budget // 2 if explicit else model.halve_batch()
                    left = batch + [s for b in pending for s in b]  # the rest, packed again smaller
                    pending = [[left[k] for k in b] for b in
                               pack_batches([len(self.sequences[s][1]) for s in left], budget, max_rows=MAX_ROWS)]
                    continue
                gold = log_probs.gather(1, torch.as_tensor(token[q], device=model.device)[:, None])[:, 0]
                token_log_probs[q] = gold.cpu().numpy()
                if self.want_rank:
                    ranks[q] = (log_probs > gold[:, None]).sum(dim=1).cpu().numpy()
                    tops[q] = log_probs.argmax(dim=1).cpu().numpy()
                bar.update(len(batch))
            bar.close()
        out = np.asarray(self.out, dtype=np.int64)  # int even when empty: predict([]) gives []
        n_out = out.max() + 1 if len(out) else 0
        first = np.asarray(self.is_first, dtype=bool)
        self.first_rank = np.zeros(n_out, dtype=np.int64)
        self.first_top = np.zeros(n_out, dtype=np.int64)
        self.first_rank[out[first]] = ranks[first]
        self.first_top[out[first]] = tops[first]
        return np.bincount(out, weights=token_log_probs, minlength=n_out)

    def _batches(self, batch_tokens: int) -> list[list[int]]:
        """Sequences with and without a prefix never share a batch."""
        with_prefix = sorted((i for i, (p, _) in enumerate(self.sequences) if p >= 0), key=lambda i: self.sequences[i][0])
        without = [i for i, (p, _) in enumerate(self.sequences) if p < 0]
        batches = []
        for group in (with_prefix, without):
            lengths = [len(self.sequences[i][1]) for i in group]
            max_rows = MAX_ROWS
            runs = np.unique([self.sequences[i][0] for i in group], return_counts=True)[1] if group is with_prefix else []
            if len(runs) and (runs == runs[0]).all() and len(set(lengths)) == 1:
                # whole runs of rows continuing one prefix per batch: attention reads that prefix once
                per = int(runs[0])
                max_rows = max(per, min(MAX_ROWS, batch_tokens // max(lengths[0], 1)) // per * per)
            batches += [[group[k] for k in b] for b in pack_batches(lengths, batch_tokens, max_rows=max_rows)]
        return batches


class PrefixCache:
    """KV caches of shared prefixes, computed once, right-padded to one width."""

    def __init__(self, model: LanguageModel, prefixes: list[list[int]],
                 batch_tokens: int | None = None) -> None:
        self.model = model
        self.index = {tuple(p): i for i, p in enumerate(prefixes)}
        width = max(len(p) for p in prefixes)
        self.lengths = torch.tensor([len(p) for p in prefixes], device=model.device)
        self.mask = torch.zeros(len(prefixes), width, dtype=torch.long, device=model.device)
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        head = common_head(prefixes)  # instruction and demonstrations every prefix starts with: encoded once
        head_kv = _head_cache(model, prefixes[0][:head]) if head else None
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
    def for_examples(cls, model: LanguageModel, prompt: Prompt, examples: list[Example]) -> PrefixCache | None:
        """The KV cache of each example's tokens before the first trigger, to score many
        trigger sequences on the same examples (None when there is nothing to share)."""
        encoded = encode_examples(model, prompt, examples)
        if not model.is_causal or not encoded or not encoded[0].trigger_positions:
            return None
        with torch.inference_mode(), tuned(model.device):
            return cls(model, [e.input_ids[: e.trigger_positions[0]] for e in encoded])

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


def _head_cache(model: LanguageModel, head: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The KV cache of one shared head, [1, kv_heads, len, head_dim] per layer; the last one is
    kept on the model, so a search that keeps its demonstrations encodes them once."""
    key = (tuple(head), model.dtype)
    kept = model.__dict__.get("_head_kv")
    if kept is not None and kept[0] == key:
        return kept[1]
    ids = torch.as_tensor([head], device=model.device)
    with torch.inference_mode(False), torch.no_grad():  # plain tensors: the gradient's forward reads them too
        kv = [(k.clone(), v.clone()) for k, v in model.prefix_cache(ids, torch.ones_like(ids))]
    model.__dict__["_head_kv"] = (key, kv)
    return kv


def pack_batches(lengths: list[int], batch_tokens: int, max_rows: int | None = None) -> list[list[int]]:
    """Indices grouped into batches, longest first, each at most ``batch_tokens`` padded tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if (batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= batch_tokens
                and (max_rows is None or len(batches[-1]) < max_rows)):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def pad_right(sequences: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask, [batch, max_len]; positions stay those of the text."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for r, s in enumerate(sequences):
        ids[r, : len(s)] = torch.as_tensor(s)
        mask[r, : len(s)] = 1
    return ids.to(device), mask.to(device)
