"""The trigger gradient: -grad . E of an objective's loss with respect to the one-hot trigger tokens,
for every slot and token (AutoPrompt, HotFlip). Multi-token answers are teacher-forced, as the
candidates' scores are; on a causal LM the tokens before the first trigger do not depend on the
triggers, so they are encoded once without a graph (their KV cache) and only the rest back-propagates.
The same answer log-probabilities give the training loss of soft prompts and LoRA (``training_loss``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from autoprompt.objective import Objective, objective_for
from autoprompt.runtime import cpu_tuned
from autoprompt.scoring import Caches, PrefixCache, encode_examples, pad_right
from autoprompt.scoring.endings import END, answer_ends, answer_token_log_probs

if TYPE_CHECKING:
    from autoprompt.data import Example
    from autoprompt.models import LanguageModel
    from autoprompt.prompt import Prompt
    from autoprompt.template import Encoded


@cpu_tuned
def trigger_gradient(model: LanguageModel, prompt: Prompt, examples: list[Example], objective: Objective | str,
                     caches: Caches | None = None) -> torch.Tensor:
    """-grad . E for every slot and token, [n_slots, vocab]: how much each swap should lower the mean loss.
    ``objective``: an Objective, or the loss kind of the prompt's own (``objective_for``)."""
    objective = objective_for(prompt, objective) if isinstance(objective, str) else objective
    embedding = model.hf_model.get_input_embeddings().weight  # [vocab, hidden]
    encoded = encode_examples(model, prompt, examples, caches)
    answers = objective.answers(model, prompt, examples)
    n_slots = len(prompt.trigger_ids)
    one_hot = torch.zeros(n_slots, model.vocab_size, device=model.device, dtype=embedding.dtype)
    one_hot[torch.arange(n_slots), torch.tensor(prompt.trigger_ids)] = 1
    one_hot.requires_grad_(True)
    trigger_embeds = one_hot @ embedding  # [n_slots, hidden]
    rows, sequences, queries = _teacher_forced(encoded, answers)
    split = [encoded[i].trigger_positions[0] if model.is_causal else 0 for i in rows]
    if min(split) == 0:
        split = [0] * len(rows)
    ids, mask = pad_right([s[k:] for s, k in zip(sequences, split, strict=True)], model.pad_id, model.device)
    forward = {"attention_mask": mask}
    if split[0]:
        with torch.no_grad():
            cache = PrefixCache(model, [s[:k] for s, k in zip(sequences, split, strict=True)], 1 << 16, caches)
        forward = cache.inputs(list(range(len(sequences))), mask)
    slot_rows = torch.tensor([r for r, i in enumerate(rows) for _ in encoded[i].trigger_positions], device=model.device)
    slot_cols = torch.tensor([p - k for i, k in zip(rows, split, strict=True) for p in encoded[i].trigger_positions],
                             device=model.device)
    slots = torch.arange(n_slots, device=model.device).repeat(len(rows))
    embeds = embedding[ids].index_put((slot_rows, slot_cols), trigger_embeds[slots])  # [batch, seq, hidden]
    states = model.hidden_states(None, inputs_embeds=embeds, **forward)
    answer_log_probs = _answer_log_probs(model, prompt, states, queries, split, (len(examples), len(answers[0])))
    objective.loss(prompt, examples, answer_log_probs).mean().backward()
    return -(one_hot.grad.float())


@cpu_tuned
def training_loss(model: LanguageModel, prompt: Prompt, examples: list[Example], objective: Objective) -> torch.Tensor:
    """The objective's mean loss on the examples, differentiable in whatever the model trains (a soft
    prompt, LoRA weights): one forward of every teacher-forced sequence, no prefix cache (every position
    depends on the trained tensors)."""
    encoded = encode_examples(model, prompt, examples)
    answers = objective.answers(model, prompt, examples)
    _, sequences, queries = _teacher_forced(encoded, answers)
    ids, mask = pad_right(sequences, model.pad_id, model.device)
    states = model.hidden_states(ids, mask)
    answer_log_probs = _answer_log_probs(model, prompt, states, queries, [0] * len(sequences),
                                         (len(examples), len(answers[0])))
    return objective.loss(prompt, examples, answer_log_probs).mean()


def _answer_log_probs(model: LanguageModel, prompt: Prompt, states: torch.Tensor, queries, split: list[int],
                      shape: tuple[int, int]) -> torch.Tensor:
    """Each example's answers' log-probabilities [n, n_answers] from the sequences' hidden states
    ([seq, len, hidden], each sequence's first ``split`` tokens cached elsewhere)."""
    seq, pos, token, example, answer = (torch.tensor(c, device=model.device) for c in zip(*queries, strict=True))
    places, place = torch.unique(torch.stack([seq, pos]), dim=1, return_inverse=True)  # each read position once
    hidden = states[places[0], places[1] - torch.tensor(split, device=model.device)[places[0]]]  # [places, hidden]
    log_probs = F.log_softmax(model.head_logits(hidden).float(), dim=-1)  # [places, vocab]
    ends = answer_ends(model, prompt) if bool((token == END).any()) else None  # reading where an answer ends
    token_log_probs = answer_token_log_probs(log_probs, place, token, ends)  # [queries]
    answer_log_probs = torch.zeros(*shape, device=model.device)
    return answer_log_probs.index_put((example, answer), token_log_probs, accumulate=True)


def _teacher_forced(encoded: list[Encoded], answers: list[list[list[int]]]):
    """The sequences the answers are read from: each example's ids, and for a multi-token answer the ids
    with its tokens but the last appended. Returns each sequence's example, the sequences, and the
    queries (sequence, position, token, example, answer) whose log-probs sum to an answer's."""
    rows: list[int] = []
    sequences: list[list[int]] = []
    index: dict[tuple[int, tuple[int, ...]], int] = {}
    queries = []
    for i, (enc, example_answers) in enumerate(zip(encoded, answers, strict=True)):
        for a, tokens in enumerate(example_answers):
            key = (i, tuple(tokens[:-1]))
            if key not in index:
                index[key] = len(sequences)
                rows.append(i)
                sequences.append(list(enc.input_ids) + list(tokens[:-1]))
            queries += [(index[key], enc.answer_position + t, token, i, a) for t, token in enumerate(tokens)]
    return rows, sequences, queries
