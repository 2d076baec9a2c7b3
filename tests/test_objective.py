"""One objective per kind of task: the trigger gradient and the candidates' scores come from the same loss,
multi-token answers teacher-forced in both (checked against a plain forward of whole sequences)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autoprompt.data import Example
from autoprompt.gradient import trigger_gradient
from autoprompt.objective import FirstTokenObjective, LabelObjective, objective_for
from autoprompt.prompt import Prompt
from autoprompt.scoring import encode_examples, label_word_ids, target_ids

TEXTS = ["a fine film", "the plot is thin and the acting thinner", "it moves", "slow"]


def multi_token_prompt(model) -> Prompt:
    verbalizer = {"negative": ["terrible", "not recommended"], "positive": ["wonderfully entertaining"]}
    prompt = Prompt("Review: {text} [T] [T]\nSentiment:[P]", verbalizer, fields=("text",))
    words = [w for ws in label_word_ids(model, prompt) for w in ws]
    assert max(len(w) for w in words) > 1  # the test needs multi-token words
    return prompt.with_triggers(model.tokenizer(" the film", add_special_tokens=False)["input_ids"][:2], ["a", "b"])


def plain_answer_log_probs(model, prompt: Prompt, examples, answers, one_hot=None) -> torch.Tensor:
    """log p(answer) [n, n_answers] by a plain forward of each whole sequence (example + answer), one at a time."""
    embedding = model.hf_model.get_input_embeddings().weight
    out = torch.zeros(len(examples), len(answers[0]), device=model.device)
    for i, enc in enumerate(encode_examples(model, prompt, examples)):
        for a, tokens in enumerate(answers[i]):
            ids = list(enc.input_ids) + list(tokens)
            embeds = embedding[torch.tensor(ids, device=model.device)].clone()
            if one_hot is not None:
                for slot, position in enumerate(enc.trigger_positions):
                    embeds[position] = one_hot[slot] @ embedding
            log_probs = torch.log_softmax(model.hf_model(inputs_embeds=embeds[None]).logits[0].float(), dim=-1)
            positions = range(enc.answer_position, enc.answer_position + len(tokens))
            out = out.index_put((torch.tensor(i), torch.tensor(a)),
                                sum(log_probs[p, t] for p, t in zip(positions, tokens, strict=True)), accumulate=True)
    return out


@pytest.mark.parametrize("kind", ["labels", "vocab"])
def test_multi_token_label_words_are_teacher_forced_in_gradient_and_candidates(causal_lm, kind) -> None:
    model, objective = causal_lm, LabelObjective(kind)
    prompt = multi_token_prompt(model)
    examples = [Example({"text": t}, ["negative", "positive"][i % 2], f"e{i}") for i, t in enumerate(TEXTS)]
    answers = objective.answers(model, prompt, examples)
    # the candidates' losses are the objective's loss on plain forwards of the whole answers
    candidates = np.array([list(prompt.trigger_ids), [40, prompt.trigger_ids[1]]])
    losses = objective.candidate_losses(model, prompt, examples, candidates)
    for row, trigger in zip(losses, candidates, strict=True):
        swapped = prompt.with_triggers(list(trigger), ["x", "y"])
        plain = objective.loss(swapped, examples, plain_answer_log_probs(model, swapped, examples, answers))
        assert row == pytest.approx(float(plain.mean()), abs=1e-4)
    # the gradient is the gradient of that same loss
    one_hot = torch.zeros(2, model.vocab_size, device=model.device)
    one_hot[torch.arange(2), torch.tensor(prompt.trigger_ids)] = 1
    one_hot.requires_grad_(True)
    objective.loss(prompt, examples, plain_answer_log_probs(model, prompt, examples, answers, one_hot)).mean().backward()
    got = trigger_gradient(model, prompt, examples, objective)
    torch.testing.assert_close(got, -one_hot.grad, rtol=0, atol=1e-4 * float(one_hot.grad.abs().max()))


def test_free_form_answers_are_judged_by_their_first_token(causal_lm) -> None:
    model = causal_lm
    prompt = Prompt("{subject} [T] [T] is in[P]", None, fields=("subject",)).with_triggers([30, 31], ["a", "b"])
    examples = [Example({"subject": s}, o, s) for s, o in [("Paris", "France"), ("Rome", "Italy and more")]]
    objective = objective_for(prompt)
    assert isinstance(objective, FirstTokenObjective)
    answers = objective.answers(model, prompt, examples)
    assert answers == [[t[:1]] for t in target_ids(model, prompt, examples)]
    plain = objective.loss(prompt, examples, plain_answer_log_probs(model, prompt, examples, answers))
    losses = objective.candidate_losses(model, prompt, examples, np.array([[30, 31]]))
    assert losses[0] == pytest.approx(float(plain.mean()), abs=1e-4)
