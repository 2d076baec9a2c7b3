"""Tasks: labelled examples, the manual template, the verbalizer and the metric.

A task is defined by a Python file (``tasks/sst2.py``) that builds a module-level
``task = Task(...)``; its examples come from JSONL, CSV or TSV files via ``read_examples``.
"""

from __future__ import annotations

import logging
import os
import runpy
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from autoprompt.answers import DEFAULT_NORMALIZE, JUDGES, NORMALIZE_STEPS, Generation
from autoprompt.data import Example, read_examples, verbalizer_overlap
from autoprompt.errors import AutoPromptError, TaskError, TemplateError
from autoprompt.template import template_fields

__all__ = ["BUILTIN_TASKS", "METRICS", "SPLITS", "Example", "Task", "load_task", "read_examples"]

logger = logging.getLogger(__name__)

MAX_NEW_TOKENS = 64  # the most a generated answer is given by default

SPLITS = ("train", "dev", "test")
LABEL_METRICS = ("accuracy", "macro_f1")
FIRST_TOKEN_METRICS = ("precision@1",)
GENERATION_METRICS = tuple(JUDGES)  # generated answers: exact_match, token_f1, contains (or your own function)
METRICS = (*LABEL_METRICS, *FIRST_TOKEN_METRICS, *GENERATION_METRICS)
# the built-in tasks: tasks/ of the repository, installed as autoprompt.builtin_tasks
BUILTIN_TASKS_DIR = Path(str(files("autoprompt.builtin_tasks")))
BUILTIN_TASKS = tuple(sorted(p.stem for p in BUILTIN_TASKS_DIR.glob("*.py")
                             if not p.name.startswith("_") and p.stem != "make_data"))


@dataclass
class Task:
    """Examples per split, the manual template, the verbalizer (None: free-form answers) and the metric.

    Three kinds: labels (a verbalizer; accuracy, macro_f1), free-form answers judged by their first token
    (precision@1, LAMA-style), and generated answers (exact_match, token_f1, contains, or a function
    ``(prediction, answers) -> float`` of your own): the model generates up to ``max_new_tokens`` (default:
    the longest train answer's characters, plus 2), stopping at a newline or one of ``stop``, and answers
    are compared after ``normalize`` (strip, whitespace, case, punctuation, articles)."""

    name: str
    template: str
    splits: dict[str, list[Example]]
    verbalizer: dict[str, list[str]] | None = None
    metric: str | Callable[[str, list[str]], float] = "accuracy"
    source: str = ""
    description: str = ""
    normalize: tuple[str, ...] = DEFAULT_NORMALIZE
    stop: tuple[str, ...] = ()
    max_new_tokens: int | None = None
    metric_fn: Callable[[str, list[str]], float] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if callable(self.metric):  # your own metric: known by its name from here on
            self.metric_fn, self.metric = self.metric, getattr(self.metric, "__name__", "custom")

    @property
    def is_classification(self) -> bool:
        return self.verbalizer is not None

    @property
    def is_generation(self) -> bool:
        return self.verbalizer is None and (self.metric in GENERATION_METRICS or self.metric_fn is not None)

    @property
    def generation(self) -> Generation | None:
        """How answers are generated and compared (None unless the task's answers are generated)."""
        if not self.is_generation:
            return None
        longest = max((len(g) for examples in self.splits.values() for e in examples for g in e.golds), default=8)
        return Generation(self.max_new_tokens or min(MAX_NEW_TOKENS, longest + 2), tuple(self.stop),
                          tuple(self.normalize), self.metric_fn)

    @property
    def labels(self) -> list[str]:
        return list(self.verbalizer) if self.verbalizer is not None else []

    @property
    def fields(self) -> list[str]:
        for split in _ordered_splits(self.splits):
            if self.splits[split]:
                return list(self.splits[split][0].fields)
        return []

    def examples(self, split: str) -> list[Example]:
        """The examples of one split; TaskError if the task has no such split."""
        if split not in self.splits:
            available = ", ".join(_ordered_splits(self.splits)) or "none"
            raise TaskError(
                f"task '{self.name}' has no split '{split}'; splits are: {available}"
            )
        return self.splits[split]

    def validate(self) -> None:
        """Raise TaskError if the splits, data, template fields or verbalizer do not fit together."""
        where = self.source or f"task '{self.name}'"
        _check_types(self, where)
        if not self.splits:
            raise TaskError(
                f"{where}: the task has no splits; give some of: {', '.join(SPLITS)}"
            )
        for split, examples in self.splits.items():
            if split not in SPLITS:
                raise TaskError(
                    f"{where}: unknown split '{split}'; splits are: {', '.join(SPLITS)}"
                )
            if not examples:
                raise TaskError(f"{where}: split '{split}' has no examples")
        if self.metric not in METRICS and self.metric_fn is None:
            raise TaskError(
                f"{where}: unknown metric '{self.metric}'; metrics are: {', '.join(METRICS)}, "
                "or a function (prediction, answers) -> float"
            )
        if self.is_generation or self.metric in GENERATION_METRICS:
            _check_generation(self, where)
        if self.verbalizer is not None:
            _check_verbalizer(self.verbalizer, where)
        try:
            needed = template_fields(self.template)
        except TemplateError as exc:
            raise TemplateError(f"{where}: {exc}") from None
        for split in _ordered_splits(self.splits):
            for example in self.splits[split]:
                self._check_example(example, needed, where)
        for split in ("train", "dev"):  # one label: any prompt that always says it looks perfect
            labels = {e.answer for e in self.splits.get(split, [])}
            if self.verbalizer is not None and len(labels) == 1:
                raise TaskError(f"{where}: split '{split}' has only label '{labels.pop()}'; a classification "
                                "task needs examples of at least two labels to train and choose prompts on")

    def _check_example(self, example: Example, needed: list[str], where: str) -> None:
        for name in needed:
            if name not in example.fields:
                raise TaskError(
                    f"{where}: template field {{{name}}} is not in the data ({example.source}); "
                    f"fields are: {', '.join(sorted(example.fields)) or 'none'}"
                )
        if self.verbalizer is not None:
            if example.answer not in self.verbalizer:
                label = (
                    "no label"
                    if example.answer is None
                    else f"label '{example.answer}'"
                )
                raise TaskError(
                    f"{example.source}: {label} is not in the verbalizer; "
                    f"labels are: {', '.join(self.verbalizer)}"
                )
        elif not example.answer or not all(g.strip() for g in example.golds):
            raise TaskError(f"{example.source}: free-form example has no target text (an answer is empty)")


def _check_generation(task: Task, where: str) -> None:
    if task.verbalizer is not None:
        raise TaskError(f"{where}: metric {task.metric} judges generated answers; a task with a verbalizer has labels "
                        f"(metrics {', '.join(LABEL_METRICS)})")
    if any(not isinstance(s, str) or not s for s in task.stop):
        raise TaskError(f"{where}: a stop string is empty (stop: {list(task.stop)!r}); generation would stop at once")
    unknown = [step for step in task.normalize if step not in NORMALIZE_STEPS]
    if unknown:
        raise TaskError(f"{where}: unknown normalize step(s) {', '.join(map(str, unknown))}; steps are: "
                        f"{', '.join(NORMALIZE_STEPS)}")
    if task.max_new_tokens is not None and (not isinstance(task.max_new_tokens, int) or task.max_new_tokens < 1):
        raise TaskError(f"{where}: max_new_tokens must be a whole number >= 1, not {task.max_new_tokens!r}")


def _check_types(task: Task, where: str) -> None:
    """A task file can build a Task from anything: say which field has the wrong type."""
    for name in ("name", "template", "metric"):
        value = getattr(task, name)
        if not isinstance(value, str):
            raise TaskError(f"{where}: the task's {name} must be a string, not {type(value).__name__}")
    if task.verbalizer is not None and not isinstance(task.verbalizer, dict):
        raise TaskError(f"{where}: the verbalizer must be a dict of label -> list of words, "
                        f"not {type(task.verbalizer).__name__}")
    if not isinstance(task.splits, dict):
        raise TaskError(f"{where}: splits must be a dict of split name -> examples, not {type(task.splits).__name__}")
    for split, examples in task.splits.items():
        if not isinstance(examples, list):
            raise TaskError(f"{where}: split '{split}' must be a list of Example (from read_examples), "
                            f"not {type(examples).__name__}")
        wrong = next((e for e in examples if not isinstance(e, Example)), None)
        if wrong is not None:
            raise TaskError(f"{where}: split '{split}' must be a list of Example (from read_examples); "
                            f"it holds a {type(wrong).__name__}")


def _ordered_splits(splits: dict[str, list[Example]]) -> list[str]:
    return sorted(
        splits, key=lambda s: (SPLITS.index(s) if s in SPLITS else len(SPLITS), s)
    )


def _check_verbalizer(verbalizer: dict[str, list[str]], where: str) -> None:
    if not verbalizer:
        raise TaskError(
            f"{where}: the verbalizer has no labels (use None for a free-form task)"
        )
    for label, words in verbalizer.items():
        if isinstance(words, str) or not words:
            raise TaskError(
                f"{where}: verbalizer label '{label}' needs a list of one or more words"
            )
        if any(not isinstance(word, str) or not word.strip() for word in words):
            raise TaskError(
                f"{where}: verbalizer label '{label}' has an empty word: {words!r}"
            )
    problem = verbalizer_overlap(verbalizer)
    if problem:
        raise TaskError(f"{where}: {problem}")


# ---------------------------------------------------------------------------------------------
# Loading task files


def load_task(spec: str | os.PathLike) -> Task:
    """The validated Task defined by a task file (path to a .py file) or a built-in task name."""
    path = Path(spec)
    if path.is_file():
        if path.suffix != ".py":
            raise TaskError(
                f"{spec}: a task file is a Python file (.py) that defines `task`; a data file is .csv, .tsv or "
                ".jsonl (with --input and --label)"
            )
        return _load_task_file(path)
    if path.suffix == ".py":
        raise TaskError(f"{spec}: no such file")
    name = str(spec)
    if name in BUILTIN_TASKS:
        return _load_task_file(BUILTIN_TASKS_DIR / f"{name}.py")
    raise TaskError(
        f"unknown task '{name}': not a file, and built-in tasks are: {', '.join(BUILTIN_TASKS)}"
    )


def _load_task_file(path: Path) -> Task:
    try:
        namespace = runpy.run_path(str(path), run_name="__autoprompt_task__")
    except AutoPromptError:
        raise
    except SyntaxError as error:
        raise TaskError(f"{path}:{error.lineno}: SyntaxError: {error.msg}") from error
    except SystemExit as error:  # exit() in a task file must not end the command with its code
        raise TaskError(f"{path}:{_error_line(error, path)}: the task file called exit({error.code!r})") from None
    except Exception as error:
        raise TaskError(
            f"{path}:{_error_line(error, path)}: {type(error).__name__}: {error}"
        ) from error
    task = namespace.get("task")
    if task is None:
        raise TaskError(f"{path}: defines no `task` (a Task)")
    if not isinstance(task, Task):
        raise TaskError(f"{path}: `task` must be a Task, not {type(task).__name__}")
    if not task.source:
        task.source = str(path)
    task.validate()
    logger.debug("loaded task %s from %s", task.name, path)
    return task


def _error_line(error: BaseException, path: Path) -> int | str:
    """The line of the task file where the error happened (its innermost frame in that file)."""
    target = path.resolve()
    line: int | str = "?"
    for frame in traceback.extract_tb(error.__traceback__):
        if frame.lineno is not None and Path(frame.filename).resolve() == target:
            line = frame.lineno
    return line
