""""Similar" demonstrations: each input is shown the pool demonstrations nearest to it by the
model's own embedding of the texts (mean of its last hidden states); "balanced_similar" ones: the
nearest of each label in turn."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import torch

from autoprompt.runtime import cpu_tuned
from autoprompt.scoring.batching import MAX_ROWS, pack_batches, pad_right
from autoprompt.scoring.caches import Caches

if TYPE_CHECKING:
    from autoprompt.data import Example
    from autoprompt.models import LanguageModel
    from autoprompt.prompt import Prompt


@cpu_tuned
def embed_texts(model: LanguageModel, texts: list[str], batch_tokens: int | None = None) -> torch.Tensor:
    """The model's own embedding of each text: its last hidden states, mean-pooled, unit length. [n, hidden]"""
    ids = [model.renderer.field_ids(t)[: model.max_length] or [model.pad_id] for t in texts]
    if not ids:
        return torch.zeros(0, model.hf_model.config.hidden_size)
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


def nearest_demonstrations(model: LanguageModel, prompt: Prompt, examples: list[Example],
                           caches: Caches | None = None) -> list[tuple[Example, ...]]:
    """For each example, the prompt's ``demo_k`` most similar pool demonstrations by cosine of the
    model's embeddings, most similar last (next to the input); never the example itself. The pool's
    embeddings are kept in ``caches`` (a search keeps one pool)."""
    pool = prompt.demonstrations
    digest = hashlib.sha256(json.dumps([[d.fields, d.answer] for d in pool], sort_keys=True).encode()).hexdigest()
    key = (id(model), digest)
    pool_vectors = caches.get("pool", key) if caches is not None else None
    if pool_vectors is None:
        pool_vectors = embed_texts(model, [_example_text(d) for d in pool])
        if caches is not None:
            caches.keep("pool", key, pool_vectors)
    similarity = embed_texts(model, [_example_text(e) for e in examples]) @ pool_vectors.T  # [n, pool]
    in_pool: dict[str, list[int]] = {}
    for j, demo in enumerate(pool):
        in_pool.setdefault(json.dumps(demo.fields, sort_keys=True), []).append(j)
    for i, example in enumerate(examples):  # an input that is in the pool is not its own demonstration
        similarity[i, in_pool.get(json.dumps(example.fields, sort_keys=True), [])] = -float("inf")
    if prompt.demo_per_label:
        top = nearest_per_label(similarity, torch.tensor([prompt.labels.index(d.answer) for d in pool]), prompt.demo_k)
    else:
        top = similarity.topk(prompt.demo_k, dim=1).indices.flip(1)  # ascending: the nearest comes last
    return [tuple(pool[j] for j in row) for row in top.tolist()]


def nearest_per_label(similarity: torch.Tensor, label_ids: torch.Tensor, k: int) -> torch.Tensor:
    """Each row's k columns taken in rounds, the nearest not yet taken of every label per round (nearer
    first within a round), so the labels share k as evenly as it divides and a label with too few columns
    leaves its turns to the others; the k in ascending similarity, the nearest last. Columns at -inf (the
    input itself) come after every other. similarity [n, pool], label_ids [pool] -> [n, k]"""
    n, size = similarity.shape
    by_similarity = similarity.argsort(dim=1, descending=True, stable=True)  # [n, pool]
    labels = label_ids[by_similarity]  # [n, pool]: each column's label, nearest first
    one_hot = torch.nn.functional.one_hot(labels, int(label_ids.max()) + 1)  # [n, pool, n_labels]
    rank = (one_hot.cumsum(dim=1) * one_hot).sum(dim=2) - 1  # [n, pool]: its place among its label's
    rank[similarity.gather(1, by_similarity) == -float("inf")] = size  # never before a real one
    position = torch.arange(size).expand(n, size)
    taken = (rank * size + position).argsort(dim=1)[:, :k]  # [n, k]: positions in the nearest-first order
    return by_similarity.gather(1, taken.sort(dim=1, descending=True).values)  # the nearest last
