"""compare_methods(): prompt or fine-tune? Each method at each train size and seed, one optimize() run per
cell on the same model, and one report (``autoprompt compare-methods``; the report in compare_report.py).

Train sizes are examples per class for a label task (a seeded, class-balanced sample of train; ``all``: all
of train) and examples in all for any other task. Below ``all``, dev is a seeded sample of the task's dev the
same size as train (as LM-BFF does: a few-shot row chooses on a few-shot dev); at ``all``, the task's dev. Test
is always the task's whole test split. The samples depend on (size, seed) only, so every method sees the same
train and dev for a given (size, seed). A finished cell is appended to cells.jsonl at once, so Ctrl-C leaves
the finished cells and ``resume`` runs only the rest."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoprompt.compare_budget import BUDGET_RULE, DEFAULT_TOTAL_BUDGET, cell_budget
from autoprompt.compare_report import size_name, write_comparison
from autoprompt.errors import AutoPromptError
from autoprompt.files import read_json, read_jsonl, write_atomic
from autoprompt.models import DEFAULT_MODEL, LanguageModel, load_model
from autoprompt.optimizer import optimize
from autoprompt.runs import DEFAULT_RUNS_DIR, Run, invoked_command, split_results
from autoprompt.runs.folder import new_folder
from autoprompt.searches import METHODS, config_from, fields_of
from autoprompt.shared_scoring import shared_evaluations
from autoprompt.task import Example, Task, load_task

log = logging.getLogger(__name__)

FORMAT = "autoprompt.comparison/v1"
DEFAULT_METHODS = ("manual", "template", "trigger", "soft", "lora")
DEFAULT_SHOTS = (16, 64, 256, "all")
DEFAULT_SEEDS = (0, 1, 2)
# Each method's own result: optimize's 95% rule keeps the task's prompt whenever dev is too small to support a
# gain, and at 16 examples per class (a dev of 32) it kept it for every method, so the table compared nothing.
COMPARE_CONFIDENCE = 0.0

Size = int | str  # examples per class (label tasks) or in all; or "all"


@dataclass
class Comparison:
    """What compare_methods gives: the comparison folder, its settings, every cell and the summary."""

    folder: Path
    config: dict[str, Any]
    cells: list[dict[str, Any]]  # one per (method, size, seed): see _cell for the keys
    summary: dict[str, Any]  # method -> size -> mean and std over seeds; per size the best method
    files: dict[str, Path] = field(default_factory=dict)  # "json", "markdown", and "png" when drawn


def parse_list(value: str | Sequence | None, what: str, default: Sequence) -> list:
    """A comma-separated string (or a sequence) as a list; None: the default."""
    if value is None:
        return list(default)
    items = [p.strip() for p in value.split(",")] if isinstance(value, str) else list(value)
    items = [p for p in items if p != ""]
    if not items:
        raise AutoPromptError(f"{what}: give at least one, separated by commas")
    if len(set(map(str, items))) != len(items):
        raise AutoPromptError(f"{what} {_shown(value)}: a value is given twice")
    return items


def parse_methods(value: str | Sequence[str] | None) -> list[str]:
    methods = parse_list(value, "--methods", DEFAULT_METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise AutoPromptError(f"--methods: unknown method {unknown[0]!r}; methods are: {', '.join(METHODS)}")
    return methods


def parse_sizes(value: str | Sequence[Size] | None) -> list[Size]:
    """Train sizes, smallest first and ``all`` last: each a whole number >= 1, or ``all``."""
    sizes: list[Size] = []
    for item in parse_list(value, "--shots", DEFAULT_SHOTS):
        text = str(item).strip().lower()
        if text == "all":
            sizes.append("all")
        elif re.fullmatch(r"\d+", text) and int(text) >= 1 and not isinstance(item, (bool, float)):
            sizes.append(int(text))
        else:
            raise AutoPromptError(f"--shots: {item!r} is not a train size (a whole number >= 1, or all)")
    return sorted(sizes, key=lambda s: (s == "all", 0 if s == "all" else s))


def parse_seeds(value: str | Sequence[int] | None) -> list[int]:
    seeds = []
    for item in parse_list(value, "--seeds", DEFAULT_SEEDS):
        text = str(item).strip()
        if not re.fullmatch(r"\d+", text) or isinstance(item, (bool, float)):
            raise AutoPromptError(f"--seeds: {item!r} is not a seed (a whole number >= 0)")
        seeds.append(int(text))
    return seeds


def _shown(value: Any) -> str:
    return repr(value if isinstance(value, str) else ",".join(map(str, value)))


# --- the samples ------------------------------------------------------------------------------------------

def per_class(task: Task) -> bool:
    """Whether sizes count examples per class (a label task) rather than in all."""
    return task.verbalizer is not None


def check_sizes(task: Task, sizes: Sequence[Size]) -> None:
    """Every size below ``all`` fits the task: per class in train and dev (a label task), or in all."""
    if not task.splits.get("test"):
        raise AutoPromptError(f"{task.name}: a comparison reports on test; the task has no test split")
    for split in ("train", "dev"):
        if not task.splits.get(split):
            raise AutoPromptError(f"{task.name}: a comparison needs a {split} split")
    numbers = [s for s in sizes if s != "all"]
    examples = task.splits["train"]
    if numbers and per_class(task):
        counts = {label: sum(e.answer == label for e in examples) for label in task.labels}
        label, smallest = min(counts.items(), key=lambda kv: kv[1])
        if max(numbers) > smallest:
            raise AutoPromptError(f"--shots {max(numbers)}: train's smallest class, {label!r}, has {smallest} "
                                  "examples (a size is examples per class)")
    elif numbers and max(numbers) > len(examples):
        raise AutoPromptError(f"--shots {max(numbers)}: {task.name}'s train has {len(examples)} examples (for "
                              "a task without labels a size is examples in all)")
    if numbers and not dev_pool(task):
        raise AutoPromptError(f"{task.name}: every dev example is also in train; a comparison needs a dev of its own")


def sample_task(task: Task, size: Size, seed: int) -> Task:
    """The task with train and dev sampled for (size, seed): ``size`` examples per class (a label task) or in
    all, dev the same size as train or, where dev has fewer, all of it (from the dev examples that are not also
    in train); ``all``: the task itself. Test is the task's."""
    if size == "all":
        return task
    train = _sample(task.splits["train"], size, task, random.Random(f"autoprompt.compare/{size}/{seed}/train"))
    dev = _sample(dev_pool(task), size, task, random.Random(f"autoprompt.compare/{size}/{seed}/dev"), cap=True)
    generation = task.generation  # (its default answer length is read from every split: keep the task's)
    return dataclasses.replace(task, splits={"train": train, "dev": dev, "test": task.splits["test"]},
                               max_new_tokens=generation.max_new_tokens if generation else task.max_new_tokens)


def dev_pool(task: Task) -> list[Example]:
    """The dev examples a sample is drawn from: those not also in train (the same input and answer)."""
    seen = {_key(e) for e in task.splits["train"]}
    return [e for e in task.splits["dev"] if _key(e) not in seen]


def _sample(examples: list[Example], size: int, task: Task, rng: random.Random, *, cap: bool = False
            ) -> list[Example]:
    """``size`` examples per class or in all; ``cap``: as many as the smallest class has, if that is fewer."""
    groups = [list(range(len(examples)))] if not per_class(task) else \
        [[i for i, e in enumerate(examples) if e.answer == label] for label in task.labels]
    if cap:
        size = min(size, *(len(group) for group in groups if group))
    if any(len(group) < size for group in groups):
        unit = "per class" if per_class(task) else "in all"
        raise AutoPromptError(f"{task.name}: too few examples to draw {size} {unit} for a comparison")
    chosen = sorted(i for group in groups for i in rng.sample(group, size))
    return [examples[i] for i in chosen]


def _key(example: Example) -> tuple:
    return tuple(sorted(example.fields.items())), example.answer


# --- the comparison ---------------------------------------------------------------------------------------

def compare_methods(task: Task | str | os.PathLike, model: LanguageModel | str = DEFAULT_MODEL, *,
                    methods: str | Sequence[str] | None = None, shots: str | Sequence[Size] | None = None,
                    seeds: str | Sequence[int] | None = None, time_budget: float | None = None,
                    total_budget: float | None = None, confidence: float = COMPARE_CONFIDENCE,
                    runs_dir: str | os.PathLike = DEFAULT_RUNS_DIR, resume: str | os.PathLike | None = None,
                    settings: dict[str, dict[str, Any]] | None = None, progress: bool = True) -> Comparison:
    """Run every method (default: manual, template, trigger, soft, lora) at every train size (``shots``:
    per class for a label task, else in all; ``all``; default 16, 64, 256, all) with every seed (default 0, 1,
    2), one optimize() run each in ``<runs_dir>/<timestamp>-<task>-compare/runs/``, and write cells.jsonl,
    comparison.json, comparison.md and comparison.png there. ``time_budget``: seconds per run; else
    ``total_budget`` (default 7200) for the whole comparison, shared as it goes (compare_budget.py).
    ``settings``: a method's own settings (``{"soft": {"epochs": 2}}``; default: the method's defaults).
    ``resume``: a comparison folder to finish with its saved settings (those given again must agree)."""
    task = task if isinstance(task, Task) else load_task(task)
    given = {"methods": methods, "sizes": shots, "seeds": seeds, "time_budget": time_budget,
             "total_budget": total_budget, "settings": settings}
    if resume is not None:
        folder, config = _reopen(Path(resume), task, model if isinstance(model, str) else model.name, given)
        model = model if isinstance(model, LanguageModel) else load_model(model)
    else:
        config = plan(task, given, confidence)  # (bad input fails before the model loads)
        model = model if isinstance(model, LanguageModel) else load_model(model)
        _check_methods(task, model, config)
        folder = new_folder(Path(runs_dir), task.name, "compare")
        config |= {"model": model.name, "model_source": model.source, "command": invoked_command(),
                   "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}
    write_atomic(folder / "comparison.json", _dumps({"format": FORMAT, "state": "running", "config": config,
                                                     "cells": read_cells(folder), "summary": {}}))
    try:
        with shared_evaluations(search_budgets=True):  # the task's prompt on test scored once; budgets for searching
            _run_cells(folder, config, task, model, progress)
    except BaseException as exc:
        state = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        write_atomic(folder / "comparison.json", _dumps({"format": FORMAT, "state": state, "config": config,
                                                         "cells": read_cells(folder), "summary": {}}))
        log.warning("comparison %s; its finished cells are in %s (continue with --resume %s)", state,
                    folder / "cells.jsonl", folder)
        raise
    cells = read_cells(folder)
    summary, files = write_comparison(folder, config, cells, FORMAT)
    return Comparison(folder, config, cells, summary, files)


def plan(task: Task, given: dict[str, Any], confidence: float) -> dict[str, Any]:
    """The comparison's settings, every one checked (nothing is written before)."""
    methods, sizes, seeds = parse_methods(given["methods"]), parse_sizes(given["sizes"]), parse_seeds(given["seeds"])
    check_sizes(task, sizes)
    settings = given["settings"] or {}
    for method, values in settings.items():
        if method not in methods:
            raise AutoPromptError(f"settings for {method!r}, which is not one of the methods compared")
        unknown = sorted(set(values) - set(fields_of(METHODS[method].config)))
        if unknown:
            raise AutoPromptError(f"method {method} has no setting {', '.join(unknown)}")
    per_run, total = given["time_budget"], given["total_budget"]
    if per_run is not None and total is not None:
        raise AutoPromptError("give --time-budget (per run) or --total-budget (for all runs), not both")
    for name, value in (("--time-budget", per_run), ("--total-budget", total)):
        if value is not None and not value > 0:
            raise AutoPromptError(f"{name} must be positive, not {value}")
    total = DEFAULT_TOTAL_BUDGET if per_run is None and total is None else total
    return {"task": task.name, "task_source": task.source, "metric": task.metric, "methods": methods,
            "sizes": sizes, "unit": "examples per class" if per_class(task) else "examples", "seeds": seeds,
            "labels": task.labels or None, "time_budget": per_run, "total_budget": total, "budget_rule": BUDGET_RULE,
            "confidence": confidence, "settings": settings,
            "splits": {split: len(task.splits.get(split) or []) for split in ("train", "dev", "test")}}


def _check_methods(task: Task, model: LanguageModel, config: dict[str, Any]) -> None:
    """A method that cannot run on this task and model (a template it cannot read) fails before any cell."""
    for method in config["methods"]:
        spec = METHODS[method]
        method_config = config_from(spec.config, config["settings"].get(method, {}))
        spec.check_settings(task, method_config)
        spec.check(task, model, method_config)


def _reopen(folder: Path, task: Task, model_name: str, given: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """A comparison folder to finish and its settings; settings given again must be the saved ones."""
    if not (folder / "comparison.json").is_file():
        raise AutoPromptError(f"{folder}: not a comparison folder (no comparison.json)")
    saved = read_json(folder / "comparison.json")
    config = saved.get("config") if isinstance(saved, dict) and saved.get("format") == FORMAT else None
    if not isinstance(config, dict):
        raise AutoPromptError(f"{folder / 'comparison.json'}: not {FORMAT}")
    if config.get("task") != task.name or config.get("model") not in (model_name, config.get("model_source")):
        raise AutoPromptError(f"{folder}: was a comparison of {config.get('task')} on {config.get('model')}, not "
                              f"{task.name} on {model_name}")
    splits = {split: len(task.splits.get(split) or []) for split in ("train", "dev", "test")}
    if splits != config.get("splits"):
        raise AutoPromptError(f"{folder}: its task had {config.get('splits')} examples per split; {task.name} now has "
                              f"{splits} (the samples would not be the same)")
    parsers = {"methods": parse_methods, "sizes": parse_sizes, "seeds": parse_seeds}
    for name, value in given.items():
        if value is not None and (parsers[name](value) if name in parsers else value) != config.get(name):
            flag = {"sizes": "shots"}.get(name, name).replace("_", "-")
            raise AutoPromptError(f"--resume {folder} finishes the comparison with the settings it was started with; "
                                  f"its {flag} cannot change")
    check_sizes(task, config["sizes"])
    return folder, config


def cells_to_run(config: dict[str, Any]) -> list[tuple[str, Size, int]]:
    """Every (method, size, seed), smallest size first; at a size, seed by seed, every method."""
    return [(method, size, seed) for size in config["sizes"] for seed in config["seeds"] for method in config["methods"]]


def _run_cells(folder: Path, config: dict[str, Any], task: Task, model: LanguageModel, progress: bool) -> None:
    todo = cells_to_run(config)
    done = {(c["method"], c["size"], c["seed"]) for c in read_cells(folder)}
    if done:
        log.info("%d of %d cells are done; running the other %d", len(done & set(todo)), len(todo),
                 len(set(todo) - done))
    samples: dict[tuple[Size, int], Task] = {}
    for n, (method, size, seed) in enumerate(todo, 1):
        if (method, size, seed) in done:
            continue
        if (size, seed) not in samples:
            samples = {(size, seed): sample_task(task, size, seed)}  # (one sample in memory at a time)
        sub = samples[size, seed]
        left = [c for c in todo[n - 1:] if c not in done]
        budget = cell_budget(config, read_cells(folder), left, method, size)
        log.info("cell %d/%d: %s, %s, seed %d%s", n, len(todo), method, size_text(size, config, sub), seed,
                 "" if budget is None else f", {budget:.0f} s")
        cell = run_cell(folder, config, sub, model, method, size, seed, budget, progress)
        append_cell(folder, cell)
        log.info("cell %d/%d: test %s %s (%.0f s)", n, len(todo), config["metric"], _value(cell["test"]),
                 cell["seconds"])


def size_text(size: Size, config: dict[str, Any], sub: Task | None = None) -> str:
    """``16 shots`` (per class), ``16 examples`` (in all), ``all of train`` (and how many, when known)."""
    if size == "all":
        return "all of train" + (f" ({len(sub.splits['train'])} examples)" if sub is not None else "")
    return size_name(size, config["unit"])


def run_cell(folder: Path, config: dict[str, Any], sub: Task, model: LanguageModel, method: str, size: Size,
             seed: int, budget: float | None, progress: bool) -> dict[str, Any]:
    """One optimize() run on the sampled task with ``budget`` seconds, and what the comparison keeps of it."""
    started = time.perf_counter()
    result = optimize(sub, model, method=method, seed=seed, time_budget=budget, confidence=config["confidence"],
                      holdout=0, runs_dir=folder / "runs", progress=progress,  # (every cell is judged on test)
                      **config["settings"].get(method, {}))
    seconds = time.perf_counter() - started
    return {**_cell(Run(result.run_dir), folder, config["metric"], method, size, seed, seconds, sub),
            "time_budget": budget}


def _cell(run: Run, folder: Path, metric: str, method: str, size: Size, seed: int, seconds: float,
          sub: Task) -> dict[str, Any]:
    """A cell from its run folder: the delivered prompt's test and dev metric (test's 95% bootstrap interval,
    as its report has it), what the method trains, what the run delivers, and how long it took."""
    result = run.result()
    test = next((r for r in split_results(run) if r.split == "test"), None)
    prompt_file = json.loads(run.best_prompt_path.read_text(encoding="utf-8"))
    adapter = prompt_file.get("adapter")
    artifact = run.best_prompt_path.stat().st_size
    if adapter:
        artifact += (run.path / adapter["file"]).stat().st_size
    return {"method": method, "size": size, "seed": seed,
            "examples": {split: len(sub.splits[split]) for split in ("train", "dev", "test")},
            "run": str(run.path.relative_to(folder)), "metric": metric,
            "test": result["metrics"]["test"][metric], "test_interval": list(test.interval) if test and test.interval
            else None, "dev": result["metrics"]["dev"][metric], "baseline_test": result["baseline"]["test"][metric],
            "kept_baseline": result.get("kept_baseline"), "seconds": round(seconds, 2),
            "trainable_parameters": int(result.get("trainable_parameters") or 0),
            "triggers": None if adapter else _triggers(run, prompt_file),
            "artifact_bytes": artifact, "adapter": adapter["kind"] if adapter else None}


def _triggers(run: Run, prompt_file: dict[str, Any]) -> int:
    """The trigger tokens the run's prompt has, or else (the task's prompt kept) those its search logged last."""
    searched = [e["triggers"] for e in run.events() if isinstance(e.get("triggers"), list)]
    return len(prompt_file.get("triggers") or []) or (len(searched[-1]) if searched else 0)


def read_cells(folder: Path) -> list[dict[str, Any]]:
    """The finished cells of a comparison folder, in the order they finished (a torn last line: ignored)."""
    return read_jsonl(folder / "cells.jsonl")


def append_cell(folder: Path, cell: dict[str, Any]) -> None:
    """Add a finished cell: cells.jsonl rewritten atomically with it (a reader sees all lines or the old ones)."""
    cells = [*read_cells(folder), cell]
    write_atomic(folder / "cells.jsonl", "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in cells))


def _dumps(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _value(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"
