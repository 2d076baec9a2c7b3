"""optimize(): the one entry point for every search method (the CLI calls it too). It owns the
run: the folder, resuming, the time budget, the seed, the scoring of the found prompt and the
baseline at the end, the prompt file and the report; the method (autoprompt.searches) only searches."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from autoprompt.budget import Budget
from autoprompt.errors import AutoPromptError
from autoprompt.files import write_atomic
from autoprompt.models import DEFAULT_MODEL, LanguageModel, load_model
from autoprompt.predict import Predictor
from autoprompt.prompt import Prompt
from autoprompt.prompt_file import PromptFile, save_prompt_file
from autoprompt.redaction import redact
from autoprompt.runs import (
    DEFAULT_RUNS_DIR,
    PREDICTIONS_FORMAT,
    Run,
    invoked_command,
    seed_markdown,
    seed_summary,
    split_record,
    write_report,
)
from autoprompt.scoring import Caches, Evaluation, evaluate, render_template
from autoprompt.searches import METHODS, Context, Found, Method, config_dict, config_from
from autoprompt.searches.base import TRAIN_SAMPLE, config_sections, final_split_examples
from autoprompt.storage import use_storage_again
from autoprompt.task import Task, load_task

log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    """What a search gives: the best prompt, its metrics next to the baseline's, the run."""

    prompt: Prompt
    metrics: dict[str, dict[str, float]]  # split -> metric -> value, of the best prompt
    baseline: dict[str, dict[str, float]]  # the same for the task's manual prompt
    run_dir: Path
    prompt_file: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    train: dict[str, Any] | None = None  # a seeded sample of train: its size and both prompts' metrics
    report: Path | None = None  # report.md in the run folder


def optimize(task: Task | str | os.PathLike, model: LanguageModel | str = DEFAULT_MODEL, *, method: str = "trigger",
             config: Any = None, seed: int = 0, time_budget: float | None = None,
             runs_dir: str | os.PathLike = DEFAULT_RUNS_DIR, resume: str | os.PathLike | None = None,
             search_labels: bool = False, progress: bool = True) -> SearchResult:
    """Search a better prompt for ``task`` (a Task, a task file or a built-in name) on ``model`` (a loaded
    model, or an alias, folder, .gguf file or hub id) with ``method`` (autoprompt.searches.METHODS) and its
    ``config`` (default: the method's defaults), in a new run folder in ``runs_dir`` (or continue
    ``resume``, with its saved settings). ``search_labels``: first propose label words and search with the
    best one per label; the baseline stays the task's own prompt. On Ctrl-C (or SIGTERM through the CLI)
    the run is marked interrupted and its best prompt so far saved; ``resume`` goes on."""
    task = task if isinstance(task, Task) else load_task(task)
    model = model if isinstance(model, LanguageModel) else load_model(model)
    started = time.perf_counter()
    if resume is not None:
        run, method, config, seed, time_budget, searched_task = _reopen(resume, task, model, config)
    else:
        config = config if config is not None else METHODS[_known_method(method)].config()
        run, searched_task = _new_run(task, model, method, config, seed, time_budget, search_labels, runs_dir)
    spec = METHODS[method]
    ctx = Context(searched_task, model, run, seed, Budget(time_budget), progress, resume=resume is not None)
    ctx.budget.keep_for(spec.final_examples(searched_task, config))
    if ctx.resume:
        spec.check_resume(ctx, config)  # (a bad checkpoint fails before the run is marked running)
    log.info("run folder: %s", run.path)
    try:
        found = _search(ctx, spec, config)
    except KeyboardInterrupt:
        _interrupted(ctx, spec, config)
        raise
    metrics, baseline, train = _final_evaluations(model, found.prompt, Prompt.from_task(task), searched_task, run,
                                                  seed=seed, known={"dev": found.dev} if found.dev else None,
                                                  progress=progress)
    search = redact({"method": method, "run": run.name, "seed": seed, **found.info, "config": config_dict(config)})
    prompt_file = save_prompt_file(PromptFile(found.prompt, task_name=task.name, metric=task.metric, metrics=metrics,
                                              search=search), run.best_prompt_path)
    seconds = time.perf_counter() - started
    p = found.prompt
    run.write_json("result.json", {"state": "finished", "metric": task.metric, "metrics": metrics, "baseline": baseline,
                                   "train_sample": train, "work": found.work, **found.info,
                                   "template": p.template, "instruction": p.instruction,
                                   "triggers": list(p.trigger_tokens), "seconds": round(seconds, 1)})
    return SearchResult(found.prompt, metrics, baseline, run.path, prompt_file, run.events(), seconds, train,
                        write_report(run))


def _known_method(method: str) -> str:
    if method not in METHODS:
        raise AutoPromptError(f"unknown method {method!r}; methods are: {', '.join(METHODS)}")
    return method


def _new_run(task: Task, model: LanguageModel, method: str, config: Any, seed: int, time_budget: float | None,
             search_labels: bool, runs_dir) -> tuple[Run, Task]:
    """A new run folder, once the settings are known to work (a bad template or space fails before it)."""
    spec = METHODS[_known_method(method)]
    if search_labels and not spec.label_search:
        raise AutoPromptError(f"--method {method} does not use --search-labels (a setting of --method "
                              f"{' or '.join(m.name for m in METHODS.values() if m.label_search)})")
    if not isinstance(config, spec.config):
        raise AutoPromptError(f"--method {method} takes a {spec.config.__name__}, not a {type(config).__name__}")
    label_words = None
    if search_labels:
        from autoprompt.searches.labels import search_label_words

        label_words = search_label_words(model, task, seed=seed)
        task = dataclasses.replace(task, verbalizer=label_words.verbalizer(1))
    spec.check(task, model, config)
    sections = config_sections(config)
    run = Run.create(task.name, method, redact({  # no storage password
        "method": method, "task": task.name, "task_source": task.source, "model": model.name,
        "model_source": model.source, "command": invoked_command(), "device": str(model.device),
        "dtype": str(model.dtype).replace("torch.", ""), "seed": seed, "time_budget": time_budget,
        "sections": list(sections), **sections, "verbalizer": task.verbalizer, "search_labels": search_labels}),
        runs_dir=runs_dir)
    if label_words is not None:
        run.write_json("labels.json", {"words": label_words.words, "train_accuracy": label_words.train_accuracy})
    return run, task


def _reopen(resume, task: Task, model: LanguageModel, given: Any):
    """The run folder to continue, its method, settings, seed and budget, and the task as it searched it
    (its searched label words). ``given``: settings given again; only the storage URL is read from them."""
    run = Run.open(resume)
    saved = run.config()
    if saved.get("task") != task.name or saved.get("model") != model.name:
        raise AutoPromptError(f"{resume}: was a run of {saved.get('task')} on {saved.get('model')}, "
                              f"not {task.name} on {model.name}")
    method = _known_method(saved.get("method", "trigger"))
    config = config_from(METHODS[method].config, run.settings())
    storage = config_dict(given).get("storage") if given is not None else None
    if storage:  # the URL again, with the password the run folder does not keep
        use_storage_again(storage, run.settings().get("storage"), resume)
    if saved.get("verbalizer") is not None:
        task = dataclasses.replace(task, verbalizer=saved["verbalizer"])
    return run, method, config, run.seed() or 0, saved.get("time_budget"), task


def _search(ctx: Context, spec: Method, config: Any) -> Found:
    ctx.run.write_json("result.json", {"state": "running"})
    try:
        return spec.search(ctx, config)
    except Exception:
        ctx.run.write_json("result.json", {"state": "failed"})
        raise


def _interrupted(ctx: Context, spec: Method, config: Any) -> None:
    """Ctrl-C: the run is marked interrupted (first: a second Ctrl-C must not leave it "running"),
    then its best prompt so far, from what the run folder holds, becomes its prompt file."""
    run = ctx.run
    if run.result().get("state") == "finished":
        return
    run.write_json("result.json", {"state": "interrupted"})
    try:
        found = spec.best_so_far(ctx, config)
    except AutoPromptError as exc:  # e.g. the shared storage went away: the interruption still stands
        log.warning("interrupted; the best prompt so far could not be saved: %s", exc)
        return
    if found is None:
        log.warning("interrupted before a first prompt was scored; continue with --resume %s", run.path)
        return
    dev = found.dev.metrics if found.dev is not None else found.dev_metrics
    save_prompt_file(PromptFile(found.prompt, task_name=ctx.task.name, metric=ctx.task.metric,
                                metrics={"dev": dev} if dev else {},
                                search={"method": spec.name, "run": run.name, "interrupted": True, **found.info}),
                     run.best_prompt_path)
    log.warning("interrupted; best prompt so far: %s (continue with --resume %s)", run.best_prompt_path, run.path)


def optimize_seeds(task: Task, model: LanguageModel, seeds: list[int], *,
                   runs_dir: str | os.PathLike = DEFAULT_RUNS_DIR, **settings: Any) -> tuple[list[SearchResult], Path]:
    """The same search once per seed, one run folder each; then their mean ± std of the dev and test
    metric, written as <first run>-seeds.json and .md into ``runs_dir``. Returns the results and the json."""
    if not seeds:
        raise AutoPromptError("give at least one seed")
    results = [optimize(task, model, seed=seed, runs_dir=runs_dir, **settings) for seed in seeds]
    summary = seed_summary([Run(r.run_dir) for r in results])
    target = Path(runs_dir) / f"{results[0].run_dir.name}-seeds.json"
    write_atomic(target, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    write_atomic(target.with_suffix(".md"), seed_markdown(summary))
    return results, target


def _final_evaluations(model: LanguageModel, prompt: Prompt, baseline_prompt: Prompt, task: Task, run: Run, *,
                       seed: int, known: dict[str, Evaluation] | None = None, progress: bool = False):
    """The found prompt and the baseline scored on dev, test and a seeded sample of train, once
    each; their predictions go to predictions.json for the report. Returns the dev/test metrics
    of both and the train sample's. Test is only ever reported, never used to choose."""
    known, caches = known or {}, Caches()
    bar = tqdm(total=2 * final_split_examples(task) - sum(len(e.predictions) for e in known.values()),
               desc="scoring the found prompt and the baseline", unit="ex", disable=not progress)
    record = {"format": PREDICTIONS_FORMAT, "metric": task.metric, "labels": prompt.labels or None,
              "prompt_text": render_template(model, prompt), "baseline_text": render_template(model, baseline_prompt),
              "splits": {}}
    metrics, baseline, train = {}, {}, None
    for split in ("train", "dev", "test"):
        examples, indices = _split_sample(task, split, seed)
        if not examples:
            continue
        bar.set_postfix(split=split)
        found = known.get(split) or evaluate(model, prompt, examples, metric=task.metric, caches=caches)
        bar.update(0 if split in known else len(examples))
        base = evaluate(model, baseline_prompt, examples, metric=task.metric, caches=caches)
        bar.update(len(examples))
        record["splits"][split] = split_record(examples, found, base, of=len(task.splits[split]), indices=indices)
        if split == "train":
            train = {"examples": len(examples), "of": len(task.splits[split]), "metrics": found.metrics,
                     "baseline": base.metrics}
        else:
            metrics[split], baseline[split] = found.metrics, base.metrics
    bar.close()
    shown_split = "test" if task.splits.get("test") else "dev"
    example = task.examples(shown_split)[0]
    record["example"] = {"split": shown_split, "fields": example.fields, "answer": example.answer,
                         "rendered": Predictor(prompt, model).render(dict(example.fields))}
    run.write_json("predictions.json", record, compact=True)  # thousands of labels
    return metrics, baseline, train


def _split_sample(task: Task, split: str, seed: int):
    """A split's examples, train as a seeded sample of TRAIN_SAMPLE (with their indices)."""
    examples = task.splits.get(split) or []
    if split == "train" and len(examples) > TRAIN_SAMPLE:
        indices = sorted(random.Random(seed).sample(range(len(examples)), TRAIN_SAMPLE))
        return [examples[i] for i in indices], indices
    return examples, None
