"""The engine: answer-token queries grouped by the sequence they need, run in packed batches
under ``torch.inference_mode``, the output head applied only where an answer is read. A CUDA
out-of-memory halves the batch budget and re-packs what is left."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from autoprompt.errors import TemplateError
from autoprompt.scoring.batching import MAX_ROWS, pack_batches, pad_right
from autoprompt.scoring.caches import Caches
from autoprompt.scoring.endings import answer_token_log_probs
from autoprompt.scoring.prefix import COMMON_PREFIX_MIN, PrefixCache

if TYPE_CHECKING:
    from autoprompt.models import LanguageModel
    from autoprompt.template import Encoded


class Queries:
    """Answer-token queries grouped by the sequence they need, run in packed batches.

    One sequence serves every word that shares its prefix, so single-token label words all
    read the same forward pass. A sequence may start with a shared prefix (the tokens before
    the first trigger): its KV cache is computed once and reused by every sequence that
    starts with it."""

    def __init__(self, want_rank: bool = False, prefix_cache: PrefixCache | None = None,
                 head_rows: list[int] | None = None, caches: Caches | None = None,
                 ends: torch.Tensor | None = None, top_n: int = 0) -> None:
        self.prefix_cache = prefix_cache  # prefixes encoded earlier; else computed in run()
        self.caches = caches
        self.head_rows = head_rows  # the only vocabulary rows asked for (logits, not log-probs)
        self.prefixes: list[list[int]] = []
        self._prefix_index: dict[tuple[int, ...], int] = prefix_cache.index if prefix_cache else {}
        self.sequences: list[tuple[int, list[int]]] = []  # (prefix index or -1, the rest of the ids)
        self._seq_index: dict[tuple[int, tuple[int, ...]], int] = {}
        self.seq, self.pos, self.token, self.out, self.is_first = [], [], [], [], []
        self.want_rank = want_rank
        self.ends = ends  # what an END query reads (endings.py)
        self.top_n = top_n  # with want_rank: the top_n tokens at each first answer position, and their log-probs

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
        vocab_rows = None
        if self.head_rows is not None:
            vocab_rows = torch.as_tensor(self.head_rows, device=model.device)
            token = np.searchsorted(np.asarray(self.head_rows), token)  # vocabulary id -> column
        token_log_probs = np.zeros(len(seq))
        ranks = np.zeros(len(seq), dtype=np.int64)
        tops = np.zeros(len(seq), dtype=np.int64)
        top_ids = np.zeros((len(seq), self.top_n), dtype=np.int64)  # [queries, top_n]
        top_log_probs = np.zeros((len(seq), self.top_n), dtype=np.float32)
        order = np.argsort(seq, kind="stable")  # queries grouped by sequence
        starts = np.searchsorted(seq[order], np.arange(len(self.sequences) + 1))
        row_of_seq = np.zeros(len(self.sequences), dtype=np.int64)
        bar = tqdm(total=len(self.sequences), desc="scoring", unit="seq", disable=not progress, leave=False)
        with torch.inference_mode():
            for batch, log_probs in self._forward(model, batch_tokens, vocab_rows, lambda b: self._rows(
                    b, order, starts, seq, pos, row_of_seq, model.device)):
                q = np.concatenate([order[starts[s] : starts[s + 1]] for s in batch])  # queries of this batch
                gold = answer_token_log_probs(log_probs, torch.arange(len(q), device=model.device),
                                              torch.as_tensor(token[q], device=model.device), self.ends)
                token_log_probs[q] = gold.cpu().numpy()
                if self.want_rank:
                    ranks[q] = (log_probs > gold[:, None]).sum(dim=1).cpu().numpy()
                    tops[q] = log_probs.argmax(dim=1).cpu().numpy()
                if self.want_rank and self.top_n:
                    values, ids = log_probs.topk(min(self.top_n, log_probs.shape[1]), dim=1)
                    top_ids[q, : ids.shape[1]] = ids.cpu().numpy()
                    top_log_probs[q, : ids.shape[1]] = values.float().cpu().numpy()
                bar.update(len(batch))
        bar.close()
        out = np.asarray(self.out, dtype=np.int64)  # int even when empty: predict([]) gives []
        n_out = out.max() + 1 if len(out) else 0
        first = np.asarray(self.is_first, dtype=bool)
        self.first_rank = np.zeros(n_out, dtype=np.int64)
        self.first_top = np.zeros(n_out, dtype=np.int64)
        self.first_rank[out[first]] = ranks[first]
        self.first_top[out[first]] = tops[first]
        if self.top_n:  # [n_out, top_n] each, and the first answer token's own log-prob [n_out]
            self.first_top_ids, self.first_top_log_probs = np.zeros_like(top_ids[:n_out]), np.zeros_like(top_log_probs[:n_out])
            self.first_top_ids[out[first]], self.first_top_log_probs[out[first]] = top_ids[first], top_log_probs[first]
            self.first_log_prob, self.first_token = np.zeros(n_out), np.zeros(n_out, dtype=np.int64)
            self.first_log_prob[out[first]], self.first_token[out[first]] = token_log_probs[first], token[first]
        return np.bincount(out, weights=token_log_probs, minlength=n_out)

    def _rows(self, batch, order, starts, seq, pos, row_of_seq, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The (row, position) in the batch of each query of its sequences."""
        row_of_seq[batch] = np.arange(len(batch))
        q = np.concatenate([order[starts[s] : starts[s + 1]] for s in batch])
        return torch.as_tensor(row_of_seq[seq[q]], device=device), torch.as_tensor(pos[q], device=device)

    def _forward(self, model: LanguageModel, batch_tokens: int | None, vocab_rows, rows_of):
        """(batch of sequence indices, log-probs at its queries) for every packed batch. A CUDA out-of-memory
        halves the budget (the model's, for good, unless the caller gave one) and re-packs what is left."""
        explicit = batch_tokens is not None
        budget = batch_tokens if explicit else model.batch_tokens
        prefix_kv = self.prefix_cache or (PrefixCache(model, self.prefixes, budget, self.caches) if self.prefixes else None)
        pending = self._batches(budget)
        while pending:
            batch = pending.pop(0)
            ids, mask = pad_right([self.sequences[s][1] for s in batch], model.pad_id, model.device)
            rows, positions = rows_of(batch)
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
            yield batch, log_probs

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
                # whole runs of rows continuing one prefix per batch: attention reads that prefix once;
                # as few batches as the budget allows, of equal size (no small last batch)
                per = int(runs[0])
                most = max(1, min(MAX_ROWS, batch_tokens // max(lengths[0], 1)) // per)  # runs per batch
                max_rows = per * -(-len(runs) // -(-len(runs) // most))
            batches += [[group[k] for k in b] for b in pack_batches(lengths, batch_tokens, max_rows=max_rows)]
        return batches
