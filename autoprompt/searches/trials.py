"""The template search's trials: an Optuna study's trials asked for, scored on dev in chunks (so
the pruner can stop a bad one early), told, and shared safely between workers."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autoprompt.errors import AutoPromptError, InputTooLong
from autoprompt.metrics import metric_value
from autoprompt.scoring import Caches, Evaluation, evaluate, render_template
from autoprompt.space import Choice, SearchSpace, prompt_for
from autoprompt.storage import fail_stale_trials, give_back, has_heartbeat, heartbeat, signals_held

if TYPE_CHECKING:
    import optuna

    from autoprompt.data import Example
    from autoprompt.models import LanguageModel
    from autoprompt.prompt import Prompt
    from autoprompt.task import Task

log = logging.getLogger(__name__)

PRUNERS = ("median", "halving", "wilcoxon", "none")
SAMPLERS = ("tpe", "random")


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


def searched(space: SearchSpace) -> dict[str, list[Any]]:
    """The dimensions with a choice, as Optuna categorical choices."""
    dims = {"instruction": list(range(len(space.instruction))), "layout": list(range(len(space.layout))),
            "verbalizer": list(range(len(space.verbalizer))), "k": space.k, "selection": space.selection,
            "order": space.order, "chat": space.chat, "calibration": space.calibration,
            "draw": list(range(space.draws)) if any(space.k) else [0]}
    return {name: values for name, values in dims.items() if len(values) > 1}


@dataclass
class Trials:
    """What every trial of one search is run with."""

    model: LanguageModel
    task: Task
    space: SearchSpace
    study: optuna.Study
    dev: list[Example]  # the dev sample each trial is scored on, in its seeded order
    seed: int
    trials: int  # the study's budget (all workers together)
    chunk: int
    pruner: str
    build: Any  # (choice) -> Prompt, calibration measured
    caches: Caches

    def next(self) -> dict[str, Any] | None:
        """Ask for a trial and run it: its event, or None when another worker took the last slot."""
        import optuna

        # a Ctrl-C during ask() waits for it: cut short, it could leave a RUNNING trial nobody holds
        with signals_held(), warnings.catch_warnings():  # Optuna wants heartbeats used from study.optimize;
            warnings.simplefilter("ignore", UserWarning)  # we send them ourselves
            trial = self.study.ask()
        t0 = time.perf_counter()
        try:
            with heartbeat(self.study, trial):  # (its first beat at once: see storage.NO_HEARTBEAT_GRACE)
                trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
                alive = [t for t in self.study.get_trials(deepcopy=False) if t.number < trial.number
                         and t.state != optuna.trial.TrialState.FAIL]
                if len(alive) >= self.trials:  # another worker took the last slot between our count and ask
                    trial.set_user_attr("over_budget", True)
                    self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    return None
                event = self._run(trial)
        except KeyboardInterrupt:
            give_back(self.study, trial)
            raise
        except optuna.exceptions.UpdateFinishedTrialError:
            # this worker stalled so long that another one failed the trial as lost and queued it again
            log.warning("trial %d was given up by another worker; its result is dropped", trial.number)
            return None
        event["seconds"] = round(time.perf_counter() - t0, 2)
        return event

    def _run(self, trial: optuna.Trial) -> dict[str, Any]:
        params = {name: trial.suggest_categorical(name, values) for name, values in searched(self.space).items()}
        choice = Choice.from_params(params, self.space)
        event: dict[str, Any] = {"trial": trial.number, "params": params}
        key = prompt_key(self.model, prompt_for(choice, self.space, self.task, seed=self.seed), choice)
        trial.set_user_attr("prompt_key", key)
        same = _same_prompt(self.study, trial.number, key)
        if same is not None:  # another point of the space gives the same prompt (TPE re-proposes, k=0 ignores
            trial.set_user_attr("duplicate_of", same.number)  # the demo order...): reuse its score
            self.study.tell(trial, same.value)
            return {**event, "state": "duplicate", "duplicate_of": same.number, "dev": same.value}
        try:
            prompt = self.build(choice)  # (contextual calibration scores content-free inputs with the prompt)
        except InputTooLong as exc:
            return {**event, **self._too_long(trial, exc, 0)}
        event["prompt"] = render_template(self.model, prompt)
        return {**event, **self._score(trial, prompt)}

    def _too_long(self, trial: optuna.Trial, exc: InputTooLong, scored: int) -> dict[str, Any]:
        """A prompt some input does not fit in the model's context with (e.g. many demonstrations on a model
        with a short context): a dead end of the space, pruned, not the end of the search."""
        import optuna

        trial.set_user_attr("too_long", str(exc))
        self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return {"state": "too long", "examples": scored, "error": str(exc)}

    def _score(self, trial: optuna.Trial, prompt: Prompt) -> dict[str, Any]:
        """Score the trial's prompt on dev chunk by chunk, reporting the task's metric so far to the pruner."""
        import optuna

        metric, labels, gold = self.task.metric, self.task.labels, [e.answer for e in self.dev]
        predicted: list[str] = []
        ranks: list[int] = []
        scores: list[float] | None = None  # generated answers: each one's value of the metric
        for start in range(0, len(self.dev), self.chunk):
            chunk = self.dev[start : start + self.chunk]
            try:
                ev = evaluate(self.model, prompt, chunk, metric=metric, caches=self.caches)
            except InputTooLong as exc:
                return self._too_long(trial, exc, len(predicted))
            predicted += ev.predictions
            if ev.target_ranks is not None:
                ranks += [int(r) for r in ev.target_ranks]
            if ev.scores is not None:
                scores = (scores or []) + [float(v) for v in ev.scores]
            # the pruner sees the metric being optimized, on the dev examples scored so far
            so_far = metric_value(metric, gold[: len(predicted)], predicted=predicted, ranks=ranks, labels=labels,
                                  scores=scores)
            self._report(trial, ev, chunk, start, so_far)
            if trial.should_prune():
                self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                return {"state": "pruned", "examples": len(predicted), "dev_so_far": so_far}
        value = metric_value(metric, gold, predicted=predicted, ranks=ranks, labels=labels, scores=scores)
        self.study.tell(trial, value)
        return {"state": "complete", "examples": len(predicted), "dev": value}

    def _report(self, trial: optuna.Trial, ev: Evaluation, chunk: list[Example], start: int, so_far: float) -> None:
        if self.pruner != "wilcoxon":
            trial.report(so_far, start + len(chunk))
            return
        values = _per_example(self.task.metric, ev, chunk)  # paired per example where the metric is a mean
        if values is None:  # else per chunk
            trial.report(metric_value(self.task.metric, [e.answer for e in chunk], predicted=ev.predictions,
                                      ranks=ev.target_ranks, labels=self.task.labels, scores=ev.scores),
                         start + len(chunk) - 1)
        for k, value in enumerate(values or []):
            trial.report(value, start + k)


def _per_example(metric: str, ev: Evaluation, examples: list[Example]) -> list[float] | None:
    """Each example's share of a metric that is a mean over examples (None for macro-F1)."""
    if ev.scores is not None:  # generated answers
        return [float(v) for v in ev.scores]
    if metric == "accuracy":
        return [float(p == e.answer) for p, e in zip(ev.predictions, examples, strict=True)]
    if metric == "precision@1":
        return [float(r == 0) for r in ev.target_ranks]
    if metric == "mrr":
        return [1.0 / (int(r) + 1) for r in ev.target_ranks]
    return None


def prompt_key(model: LanguageModel, prompt: Prompt, choice: Choice) -> str:
    """What makes two trials the same prompt: the text the model reads, the verbalizer, calibration."""
    parts = [render_template(model, prompt), prompt.demo_k, prompt.verbalizer, choice.calibration]
    text = json.dumps(parts + (["per label"] if prompt.demo_per_label else []), sort_keys=True)  # (keys stored before stay)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _same_prompt(study: optuna.Study, number: int, key: str):
    import optuna

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.number != number and t.user_attrs.get("prompt_key") == key and t.value is not None:
            return t
    return None


def budget_left(study: optuna.Study, trials: int) -> bool:
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


def finished(study: optuna.Study) -> int:
    import optuna

    S = optuna.trial.TrialState
    return len(study.get_trials(deepcopy=False, states=(S.COMPLETE, S.PRUNED)))


def best_value(study: optuna.Study) -> float | None:
    try:
        return study.best_value
    except ValueError:
        return None


def trial_counts(study: optuna.Study) -> dict[str, int]:
    import optuna

    S = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    return {"complete": sum(t.state == S.COMPLETE and "duplicate_of" not in t.user_attrs for t in trials),
            "duplicate": sum(t.state == S.COMPLETE and "duplicate_of" in t.user_attrs for t in trials),
            "pruned": sum(t.state == S.PRUNED for t in trials),
            "failed": sum(t.state == S.FAIL for t in trials)}
