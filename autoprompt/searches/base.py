"""What every search method is: a config dataclass, a search function that runs in a run (and
resumes it), and a way to say what it found so far when it is interrupted. A method is one
module of this package and one line in its registry (``autoprompt.searches.METHODS``)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autoprompt.budget import Budget
from autoprompt.untouched import DEFAULT_HOLDOUT, RUN_SPLITS

if TYPE_CHECKING:
    from autoprompt.models import LanguageModel
    from autoprompt.prompt import Prompt
    from autoprompt.runs import Run
    from autoprompt.scoring import Evaluation
    from autoprompt.task import Task

log = logging.getLogger(__name__)

TRAIN_SAMPLE = 500  # train examples a run's final report scores both prompts on: enough to see overfitting


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A config field with its help text (the CLI's --help and README come from it) and CLI hints:
    ``choices``, ``min``, ``share`` (a fraction in [0, 1)), ``envvar``."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class RunSettings:
    """Settings of a run, whatever its method."""

    seed: int = opt(0, "Seed of every random choice; same seed, same run on the same machine.", min=0)
    time_budget: float | None = opt(None, "Seconds for the whole run (10m, 1h): the search stops early enough "
                                    "to leave time for the scoring after it.")
    confidence: float = opt(0.95, "The found prompt replaces the task's own only when its gain on dev is above zero "
                            "with this confidence (paired bootstrap; 0: any gain).", share=True)
    holdout: float = opt(DEFAULT_HOLDOUT, "Share of dev the search never sees: both prompts are scored on it after the choice, "
                         "beside dev, so the optimism of choosing on dev shows before test (0: none).", share=True)


@dataclass
class Context:
    """What a search gets from the run that owns it."""

    task: Task
    model: LanguageModel
    run: Run
    seed: int = 0
    budget: Budget = field(default_factory=lambda: Budget(None))
    progress: bool = True
    resume: bool = False  # continue what the run folder holds
    verdict: dict[str, Any] | None = None  # the found prompt against the baseline on dev (optimize's, after the search)


@dataclass
class Found:
    """What a search hands back: the prompt, its dev evaluation when the search scored all of dev
    with it (the final scoring keeps it), what goes into the prompt file's "search" and result.json,
    and the work done (what ``runs list`` shows: {"steps": 20}, {"trials": 40})."""

    prompt: Prompt
    dev: Evaluation | None = None
    info: dict[str, Any] = field(default_factory=dict)
    work: dict[str, int] = field(default_factory=dict)
    dev_metrics: dict[str, float] | None = None  # known without its evaluation (a checkpoint's)


@dataclass(frozen=True)
class Method:
    """One search method of the registry."""

    name: str
    config: type  # its settings, a dataclass (fields made with ``opt``)
    search: Callable[[Context, Any], Found]  # runs (or resumes) the search in ctx.run
    best_so_far: Callable[[Context, Any], Found | None]  # after an interruption, from the run folder alone
    final_examples: Callable[[Task, Any], int]  # what the run scores after the search (for the budget)
    help: str = ""
    has_study: bool = False  # keeps an Optuna study (autoprompt dashboard)
    # bad settings fail before anything is made: before the model loads (settings alone), and with the
    # model before a run folder exists
    check_settings: Callable[[Task, Any], None] = lambda task, config: None
    check: Callable[[Task, LanguageModel, Any], None] = lambda task, model, config: None
    check_resume: Callable[[Context, Any], None] = lambda ctx, config: None  # a run folder it cannot resume
    label_search: bool = False  # takes --search-labels (label words searched first)


def fields_of(config: type) -> dict[str, dataclasses.Field]:
    """A config's settings by name, nested configs (the hybrid's) flattened."""
    out: dict[str, dataclasses.Field] = {}
    for f in dataclasses.fields(config):
        if _nested(f):
            out |= fields_of(f.default_factory)
        else:
            out[f.name] = f
    return out


def _nested(f: dataclasses.Field) -> bool:
    return isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory)


def config_from(config: type, values: dict[str, Any]) -> Any:
    """A config from flat settings (nested configs filled from the same names); names it does not
    know are dropped with a warning (a config from another version loads tolerantly)."""
    known = fields_of(config)
    unknown = sorted(set(values) - set(known))
    if unknown:
        log.warning("ignoring unknown config keys: %s", ", ".join(unknown))
    return _build(config, {k: v for k, v in values.items() if k in known})


def _build(config: type, values: dict[str, Any]) -> Any:
    kwargs = {}
    for f in dataclasses.fields(config):
        if _nested(f):
            kwargs[f.name] = _build(f.default_factory, values)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    return config(**kwargs)


def config_dict(config: Any) -> dict[str, Any]:
    """A config as flat settings (config_from reads them back)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out |= config_dict(value) if dataclasses.is_dataclass(value) else {f.name: value}
    return out


def config_sections(config: Any) -> dict[str, dict[str, Any]]:
    """A config as config.json keeps it: one section per config dataclass, named by its ``section``
    (the hybrid's two, side by side); Run.settings() reads them back flat."""
    nested = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if _nested(f)}
    if not nested:
        return {config.section: dataclasses.asdict(config)}
    return {name: values for value in nested.values() for name, values in config_sections(value).items()}


def final_split_examples(task: Task) -> int:
    """Examples one prompt is scored on at the end of a run: dev, its untouched slice, test and the train sample."""
    sizes = {split: len(task.splits.get(split) or []) for split in RUN_SPLITS}
    return sum(sizes.values()) - sizes["train"] + min(TRAIN_SAMPLE, sizes["train"])
