"""Label-word search (AutoPrompt section 2.2).

Fit a logistic-regression classifier on the model's hidden state at [P] over training
examples, project its weights through the output embeddings, and propose the top-k words
per label: the words whose output embedding best matches what the classifier learned
separates that label from the others.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from autoprompt.errors import TaskError
from autoprompt.prompt import Prompt
from autoprompt.runtime import cpu_tuned
from autoprompt.scoring import encode_examples, pack_batches, pad_right, render_template
from autoprompt.searches.trigger import allowed_tokens
from autoprompt.template import spaced_answer, text_before_answer

if TYPE_CHECKING:
    from autoprompt.models import LanguageModel
    from autoprompt.task import Example, Task

log = logging.getLogger(__name__)


@dataclass
class LabelWords:
    """Proposed words per label, best first, with their scores (classifier weight . embedding)."""

    words: dict[str, list[tuple[str, float]]]
    train_accuracy: float  # of the logistic regression on the hidden states

    def verbalizer(self, n: int = 1) -> dict[str, list[str]]:
        return {label: [w for w, _ in ranked[:n]] for label, ranked in self.words.items()}


@cpu_tuned
def answer_states(model: LanguageModel, prompt: Prompt, examples: list[Example], batch_tokens: int = 4096) -> torch.Tensor:
    """The last hidden state at [P] of each example, [n_examples, hidden], fp32."""
    encoded = encode_examples(model, prompt, examples)
    states = torch.zeros(len(encoded), model.hf_model.config.hidden_size)
    with torch.inference_mode():
        for batch in pack_batches([len(e.input_ids) for e in encoded], batch_tokens):
            ids, mask = pad_right([encoded[i].input_ids for i in batch], model.pad_id, model.device)
            hidden = model.hidden_states(ids, mask)
            positions = torch.tensor([encoded[i].answer_position for i in batch], device=model.device)
            states[batch] = hidden[torch.arange(len(batch), device=model.device), positions].float().cpu()
    return states


def fit_logistic_regression(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float = 1e-3,
                            steps: int = 200) -> tuple[torch.Tensor, float]:
    """Multinomial logistic regression by L-BFGS: weights [n_classes, features], train accuracy."""
    weight = torch.zeros(n_classes, x.shape[1], requires_grad=True)
    bias = torch.zeros(n_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight.T + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    accuracy = float(((x @ weight.T + bias).argmax(1) == y).float().mean())
    return weight.detach(), accuracy


def search_label_words(model: LanguageModel, task: Task, *, n_examples: int = 500, top_k: int = 10,
                       ascii_only: bool = True, seed: int = 0) -> LabelWords:
    """Propose label words for a classification task (the verbalizer's words are not used)."""
    if not task.is_classification:
        raise TaskError(f"{task.name}: label-word search needs a classification task (with labels)")
    examples = task.examples("train")
    examples = random.Random(seed).sample(examples, min(n_examples, len(examples)))
    prompt = Prompt.from_task(task)
    y = torch.tensor([task.labels.index(e.answer) for e in examples])
    weight, accuracy = fit_logistic_regression(answer_states(model, prompt, examples), y, len(task.labels))
    output = model.hf_model.get_output_embeddings().weight.detach().float().cpu()  # [vocab, hidden]
    scores = weight @ output.T  # [n_labels, vocab]
    # label words must be free of special tokens and re-tokenize to themselves, like triggers
    unlabelled = replace(prompt, verbalizer=None)
    allowed = allowed_tokens(model, unlabelled, ascii_only=ascii_only, whole_words=False).cpu()
    # a label word is a bare alphabetic word whose answer tokenization is exactly this token
    template = render_template(model, prompt)
    words_of = [t.strip() for t in model.token_texts]
    spaced = [spaced_answer(w, text_before_answer(template)) if w else "" for w in words_of]
    reencoded = model.tokenizer(spaced, add_special_tokens=False)["input_ids"]
    allowed &= torch.tensor([w.isalpha() and ids == [i] for i, (w, ids) in enumerate(zip(words_of, reencoded, strict=True))])
    scores[:, ~allowed] = float("-inf")
    words = {}
    for label, row in zip(task.labels, scores, strict=True):
        top = row.topk(top_k)
        words[label] = [(words_of[i], float(v)) for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]
    log.info("label words (classifier train accuracy %.3f): %s", accuracy,
             {label: [w for w, _ in ranked[:3]] for label, ranked in words.items()})
    return LabelWords(words, accuracy)
