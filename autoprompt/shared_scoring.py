"""The scoring a run makes after its search, when several runs share it (a comparison's cells).

Within ``shared_evaluations()``, optimize() scores a prompt without learned tensors on the same examples
once: runs that share a test split score the task's own prompt on it once, not once a run. With
``search_budgets=True`` a run's time budget is its search's (and the choice on dev that ends it): the
scoring on test is the caller's cost, not the method's, and the train sample (the report's overfitting
check) is not scored, so that a short budget is not spent on scoring that decides nothing."""

from __future__ import annotations

import contextvars
import dataclasses
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autoprompt.ensemble import Ensemble
from autoprompt.scoring import Caches, Evaluation, evaluate
from autoprompt.searches.base import TRAIN_SAMPLE
from autoprompt.untouched import RUN_SPLITS

if TYPE_CHECKING:
    from autoprompt.models import LanguageModel
    from autoprompt.prompt import Prompt
    from autoprompt.searches import Method
    from autoprompt.task import Task

SPLITS = RUN_SPLITS  # (untouched: the slice of dev the search never saw)


@dataclass
class _Shared:
    search_budgets: bool
    evaluations: dict[tuple, Evaluation] = field(default_factory=dict)


_SHARED: contextvars.ContextVar[_Shared | None] = contextvars.ContextVar("autoprompt_shared_evaluations", default=None)


@contextmanager
def shared_evaluations(*, search_budgets: bool = False):
    """Within it, optimize() scores a prompt without learned tensors on the same examples once.
    ``search_budgets``: time budgets cover the searches; test and the train sample are not theirs."""
    token = _SHARED.set(_Shared(search_budgets))
    try:
        yield
    finally:
        _SHARED.reset(token)


def scored_splits() -> tuple[str, ...]:
    """The splits a run scores its prompts on at the end."""
    shared = _SHARED.get()
    return SPLITS[1:] if shared is not None and shared.search_budgets else SPLITS


def budgeted_examples(spec: Method, config: Any, model: LanguageModel, baseline: Prompt, task: Task,
                      seed: int) -> int:
    """Examples the scoring after the search will score that the run's time budget must keep time for:
    all of it, less the baseline's evaluations an earlier run already made (under ``search_budgets``:
    only what the choice on dev scores)."""
    shared = _SHARED.get()
    if shared is not None and shared.search_budgets:
        task = dataclasses.replace(task, splits={"dev": task.splits.get("dev") or []})
    return spec.final_examples(task, config) - _shared_examples(model, baseline, task, seed)


def evaluate_once(model: LanguageModel, prompt: Prompt | Ensemble, examples, metric, caches: Caches) -> Evaluation:
    shared = _SHARED.get()
    if shared is None or isinstance(prompt, Ensemble) or prompt.adapter is not None:
        return evaluate(model, prompt, examples, metric=metric, caches=caches)
    key = _shared_key(model, prompt, examples, metric)
    if key not in shared.evaluations:
        shared.evaluations[key] = evaluate(model, prompt, examples, metric=metric, caches=caches)
    return shared.evaluations[key]


def split_sample(task: Task, split: str, seed: int):
    """A split's examples, train as a seeded sample of TRAIN_SAMPLE (with their indices)."""
    examples = task.splits.get(split) or []
    if split == "train" and len(examples) > TRAIN_SAMPLE:
        indices = sorted(random.Random(seed).sample(range(len(examples)), TRAIN_SAMPLE))
        return [examples[i] for i in indices], indices
    return examples, None


def _shared_key(model: LanguageModel, prompt: Prompt, examples, metric) -> tuple:
    return (id(model), repr(prompt), metric if isinstance(metric, str) else id(metric),
            tuple((e.source, e.answer, e.answers, tuple(sorted(e.fields.items()))) for e in examples))


def _shared_examples(model: LanguageModel, baseline: Prompt, task: Task, seed: int) -> int:
    """Examples of the final scoring whose baseline evaluation an earlier run within shared_evaluations()
    already made: the time budget keeps nothing back for them."""
    shared = _SHARED.get()
    if shared is None or not shared.evaluations:
        return 0
    samples = (split_sample(task, split, seed)[0] for split in SPLITS)
    return sum(len(examples) for examples in samples
               if examples and _shared_key(model, baseline, examples, task.metric) in shared.evaluations)
