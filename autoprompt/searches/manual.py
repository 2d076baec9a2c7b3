"""The task's own prompt, as a method: nothing is searched, but the run is like any other (its
prompt file, its scores on dev, test and a train sample, its report). The baseline of every table."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from autoprompt.prompt import Prompt
from autoprompt.searches.base import Context, Found, Method, final_split_examples


@dataclass
class ManualConfig:
    """The manual prompt has no settings."""

    section: ClassVar[str] = "manual"  # its key in config.json


def search(ctx: Context, cfg: ManualConfig) -> Found:
    return Found(replace(Prompt.from_task(ctx.task), model=ctx.model.ref))


METHOD = Method("manual", ManualConfig, search, best_so_far=search,
                final_examples=lambda task, cfg: 2 * final_split_examples(task),
                help="the task's own prompt, scored like a search's (a baseline run)")
