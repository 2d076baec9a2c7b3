"""An untouched slice of dev: the selection's optimism, seen before test.

A search chooses its prompt on dev, so the chosen prompt's dev score is, if anything, optimistic: of
many prompts, the one that did best on these examples. optimize() keeps a share of dev (``holdout``)
away from the search: the search, its keep-baseline verdict and every choice see the rest; after the
choice both prompts are scored on the untouched slice, and the report sets the two side by side.
The slice is fixed by the task's dev alone (not by the run's seed), so that runs with different seeds
and methods are judged on the same examples; for a label task it keeps each label's share.
"""

from __future__ import annotations

import dataclasses
import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autoprompt.task import Task

DEFAULT_HOLDOUT = 0.2  # of dev, kept from the search
SPLIT = "untouched"
RUN_SPLITS = ("train", "dev", SPLIT, "test")  # what a run scores its prompts on at the end, in report order


def hold_out(task: Task, fraction: float) -> Task:
    """The task with ``fraction`` of its dev moved into the split "untouched" (each label's share of it,
    chosen by a fixed seed); unchanged when the fraction is 0 or would leave no example on either side."""
    dev = task.splits.get("dev") or []
    if fraction <= 0 or SPLIT in task.splits:
        return task
    groups: dict[str, list[int]] = {}
    for i, example in enumerate(dev):  # labels in the order they first appear; one group for free answers
        groups.setdefault(example.answer if task.is_classification else "", []).append(i)
    rng = random.Random(f"untouched-{len(dev)}")
    held: list[int] = []
    for indices in groups.values():
        held += rng.sample(indices, round(fraction * len(indices)))
    if not held or len(held) == len(dev):
        return task
    kept = set(held)
    splits = {**task.splits, "dev": [e for i, e in enumerate(dev) if i not in kept],
              SPLIT: [dev[i] for i in sorted(kept)]}
    return dataclasses.replace(task, splits=splits)
