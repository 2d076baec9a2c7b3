"""optimize(task, config) -> SearchResult: picks the method and owns the run folder."""

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

from autoprompt.budget import Budget
from autoprompt.errors import AutoPromptError
from autoprompt.files import write_atomic
from autoprompt.models import LanguageModel
from autoprompt.predict import Predictor
from autoprompt.prompt import Prompt
from autoprompt.prompt_file import PromptFile, save_prompt_file
from autoprompt.redaction import redact
from autoprompt.runs import DEFAULT_RUNS_DIR, PREDICTIONS_FORMAT, Run, split_record, write_report
from autoprompt.scoring import Caches, Evaluation, evaluate, render_template
from autoprompt.storage import study_name, study_storage, use_storage_again
from autoprompt.task import Task
from autoprompt.template_search import TemplateSearchConfig, build_prompt, template_search
from autoprompt.trigger_search import TriggerSearchConfig, initial_prompt, read_checkpoint, trigger_search

log = logging.getLogger(__name__)

TRAIN_SAMPLE = 500  # train examples the final report scores both prompts on: enough to see overfitting


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


def optimize(task: Task, config: TriggerSearchConfig, model: LanguageModel, *, runs_dir: str | os.PathLike = DEFAULT_RUNS_DIR,
             resume: str | os.PathLike | None = None, search_labels: bool = False, progress: bool = True,
             method: str = "trigger", template_config: TemplateSearchConfig | None = None) -> SearchResult:
    """Run a search on a task in a new run folder (or continue ``resume``).

    ``method``: trigger (gradient-guided triggers in the task's template), template (Optuna
    search of template_config.space) or hybrid (template search, then triggers inside the winner).
    ``search_labels``: first propose label words (label_search) and search with the best one
    per label; the baseline stays the task's own prompt. On Ctrl-C (or SIGTERM through the
    CLI) the run is marked interrupted and its best prompt so far saved; ``resume`` goes on."""
    opened: list[Run] = []  # the run folder, once there is one
    try:
        return _optimize(task, config, model, runs_dir=runs_dir, resume=resume, search_labels=search_labels,
                         progress=progress, method=method, template_config=template_config, opened=opened)
    except KeyboardInterrupt:
        if opened:
            _interrupted(opened[0], model, task)
        raise


def _optimize(task: Task, config: TriggerSearchConfig, model: LanguageModel, *, runs_dir, resume, search_labels: bool,
              progress: bool, method: str, template_config: TemplateSearchConfig | None, opened: list[Run]) -> SearchResult:
    if resume is not None:
        method = Run.open(resume).config().get("method", "trigger")
    if method in ("template", "hybrid"):
        return _optimize_template(task, config, template_config or TemplateSearchConfig(), model, runs_dir=runs_dir,
                                  resume=resume, progress=progress, hybrid=method == "hybrid", opened=opened)
    if method != "trigger":
        raise AutoPromptError(f"unknown method {method!r}; use trigger, template or hybrid")
    started = time.perf_counter()
    budget = Budget(None)  # the whole run: search and the scoring after it (its seconds: the config's, below)
    manual_task = task
    if resume is not None:
        run, saved = _reopen(resume, task, model)
        config = TriggerSearchConfig(**_known(TriggerSearchConfig, saved["trigger"]))
        if saved.get("verbalizer") is not None:
            task = dataclasses.replace(task, verbalizer=saved["verbalizer"])
        state = read_checkpoint(run)
        if state is not None:  # drop events logged after the checkpoint
            run.truncate_log(sum(1 for e in run.events() if e.get("step", 0) <= state.step))
        log.info("resuming %s at step %d", run.path, state.step if state else 0)
    else:
        label_words = None
        if search_labels:
            from autoprompt.label_search import search_label_words

            label_words = search_label_words(model, task, seed=config.seed)
            task = dataclasses.replace(task, verbalizer=label_words.verbalizer(1))
        initial_prompt(model, task, config)  # bad templates fail here, before a run folder exists
        run = Run.create(task.name, "trigger", _run_config(
            task, model, "trigger", trigger=dataclasses.asdict(config), verbalizer=task.verbalizer,
            search_labels=search_labels), runs_dir=runs_dir)
        if label_words is not None:
            run.write_json("labels.json", {"words": label_words.words, "train_accuracy": label_words.train_accuracy})
        state = None
    log.info("run folder: %s", run.path)
    opened.append(run)
    run.write_json("result.json", {"state": "running"})
    budget.seconds = config.time_budget  # (a resumed run's saved setting)
    budget.already = state.seconds if state else 0.0  # a resumed run's earlier search
    budget.keep_for(2 * _final_examples(task))
    try:
        prompt, state = trigger_search(model, task, config, run=run, state=state, progress=progress, budget=budget)
    except Exception:
        run.write_json("result.json", {"state": "failed"})
        raise
    # the checkpoint keeps the best prompt's dev metrics, not its predictions: dev is scored again
    metrics, baseline, train = _final_evaluations(model, prompt, Prompt.from_task(manual_task), task, run,
                                                  seed=config.seed, progress=progress)
    prompt_file = save_prompt_file(PromptFile(
        prompt, task_name=task.name, metric=task.metric, metrics=metrics,
        search={"method": "trigger", "run": run.name, "steps": state.step, "seed": config.seed,
                "config": dataclasses.asdict(config)}), run.best_prompt_path)
    seconds = time.perf_counter() - started
    run.write_json("result.json", {"state": "finished", "metric": task.metric, "metrics": metrics, "baseline": baseline,
                                   "train_sample": train, "steps": state.step,
                                   "search_seconds": round(state.seconds, 1), "seconds": round(seconds, 1),
                                   "triggers": list(prompt.trigger_tokens), "template": prompt.template})
    return SearchResult(prompt, metrics, baseline, run.path, prompt_file, run.events(), seconds, train,
                        write_report(run))


def optimize_seeds(task: Task, config: TriggerSearchConfig, model: LanguageModel, seeds: list[int], *,
                   runs_dir: str | os.PathLike = DEFAULT_RUNS_DIR, **settings: Any) -> tuple[list[SearchResult], Path]:
    """The same search once per seed, one run folder each; then their mean ± std of the dev and test
    metric, written as <first run>-seeds.json and .md into ``runs_dir``. Returns the results and the json."""
    from autoprompt.runs import seed_markdown, seed_summary

    if not seeds:
        raise AutoPromptError("give at least one seed")
    results = [optimize(task, dataclasses.replace(config, seed=seed), model, runs_dir=runs_dir, **settings)
               for seed in seeds]
    summary = seed_summary([Run(r.run_dir) for r in results])
    target = Path(runs_dir) / f"{results[0].run_dir.name}-seeds.json"
    write_atomic(target, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    write_atomic(target.with_suffix(".md"), seed_markdown(summary))
    return results, target


def _optimize_template(task: Task, config: TriggerSearchConfig, tconfig: TemplateSearchConfig, model: LanguageModel, *,
                       runs_dir, resume, progress: bool, hybrid: bool, opened: list[Run]) -> SearchResult:
    """The template search (and, for the hybrid, the trigger search inside its winner)."""
    from autoprompt.scoring import content_free_calibration
    from autoprompt.space import Choice, load_space
    from autoprompt.template_search import with_manual_choices

    started = time.perf_counter()
    budget = Budget(None)  # the whole run: search and the scoring after it
    method = "hybrid" if hybrid else "template"
    if resume is not None:
        run, saved = _reopen(resume, task, model)
        config = TriggerSearchConfig(**_known(TriggerSearchConfig, saved["trigger"]))
        given_storage = tconfig.storage  # the URL again, with the password the run folder does not keep
        tconfig = TemplateSearchConfig(**_known(TemplateSearchConfig, saved["template_search"]))
        if given_storage:
            use_storage_again(given_storage, tconfig.storage, resume)
    else:
        load_space(tconfig.space).for_task(task)  # a bad space or storage fails before a run folder exists
        if tconfig.storage:
            from autoprompt.template_search import open_storage

            open_storage(tconfig.storage)
        run = Run.create(task.name, method, _run_config(
            task, model, method, template_search=dataclasses.asdict(tconfig), trigger=dataclasses.asdict(config)),
            runs_dir=runs_dir)
    log.info("run folder: %s", run.path)
    opened.append(run)
    storage = study_storage(run)
    run.write_json("result.json", {"state": "running"})
    budget.seconds = config.time_budget
    budget.keep_for(_template_final_examples(task, tconfig, hybrid))
    try:
        if resume is not None and (run.path / "template_winner.json").exists():
            saved_winner = run.read_json("template_winner.json")

            space = with_manual_choices(load_space(tconfig.space).for_task(task), task)
            choice = Choice(**saved_winner["choice"])
            tpl = {"prompt": build_prompt(model, task, space, choice, seed=config.seed), "choice": choice,
                   "dev": saved_winner["dev"], "trials": saved_winner["trials"], "space": space, "evaluation": None}
        else:
            result = template_search(model, task, tconfig, seed=config.seed, run=run,
                                     budget=budget.stage(0.5) if hybrid else budget,  # the hybrid: half for triggers
                                     storage_url=storage, study_name=study_name(run),
                                     resume=resume is not None, progress=progress)
            tpl = {"prompt": result.prompt, "choice": result.choice, "dev": result.dev, "trials": result.trials,
                   "space": result.space, "evaluation": result.dev_evaluation}
            run.write_json("template_winner.json", {"choice": dataclasses.asdict(result.choice), "dev": result.dev,
                                                    "trials": result.trials})
        prompt, dev_metrics, dev_evaluation, stage = tpl["prompt"], tpl["dev"], tpl["evaluation"], "template"
        steps = None
        if hybrid:
            n = max(tpl["space"].triggers) or config.n_triggers
            base = build_prompt(model, task, tpl["space"], tpl["choice"], seed=config.seed, n_triggers=n)
            state = read_checkpoint(run) if resume is not None else None
            if state is not None:  # drop trigger steps logged after the checkpoint
                run.truncate_log(1 + max(i for i, e in enumerate(run.events())
                                         if e.get("stage") == "trigger" and e.get("step", -1) <= state.step))
            found, state = trigger_search(model, task, config, run=_Stage(run, "trigger"), state=state,
                                          progress=progress, base=base, budget=budget)
            steps = state.step
            if tpl["choice"].calibration == "contextual":
                found = dataclasses.replace(found, calibration=content_free_calibration(model, found))
            found_evaluation = evaluate(model, found, task.examples("dev"), metric=task.metric)
            found_dev = found_evaluation.metrics
            run.log({"stage": "choice", "template_dev": dev_metrics[task.metric], "hybrid_dev": found_dev[task.metric]})
            if found_dev[task.metric] > dev_metrics[task.metric]:
                prompt, dev_metrics, dev_evaluation, stage = found, found_dev, found_evaluation, "hybrid"
    except Exception:
        run.write_json("result.json", {"state": "failed"})
        raise
    metrics, baseline, train = _final_evaluations(model, prompt, Prompt.from_task(task), task, run, seed=config.seed,
                                                  known={"dev": dev_evaluation} if dev_evaluation else None,
                                                  progress=progress)
    search = {"method": method, "run": run.name, "seed": config.seed, "winner": stage,
              "choice": dataclasses.asdict(tpl["choice"]), "trials": tpl["trials"],
              "config": {"template_search": dataclasses.asdict(tconfig),
                         **({"trigger": dataclasses.asdict(config)} if hybrid else {})}}
    if steps is not None:
        search["steps"] = steps
    prompt_file = save_prompt_file(PromptFile(prompt, task_name=task.name, metric=task.metric, metrics=metrics,
                                              search=redact(search)), run.best_prompt_path)
    seconds = time.perf_counter() - started
    run.write_json("result.json", {"state": "finished", "metric": task.metric, "metrics": metrics, "baseline": baseline,
                                   "train_sample": train, "winner": stage, **({"steps": steps} if hybrid else {}),
                                   "choice": dataclasses.asdict(tpl["choice"]), "trials": tpl["trials"],
                                   "template": prompt.template, "instruction": prompt.instruction,
                                   "triggers": list(prompt.trigger_tokens), "seconds": round(seconds, 1)})
    return SearchResult(prompt, metrics, baseline, run.path, prompt_file, run.events(), seconds, train,
                        write_report(run))


def _reopen(resume, task: Task, model: LanguageModel) -> tuple[Run, dict[str, Any]]:
    """The run folder to continue and its saved config; it must be a run of this task and model."""
    run = Run.open(resume)
    saved = run.config()
    if saved.get("task") != task.name or saved.get("model") != model.name:
        raise AutoPromptError(f"{resume}: was a run of {saved.get('task')} on {saved.get('model')}, "
                              f"not {task.name} on {model.name}")
    return run, saved


def _run_config(task: Task, model: LanguageModel, method: str, **settings: Any) -> dict[str, Any]:
    """A run's config.json: what ran on what, and every setting."""
    from autoprompt.runs import invoked_command

    return redact({"method": method, "task": task.name, "task_source": task.source, "model": model.name,
                   "model_source": model.source, "command": invoked_command(), "device": str(model.device),
                   "dtype": str(model.dtype).replace("torch.", ""), **settings})  # no storage password


class _Stage:
    """A run whose log lines carry the stage they belong to (the hybrid logs two)."""

    def __init__(self, run: Run, stage: str) -> None:
        self.run, self.stage = run, stage

    def log(self, event: dict[str, Any]) -> None:
        self.run.log({"stage": self.stage, **event})

    def write_json(self, name: str, data: Any):
        return self.run.write_json(name, data)


def _interrupted(run: Run, model: LanguageModel, task: Task) -> None:
    """Ctrl-C: the run is marked interrupted (first: a second Ctrl-C must not leave it "running"),
    then its best prompt so far, from what the run folder holds, becomes its prompt file."""
    if (run.path / "result.json").exists() and run.read_json("result.json").get("state") == "finished":
        return
    run.write_json("result.json", {"state": "interrupted"})
    saved = run.config()
    try:
        found = _best_so_far(run, model, task, saved)
    except AutoPromptError as exc:  # e.g. the shared storage went away: the interruption still stands
        log.warning("interrupted; the best prompt so far could not be saved: %s", exc)
        return
    if found is None:
        log.warning("interrupted before a first prompt was scored; continue with --resume %s", run.path)
        return
    prompt, metrics, search = found
    save_prompt_file(PromptFile(prompt, task_name=task.name, metric=task.metric, metrics=metrics,
                                search={"method": saved["method"], "run": run.name, "interrupted": True, **search}),
                     run.best_prompt_path)
    log.warning("interrupted; best prompt so far: %s (continue with --resume %s)", run.best_prompt_path, run.path)


def _best_so_far(run: Run, model: LanguageModel, task: Task, saved: dict[str, Any]):
    """(prompt, metrics, search info) of the best prompt a run has found so far, or None."""
    from autoprompt.space import Choice, load_space
    from autoprompt.template_search import best_trial_prompt, with_manual_choices

    config = TriggerSearchConfig(**_known(TriggerSearchConfig, saved.get("trigger", {})))
    state = read_checkpoint(run)
    if saved["method"] == "trigger":
        if state is None:
            return None
        task = dataclasses.replace(task, verbalizer=saved.get("verbalizer", task.verbalizer))
        base = initial_prompt(model, task, config)
        return (_with_triggers(model, base, state.best_trigger_ids),
                {"dev": state.best_dev_metrics} if state.best_dev_metrics else {}, {"steps": state.step})
    tconfig = TemplateSearchConfig(**_known(TemplateSearchConfig, saved["template_search"]))
    if not (run.path / "template_winner.json").exists():  # still in the template search: its best trial
        found = best_trial_prompt(model, task, tconfig, study_storage(run), study_name(run),
                                  seed=config.seed)
        return None if found is None else (found[0], {}, {"trial": found[1].number, "trial_dev": found[1].value})
    winner = run.read_json("template_winner.json")
    space = with_manual_choices(load_space(tconfig.space).for_task(task), task)
    choice = Choice(**winner["choice"])
    best = (build_prompt(model, task, space, choice, seed=config.seed), {"dev": winner["dev"]}, {"winner": "template"})
    if state is not None and state.best_dev > winner["dev"][task.metric] and choice.calibration == "none":
        base = build_prompt(model, task, space, choice, seed=config.seed,
                            n_triggers=max(space.triggers) or config.n_triggers)
        best = (_with_triggers(model, base, state.best_trigger_ids), {"dev": state.best_dev_metrics},
                {"winner": "hybrid", "steps": state.step})
    return best


def _with_triggers(model: LanguageModel, prompt: Prompt, ids: list[int]) -> Prompt:
    return prompt.with_triggers(ids, [model.tokenizer.decode([i]) for i in ids])


def _final_examples(task: Task) -> int:
    """Examples one prompt is scored on at the end of a run: dev, test and the train sample."""
    return sum(len(task.splits.get(s) or []) for s in ("dev", "test")) + min(TRAIN_SAMPLE, len(task.splits.get("train") or []))


def _template_final_examples(task: Task, tconfig: TemplateSearchConfig, hybrid: bool) -> int:
    """What a template (or hybrid) run scores after its search: the best trials re-scored on dev
    (the winner's dev scores are kept), both prompts at the end, and the hybrid's prompt on dev."""
    dev = len(task.splits.get("dev") or [])
    rescored = 1 if not tconfig.trial_dev or tconfig.trial_dev >= dev else max(1, tconfig.rescore_top)
    return rescored * dev + 2 * _final_examples(task) - dev + (dev if hybrid else 0)


def _final_evaluations(model: LanguageModel, prompt: Prompt, baseline_prompt: Prompt, task: Task, run: Run, *,
                       seed: int, known: dict[str, Evaluation] | None = None, progress: bool = False):
    """The found prompt and the baseline scored on dev, test and a seeded sample of train, once
    each; their predictions go to predictions.json for the report. Returns the dev/test metrics
    of both and the train sample's. Test is only ever reported, never used to choose."""
    from tqdm.auto import tqdm

    known, caches = known or {}, Caches()
    bar = tqdm(total=2 * _final_examples(task) - sum(len(e.predictions) for e in known.values()),
               desc="scoring the found prompt and the baseline", unit="ex", disable=not progress)
    record = {"format": PREDICTIONS_FORMAT, "metric": task.metric, "labels": prompt.labels or None,
              "prompt_text": render_template(model, prompt), "baseline_text": render_template(model, baseline_prompt),
              "splits": {}}
    metrics, baseline, train = {}, {}, None
    for split in ("train", "dev", "test"):
        examples = task.splits.get(split) or []
        if not examples:
            continue
        indices = None
        if split == "train" and len(examples) > TRAIN_SAMPLE:
            indices = sorted(random.Random(seed).sample(range(len(examples)), TRAIN_SAMPLE))
            examples = [examples[i] for i in indices]
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


def _known(cls, values: dict[str, Any]) -> dict[str, Any]:
    """Config values this version knows (a config from another version loads tolerantly)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        log.warning("ignoring unknown config keys: %s", ", ".join(unknown))
    return {k: v for k, v in values.items() if k in names}
