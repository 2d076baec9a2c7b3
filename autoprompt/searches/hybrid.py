"""The hybrid: the template search, then the trigger search inside its winner (its instruction,
demonstrations, verbalizer and chat wrapping, [T] slots where the layout marks them); whichever
of the two is better on dev wins. Both stages log into one run (``"stage"``: template, trigger, choice)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from autoprompt.scoring import content_free_calibration, evaluate
from autoprompt.searches import template as template_method
from autoprompt.searches.base import Context, Found, Method
from autoprompt.searches.checkpoint import read_checkpoint
from autoprompt.searches.template import WINNER_FILE, TemplateSearchConfig, build_prompt, run_space, template_stage
from autoprompt.searches.trigger import TriggerSearchConfig, trigger_search, with_ids
from autoprompt.space import Choice


@dataclass
class HybridConfig:
    """The template search's settings and the trigger search's, for its two stages."""

    template_search: TemplateSearchConfig = field(default_factory=TemplateSearchConfig)
    trigger: TriggerSearchConfig = field(default_factory=TriggerSearchConfig)


class _Stage:
    """A run whose log lines carry the stage they belong to."""

    def __init__(self, run, stage: str) -> None:
        self.run, self.stage = run, stage

    def log(self, event: dict[str, Any]) -> None:
        self.run.log({"stage": self.stage, **event})

    def write_json(self, name: str, data: Any):
        return self.run.write_json(name, data)


def search(ctx: Context, cfg: HybridConfig) -> Found:
    template = template_stage(ctx, cfg.template_search, budget=ctx.budget.stage(0.5))  # half the time for triggers
    base = build_prompt(ctx.model, ctx.task, template.space, template.choice, seed=ctx.seed,
                        n_triggers=max(template.space.triggers) or cfg.trigger.n_triggers)
    state = read_checkpoint(ctx.run) if ctx.resume else None
    if state is not None:  # drop trigger steps logged after the checkpoint
        ctx.run.truncate_log(1 + max(i for i, e in enumerate(ctx.run.events())
                                     if e.get("stage") == "trigger" and e.get("step", -1) <= state.step))
    found, state = trigger_search(ctx.model, ctx.task, cfg.trigger, seed=ctx.seed, run=_Stage(ctx.run, "trigger"),
                                  state=state, progress=ctx.progress, base=base, budget=ctx.budget)
    if template.choice.calibration == "contextual":
        found = dataclasses.replace(found, calibration=content_free_calibration(ctx.model, found))
    found_dev = evaluate(ctx.model, found, ctx.task.examples("dev"), metric=ctx.task.metric)
    metric = ctx.task.metric
    ctx.run.log({"stage": "choice", "template_dev": template.dev[metric], "hybrid_dev": found_dev.metrics[metric]})
    steps = {"steps": state.step}
    chosen = template_method.found(template)
    if found_dev.metrics[metric] > template.dev[metric]:
        chosen = dataclasses.replace(chosen, prompt=found, dev=found_dev, info={**chosen.info, "winner": "hybrid"})
    return dataclasses.replace(chosen, info={**chosen.info, **steps}, work={**chosen.work, **steps})


def best_so_far(ctx: Context, cfg: HybridConfig) -> Found | None:
    """The template stage's best so far; once it has a winner, the trigger stage's best if better on dev."""
    if not (ctx.run.path / WINNER_FILE).exists():
        return template_method.best_so_far(ctx, cfg.template_search)
    winner = ctx.run.read_json(WINNER_FILE)
    space, choice = run_space(ctx, cfg.template_search), Choice(**winner["choice"])
    state = read_checkpoint(ctx.run)
    if state is not None and state.best_dev > winner["dev"][ctx.task.metric] and choice.calibration == "none":
        base = build_prompt(ctx.model, ctx.task, space, choice, seed=ctx.seed,
                            n_triggers=max(space.triggers) or cfg.trigger.n_triggers)
        return Found(with_ids(ctx.model, base, state.best_trigger_ids), info={"winner": "hybrid", "steps": state.step},
                     dev_metrics=state.best_dev_metrics)
    return Found(build_prompt(ctx.model, ctx.task, space, choice, seed=ctx.seed), info={"winner": "template"},
                 dev_metrics=winner["dev"])


def final_examples(task, cfg: HybridConfig) -> int:
    """The template search's, and the hybrid's own prompt scored on dev to choose between the two."""
    return template_method.final_examples(task, cfg.template_search) + len(task.splits.get("dev") or [])


METHOD = Method("hybrid", HybridConfig, search, best_so_far, final_examples,
                help="the template search, then triggers inside its winner", has_study=True,
                check_settings=lambda task, cfg: template_method.check_settings(task, cfg.template_search),
                check=lambda task, model, cfg: template_method.check_settings(task, cfg.template_search),
                check_resume=lambda ctx, cfg: (template_method.METHOD.check_resume(ctx, cfg.template_search),
                                               read_checkpoint(ctx.run)))
