"""Generated answers judged against the acceptable ones: exact match (after a normalisation the task
chooses), SQuAD's token F1, containment, or a user's own function. Pure functions of text."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Generation:
    """How a prompt's answers are generated (greedy, up to ``max_new_tokens``, stopping at a newline after
    the answer's first words or at one of ``stop``) and compared (after ``normalize``; ``metric_fn``: a
    metric of your own, in this process only)."""

    max_new_tokens: int = 16
    stop: tuple[str, ...] = ()
    normalize: tuple[str, ...] = ("strip", "whitespace", "case")
    metric_fn: Callable[[str, list[str]], float] | None = field(default=None, compare=False, repr=False)


NORMALIZE_STEPS = ("strip", "whitespace", "case", "punctuation", "articles")
DEFAULT_NORMALIZE = ("strip", "whitespace", "case")
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.IGNORECASE)


def normalize(text: str, steps: Sequence[str] = DEFAULT_NORMALIZE) -> str:
    """The answer as compared: ``strip`` ends, collapse ``whitespace``, fold ``case``, drop ``punctuation``
    and English ``articles`` (SQuAD's normalisation is all five)."""
    if "case" in steps:
        text = text.casefold()
    if "punctuation" in steps:
        text = "".join(ch for ch in text if ch not in string.punctuation)
    if "articles" in steps:
        text = _ARTICLES.sub(" ", text)
    if "whitespace" in steps:
        text = " ".join(text.split())
    return text.strip() if "strip" in steps else text


def exact_match(prediction: str, answers: Sequence[str], steps: Sequence[str] = DEFAULT_NORMALIZE) -> float:
    said = normalize(prediction, steps)
    return float(any(said == normalize(a, steps) for a in answers))


def token_f1(prediction: str, answers: Sequence[str], steps: Sequence[str] = DEFAULT_NORMALIZE) -> float:
    """SQuAD's F1 over whitespace tokens of the normalised texts, the best over the answers."""
    said = normalize(prediction, steps).split()
    best = 0.0
    for answer in answers:
        gold = normalize(answer, steps).split()
        common = sum((Counter(said) & Counter(gold)).values())
        if not said or not gold:
            best = max(best, float(said == gold))
        elif common:
            precision, recall = common / len(said), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def contains(prediction: str, answers: Sequence[str], steps: Sequence[str] = DEFAULT_NORMALIZE) -> float:
    said = normalize(prediction, steps)
    return float(any(normalize(a, steps) in said for a in answers if normalize(a, steps)))


JUDGES: dict[str, Callable[..., float]] = {"exact_match": exact_match, "token_f1": token_f1,
                                           "contains": contains}


def answer_scores(metric: str | Callable[[str, Sequence[str]], float], predictions: Sequence[str],
                  golds: Sequence[Sequence[str]], steps: Sequence[str] = DEFAULT_NORMALIZE) -> np.ndarray:
    """Each prediction's value, [n]: a named generation metric, or the user's ``(prediction, answers) -> float``."""
    if callable(metric):
        return np.asarray([float(metric(p, list(g))) for p, g in zip(predictions, golds, strict=True)])
    judge = JUDGES[metric]
    return np.asarray([judge(p, g, steps) for p, g in zip(predictions, golds, strict=True)], dtype=float)
