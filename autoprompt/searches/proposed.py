"""Instructions a model writes for the template search: proposed before the trials (APE, ``--propose N``:
they join the study's instruction dimension) and revised after them (GEPA-style reflection, ``--revise N``).

A revision round:
The proposer reads the best trial's instruction and dev examples that trial's prompt gets wrong (its
answer, then the right one) and writes N revised instructions; each replaces the instruction in the
best trial's choice and is scored like a trial, on the trials' dev sample. The revisions then join the
best trials in the re-scoring on all of dev, where the winner is chosen as before: a revision wins only
when it is better there. They are not Optuna trials (a categorical dimension cannot grow inside a study):
``revisions.json`` in the run folder holds them, with their scores, so a resumed run has them back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from autoprompt.models import load_model
from autoprompt.proposals import propose_instructions
from autoprompt.scoring import evaluate
from autoprompt.space import Choice

if TYPE_CHECKING:
    import optuna

    from autoprompt.data import Example
    from autoprompt.models import LanguageModel
    from autoprompt.prompt import Prompt
    from autoprompt.searches.base import Context
    from autoprompt.space import SearchSpace

log = logging.getLogger(__name__)

PROPOSALS_FILE = "proposals.json"  # the instructions proposed for the run's study, with their origins
REVISIONS_FILE = "revisions.json"  # the revised instructions, with their scores


def proposer(ctx: Context, name: str | None) -> LanguageModel:
    """The model that writes instructions: ``name`` (a larger local one), else the scoring model."""
    return ctx.model if name is None else load_model(name, device=str(ctx.model.device))


def with_proposals(ctx: Context, space: SearchSpace, n: int, name: str | None, *, propose: bool) -> SearchSpace:
    """The space with the run's ``n`` proposed instructions after its own (proposed now with ``name``'s model
    when ``propose`` and the run has none saved)."""
    if not n:
        return space
    if (ctx.run.path / PROPOSALS_FILE).exists():
        saved = ctx.run.read_json(PROPOSALS_FILE)
    elif propose:
        saved = _propose(ctx, space, n, name)
    else:  # interrupted before the proposals were written: the study has no trial either
        return space
    return replace(space, instruction=space.instruction + [p["instruction"] for p in saved])


def _propose(ctx: Context, space: SearchSpace, n: int, name: str | None) -> list[dict[str, Any]]:
    """The proposals (those new to the space), saved in the run folder and logged with their place in it."""
    proposals = propose_instructions(proposer(ctx, name), ctx.task, n=n, seed=ctx.seed)
    saved = [asdict(p) for p in proposals if p.instruction not in space.instruction]
    ctx.run.write_json(PROPOSALS_FILE, saved)
    for k, proposal in enumerate(saved):
        ctx.run.log({"stage": "propose", "index": len(space.instruction) + k, **proposal})  # its index in the space
    log.info("%d instructions proposed (%d asked for, the rest empty or repeated)", len(saved), n)
    return saved


@dataclass
class Revision:
    """A revised instruction scored as a trial would be: what the re-scoring needs of a trial."""

    instruction: str
    revises: int  # the trial whose instruction it revises
    shown: tuple[str, ...]  # the sources of the mistakes its meta-prompt showed
    value: float | None  # the task's metric on the trials' dev sample (None: not scored, the budget ran out)
    params: dict[str, Any] = field(default_factory=dict)  # the revised trial's params, its instruction's index
    number: int = -1  # after every trial of the study, in order (for logs and ties)
    user_attrs: dict[str, Any] = field(default_factory=lambda: {"revision": True})
    datetime_start: datetime | None = None
    datetime_complete: datetime | None = None


def with_revisions(space: SearchSpace, revisions: list[Revision]) -> SearchSpace:
    """The space with the revised instructions after its own (their params index them there)."""
    return replace(space, instruction=space.instruction + [r.instruction for r in revisions])


def saved_revisions(ctx: Context) -> list[Revision] | None:
    """The run's revisions (None: it made none yet)."""
    if not (ctx.run.path / REVISIONS_FILE).exists():
        return None
    return [Revision(**{**r, "shown": tuple(r["shown"])}) for r in ctx.run.read_json(REVISIONS_FILE)]


def revise(ctx: Context, n: int, proposer: LanguageModel, model: LanguageModel, space: SearchSpace,
           study: optuna.Study, dev: list[Example], build: Callable[[Choice, SearchSpace], Prompt]
           ) -> list[Revision]:
    """The revision round on the study's best trial (or the run's saved one): up to ``n`` revisions,
    scored on ``dev`` (the trials' sample) with ``model`` (the trials' dtype); saved and logged."""
    import optuna

    saved = saved_revisions(ctx)
    if saved is not None:
        return saved
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.value is not None and "duplicate_of" not in t.user_attrs]
    if not done or n <= 0:
        return []
    best = max(done, key=lambda t: (t.value, -t.number))
    choice = Choice.from_params(best.params, space)
    evaluation = evaluate(model, build(choice, space), dev, metric=ctx.task.metric)
    mistakes = _mistakes(ctx, dev, evaluation)
    if not mistakes:
        log.info("revision round: trial %d gets every dev example right; nothing to revise", best.number)
    current = space.instruction[choice.instruction]
    proposals = propose_instructions(proposer, ctx.task, n=n, seed=ctx.seed, current=current, mistakes=mistakes)
    revisions, first = [], len(study.trials)
    for p in (p for p in proposals if p.instruction not in space.instruction):
        params = {**best.params, "instruction": len(space.instruction) + len(revisions)}
        revisions.append(Revision(p.instruction, best.number, p.shown, None, params, first + len(revisions)))
    extended = with_revisions(space, revisions)
    for r in revisions:
        if ctx.budget.spent():
            log.info("time budget: revision %r is not scored (%s)", r.instruction, ctx.budget.describe())
            continue
        scored = evaluate(model, build(Choice.from_params(r.params, extended), extended), dev, metric=ctx.task.metric)
        r.value = scored.metrics[ctx.task.metric]
        ctx.run.log({"stage": "revision", "trial": r.number, "revises": r.revises, "instruction": r.instruction,
                     "dev": r.value})
    ctx.run.write_json(REVISIONS_FILE, [{**asdict(r), "datetime_start": None, "datetime_complete": None}
                                        for r in revisions])
    log.info("%d revised instructions of trial %d's (%d asked for); best on the trials' dev: %s", len(revisions),
             best.number, n, max((r.value for r in revisions if r.value is not None), default="none"))
    return revisions


def _mistakes(ctx: Context, dev: list[Example], evaluation) -> list[tuple[Example, str]]:
    """The dev examples the prompt gets wrong, each with its answer as the meta-prompt shows it (a label's
    first word, as the right one is shown)."""
    verbalizer, out = ctx.task.verbalizer, []
    for k, (example, predicted) in enumerate(zip(dev, evaluation.predictions, strict=True)):
        if evaluation.scores is not None:  # generated answers: the metric's value for this one
            right = evaluation.scores[k] >= 1.0
        elif evaluation.target_ranks is not None:  # first-token answers: the gold token ranked first
            right = int(evaluation.target_ranks[k]) == 0
        else:
            right = predicted == example.answer
        if not right:
            given = verbalizer[predicted][0].strip() if verbalizer and predicted in verbalizer else str(predicted)
            out.append((example, given))
    return out
