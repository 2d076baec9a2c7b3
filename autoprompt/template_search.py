"""Optuna template search: instruction, layout, verbalizer, demonstrations, chat, calibration.

Each trial is one point of a search space (autoprompt.space) scored on dev in chunks, so
Optuna's pruner can stop a bad one early. The task's manual prompt is the first trial. The
study lives in an Optuna storage (sqlite in the run folder by default, or any URL several
workers share); the budget is the study's, not a worker's.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import socket
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from autoprompt.budget import Budget
from autoprompt.errors import AutoPromptError, InputTooLong
from autoprompt.metrics import accuracy, macro_f1, mrr, precision_at_1
from autoprompt.prompt import Prompt, remove_triggers
from autoprompt.scoring import Caches, Evaluation, content_free_calibration, evaluate, render_template
from autoprompt.space import Choice, SearchSpace, load_space, prompt_for
from autoprompt.storage import (  # noqa: F401  (open_storage, study_storage: used from here too)
    fail_stale_trials,
    give_back,
    has_heartbeat,
    heartbeat,
    hold_signals_in,
    open_storage,
    requeue_interrupted,
    signals_held,
    study_storage,
)

if TYPE_CHECKING:
    import optuna

    from autoprompt.models import LanguageModel
    from autoprompt.runs import Run
    from autoprompt.task import Example, Task

log = logging.getLogger(__name__)

PRUNERS = ("median", "halving", "wilcoxon", "none")
SAMPLERS = ("tpe", "random")


def _opt(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TemplateSearchConfig:
    """Settings of the template search (its seed and time budget are the run's --seed/--time-budget)."""

    space: str = _opt("default", "Search space: a YAML file, or a name in search/ (default, sentiment, facts).")
    trials: int = _opt(40, "Trials of the study (all workers together), the manual prompt's included.")
    sampler: str = _opt("tpe", "Optuna sampler.", choices=SAMPLERS)
    pruner: str = _opt("halving", "Stops bad trials early from their dev chunks (wilcoxon needs scipy). On SST-2, "
                       "halving found the best dev prompt scoring the fewest examples (README).", choices=PRUNERS)
    trial_dev: int | None = _opt(200, "Dev examples each trial is scored on; the best few are then re-scored "
                                 "on all of dev (default 200; 0: all of dev).", min=0)
    chunk: int = _opt(50, "Dev examples per pruning report.")
    rescore_top: int = _opt(3, "Best trials re-scored on all of dev before the winner is chosen.")
    storage: str | None = _opt(None, "Optuna storage URL shared by workers (sqlite:///f.db, a journal file "
                               "path ending in .log, postgresql://...; default $AUTOPROMPT_STORAGE, else study.db "
                               "in the run folder). Its password is never written or printed.",
                               envvar="AUTOPROMPT_STORAGE")
    study_name: str | None = _opt(None, "Study name in --storage (default: TASK-template, so workers share it; "
                                  "without --storage: the run folder's name).")
    heartbeat: int = _opt(10, "Seconds between a running trial's heartbeats in a shared --storage; a trial silent "
                          "for 3 of them lost its worker: it is failed and its params run again.")


@dataclass
class TemplateResult:
    prompt: Prompt
    choice: Choice
    dev: dict[str, float]  # the winner's metrics on all of dev
    trials: dict[str, int]  # complete / pruned / duplicate / failed counts
    space: SearchSpace = field(repr=False, default=None)
    dev_evaluation: Evaluation | None = field(repr=False, default=None)  # the winner on all of dev


# --- storage and study ----------------------------------------------------------------------

def make_sampler(name: str, seed: int):
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=8)


def make_pruner(name: str):
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "wilcoxon":
        try:
            import scipy  # noqa: F401
        except ImportError:
            raise AutoPromptError("--pruner wilcoxon needs scipy: pip install scipy") from None
        return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=50)
    return optuna.pruners.NopPruner()


# --- the search -----------------------------------------------------------------------------

def manual_params(space: SearchSpace) -> dict[str, Any]:
    """The trial params of the task's own prompt (index 0 of the filled-in space)."""
    return {name: value for name, value in _defaults(space).items() if name in _searched(space)}


def _defaults(space: SearchSpace) -> dict[str, Any]:
    return {"instruction": 0, "layout": 0, "verbalizer": 0, "k": 0, "selection": space.selection[0],
            "order": space.order[0], "chat": False, "calibration": "none"}


def _searched(space: SearchSpace) -> dict[str, list[Any]]:
    """The dimensions with a choice, as Optuna categorical choices."""
    dims = {"instruction": list(range(len(space.instruction))), "layout": list(range(len(space.layout))),
            "verbalizer": list(range(len(space.verbalizer))), "k": space.k, "selection": space.selection,
            "order": space.order, "chat": space.chat, "calibration": space.calibration}
    return {name: values for name, values in dims.items() if len(values) > 1}


def with_manual_choices(space: SearchSpace, task: Task) -> SearchSpace:
    """The space with the task's own choices first in every dimension, so trial 0 is the manual prompt."""
    def first(values: list[Any], value: Any, key=lambda v: v) -> list[Any]:
        same = [v for v in values if key(v) == key(value)]
        return [same[0] if same else value] + [v for v in values if key(v) != key(value)]

    return replace(space, instruction=first(space.instruction, ""),
                   layout=first(space.layout, task.template, key=remove_triggers),
                   verbalizer=first(space.verbalizer, dict(task.verbalizer or {})) if task.verbalizer else space.verbalizer,
                   k=first(space.k, 0), chat=first(space.chat, False), calibration=first(space.calibration, "none"))


def build_prompt(model: LanguageModel, task: Task, space: SearchSpace, choice: Choice, *, seed: int,
                 n_triggers: int = 0, caches: Caches | None = None) -> Prompt:
    prompt = prompt_for(choice, space, task, seed=seed, n_triggers=n_triggers)
    prompt = replace(prompt, model=model.ref)
    if choice.calibration == "contextual" and not n_triggers:
        prompt = replace(prompt, calibration=content_free_calibration(model, prompt, caches))
    return prompt


def template_search(model: LanguageModel, task: Task, cfg: TemplateSearchConfig, *, seed: int = 0,
                    budget: Budget | None = None, run: Run | None = None, storage_url: str,
                    study_name: str, resume: bool = False, progress: bool = True) -> TemplateResult:
    """Run (or continue) the study; returns the winner after re-scoring the best on all of dev.
    ``budget``: when to stop taking trials (default: no limit)."""
    import optuna
    from tqdm.auto import tqdm

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = with_manual_choices(load_space(cfg.space).for_task(task), task)
    shared = cfg.storage is not None
    storage = open_storage(storage_url, heartbeat=cfg.heartbeat if shared else None)
    # workers sharing a storage must not all propose the same points: each samples with its own seed
    sampler_seed = seed if not shared else seed + os.getpid()
    sampler, pruner = make_sampler(cfg.sampler, sampler_seed), make_pruner(cfg.pruner)
    try:
        study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize",
                                    sampler=sampler, pruner=pruner)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=study_name, sampler=sampler, pruner=pruner)
        created = False
    hold_signals_in(study._storage)  # Optuna's cache around the storage: kept in step with it on Ctrl-C too
    if resume and not shared:  # on a shared storage, other workers' trials are RUNNING too: heartbeats tell
        requeue_interrupted(study)
    # the manual prompt is queued once, by the worker that made the study (workers that all found it
    # empty queued it once each)
    if created or (not shared and not study.trials):
        study.enqueue_trial(manual_params(space), user_attrs={"manual": True}, skip_if_exists=True)
    dev = task.examples("dev")
    order = list(range(len(dev)))
    random.Random(seed).shuffle(order)  # chunks are random samples of dev, the same for every trial
    trial_dev = [dev[i] for i in order[: cfg.trial_dev or None]]
    budget, warm, caches = budget or Budget(None), False, Caches()  # (caches: kept for the whole search)
    bar = tqdm(total=cfg.trials, initial=_finished(study), desc="template search", unit="trial", disable=not progress)
    try:
        while _has_budget_left(study, cfg.trials):
            if budget.spent():
                log.info("time budget: no more trials (%s)", budget.describe())
                break
            event = _next_trial(model, task, space, cfg, study, trial_dev, seed, caches)
            if event is None:
                continue
            if warm:  # (the first trial of a process also pays for warming up)
                budget.record(event.get("examples", 0), event["seconds"], chunked=True)
            warm = True
            if run is not None:
                run.log({"stage": "template", **event})
            bar.update(1)
            best = _best_value(study)
            bar.set_postfix(best_dev=f"{best:.3f}" if best is not None else "-", last=event["state"])
    finally:
        bar.close()
    return _choose_winner(model, task, space, cfg, study, seed, run, progress, caches)


def _has_budget_left(study: optuna.Study, trials: int) -> bool:
    """Whether this worker should go on: fewer than ``trials`` finished. When the last ones are
    running in other workers, it waits for them: if one of those dies, its trial is run here."""
    import optuna

    while True:
        fail_stale_trials(study)
        states = [t.state for t in study.get_trials(deepcopy=False)]
        S = optuna.trial.TrialState
        finished = sum(s in (S.COMPLETE, S.PRUNED) for s in states)
        if finished >= trials:
            return False
        if finished + states.count(S.RUNNING) < trials:
            return True
        if not has_heartbeat(study):  # no other worker can be running them
            return False
        time.sleep(min(2, study._storage.get_heartbeat_interval()))


def _next_trial(model: LanguageModel, task: Task, space: SearchSpace, cfg: TemplateSearchConfig,
                study: optuna.Study, dev: list[Example], seed: int, caches: Caches) -> dict[str, Any] | None:
    """Ask for a trial and run it: its event, or None when another worker took the last slot."""
    import optuna

    # a Ctrl-C during ask() waits for it: cut short, it could leave a RUNNING trial nobody holds
    with signals_held(), warnings.catch_warnings():  # Optuna wants heartbeats used from study.optimize;
        warnings.simplefilter("ignore", UserWarning)  # we send them ourselves
        trial = study.ask()
    t0 = time.perf_counter()
    try:
        with heartbeat(study, trial):  # (its first beat at once: see storage.NO_HEARTBEAT_GRACE)
            trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
            alive = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number
                     and t.state != optuna.trial.TrialState.FAIL]
            if len(alive) >= cfg.trials:  # another worker took the last slot between our count and ask
                trial.set_user_attr("over_budget", True)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                return None
            event = _run_trial(model, task, space, cfg, study, trial, dev, seed, caches)
    except KeyboardInterrupt:
        give_back(study, trial)
        raise
    except optuna.exceptions.UpdateFinishedTrialError:
        # this worker stalled so long that another one failed the trial as lost and queued it again
        log.warning("trial %d was given up by another worker; its result is dropped", trial.number)
        return None
    event["seconds"] = round(time.perf_counter() - t0, 2)
    return event


def _run_trial(model: LanguageModel, task: Task, space: SearchSpace, cfg: TemplateSearchConfig,
               study: optuna.Study, trial: optuna.Trial, dev: list[Example], seed: int, caches: Caches) -> dict[str, Any]:
    import optuna

    params = {name: trial.suggest_categorical(name, values) for name, values in _searched(space).items()}
    choice = Choice.from_params(params, space)
    event: dict[str, Any] = {"trial": trial.number, "params": params}
    key = prompt_key(model, prompt_for(choice, space, task, seed=seed), choice)
    trial.set_user_attr("prompt_key", key)
    same = _same_prompt(study, trial.number, key)
    if same is not None:  # another point of the space gives the same prompt (TPE re-proposes, k=0 ignores
        trial.set_user_attr("duplicate_of", same.number)  # the demo order...): reuse its score
        study.tell(trial, same.value)
        return {**event, "state": "duplicate", "duplicate_of": same.number, "dev": same.value}
    prompt = build_prompt(model, task, space, choice, seed=seed, caches=caches)
    event["prompt"] = render_template(model, prompt)
    gold = [e.answer for e in dev]
    predicted: list[str] = []
    ranks: list[int] = []
    for start in range(0, len(dev), cfg.chunk):
        chunk = dev[start : start + cfg.chunk]
        try:
            ev = evaluate(model, prompt, chunk, metric=task.metric, caches=caches)
        except InputTooLong as exc:  # e.g. many demonstrations on a model with a short context: a dead end
            trial.set_user_attr("too_long", str(exc))
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return {**event, "state": "too long", "examples": len(predicted), "error": str(exc)}
        predicted += ev.predictions
        if ev.target_ranks is not None:
            ranks += [int(r) for r in ev.target_ranks]
        # the pruner sees the metric being optimized, on the dev examples scored so far
        so_far = metric_value(task.metric, predicted, gold[: len(predicted)], np.asarray(ranks), task.labels)
        if cfg.pruner == "wilcoxon":  # paired per example where the metric is a mean over examples, else per chunk
            values = _per_example(task.metric, ev, chunk)
            if values is None:
                trial.report(metric_value(task.metric, ev.predictions, [e.answer for e in chunk],
                                          np.asarray(ev.target_ranks), task.labels), start + len(chunk) - 1)
            for k, value in enumerate(values or []):
                trial.report(value, start + k)
        else:
            trial.report(so_far, len(predicted))
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return {**event, "state": "pruned", "examples": len(predicted), "dev_so_far": so_far}
    value = metric_value(task.metric, predicted, gold, np.asarray(ranks), task.labels)
    study.tell(trial, value)
    return {**event, "state": "complete", "examples": len(predicted), "dev": value}


def _per_example(metric: str, ev: Evaluation, examples: list[Example]) -> list[float] | None:
    """Each example's share of a metric that is a mean over examples (None for macro-F1)."""
    if metric == "accuracy":
        return [float(p == e.answer) for p, e in zip(ev.predictions, examples, strict=True)]
    if metric == "precision@1":
        return [float(r == 0) for r in ev.target_ranks]
    if metric == "mrr":
        return [1.0 / (int(r) + 1) for r in ev.target_ranks]
    return None


def metric_value(metric: str, predicted: list[str], gold: list[str], ranks: np.ndarray, labels: list[str]) -> float:
    if metric == "accuracy":
        return accuracy(predicted, gold)
    if metric == "macro_f1":
        return macro_f1(predicted, gold, labels)
    if metric == "precision@1":
        return precision_at_1(ranks)
    if metric == "mrr":
        return mrr(ranks)
    raise AutoPromptError(f"the template search cannot optimize metric {metric!r}")


def prompt_key(model: LanguageModel, prompt: Prompt, choice: Choice) -> str:
    """What makes two trials the same prompt: the text the model reads, the verbalizer, calibration."""
    import hashlib
    import json

    text = json.dumps([render_template(model, prompt), prompt.demo_k, prompt.verbalizer, choice.calibration],
                      sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _same_prompt(study: optuna.Study, number: int, key: str):
    import optuna

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.number != number and t.user_attrs.get("prompt_key") == key and t.value is not None:
            return t
    return None


def _finished(study: optuna.Study) -> int:
    import optuna

    S = optuna.trial.TrialState
    return len(study.get_trials(deepcopy=False, states=(S.COMPLETE, S.PRUNED)))


def _best_value(study: optuna.Study) -> float | None:
    try:
        return study.best_value
    except ValueError:
        return None


def best_trial_prompt(model: LanguageModel, task: Task, cfg: TemplateSearchConfig, storage_url: str, study_name: str,
                      *, seed: int) -> tuple[Prompt, optuna.trial.FrozenTrial] | None:
    """The prompt of the study's best finished trial so far, and the trial (None before there is one)."""
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url))
    except KeyError:  # interrupted before the study was made
        return None
    hold_signals_in(study._storage)
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)) if t.value is not None]
    if not done:
        return None
    best = max(done, key=lambda t: (t.value, -t.number))
    space = with_manual_choices(load_space(cfg.space).for_task(task), task)
    return build_prompt(model, task, space, Choice.from_params(best.params, space), seed=seed), best


def trial_counts(study: optuna.Study) -> dict[str, int]:
    import optuna

    S = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    return {"complete": sum(t.state == S.COMPLETE and "duplicate_of" not in t.user_attrs for t in trials),
            "duplicate": sum(t.state == S.COMPLETE and "duplicate_of" in t.user_attrs for t in trials),
            "pruned": sum(t.state == S.PRUNED for t in trials),
            "failed": sum(t.state == S.FAIL for t in trials)}


def _choose_winner(model: LanguageModel, task: Task, space: SearchSpace, cfg: TemplateSearchConfig,
                   study: optuna.Study, seed: int, run: Run | None, progress: bool = False,
                   caches: Caches | None = None) -> TemplateResult:
    """Re-score the best few distinct trials on all of dev; the best there wins (ties: trial value)."""
    import optuna
    from tqdm.auto import tqdm

    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if "duplicate_of" not in t.user_attrs and t.value is not None]
    if not done:
        raise AutoPromptError("the template search finished no trial (all pruned or failed)")
    done.sort(key=lambda t: (-t.value, t.number))
    dev = task.examples("dev")
    full_dev = not cfg.trial_dev or cfg.trial_dev >= len(dev)
    best = None
    top = done[: 1 if full_dev else max(1, cfg.rescore_top)]
    bar = tqdm(total=len(top) * len(dev), desc="re-scoring the best trials on dev", unit="ex", disable=not progress)
    for t in top:
        choice = Choice.from_params(t.params, space)
        prompt = build_prompt(model, task, space, choice, seed=seed, caches=caches)
        bar.update(len(dev))
        try:
            evaluation = evaluate(model, prompt, dev, metric=task.metric, caches=caches)
        except InputTooLong as exc:  # some dev input the trial's sample did not have is too long with it
            log.warning("trial %d is not re-scored: %s", t.number, exc)
            continue
        metrics = evaluation.metrics
        if run is not None:
            run.log({"stage": "rescore", "trial": t.number, "trial_dev": t.value, "dev": metrics[task.metric]})
        key = (metrics[task.metric], t.value)
        if best is None or key > best[0]:
            best = (key, prompt, choice, evaluation)
    bar.close()
    if best is None:
        raise AutoPromptError(f"no trial of the best {len(top)} fits every dev input in the model's context")
    _, prompt, choice, evaluation = best
    return TemplateResult(prompt, choice, evaluation.metrics, trial_counts(study), space, evaluation)


def config_dict(cfg: TemplateSearchConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
