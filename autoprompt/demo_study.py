"""Which demonstrations, how many: a task's own template and verbalizer scored with k demonstrations of
each selection, once per seed (the draw's, or the "similar" pool's), no search. ``autoprompt demos`` prints
its table; ``study_demonstrations(model, task, DemoStudyConfig())`` is the same in Python."""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autoprompt.compare import parse_list, parse_seeds
from autoprompt.errors import AutoPromptError, InputTooLong
from autoprompt.scoring.caches import Caches
from autoprompt.scoring.evaluate import evaluate
from autoprompt.searches.base import opt
from autoprompt.space import ORDERS, SELECTIONS, Choice, SearchSpace, prompt_for

if TYPE_CHECKING:
    from autoprompt.models import LanguageModel
    from autoprompt.prompt import Prompt
    from autoprompt.task import Task

SPLITS = ("dev", "test")


@dataclass
class DemoStudyConfig:
    """What to measure: every selection at every k, once per seed."""

    k: list[int] = field(default_factory=lambda: [0, 1, 2, 4, 8, 16],
                         metadata={"help": "Numbers of demonstrations, comma-separated."})
    selections: list[str] = field(default_factory=lambda: list(SELECTIONS),
                                  metadata={"help": "Selections, comma-separated: " + ", ".join(SELECTIONS) + "."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={
        "help": "Seeds of the demonstrations' draw (a \"similar\" pool's), comma-separated."})
    split: str = opt("dev", "The split scored.", choices=SPLITS)
    limit: int | None = opt(None, "Score only the split's first N examples.", min=1)
    order: str = opt("shuffled", "Order of random and balanced demonstrations (similar ones: the nearest last).",
                     choices=ORDERS)

    def __post_init__(self) -> None:
        self.k = [_k(v) for v in parse_list(self.k, "--k", [])]
        self.selections = parse_list(self.selections, "--selections", [])
        unknown = [s for s in self.selections if s not in SELECTIONS]
        if unknown:
            raise AutoPromptError(f"--selections: unknown selection {unknown[0]!r}; selections are: "
                                  f"{', '.join(SELECTIONS)}")
        self.seeds = parse_seeds(self.seeds)
        if self.split not in SPLITS:
            raise AutoPromptError(f"--split: {self.split!r} is not one of {', '.join(SPLITS)}")
        if self.order not in ORDERS:
            raise AutoPromptError(f"--order: {self.order!r} is not one of {', '.join(ORDERS)}")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int)
                                       or self.limit < 1):
            raise AutoPromptError(f"--limit: {self.limit!r} is not a number of examples (a whole number >= 1)")


def _k(value: Any) -> int:
    text = str(value).strip()
    if isinstance(value, (bool, float)) or not text.isdigit():
        raise AutoPromptError(f"--k: {value!r} is not a number of demonstrations (a whole number >= 0)")
    return int(text)


@dataclass
class DemoCell:
    """One selection at one k with one seed: the metric on the split, or why it was not scored."""

    selection: str
    k: int
    seed: int
    value: float | None
    seconds: float  # scoring it (a cell whose prompt an earlier cell scored: that cell's)
    same_as: str = ""  # "selection k=… seed …": the earlier cell with the very same prompt, not scored again
    note: str = ""  # why it has no value (a prompt longer than the model's context)


@dataclass
class DemoStudy:
    """Every cell of a study, and the mean and spread over seeds of each selection and k."""

    task: str
    model: str
    split: str
    n_examples: int
    metric: str
    config: dict[str, Any]
    cells: list[DemoCell] = field(default_factory=list)
    seconds: float = 0.0  # the whole study's wall time

    def summary(self, selection: str, k: int) -> tuple[float | None, float | None, float]:
        """Mean and standard deviation (over seeds; 0 for one) of a selection at k, and the seconds spent
        scoring it (none for a prompt an earlier cell scored)."""
        cells = [c for c in self.cells if c.selection == selection and c.k == k]
        values = [c.value for c in cells if c.value is not None]
        mean = statistics.fmean(values) if values else None
        std = statistics.stdev(values) if len(values) > 1 else 0.0 if values else None
        return mean, std, sum(c.seconds for c in cells if not c.same_as)

    def table(self) -> list[str]:
        """The study as text lines: a row per selection, a column per k, ``mean ± std`` in each."""
        ks = self.config["k"]
        head = f"{'selection':<17}" + "".join(f"{'k=' + str(k):>15}" for k in ks) + f"{'seconds':>10}"
        lines = [head]
        for selection in self.config["selections"]:
            row, total = f"{selection:<17}", 0.0
            for k in ks:
                mean, std, seconds = self.summary(selection, k)
                row += f"{'—' if mean is None else f'{mean:.3f} ± {std:.3f}':>15}"
                total += seconds
            lines.append(row + f"{total:>10.0f}")
        lines += sorted({f"{c.selection} k={c.k}: {c.note}" for c in self.cells if c.note})
        return lines

    def to_dict(self) -> dict[str, Any]:
        summary = {s: {str(k): dict(zip(("mean", "std", "seconds"), self.summary(s, k), strict=True))
                       for k in self.config["k"]} for s in self.config["selections"]}
        return {"task": self.task, "model": self.model, "split": self.split, "n_examples": self.n_examples,
                "metric": self.metric, "config": self.config, "seconds": round(self.seconds, 2),
                "summary": summary, "cells": [c.__dict__ for c in self.cells]}


def study_demonstrations(model: LanguageModel, task: Task, config: DemoStudyConfig | None = None, *,
                         progress: bool = False) -> DemoStudy:
    """Score the task's own prompt with each selection and k of ``config``, once per seed."""
    from tqdm.auto import tqdm

    config = config or DemoStudyConfig()
    space = SearchSpace().for_task(task)
    examples = task.examples(config.split)[: config.limit]
    study = DemoStudy(task.name, model.name, config.split, len(examples), task.metric, dict(config.__dict__))
    scored: dict[str, DemoCell] = {}  # a prompt's key -> the cell that scored it
    caches = Caches()  # the similar pool's embeddings, kept while a seed's pool is scored at several k
    started = time.perf_counter()
    grid = [(s, k, seed) for s in config.selections for seed in config.seeds for k in config.k]
    for selection, k, seed in tqdm(grid, desc=f"demos {task.name}", unit="cell", disable=not progress):
        prompt = prompt_for(Choice(k=k, selection=selection, order=config.order), space, task, seed=seed)
        key = _prompt_key(prompt)
        if key in scored:  # k=0 of every selection, or a seed that draws the same demonstrations
            first = scored[key]
            study.cells.append(DemoCell(selection, k, seed, first.value, first.seconds,
                                        same_as=first.same_as or f"{first.selection} k={first.k} seed {first.seed}",
                                        note=first.note))
            continue
        cell = _score(model, prompt, examples, task.metric, caches, (selection, k, seed))
        scored[key] = cell
        study.cells.append(cell)
    study.cells.sort(key=lambda c: (config.selections.index(c.selection), config.k.index(c.k),
                                    config.seeds.index(c.seed)))
    study.seconds = time.perf_counter() - started
    return study


def _score(model: LanguageModel, prompt: Prompt, examples: list, metric: str, caches: Caches,
           where: tuple[str, int, int]) -> DemoCell:
    started = time.perf_counter()
    try:
        value = evaluate(model, prompt, examples, metric=metric, caches=caches).metrics[metric]
    except InputTooLong as exc:  # more demonstrations than the model's context holds: a note, not the end
        return DemoCell(*where, value=None, seconds=0.0, note=f"does not fit the model's context ({exc})")
    return DemoCell(*where, value=float(value), seconds=round(time.perf_counter() - started, 2))


def _prompt_key(prompt: Prompt) -> str:
    """What makes two cells the same prompt (within one study: the same template and verbalizer)."""
    demos = [[d.fields, d.answer] for d in prompt.demonstrations]
    text = json.dumps([demos, prompt.demo_k, prompt.demo_per_label], sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
