"""The one loss a task's prompts are searched with, per kind of task. The trigger gradient, the
candidates' scores and the selection metric all come from it, so the three agree:

- labels: -log p(gold label) at [P], a label's probability the log-sum-exp of its words' (a
  multi-token word teacher-forced, in the gradient as in the candidates' scores); over the
  vocabulary (AutoPrompt) or renormalised over the labels; selection by the task's metric.
- free-form answers scored by their first token (LAMA's precision@1): -log p(first target token);
- generated answers: -log p(the whole target, then its end), teacher-forced; selection by the generated
  answers' metric.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import numpy as np
import torch

from autoprompt.scoring import Caches, label_word_ids, score_labels, score_targets, target_ids, task_loss

if TYPE_CHECKING:
    from autoprompt.data import Example
    from autoprompt.models import LanguageModel
    from autoprompt.prompt import Prompt

LOSSES = ("vocab", "labels")


class Objective(ABC):
    """What a search minimises: the loss of each example from its answers' log-probabilities."""

    @abstractmethod
    def answers(self, model: LanguageModel, prompt: Prompt, examples: list[Example]) -> list[list[list[int]]]:
        """Per example, the token-id sequences whose log-probabilities at [P] the loss reads (the same
        number for every example)."""

    @abstractmethod
    def loss(self, prompt: Prompt, examples: list[Example], answer_log_probs: torch.Tensor) -> torch.Tensor:
        """Each example's loss [n] from its answers' log-probabilities [n, n_answers] (differentiable)."""

    @abstractmethod
    def candidate_losses(self, model: LanguageModel, prompt: Prompt, examples: list[Example],
                         candidates: np.ndarray, caches: Caches | None = None) -> np.ndarray:
        """Mean loss of each trigger candidate [n_candidates, n_slots] on the examples, all scored together."""


class LabelObjective(Objective):
    """-log p(gold label); ``kind`` "vocab": over the whole vocabulary, "labels": over the label set."""

    def __init__(self, kind: str = "labels") -> None:
        if kind not in LOSSES:
            raise ValueError(f"unknown loss {kind!r}")
        self.kind = kind

    def answers(self, model, prompt, examples):
        words = [w for label_words in label_word_ids(model, prompt) for w in label_words]
        return [words] * len(examples)

    def loss(self, prompt, examples, answer_log_probs):
        word_counts = [len(words) for words in prompt.verbalizer.values()]
        columns = np.cumsum([0, *word_counts])
        scores = torch.stack([torch.logsumexp(answer_log_probs[:, a:b], dim=1)
                              for a, b in zip(columns[:-1], columns[1:], strict=True)], dim=1)  # [n, labels]
        gold = torch.tensor([prompt.labels.index(e.answer) for e in examples], device=answer_log_probs.device)
        return task_loss(scores, gold, self.kind)

    def candidate_losses(self, model, prompt, examples, candidates, caches=None):
        over = "labels" if self.kind == "labels" else "vocab"  # labels: the head computes only their rows
        scores = torch.as_tensor(score_labels(model, prompt, examples, candidates=candidates, over=over,
                                              caches=caches))  # [C, n, labels]
        gold = torch.tensor([prompt.labels.index(e.answer) for e in examples]).repeat(len(candidates))
        losses = task_loss(scores.reshape(-1, scores.shape[-1]), gold, self.kind)
        return losses.reshape(len(candidates), len(examples)).mean(dim=1).numpy()


class _TargetTokensObjective(Objective):
    """Free-form answers: -log p(their target tokens), teacher-forced; which tokens, the subclass says."""

    first_token = False  # only the target's first token
    end = False  # the target, then the token that ends a generated answer

    def answers(self, model, prompt, examples):
        targets = target_ids(model, prompt, examples, end=self.end)
        return [[target[:1] if self.first_token else target] for target in targets]

    def loss(self, prompt, examples, answer_log_probs):
        return -answer_log_probs[:, 0]

    def candidate_losses(self, model, prompt, examples, candidates, caches=None):
        log_probs, _, _ = score_targets(model, prompt, examples, candidates=candidates, caches=caches,
                                        first_token=self.first_token, end=self.end)  # [C * n]
        return -np.asarray(log_probs).reshape(len(candidates), len(examples)).mean(axis=1)


class FirstTokenObjective(_TargetTokensObjective):
    """Free-form answers judged by their first token (precision@1): -log p(first target token)."""

    first_token = True


class TargetObjective(_TargetTokensObjective):
    """Generated answers: -log p(the whole gold answer) - log p(it ends there), teacher-forced (GCG's
    objective, over many examples); "it ends" is any token after which ``generate`` cuts the answer
    right there (a newline, one of the task's stop strings, the end of text: ``end_tokens``). The end
    makes the likelihood agree with what the answer is judged by: a prompt after which the model says
    the answer and goes on talking fails exact match, and without it would score as well as one after
    which it stops."""

    end = True


def objective_for(prompt: Prompt, loss: str = "labels") -> Objective:
    """The objective of a prompt's task: its labels (with the ``loss`` kind), its generated answers' whole
    text, else its answers' first token."""
    if prompt.is_classification:
        return LabelObjective(loss)
    return TargetObjective() if prompt.generation is not None else FirstTokenObjective()
