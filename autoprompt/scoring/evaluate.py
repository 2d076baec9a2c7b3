"""evaluate(): a prompt scored on labelled examples, with its predictions and metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from autoprompt.answers import JUDGES, answer_scores
from autoprompt.ensemble import Ensemble, mean_answer_probs, mean_probs, vote
from autoprompt.errors import TemplateError
from autoprompt.metrics import accuracy, macro_f1, mrr, precision_at_1
from autoprompt.models.adapters import bind
from autoprompt.scoring.caches import Caches
from autoprompt.scoring.generate import generate
from autoprompt.scoring.prefix import PrefixCache
from autoprompt.scoring.scores import answer_words, score_labels, score_targets

if TYPE_CHECKING:
    from autoprompt.answers import Generation
    from autoprompt.data import Example
    from autoprompt.models import LanguageModel
    from autoprompt.prompt import Prompt


@dataclass
class Evaluation:
    """What scoring a prompt on examples gives: metrics, predictions and the raw scores."""

    metrics: dict[str, float]
    predictions: list[str]
    label_log_probs: np.ndarray | None = None  # [n_examples, n_labels], classification
    target_log_probs: np.ndarray | None = None  # [n_examples], free-form: log p(target)
    target_ranks: np.ndarray | None = None  # [n_examples], rank of the target's first token
    labels: list[str] = field(default_factory=list)
    scores: np.ndarray | None = None  # [n_examples], generated answers: each one's value of the metric
    answer_words: np.ndarray | None = None  # [n_examples, top + 1] first-token answers: the likeliest first tokens'
    answer_probs: np.ndarray | None = None  # words and the target's last (answer_words), and their probabilities


def evaluate(model: LanguageModel, prompt: Prompt | Ensemble, examples: list[Example], *, metric: str = "accuracy",
             prefix_cache: PrefixCache | None = None, batch_tokens: int | None = None,
             progress: bool = False, caches: Caches | None = None) -> Evaluation:
    """Score a prompt on labelled examples: predictions and metrics (a prompt with an adapter: on the
    model with it; an ensemble: each member in turn, batched over the examples, then combined)."""
    if isinstance(prompt, Ensemble):
        members = [evaluate(model, m, examples, metric=metric, batch_tokens=batch_tokens, progress=progress)
                   for m in prompt.members]
        return combine_evaluations(prompt, members, examples, metric)
    model, prompt = bind(model, prompt)
    if prompt.generation is not None:
        return _evaluate_generated(model, prompt, examples, metric, batch_tokens, progress, caches)
    if prompt.is_classification:
        for example in examples:
            if example.answer not in prompt.labels:
                raise TemplateError(f"{example.source}: label {example.answer!r} is not one of the prompt's labels "
                                    f"({', '.join(prompt.labels)})")
        scores = score_labels(model, prompt, examples, prefix_cache=prefix_cache, batch_tokens=batch_tokens,
                              progress=progress, caches=caches)
        return _label_evaluation(scores, prompt.labels, examples, metric)
    log_probs, ranks, _, words, probs = answer_words(model, prompt, examples, prefix_cache=prefix_cache,
                                                     batch_tokens=batch_tokens, progress=progress, caches=caches)
    evaluation = _first_token_evaluation(list(words[:, 0]), log_probs, ranks, metric)  # (the top token's word)
    evaluation.answer_words, evaluation.answer_probs = words, probs
    return evaluation


def combine_evaluations(ensemble: Ensemble, members: list[Evaluation], examples: list[Example],
                        metric: str) -> Evaluation:
    """The ensemble's evaluation from its members' on the same examples (members best first): their
    label probabilities averaged, or a vote over their generated answers."""
    if ensemble.combine == "mean_probs":  # (each member's columns in the ensemble's label order)
        scores = [m.label_log_probs[:, [m.labels.index(label) for label in ensemble.labels]] for m in members]
        return _label_evaluation(mean_probs(scores), ensemble.labels, examples, metric)
    if ensemble.combine == "mean_answer_probs":  # the words' mean probabilities; the target's word ranked among them
        words = mean_answer_probs([m.answer_words for m in members], [m.answer_probs for m in members])
        targets = members[0].answer_words[:, -1]
        ranks = np.array([sum(p > w[t] for p in w.values()) for w, t in zip(words, targets, strict=True)])
        log_probs = np.mean([m.target_log_probs for m in members], axis=0)
        return _first_token_evaluation([next(iter(w)) for w in words], log_probs, ranks, metric)
    settings = ensemble.generation
    predicted = vote([m.predictions for m in members], settings.normalize)
    log_probs = np.mean([m.target_log_probs for m in members], axis=0)  # [n]: the members' mean, for the metrics
    return _generated_evaluation(predicted, log_probs, examples, metric, settings)


def _label_evaluation(scores: np.ndarray, labels: list[str], examples: list[Example], metric: str) -> Evaluation:
    """Predictions and metrics from label scores [n_examples, n_labels]."""
    predicted = [labels[k] for k in scores.argmax(axis=1)]
    gold = [e.answer for e in examples]
    metrics = {"accuracy": accuracy(predicted, gold), "macro_f1": macro_f1(predicted, gold, labels),
               "mean_gold_log_prob": float(np.mean(scores[np.arange(len(gold)), [labels.index(g) for g in gold]]))}
    return Evaluation(_ordered(metrics, metric), predicted, label_log_probs=scores, labels=labels)


def _first_token_evaluation(predicted: list[str], log_probs: np.ndarray, ranks: np.ndarray, metric: str) -> Evaluation:
    metrics = {"precision@1": precision_at_1(ranks), "mrr": mrr(ranks), "mean_target_log_prob": float(np.mean(log_probs))}
    return Evaluation(_ordered(metrics, metric), predicted, target_log_probs=log_probs, target_ranks=ranks)


def _evaluate_generated(model: LanguageModel, prompt: Prompt, examples: list[Example], metric: str,
                        batch_tokens: int | None, progress: bool, caches: Caches | None) -> Evaluation:
    """Generated answers, judged by every generation metric (and the task's own), and the gold answer's
    log-likelihood beside them."""
    predicted = generate(model, prompt, examples, caches=caches, batch_tokens=batch_tokens)
    log_probs, _, _ = score_targets(model, prompt, examples, batch_tokens=batch_tokens, progress=progress,
                                    caches=caches)
    return _generated_evaluation(predicted, log_probs, examples, metric, prompt.generation)


def _generated_evaluation(predicted: list[str], log_probs: np.ndarray, examples: list[Example], metric: str,
                          settings: Generation) -> Evaluation:
    golds = [e.golds for e in examples]
    per_example = {name: answer_scores(name, predicted, golds, settings.normalize) for name in JUDGES}
    if settings.metric_fn is not None:
        per_example[metric] = answer_scores(settings.metric_fn, predicted, golds)
    metrics = {name: float(values.mean()) if len(values) else 0.0 for name, values in per_example.items()}
    metrics["mean_target_log_prob"] = float(np.mean(log_probs)) if len(log_probs) else 0.0
    scores = per_example.get(metric, per_example["exact_match"])
    return Evaluation(_ordered(metrics, metric), predicted, target_log_probs=log_probs, scores=scores)


def _ordered(metrics: dict[str, float], first: str) -> dict[str, float]:
    return {first: metrics[first], **metrics} if first in metrics else metrics
