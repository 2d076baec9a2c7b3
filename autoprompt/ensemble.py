"""Prompt ensembles: a few prompts for one task whose answers are combined (PET's ensembles of
patterns). Label prompts average their calibrated label probabilities (``mean_probs``); generation
prompts vote over their normalised answers (``vote``; a tie goes to the best member's answer);
first-token prompts average the probabilities of their likeliest answer words (``mean_answer_probs``).
Members come best first: a search ranks them on dev. Pure: no model here (scoring combines the
members' scores with the functions below)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from autoprompt.answers import DEFAULT_NORMALIZE, normalize
from autoprompt.errors import TemplateError

if TYPE_CHECKING:
    from autoprompt.answers import Generation
    from autoprompt.prompt import ModelRef, Prompt

COMBINES = ("mean_probs", "vote", "mean_answer_probs")


@dataclass(frozen=True)
class Ensemble:
    """Prompts for the same task and model, best first, and how their answers are combined."""

    members: tuple[Prompt, ...]
    combine: str

    def __post_init__(self) -> None:
        problem = ensemble_problem(self.members, self.combine)
        if problem:
            raise TemplateError(problem)

    @classmethod
    def of(cls, members: Sequence[Prompt]) -> Ensemble:
        """The ensemble of these prompts, combined as their kind of task is (label or generated answers)."""
        return cls(tuple(members), combine_for(members[0]) if members else "")

    @property
    def best(self) -> Prompt:
        return self.members[0]

    @property
    def labels(self) -> list[str]:
        return self.best.labels

    @property
    def is_classification(self) -> bool:
        return self.best.is_classification

    @property
    def generation(self) -> Generation | None:
        return self.best.generation

    @property
    def fields(self) -> tuple[str, ...]:
        return self.best.fields

    @property
    def model(self) -> ModelRef | None:
        return self.best.model

    def for_model(self, model: ModelRef) -> Ensemble:
        return replace(self, members=tuple(replace(m, model=model) for m in self.members))


def combine_for(prompt: Prompt) -> str:
    """How answers of prompts like this one are combined."""
    if prompt.is_classification:
        return "mean_probs"
    return "vote" if prompt.generation is not None else "mean_answer_probs"


def ensemble_problem(members: Sequence[Prompt], combine: str) -> str | None:
    """What makes these members and this combine name no ensemble (None: they are one)."""
    if len(members) < 2:
        return f"an ensemble needs at least two members, not {len(members)} (one prompt is a prompt file of its own)"
    if combine not in COMBINES:
        return f"combine must be one of {', '.join(COMBINES)}, not {combine!r}"
    best = members[0]
    for n, member in enumerate(members):
        if member.adapter is not None:
            return f"member {n}: an ensemble member cannot have an adapter"
        if combine == "mean_probs" and (not member.is_classification or member.labels != best.labels):
            return f"member {n}: mean_probs needs label prompts with the same labels in the same order ({best.labels})"
        if combine == "vote" and member.generation is None:
            return f"member {n}: vote needs prompts that generate their answers"
        if combine == "mean_answer_probs" and (member.is_classification or member.generation is not None):
            return f"member {n}: mean_answer_probs needs prompts that answer with one free-form word (no labels)"
        if member.model != best.model or tuple(member.fields) != tuple(best.fields):
            return f"member {n}: every member must be for the same model and the same input fields"
    return None


def label_probs(label_log_probs: np.ndarray) -> np.ndarray:
    """A prompt's label scores as probabilities over its labels: [n, labels] -> [n, labels]."""
    probs = np.exp(label_log_probs - label_log_probs.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True)


def mean_probs(member_log_probs: Sequence[np.ndarray]) -> np.ndarray:
    """The ensemble's label log-probabilities: the log of the mean of the members' label probabilities
    (each calibrated where its prompt is), [n, labels] each -> [n, labels]."""
    return np.log(np.mean([label_probs(s) for s in member_log_probs], axis=0))


def vote(member_answers: Sequence[Sequence[str]], steps: Sequence[str] = DEFAULT_NORMALIZE) -> list[str]:
    """Per example, the answer most members gave (compared after ``steps``); among tied answers the one
    of the best member that gave one of them. Members best first, [members][n] -> [n]."""
    out = []
    for answers in zip(*member_answers, strict=True):
        said = [normalize(a, steps) for a in answers]
        counts = Counter(said)
        most = max(counts.values())
        out.append(next(a for a, s in zip(answers, said, strict=True) if counts[s] == most))
    return out


def mean_answer_probs(member_words: Sequence[np.ndarray], member_probs: Sequence[np.ndarray]) -> list[dict[str, float]]:
    """Per example, each answer word's probability averaged over the members, likeliest first: a member's
    probability of a word is that of its likeliest token with that word (byte pieces all decode to one),
    0 outside its top tokens. [members][n, top] words and probabilities -> [n] {word: p}."""
    out = []
    for n in range(len(member_words[0])):
        total: dict[str, float] = {}
        for words, probs in zip(member_words, member_probs, strict=True):
            own: dict[str, float] = {}
            for word, p in zip(words[n], probs[n], strict=True):
                own[word] = max(own.get(word, 0.0), float(p))
            for word, p in own.items():
                total[word] = total.get(word, 0.0) + p / len(member_words)
        out.append(dict(sorted(total.items(), key=lambda item: (-item[1], item[0]))))
    return out
