"""Choosing a search's ensemble on dev: the best k prompts of a search (best first, each already scored
on all of dev) combined, for k = 1 up to ``ensemble_max``; the best k on dev wins, ties to the smaller
k, so a single prompt stays the answer whenever an ensemble does not beat it. An ensemble of k prompts
costs k passes per input in production; with a ``confidence`` it replaces the best prompt alone only for a
dev gain the data supports, paired bootstrap over the same dev examples (the rule that keeps a task's own
prompt, selection.judge). The members were ranked on the same dev examples that choose k: the ensemble's
dev value is as optimistic as a single winner's."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from autoprompt.ensemble import Ensemble, combine_for
from autoprompt.errors import InputTooLong, TemplateError
from autoprompt.runs.predictions import side
from autoprompt.scoring import combine_evaluations
from autoprompt.selection import judge
from autoprompt.space import SIMILAR_SELECTIONS, Choice

if TYPE_CHECKING:
    from autoprompt.data import Example
    from autoprompt.prompt import Prompt
    from autoprompt.scoring import Evaluation
    from autoprompt.searches.base import Context

log = logging.getLogger(__name__)

NOTE = ("members and k were chosen on the same dev examples the ensemble is scored on: its dev value is "
        "optimistic, like any winner's; test was not used")


@dataclass
class Candidate:
    """One prompt of the search, scored on all of dev: its evaluation and where it came from."""

    prompt: Prompt
    dev: Evaluation
    origin: dict[str, Any] = field(default_factory=dict)  # e.g. {"trial": 7, "choice": {...}}


@dataclass
class Chosen:
    """The ensemble (or single prompt) that won on dev, its dev evaluation, and what the run records."""

    prompt: Prompt | Ensemble
    dev: Evaluation
    info: dict[str, Any]
    members: list[Candidate] = field(default_factory=list)  # an ensemble's, best first


def choose_ensemble(ranked: list[Candidate], dev: list[Example], metric: str, ensemble_max: int, *,
                    confidence: float = 0.0, seed: int = 0, partner: Candidate | None = None) -> Chosen:
    """The best of the ensembles of the best k of ``ranked`` (best first) on ``dev``, k = 1..ensemble_max; an
    ensemble only when its gain over the best prompt alone is supported with ``confidence`` (0: any gain).
    ``partner`` (the best prompt scored the channel way): also the best k - 1 with it, k = 2..ensemble_max."""
    best = ranked[0]
    rows: list[dict[str, Any]] = [{"k": 1, "dev": best.dev.metrics[metric]}]
    chosen, gold = Chosen(best.prompt, best.dev, {}, [best]), [e.answer for e in dev]
    n = min(ensemble_max, len(ranked))
    tries = [(k, ranked[:k]) for k in range(2, n + 1)]
    tries += [(k, [*ranked[:k - 1], partner]) for k in range(2, ensemble_max + 1) if partner and k - 1 <= n]
    for k, members in tries:
        ensemble = ensemble_of([c.prompt for c in members])
        evaluation = combine_evaluations(ensemble, [c.dev for c in members], dev, metric)
        row = {"k": k, "dev": evaluation.metrics[metric], **({"channel": True} if members[-1] is partner else {})}
        if confidence > 0 and evaluation.metrics[metric] > best.dev.metrics[metric]:
            verdict = judge(metric, gold, side(evaluation), side(best.dev),
                            labels=evaluation.labels or None, confidence=confidence, seed=seed)
            row |= {"gain_low": verdict.gain_low, "supported": verdict.keep_found}
        rows.append(row)
        if evaluation.metrics[metric] > chosen.dev.metrics[metric] and row.get("supported", True):
            chosen = Chosen(ensemble, evaluation, {}, members)  # (strictly better: ties keep the smaller k, no partner)
    k = len(chosen.members)
    chosen.info = {"ensemble": {
        "k": k, "combine": combine_for(best.prompt), "metric": metric,
        "ranked": [{**c.origin, "dev": c.dev.metrics[metric]} for c in ranked[:n]],  # the first k are its members
        **({"partner": {**partner.origin, "dev": partner.dev.metrics[metric]}} if partner else {}),
        "channel": partner is not None and chosen.members[-1] is partner,
        "candidates": rows, "confidence": confidence, "note": NOTE}}
    log.info("ensemble of the best k on dev: %s -> k = %d", ", ".join(f"k={r['k']}: {r['dev']:.4f}" for r in rows), k)
    return chosen


def ensemble_stage(ctx: Context, rescored: list, dev: list[Example], ensemble_max: int, confidence: float, draws: int,
                   channel: bool, score: Callable[[Choice], tuple[Prompt, Evaluation]]) -> Chosen:
    """The ensemble of a search's re-scored trials ((dev, trial value), choice, Candidate), best first: the best
    one's other demonstration draws and (``channel``) its channel partner join them, choose_ensemble picks."""
    ranked = [c for _, _, c in with_other_draws(ctx, rescored, draws, score)]
    partner = channel_partner(ctx, ranked[0], score) if channel else None
    chosen = choose_ensemble(ranked, dev, ctx.task.metric, ensemble_max, confidence=confidence, seed=ctx.seed,
                             partner=partner)
    ctx.run.log({"stage": "ensemble", **chosen.info["ensemble"]})
    return chosen


def channel_partner(ctx: Context, best: Candidate, score: Callable[[Choice], tuple[Prompt, Evaluation]]
                    ) -> Candidate | None:
    """The best prompt scored the noisy-channel way (the input's likelihood after each label word, Min et al.
    2022), on all of dev (``score``): an ensemble partner that errs differently from the prompts the search
    ranked. None where there is none: no labels, a masked LM, a template of another shape, the time budget."""
    choice = Choice(**best.origin["choice"])
    if not best.prompt.is_classification or not ctx.model.is_causal or ctx.budget.spent():
        return None
    try:
        prompt, evaluation = score(replace(choice, channel=True))
    except (TemplateError, InputTooLong) as exc:
        log.info("no channel partner for trial %s: %s", best.origin.get("trial"), exc)
        return None
    ctx.run.log({"stage": "rescore", "trial": best.origin.get("trial"), "channel": True,
                 "dev": evaluation.metrics[ctx.task.metric]})
    return Candidate(prompt, evaluation, {**best.origin, "channel": True, "choice": asdict(replace(choice, channel=True))})


def ensemble_of(prompts: list[Prompt]) -> Ensemble:
    """The ensemble of a search's prompts (best first), each label prompt in the best one's label order."""
    return Ensemble.of([replace(p, **_in_order(p, prompts[0].labels)) for p in prompts])


def _in_order(prompt: Prompt, labels: list[str]) -> dict[str, Any]:
    """A label prompt's verbalizer and calibration in this label order (a space's verbalizers may list the
    labels in another order; the ensemble averages probabilities label by label)."""
    if not prompt.is_classification or prompt.labels == labels or sorted(prompt.labels) != sorted(labels):
        return {}
    order = [prompt.labels.index(label) for label in labels]
    calibration = tuple(prompt.calibration[i] for i in order) if prompt.calibration else ()
    return {"verbalizer": {label: prompt.verbalizer[label] for label in labels}, "calibration": calibration}


def with_other_draws(ctx: Context, rescored: list, draws: int,
                     score: Callable[[Choice], tuple[Prompt, Evaluation]]) -> list:
    """The re-scored trials ((dev, trial value), choice, Candidate), best first, and the best one's choice with
    each other demonstration draw of the space, scored on all of dev (``score``): the same prompt shown other
    train examples, so that an ensemble of them averages out which examples one draw happened to show
    (a demonstration ensemble). Ranked with the trials (on a tie, after them)."""
    _, choice, best = rescored[0]
    if not choice.k or choice.selection in SIMILAR_SELECTIONS or draws < 2:
        return rescored
    seen = {c for _, c, _ in rescored}
    for draw in range(draws):
        sibling = replace(choice, draw=draw)
        if sibling in seen:
            continue
        if ctx.budget.spent():
            log.info("time budget: the other draws of trial %d are not scored (%s)", best.origin["trial"],
                     ctx.budget.describe())
            break
        try:
            prompt, evaluation = score(sibling)
        except InputTooLong as exc:
            log.warning("draw %d of trial %d is not scored: %s", draw, best.origin["trial"], exc)
            continue
        value = evaluation.metrics[ctx.task.metric]
        ctx.run.log({"stage": "rescore", "trial": best.origin["trial"], "draw": draw, "dev": value})
        origin = {"trial": best.origin["trial"], "draw": draw, "choice": asdict(sibling)}
        rescored.append(((value, float("-inf")), sibling, Candidate(prompt, evaluation, origin)))
    return sorted(rescored, key=lambda r: r[0], reverse=True)
