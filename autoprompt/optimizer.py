"""optimize(): the one entry point for every search method (the CLI calls it too). It owns the
run: the folder, resuming, the time budget, the seed, the scoring of the found prompt and the
baseline at the end, the prompt file and the report; the method (autoprompt.searches) only searches."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from autoprompt.budget import Budget
from autoprompt.ensemble import Ensemble
from autoprompt.errors import AutoPromptError
from autoprompt.files import write_atomic
from autoprompt.models import DEFAULT_MODEL, LanguageModel, load_model
from autoprompt.predict import Predictor
from autoprompt.prompt import Prompt
from autoprompt.prompt_file import PromptFile, read_prompt_file, save_prompt_file
from autoprompt.redaction import redact
from autoprompt.runs import (
    DEFAULT_RUNS_DIR,
    PREDICTIONS_FORMAT,
    Run,
    invoked_command,
    seed_markdown,
    seed_summary,
    side,
    split_record,
    write_report,
)
from autoprompt.scoring import Caches, Evaluation, evaluate, render_template
from autoprompt.searches import METHODS, Context, Found, Method, config_dict, config_from, fields_of
from autoprompt.searches.base import config_sections
from autoprompt.selection import DEFAULT_CONFIDENCE, judge
from autoprompt.shared_scoring import budgeted_examples, evaluate_once, scored_splits, split_sample
from autoprompt.storage import use_storage_again
from autoprompt.task import Task, load_task
from autoprompt.untouched import DEFAULT_HOLDOUT, hold_out

log = logging.getLogger(__name__)

DEFAULT_METHOD = "template"  # the larger gains across tasks (README: which method when)


@dataclass
class SearchResult:
    """What a search gives: the best prompt, its metrics next to the baseline's, the run."""

    prompt: Prompt | Ensemble  # an ensemble when the search's best k prompts together won (template search)
    metrics: dict[str, dict[str, float]]  # split -> metric -> value, of the best prompt
    baseline: dict[str, dict[str, float]]  # the same for the task's manual prompt
    run_dir: Path | None  # None: optimize(runs_dir=None) kept nothing on disk
    prompt_file: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    train: dict[str, Any] | None = None  # a seeded sample of train: its size and both prompts' metrics
    report: Path | None = None  # report.md in the run folder
    predictor: Predictor | None = None  # the prompt bound to its model: .predict, .predict_proba, .render, .save
    kept_baseline: str | None = None  # why the task's own prompt was kept (the found one's gain was not supported)

    def predict(self, inputs):
        return self.predictor.predict(inputs)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the found prompt as a prompt file (what production loads with ``load_prompt``)."""
        return self.predictor.save(path)


def optimize(task: Task | str | os.PathLike, model: LanguageModel | str = DEFAULT_MODEL, *, method: str | None = None,
             config: Any = None, seed: int = 0, time_budget: float | None = None,
             confidence: float = DEFAULT_CONFIDENCE, holdout: float = DEFAULT_HOLDOUT,
             runs_dir: str | os.PathLike | None = DEFAULT_RUNS_DIR, resume: str | os.PathLike | None = None,
             search_labels: bool = False, progress: bool = True, **settings: Any) -> SearchResult:
    """Search a better prompt for ``task`` (a Task, a task file or a built-in name) on ``model`` (a loaded
    model, or an alias, folder, .gguf file or hub id) with ``method`` (autoprompt.searches.METHODS; default: the
    one ``config`` is for, else template), set by ``config`` (the method's config dataclass) or by its fields
    as keywords (``trials=20, space="sentiment"``).
    The run goes to a new folder in ``runs_dir`` (None: a temporary one, removed after; ``result.save(path)``
    writes the prompt file), or continues ``resume`` with its saved settings. The found prompt replaces the
    task's own only when its dev gain is above zero with ``confidence`` (0: any gain). ``holdout``: the share
    of dev the search never sees, scored after it as the split "untouched" (autoprompt.untouched). ``search_labels``:
    first propose label words and search with the best one per label (trigger search). On Ctrl-C (or SIGTERM
    through the CLI) the run is marked interrupted and its best prompt so far saved; ``resume`` goes on."""
    task = task if isinstance(task, Task) else load_task(task)
    model = model if isinstance(model, LanguageModel) else load_model(model)
    method = method or next((m.name for m in METHODS.values() if isinstance(config, m.config)), DEFAULT_METHOD)
    if runs_dir is None and resume is None:
        with tempfile.TemporaryDirectory(prefix="autoprompt-run-") as scratch:
            result = optimize(task, model, method=method, config=config, seed=seed, time_budget=time_budget,
                              confidence=confidence, holdout=holdout, runs_dir=scratch, search_labels=search_labels,
                              progress=progress, **settings)
        return dataclasses.replace(result, run_dir=None, prompt_file=None, report=None, history=[])
    started = time.perf_counter()
    if resume is not None:
        run, method, config, seed, (time_budget, confidence, holdout), searched_task = _reopen(resume, task, model, config)
    else:
        if not 0 <= holdout < 1:
            raise AutoPromptError(f"holdout {holdout}: the share of dev kept from the search is in [0, 1)")
        config = _config(method, config, settings)
        run, searched_task = _new_run(task, model, method, config, seed, (time_budget, confidence, holdout),
                                      search_labels, runs_dir)
    searched_task = hold_out(searched_task, holdout)
    spec = METHODS[method]
    ctx = Context(searched_task, model, run, seed, Budget(time_budget), progress, resume=resume is not None)
    baseline = dataclasses.replace(Prompt.from_task(dataclasses.replace(task, template=searched_task.template)),
                                   model=model.ref)  # (the template a resumed run was given)
    ctx.budget.keep_for(budgeted_examples(spec, config, model, baseline, searched_task, seed))
    if ctx.resume:
        spec.check_resume(ctx, config)  # (a bad checkpoint fails before the run is marked running)
    log.info("run folder: %s", run.path)
    try:
        found = _search(ctx, spec, config)
    except KeyboardInterrupt:
        _interrupted(ctx, spec, config)
        raise
    return _finish(ctx, method, config, found, baseline, confidence, started)


def _config(method: str, config: Any, settings: dict[str, Any]) -> Any:
    """The method's config: as given, or made from keyword settings (an unknown one is an error)."""
    spec = METHODS[_known_method(method)]
    if config is not None and settings:
        raise AutoPromptError("give the method's settings as config= or as keywords, not both")
    unknown = sorted(set(settings) - set(fields_of(spec.config)))
    if unknown:
        raise AutoPromptError(f"method {method} has no setting {', '.join(unknown)}; its settings: "
                              f"{', '.join(fields_of(spec.config))}")
    return config if config is not None else config_from(spec.config, settings)


def _finish(ctx: Context, method: str, config: Any, found: Found, baseline_prompt: Prompt, confidence: float,
            started: float) -> SearchResult:
    """Keep the found prompt or the baseline, score both at the end, write the prompt file and the result."""
    task, model, run = ctx.task, ctx.model, ctx.run
    known, kept = _judge(ctx, found, baseline_prompt, confidence)
    prompt = baseline_prompt if kept else found.prompt
    metrics, baseline, train = _final_evaluations(model, prompt, baseline_prompt, task, run, seed=ctx.seed,
                                                  known=known, progress=ctx.progress)
    info = {**found.info, **({"verdict": ctx.verdict} if ctx.verdict else {}), **({"kept_baseline": kept} if kept else {})}
    search = redact({"method": method, "run": run.name, "seed": ctx.seed, **info, "config": config_dict(config)})
    prompt_file = save_prompt_file(PromptFile(prompt, task_name=task.name, metric=task.metric, metrics=metrics,
                                              search=search), run.best_prompt_path)
    seconds = time.perf_counter() - started
    lead = prompt.best if isinstance(prompt, Ensemble) else prompt  # (an ensemble: its best member)
    run.write_json("result.json", {"state": "finished", "metric": task.metric, "metrics": metrics, "baseline": baseline,
                                   "train_sample": train, "work": found.work, **info,
                                   "template": lead.template, "instruction": lead.instruction,
                                   "triggers": list(lead.trigger_tokens), "seconds": round(seconds, 1)})
    return SearchResult(prompt, metrics, baseline, run.path, prompt_file, run.events(), seconds, train,
                        write_report(run), Predictor(prompt, model, info=read_prompt_file(prompt_file)), kept)


def _judge(ctx: Context, found: Found, baseline_prompt: Prompt, confidence: float):
    """Both prompts on dev (the found one's dev scores when the search kept them), and why the baseline is
    kept, if it is: the found prompt's gain on dev is not above zero with the asked confidence (selection.judge)."""
    dev, metric = ctx.task.examples("dev"), ctx.task.metric
    found_dev = found.dev or evaluate(ctx.model, found.prompt, dev, metric=metric)
    base_dev = evaluate_once(ctx.model, baseline_prompt, dev, metric, Caches())  # (a comparison: once a sample)
    known = {"dev": (found_dev, base_dev)}
    if not isinstance(found.prompt, Ensemble) and \
            render_template(ctx.model, found.prompt) == render_template(ctx.model, baseline_prompt) and \
            found.prompt.verbalizer == baseline_prompt.verbalizer and not found.prompt.calibration and \
            found.prompt.adapter is None:
        return known, None  # the search found the task's own prompt
    generated = found_dev.scores is not None and found_dev.target_log_probs is not None and \
        base_dev.target_log_probs is not None  # (generated answers: the likelihood is a second witness)
    verdict = judge(metric, [e.answer for e in dev], side(found_dev), side(base_dev), labels=ctx.task.labels or None,
                    confidence=confidence, seed=ctx.seed,
                    log_probs=(found_dev.target_log_probs, base_dev.target_log_probs) if generated else None)
    ctx.verdict = {"confidence": confidence, **verdict.as_dict(),  # (into result.json, the prompt file, the report)
                   "reason": verdict.reason(metric, confidence)}
    if verdict.keep_found:
        if verdict.by_likelihood:
            log.info("the found prompt is kept: %s", verdict.reason(metric, confidence))
        return known, None
    log.warning("%s", verdict.reason(metric, confidence))
    return {"dev": (base_dev, base_dev)}, verdict.reason(metric, confidence)


def _known_method(method: str) -> str:
    if method not in METHODS:
        raise AutoPromptError(f"unknown method {method!r}; methods are: {', '.join(METHODS)}")
    return method


def _new_run(task: Task, model: LanguageModel, method: str, config: Any, seed: int,
             run_settings: tuple[float | None, float, float], search_labels: bool, runs_dir) -> tuple[Run, Task]:
    """A new run folder, once the settings are known to work (a bad template or space fails before it).
    ``run_settings``: the time budget, the confidence and the holdout."""
    time_budget, confidence, holdout = run_settings
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
        "dtype": str(model.dtype).replace("torch.", ""), "template": task.template, "seed": seed,
        "time_budget": time_budget, "confidence": confidence, "holdout": holdout,
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
    if saved.get("template") not in (None, task.template):  # the run's --template
        task = dataclasses.replace(task, template=saved["template"])
    run_settings = (saved.get("time_budget"), saved.get("confidence", DEFAULT_CONFIDENCE),
                    saved.get("holdout", 0.0))  # (runs made before the untouched slice searched all of dev)
    return run, method, config, run.seed() or 0, run_settings, task


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
                       seed: int, known: dict[str, tuple[Evaluation, Evaluation]] | None = None,
                       progress: bool = False):
    """The found prompt and the baseline scored on dev, test and a seeded sample of train (not within a
    comparison: shared_scoring.py), once each (``known``: a split's (found, baseline) evaluations already made); their predictions go to
    predictions.json for the report. Returns the dev/test metrics of both and the train sample's.
    Test is only ever reported, never used to choose."""
    known, caches = known or {}, Caches()
    samples = {split: split_sample(task, split, seed) for split in scored_splits()}  # (examples, indices)
    bar = tqdm(total=sum(2 * len(samples[split][0]) for split in samples if split not in known),
               desc="scoring the found prompt and the baseline", unit="ex", disable=not progress)
    record = {"format": PREDICTIONS_FORMAT, "metric": task.metric, "labels": prompt.labels or None,
              "prompt_text": _prompt_text(model, prompt), "baseline_text": render_template(model, baseline_prompt),
              "splits": {}}
    metrics, baseline, train = {}, {}, None
    for split, (examples, indices) in samples.items():
        if not examples:
            continue
        bar.set_postfix(split=split)
        found, base = known.get(split) or (
            evaluate_once(model, prompt, examples, task.metric, caches),
            evaluate_once(model, baseline_prompt, examples, task.metric, caches))
        bar.update(0 if split in known else 2 * len(examples))
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


def _prompt_text(model: LanguageModel, prompt: Prompt | Ensemble) -> str:
    """The template the model reads; an ensemble's members' in turn, best first."""
    if not isinstance(prompt, Ensemble):
        return render_template(model, prompt)
    return "\n\n".join(f"--- member {n + 1} of {len(prompt.members)} ---\n{render_template(model, m)}"
                       for n, m in enumerate(prompt.members))
