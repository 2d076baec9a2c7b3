"""The references ``autoprompt bench`` measures the engine against, on the same workload.

- **naive**: the original AutoPrompt code's way: one candidate at a time, full sequences padded
  to the batch's longest, the full-vocabulary head at every position.
- **nanoGCG's way** (nanoGCG 0.3): per example, the text before the trigger encoded once into
  Hugging Face's own KV cache; all candidates of that example in one batch on that cache
  (expanded to the batch), the head only at the last position. Same losses as the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from autoprompt.scoring import calibrate, encode_examples, label_word_ids, pad_right, task_loss

if TYPE_CHECKING:
    from autoprompt.models import LanguageModel
    from autoprompt.prompt import Prompt
    from autoprompt.task import Example


def _label_losses(prompt: Prompt, log_probs: torch.Tensor, words: list[list[int]], gold: torch.Tensor,
                  loss_kind: str) -> torch.Tensor:
    """Per-row losses from full-vocabulary log-probs at [P] ([rows, vocab])."""
    scores = torch.stack([torch.logsumexp(log_probs[:, w], dim=1) for w in words], dim=1)
    if prompt.calibration:
        scores = torch.as_tensor(calibrate(scores.numpy(), prompt.calibration))
    return task_loss(scores, gold, loss_kind)


def naive_candidate_losses(model: LanguageModel, prompt: Prompt, examples: list[Example], candidates: np.ndarray,
                           loss_kind: str = "labels") -> np.ndarray:
    """Candidate losses the way the original AutoPrompt scores them: for each candidate, the
    full sequences of the batch (in its order, padded to its longest), the model's full output
    (every position, the whole vocabulary), then the log-probs at [P]. [n_candidates]."""
    encoded = encode_examples(model, prompt, examples)
    ids, mask = pad_right([e.input_ids for e in encoded], model.pad_id, model.device)
    slots_rows = torch.tensor([r for r, e in enumerate(encoded) for _ in e.trigger_positions])
    slots_cols = torch.tensor([p for e in encoded for p in e.trigger_positions])
    answer = torch.tensor([e.answer_position for e in encoded])
    words = [[w[0] for w in ws] for ws in label_word_ids(model, prompt)]
    gold = torch.tensor([prompt.labels.index(e.answer) for e in examples])
    losses = []
    with torch.no_grad():
        for candidate in np.asarray(candidates):
            batch = ids.clone()
            batch[slots_rows, slots_cols] = torch.as_tensor(candidate, device=batch.device).repeat(len(encoded))
            logits = model.hf_model(input_ids=batch, attention_mask=mask).logits  # [batch, seq, vocab]
            log_probs = F.log_softmax(logits[torch.arange(len(encoded)), answer].float(), dim=-1).cpu()
            losses.append(_label_losses(prompt, log_probs, words, gold, loss_kind).mean().item())
    return np.asarray(losses)


def nanogcg_candidate_losses(model: LanguageModel, prompt: Prompt, examples: list[Example], candidates: np.ndarray,
                             loss_kind: str = "labels") -> np.ndarray:
    """Candidate losses nanoGCG's way, example by example: the tokens before the first trigger
    through the model once (``use_cache``), then every candidate's rest of the sequence in one
    batch on that cache expanded to the batch, logits only at the last position ([P] of a causal
    LM). Causal LMs only. [n_candidates]."""
    from transformers import DynamicCache

    if not model.is_causal:
        raise ValueError("nanoGCG's way needs a causal LM")
    hf = model.hf_model
    embed = hf.get_input_embeddings()
    encoded = encode_examples(model, prompt, examples)
    words = [[w[0] for w in ws] for ws in label_word_ids(model, prompt)]
    cand = torch.as_tensor(np.asarray(candidates), device=model.device)
    n = len(cand)
    total = torch.zeros(n)
    with torch.no_grad():
        for enc, example in zip(encoded, examples, strict=True):
            first = enc.trigger_positions[0]
            ids = torch.as_tensor(enc.input_ids[: enc.answer_position + 1], device=model.device)
            prefix = model.prefix_cache(ids[None, :first], torch.ones_like(ids[None, :first]))  # HF's own cache
            layers = [(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in prefix]
            rest = ids[first:].repeat(n, 1)
            rest[:, [p - first for p in enc.trigger_positions]] = cand
            cache = {model._cache_argument: DynamicCache(ddp_cache_data=layers)}
            out = hf(inputs_embeds=embed(rest), logits_to_keep=1, **cache)
            log_probs = F.log_softmax(out.logits[:, -1].float(), dim=-1).cpu()
            gold = torch.full((n,), prompt.labels.index(example.answer))
            total += _label_losses(prompt, log_probs, words, gold, loss_kind)
    return (total / len(examples)).numpy()
