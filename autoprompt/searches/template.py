"""Optuna template search: instruction, layout, verbalizer, demonstrations, chat, calibration.

Each trial is one point of a search space (autoprompt.space) scored on dev in chunks, so
Optuna's pruner can stop a bad one early (searches.trials). The task's manual prompt is the
first trial. The study lives in an Optuna storage (sqlite in the run folder by default, or any
URL several workers share); the budget is the study's, not a worker's.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

from tqdm.auto import tqdm

from autoprompt.ensemble import Ensemble
from autoprompt.errors import AutoPromptError, InputTooLong
from autoprompt.models import fast_twin
from autoprompt.scoring import Caches, Evaluation, evaluate, measured_calibration
from autoprompt.searches.base import Context, Found, Method, final_split_examples, opt
from autoprompt.searches.ensembles import Candidate, ensemble_of, ensemble_stage
from autoprompt.searches.proposed import (
    PROPOSALS_FILE,
    Revision,
    proposer,
    revise,
    saved_revisions,
    with_proposals,
    with_revisions,
)
from autoprompt.searches.trials import (
    PRUNERS,
    SAMPLERS,
    Trials,
    best_value,
    budget_left,
    finished,
    make_pruner,
    make_sampler,
    searched,
    trial_counts,
)
from autoprompt.space import Choice, SearchSpace, load_space, prompt_for
from autoprompt.storage import hold_signals_in, open_storage, requeue_interrupted, study_name, study_storage
from autoprompt.template import remove_triggers

if TYPE_CHECKING:
    import optuna

    from autoprompt.models import LanguageModel
    from autoprompt.prompt import Prompt
    from autoprompt.runs import Run
    from autoprompt.task import Task

log = logging.getLogger(__name__)

# How much slower the scoring after the search (in the model's fp32) is than trials scored in bf16, for
# the time budget's reserve: 3.7x on an Intel AMX CPU, 1.9x on an AVX512-BF16 one (SST-2, measured);
# the larger keeps a budget on the safe side.
TWIN_FACTOR = 3.0


@dataclass
class TemplateSearchConfig:
    """Settings of the template search (its seed and time budget are the run's: RunSettings)."""

    section: ClassVar[str] = "template_search"  # its key in config.json

    space: str = opt("default", "Search space: a YAML file, or a name in search/ (default, sentiment, facts).")
    trials: int = opt(40, "Trials of the study (all workers together), the manual prompt's included.")
    sampler: str = opt("tpe", "Optuna sampler.", choices=SAMPLERS)
    pruner: str = opt("halving", "Stops bad trials early from their dev chunks (wilcoxon needs scipy). On SST-2, "
                      "halving found the best dev prompt scoring the fewest examples (README).", choices=PRUNERS)
    trial_dev: int | None = opt(200, "Dev examples each trial is scored on; the best few are then re-scored "
                                "on all of dev (default 200; 0: all of dev).", min=0)
    chunk: int = opt(50, "Dev examples per pruning report.")
    rescore_top: int = opt(5, "Best trials re-scored on all of dev before the winner is chosen.")
    ensemble_max: int = opt(5, "Largest prompt ensemble tried: the best k re-scored trials (k = 1..this; the best "
                            "trial's other demonstration draws among them) combined (label probabilities averaged, "
                            "generated answers voted, first-token answer words' probabilities averaged), the best "
                            "k on dev wins, ties to the smaller k; 1: no ensembles.")
    ensemble_confidence: float = opt(0.0, "An ensemble replaces the best prompt alone only when its dev gain over it is "
                                     "above zero with this confidence (paired bootstrap, as --confidence): k prompts "
                                     "cost k passes per input. 0: any gain (a stricter rule cost test accuracy, README).",
                                     share=True)
    channel: bool = opt(False, "Also try the best prompt scored the noisy-channel way (the input's likelihood after "
                        "each label word) as an ensemble member: the best k - 1 with it, chosen on dev (off: on SST-2 "
                        "it won on dev at 3 seeds of 3 and lost 0.4 points of test, docs/results.md).")
    storage: str | None = opt(None, "Optuna storage URL shared by workers (sqlite:///f.db, a journal file "
                              "path ending in .log, postgresql://...; default $AUTOPROMPT_STORAGE, else study.db "
                              "in the run folder). Its password is never written or printed.",
                              envvar="AUTOPROMPT_STORAGE")
    study_name: str | None = opt(None, "Study name in --storage (default: TASK-template, so workers share it; "
                                 "without --storage: the run folder's name).")
    trial_dtype: str = opt("auto", "Dtype trials are scored in: auto is bf16 where the hardware runs it fast "
                           "(a CPU with AVX512-BF16 or AMX where a GEMM probe finds bf16 1.5x faster than fp32) "
                           "for an fp32 model, else the model's own. The best trials "
                           "are re-scored, and every reported metric computed, in the model's dtype.",
                           choices=("auto", "fp32", "bf16"))
    propose: int = opt(0, "Instructions a model proposes before the search (APE: from a few train examples each), "
                        "added to the space's instructions; 0: none. Saved in the run, so a resumed study has them.",
                        min=0)
    revise: int = opt(0, "Revised instructions written after the trials (GEPA-style): the proposer reads the best "
                      "trial's instruction and dev examples it gets wrong; each revision is scored like a trial "
                      "and joins the best in the re-scoring on all of dev. 0: none.", min=0)
    proposer: str | None = opt(None, "Model that proposes (and revises) the instructions (a larger local one: alias, "
                               "folder, .gguf or hub id; default: the scoring model).")
    heartbeat: int = opt(10, "Seconds between a running trial's heartbeats in a shared --storage; a trial silent "
                         "for 3 of them lost its worker: it is failed and its params run again.")


@dataclass
class TemplateResult:
    prompt: Prompt | Ensemble  # an ensemble of the best trials when one wins on dev
    choice: Choice  # the best trial's (the ensemble's best member's)
    dev: dict[str, float]  # the winner's metrics on all of dev
    trials: dict[str, int]  # complete / pruned / duplicate / failed counts
    space: SearchSpace
    dev_evaluation: Evaluation | None = None  # the winner on all of dev
    info: dict[str, Any] = field(default_factory=dict)  # the ensembles tried ({"ensemble": ...}), when they are
    member_choices: list[Choice] = field(default_factory=list)  # an ensemble's members' choices, best first


# --- the space and its prompts ---------------------------------------------------------------

def task_space(cfg: TemplateSearchConfig, task: Task) -> SearchSpace:
    """The configured space for the task, checked, with the task's own choices first."""
    return with_manual_choices(load_space(cfg.space).for_task(task), task)


def manual_params(space: SearchSpace) -> dict[str, Any]:
    """The trial params of the task's own prompt (index 0 of the filled-in space)."""
    defaults = {"instruction": 0, "layout": 0, "verbalizer": 0, "k": 0, "selection": space.selection[0],
                "order": space.order[0], "chat": False, "calibration": "none", "draw": 0}
    return {name: value for name, value in defaults.items() if name in searched(space)}


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
    """The prompt of a choice for the model, its calibration measured (unless triggers will change it)."""
    prompt = replace(prompt_for(choice, space, task, seed=seed, n_triggers=n_triggers), model=model.ref)
    if not n_triggers:
        prompt = replace(prompt, calibration=measured_calibration(model, prompt, choice.calibration,
                                                                  task.examples("train"), seed=seed, caches=caches))
    return prompt


def run_space(ctx: Context, cfg: TemplateSearchConfig, *, propose: bool = False, revised: bool = False) -> SearchSpace:
    """The run's space: the task's, with the run's proposed instructions after the space's own (proposed
    now when ``propose`` and the run has none saved: a resumed study gets the same ones back); ``revised``:
    and its revised instructions after those (the space its winner is chosen in, not its study's)."""
    space = with_proposals(ctx, task_space(cfg, ctx.task), cfg.propose, cfg.proposer, propose=propose)
    return with_revisions(space, saved_revisions(ctx) or []) if revised else space


# --- the search -----------------------------------------------------------------------------

def open_study(cfg: TemplateSearchConfig, run: Run, space: SearchSpace, seed: int, resume: bool) -> optuna.Study:
    """The run's study (made, or joined on a shared storage), with the manual prompt queued as trial 0."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    shared = cfg.storage is not None
    storage = open_storage(study_storage(run), heartbeat=cfg.heartbeat if shared else None)
    # workers sharing a storage must not all propose the same points: each samples with its own seed
    sampler_seed = seed if not shared else seed + os.getpid()
    sampler, pruner = make_sampler(cfg.sampler, sampler_seed), make_pruner(cfg.pruner)
    try:
        study = optuna.create_study(storage=storage, study_name=study_name(run), direction="maximize",
                                    sampler=sampler, pruner=pruner)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=study_name(run), sampler=sampler, pruner=pruner)
        created = False
    hold_signals_in(study._storage)  # Optuna's cache around the storage: kept in step with it on Ctrl-C too
    if resume and not shared:  # on a shared storage, other workers' trials are RUNNING too: heartbeats tell
        requeue_interrupted(study)
    # the manual prompt is queued once, by the worker that made the study (workers that all found it
    # empty queued it once each)
    if created or (not shared and not study.trials):
        study.enqueue_trial(manual_params(space), user_attrs={"manual": True}, skip_if_exists=True)
    return study


def template_search(ctx: Context, cfg: TemplateSearchConfig, *, budget=None) -> TemplateResult:
    """Run (or continue) the run's study; returns the winner after re-scoring the best on all of dev.
    ``budget``: when to stop taking trials (default: the run's)."""
    budget = budget or ctx.budget
    space = run_space(ctx, cfg, propose=True)
    study = open_study(cfg, ctx.run, space, ctx.seed, ctx.resume)
    dev = ctx.task.examples("dev")
    order = list(range(len(dev)))
    random.Random(ctx.seed).shuffle(order)  # chunks are random samples of dev, the same for every trial
    caches = Caches()  # kept for the whole search
    model = fast_twin(ctx.model, cfg.trial_dtype)  # trials in bf16 where it is fast; the winner in the model's dtype
    scale = TWIN_FACTOR if model is not ctx.model else 1.0
    trials = Trials(model, ctx.task, space, study, [dev[i] for i in order[: cfg.trial_dev or None]], ctx.seed,
                    cfg.trials, cfg.chunk, cfg.pruner, lambda choice: build_prompt(
                        model, ctx.task, space, choice, seed=ctx.seed, caches=caches), caches)
    warm = False
    bar = tqdm(total=cfg.trials, initial=finished(study), desc="template search", unit="trial",
               disable=not ctx.progress)
    try:
        while budget_left(study, cfg.trials):
            if budget.spent():
                log.info("time budget: no more trials (%s)", budget.describe())
                break
            event = trials.next()
            if event is None:
                continue
            if warm:  # (the first trial of a process also pays for warming up)
                budget.record(event.get("examples", 0), event["seconds"] * scale, chunked=True)
            warm = True
            ctx.run.log({"stage": "template", **event})
            bar.update(1)
            best = best_value(study)
            bar.set_postfix(best_dev=f"{best:.3f}" if best is not None else "-", last=event["state"])
    finally:
        bar.close()
    revised = revise(ctx, cfg.revise, proposer(ctx, cfg.proposer), model, space, study, trials.dev, lambda choice, space: (
        build_prompt(model, ctx.task, space, choice, seed=ctx.seed, caches=caches))) if cfg.revise else []
    result = choose_winner(ctx, cfg, space, study, caches, revised)
    if cfg.propose:
        result.info["proposals"] = ctx.run.read_json(PROPOSALS_FILE)
    if cfg.revise:
        result.info["revisions"] = [{"instruction": r.instruction, "revises": r.revises, "trial_dev": r.value}
                                    for r in revised]
    return result


def choose_winner(ctx: Context, cfg: TemplateSearchConfig, space: SearchSpace, study: optuna.Study,
                  caches: Caches | None = None, revised: list[Revision] = ()) -> TemplateResult:
    """Re-score the best few distinct trials (and ``revised`` instructions, scored as trials) on all of dev; the
    best there wins (ties: trial value), or the ensemble of the best k when it is better on dev (``ensemble_max``)."""
    import optuna

    space = with_revisions(space, list(revised))
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if "duplicate_of" not in t.user_attrs and t.value is not None] + [r for r in revised if r.value is not None]
    if not done:
        raise AutoPromptError("the template search finished no trial (all pruned or failed)")
    done.sort(key=lambda t: (-t.value, t.number))
    dev = ctx.task.examples("dev")
    full_dev = not cfg.trial_dev or cfg.trial_dev >= len(dev)  # trials already saw all of dev: the best wins
    n_trial_dev = min(cfg.trial_dev or len(dev), len(dev))  # (the dev examples each trial was scored on)
    top = done[: max(1 if full_dev else max(1, cfg.rescore_top), cfg.ensemble_max)]
    rescored = []
    bar = tqdm(total=len(top) * len(dev), desc="re-scoring the best trials on dev", unit="ex", disable=not ctx.progress)
    for t in top:
        if rescored and not _rescoring_fits(ctx.budget, t, n_trial_dev, len(dev)):
            log.info("time budget: trial %d is not re-scored (%s)", t.number, ctx.budget.describe())
            continue
        choice = Choice.from_params(t.params, space)
        bar.update(len(dev))
        try:
            prompt, evaluation = _scored(ctx, space, choice, dev, caches)
        except InputTooLong as exc:  # some dev input the trial's sample did not have is too long with it
            log.warning("trial %d is not re-scored: %s", t.number, exc)
            continue
        ctx.run.log({"stage": "rescore", "trial": t.number, "trial_dev": t.value,
                     "dev": evaluation.metrics[ctx.task.metric], **({"revision": True} if t in revised else {})})
        rescored.append(((evaluation.metrics[ctx.task.metric], t.value), choice,
                         Candidate(prompt, evaluation, {"trial": t.number, "choice": asdict(choice)})))
    bar.close()
    if not rescored:
        raise AutoPromptError(f"no trial of the best {len(top)} fits every dev input in the model's context")
    rescored.sort(key=lambda r: r[0], reverse=True)  # (stable: of equal ones, the first in trial order)
    _, choice, best = rescored[0]
    if cfg.ensemble_max <= 1:
        return TemplateResult(best.prompt, choice, best.dev.metrics, trial_counts(study), space, best.dev)
    chosen = ensemble_stage(ctx, rescored, dev, cfg.ensemble_max, cfg.ensemble_confidence, space.draws, cfg.channel,
                            lambda c: _scored(ctx, space, c, dev, caches))
    members = [Choice(**m.origin["choice"]) for m in chosen.members]  # (the best first: its choice is the run's)
    return TemplateResult(chosen.prompt, members[0], chosen.dev.metrics, trial_counts(study), space, chosen.dev,
                          chosen.info, members if len(members) > 1 else [])


def _scored(ctx: Context, space: SearchSpace, choice: Choice, dev: list, caches: Caches | None):
    prompt = build_prompt(ctx.model, ctx.task, space, choice, seed=ctx.seed, caches=caches)
    return prompt, evaluate(ctx.model, prompt, dev, metric=ctx.task.metric, caches=caches)


def best_trial_prompt(ctx: Context, cfg: TemplateSearchConfig) -> tuple[Prompt, optuna.trial.FrozenTrial] | None:
    """The prompt of the study's best finished trial so far, and the trial (None before there is one)."""
    import optuna

    try:
        study = optuna.load_study(study_name=study_name(ctx.run), storage=open_storage(study_storage(ctx.run)))
    except KeyError:  # interrupted before the study was made
        return None
    hold_signals_in(study._storage)
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)) if t.value is not None]
    if not done:
        return None
    best = max(done, key=lambda t: (t.value, -t.number))
    space = run_space(ctx, cfg)
    return build_prompt(ctx.model, ctx.task, space, Choice.from_params(best.params, space), seed=ctx.seed), best


# --- the method ------------------------------------------------------------------------------

WINNER_FILE = "template_winner.json"  # the study's winner, once chosen (a resumed hybrid starts from it)


def _rescoring_fits(budget, trial, n_trial_dev: int, n_dev: int) -> bool:
    """Whether re-scoring ``trial`` on all of dev ends within the run's budget, at the pace of its own trial (a
    trial with 8 demonstrations can take 100 s on 200 dev sentences, and 250 s more on 500)."""
    if budget.seconds is None or trial.datetime_start is None or trial.datetime_complete is None:
        return True
    took = (trial.datetime_complete - trial.datetime_start).total_seconds()
    return budget.elapsed() + took * n_dev / max(1, n_trial_dev) <= budget.seconds


def template_stage(ctx: Context, cfg: TemplateSearchConfig, budget=None) -> TemplateResult:
    """The template search of a run, or its winner when the run already chose one (a resumed hybrid)."""
    if ctx.resume and (ctx.run.path / WINNER_FILE).exists():
        saved = ctx.run.read_json(WINNER_FILE)
        space, choice = run_space(ctx, cfg, revised=True), Choice(**saved["choice"])
        prompt = build_prompt(ctx.model, ctx.task, space, choice, seed=ctx.seed)
        members = [Choice(**c) for c in saved.get("members", [])]
        if members:  # an ensemble won
            prompt = ensemble_of([build_prompt(ctx.model, ctx.task, space, c, seed=ctx.seed) for c in members])
        return TemplateResult(prompt, choice, saved["dev"], saved["trials"], space, info=saved.get("info", {}),
                              member_choices=members)
    result = template_search(ctx, cfg, budget=budget)
    ctx.run.write_json(WINNER_FILE, {"choice": asdict(result.choice), "dev": result.dev, "trials": result.trials,
                                     **({"info": result.info} if result.info else {}),
                                     **({"members": [asdict(c) for c in result.member_choices]}
                                        if result.member_choices else {})})
    return result


def found(result: TemplateResult, winner: str = "template") -> Found:
    """What a template search hands over: its winner, with its dev evaluation and how it was chosen."""
    return Found(result.prompt, result.dev_evaluation, info={"winner": winner, "choice": asdict(result.choice),
                                                             "trials": result.trials, **result.info},
                 work={"trials": sum(n for state, n in result.trials.items() if state != "failed")})


def search(ctx: Context, cfg: TemplateSearchConfig) -> Found:
    return found(template_stage(ctx, cfg))


def best_so_far(ctx: Context, cfg: TemplateSearchConfig) -> Found | None:
    """An interrupted run's best: the chosen winner, else the study's best trial so far."""
    if (ctx.run.path / WINNER_FILE).exists():
        return found(template_stage(Context(**{**ctx.__dict__, "resume": True}), cfg))
    best = best_trial_prompt(ctx, cfg)
    return None if best is None else Found(best[0], info={"trial": best[1].number, "trial_dev": best[1].value})


def rescored_examples(task: Task, cfg: TemplateSearchConfig) -> int:
    """Dev examples the search scores after its trials: its best trials re-scored on all of dev."""
    dev = len(task.splits.get("dev") or [])
    return max(1 if not cfg.trial_dev or cfg.trial_dev >= dev else max(1, cfg.rescore_top), cfg.ensemble_max) * dev


def final_examples(task: Task, cfg: TemplateSearchConfig) -> int:
    """The best trials re-scored on dev (the winner's dev scores are kept), then both prompts at the end
    (an ensemble: each of its members)."""
    dev = len(task.splits.get("dev") or [])
    return rescored_examples(task, cfg) + (1 + max(1, cfg.ensemble_max)) * final_split_examples(task) - dev


def check_settings(task: Task, cfg: TemplateSearchConfig) -> None:
    """A bad space or storage fails before the model loads."""
    task_space(cfg, task)
    if cfg.storage:
        open_storage(cfg.storage)


def check(task: Task, model: LanguageModel, cfg: TemplateSearchConfig) -> None:
    """check_settings, and a model that can propose the instructions (before the run starts)."""
    check_settings(task, cfg)
    if cfg.propose and cfg.proposer is None and not model.is_causal:
        raise AutoPromptError(f"--propose needs a causal LM to write instructions; {model.name} is a masked LM "
                              "(give one with --proposer)")


METHOD = Method("template", TemplateSearchConfig, search, best_so_far, final_examples,
                help="Optuna search over a --space of instructions, layouts, verbalizers, demonstrations",
                has_study=True, check_settings=check_settings,
                check=check,
                check_resume=lambda ctx, cfg: study_storage(ctx.run))  # (the storage URL, password given again)
