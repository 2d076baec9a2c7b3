"""The hybrid: the template search, then the trigger search inside its winner (its instruction,
demonstrations, verbalizer and chat wrapping, [T] slots where the layout marks them); whichever
of the two is better on dev wins. Both stages log into one run (``"stage"``: template, trigger, choice).
With ``lora_stage`` a third stage trains LoRA through that winner (hybrid_stages.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autoprompt.errors import AutoPromptError
from autoprompt.models.adapters import lora_targets
from autoprompt.scoring import evaluate, measured_calibration
from autoprompt.searches import template as template_method
from autoprompt.searches.base import Context, Found, Method
from autoprompt.searches.checkpoint import read_checkpoint
from autoprompt.searches.hybrid_stages import (
    CHOICE_FILE,
    Chosen,
    LoraStageConfig,
    check_lora_settings,
    lora_best_so_far,
    lora_stage,
    stage_examples,
    write_choice,
)
from autoprompt.searches.template import (
    WINNER_FILE,
    TemplateResult,
    TemplateSearchConfig,
    build_prompt,
    run_space,
    template_stage,
)
from autoprompt.searches.trigger import TriggerSearchConfig, trigger_search, with_ids
from autoprompt.space import Choice

if TYPE_CHECKING:
    from autoprompt.prompt import Prompt
    from autoprompt.scoring import Evaluation


@dataclass
class HybridConfig:
    """The template search's settings, the trigger search's and LoRA's (off unless lora_stage), for its stages."""

    template_search: TemplateSearchConfig = field(default_factory=TemplateSearchConfig)
    trigger: TriggerSearchConfig = field(default_factory=TriggerSearchConfig)
    lora: LoraStageConfig = field(default_factory=LoraStageConfig)

    def __post_init__(self) -> None:
        if self.lora.lora_stage and self.template_search.ensemble_max > 1:  # LoRA trains through one prompt
            self.template_search = dataclasses.replace(self.template_search, ensemble_max=1)


class _Stage:
    """A run whose log lines carry the stage they belong to."""

    def __init__(self, run, stage: str) -> None:
        self.run, self.stage = run, stage

    def log(self, event: dict[str, Any]) -> None:
        self.run.log({"stage": self.stage, **event})

    def write_json(self, name: str, data: Any):
        return self.run.write_json(name, data)


def search(ctx: Context, cfg: HybridConfig) -> Found:
    staged = cfg.lora.lora_stage  # three stages: a third of the time each; else half for the triggers
    template = template_stage(ctx, cfg.template_search, budget=ctx.budget.stage(1 / 3 if staged else 0.5))
    _scored(ctx, template_method.rescored_examples(ctx.task, cfg.template_search))
    if not staged:
        return _trigger_stage(ctx, cfg, template, ctx.budget).found
    chosen = _saved_choice(ctx, cfg, template) if ctx.resume else None
    if chosen is None:
        chosen = _trigger_stage(ctx, cfg, template, ctx.budget.stage(0.5))
        write_choice(ctx.run, chosen)
    _scored(ctx, len(ctx.task.examples("dev")))  # (the trigger stage's prompt on dev, to choose)
    return lora_stage(ctx, cfg.lora, chosen)


def _scored(ctx: Context, n_examples: int) -> None:
    """A stage scored ``n_examples`` the budget kept time back for: the later stages may spend it."""
    ctx.budget.keep_for(max(0, ctx.budget.kept_examples - n_examples))


def _trigger_stage(ctx: Context, cfg: HybridConfig, template: TemplateResult, budget) -> Chosen:
    """The trigger search inside the template winner (from the run's checkpoint when it resumes); the better
    of the two on dev is chosen (the template's on a tie)."""
    base = _base(ctx, cfg, template)
    state = read_checkpoint(ctx.run) if ctx.resume else None
    if state is not None:  # drop trigger steps logged after the checkpoint
        ctx.run.truncate_log(1 + max(i for i, e in enumerate(ctx.run.events())
                                     if e.get("stage") == "trigger" and e.get("step", -1) <= state.step))
    found, state = trigger_search(ctx.model, ctx.task, cfg.trigger, seed=ctx.seed, run=_Stage(ctx.run, "trigger"),
                                  state=state, progress=ctx.progress, base=base, budget=budget)
    found = dataclasses.replace(found, calibration=_calibration(ctx, template, found))
    found_dev = evaluate(ctx.model, found, ctx.task.examples("dev"), metric=ctx.task.metric)
    metric = ctx.task.metric
    ctx.run.log({"stage": "choice", "template_dev": template.dev[metric], "hybrid_dev": found_dev.metrics[metric]})
    return _choose(ctx, template, found, found_dev, found_dev.metrics, state.step)


def _calibration(ctx: Context, template: TemplateResult, prompt) -> tuple[float, ...]:
    """The template winner's kind of calibration, measured again with the triggers in the prompt."""
    return measured_calibration(ctx.model, prompt, template.choice.calibration, ctx.task.examples("train"),
                                seed=ctx.seed)


def _choose(ctx: Context, template: TemplateResult, prompt: Prompt, dev: Evaluation | None,
            dev_metrics: dict[str, float], steps: int) -> Chosen:
    """The trigger stage's prompt when strictly better on dev than the template winner, else the template winner."""
    chosen = template_method.found(template)
    if dev_metrics[ctx.task.metric] > template.dev[ctx.task.metric]:
        chosen = dataclasses.replace(chosen, prompt=prompt, dev=dev, info={**chosen.info, "winner": "hybrid"})
    found = dataclasses.replace(chosen, info={**chosen.info, "steps": steps}, work={**chosen.work, "steps": steps})
    return Chosen(found, {"template": (template.prompt, template.dev), "trigger": (prompt, dev_metrics)})


def _saved_choice(ctx: Context, cfg: HybridConfig, template: TemplateResult) -> Chosen | None:
    """The choice a resumed run made before its LoRA stage (None: it made none yet)."""
    if not (ctx.run.path / CHOICE_FILE).exists():
        return None
    saved = ctx.run.read_json(CHOICE_FILE)
    prompt = with_ids(ctx.model, _base(ctx, cfg, template), saved["trigger_ids"])
    prompt = dataclasses.replace(prompt, calibration=_calibration(ctx, template, prompt))
    chosen = _choose(ctx, template, prompt, None, saved["trigger_dev"], saved["steps"])
    if chosen.found.info["winner"] != saved["winner"]:
        raise AutoPromptError(f"{ctx.run.path / CHOICE_FILE}: its winner is not the one its dev metrics choose")
    return chosen


def _base(ctx: Context, cfg: HybridConfig, template: TemplateResult) -> Prompt:
    """The template winner with the [T] slots the trigger stage searches."""
    return build_prompt(ctx.model, ctx.task, template.space, template.choice, seed=ctx.seed,
                        n_triggers=max(template.space.triggers) or cfg.trigger.n_triggers)


def best_so_far(ctx: Context, cfg: HybridConfig) -> Found | None:
    """The template stage's best so far; once it has a winner, the trigger stage's best if better on dev;
    once the two are chosen between, the LoRA stage's best if better on dev."""
    if not (ctx.run.path / WINNER_FILE).exists():
        return template_method.best_so_far(ctx, cfg.template_search)
    if cfg.lora.lora_stage and (ctx.run.path / CHOICE_FILE).exists():
        resumed = Context(**{**ctx.__dict__, "resume": True})
        chosen = _saved_choice(resumed, cfg, template_stage(resumed, cfg.template_search))
        return lora_best_so_far(ctx, cfg.lora, chosen)
    winner = ctx.run.read_json(WINNER_FILE)
    space, choice = run_space(ctx, cfg.template_search, revised=True), Choice(**winner["choice"])
    state = read_checkpoint(ctx.run)
    if state is not None and state.best_dev > winner["dev"][ctx.task.metric] and choice.calibration == "none":
        base = build_prompt(ctx.model, ctx.task, space, choice, seed=ctx.seed,
                            n_triggers=max(space.triggers) or cfg.trigger.n_triggers)
        return Found(with_ids(ctx.model, base, state.best_trigger_ids), info={"winner": "hybrid", "steps": state.step},
                     dev_metrics=state.best_dev_metrics)
    return Found(build_prompt(ctx.model, ctx.task, space, choice, seed=ctx.seed), info={"winner": "template"},
                 dev_metrics=winner["dev"])


def final_examples(task, cfg: HybridConfig) -> int:
    """The template search's, and the hybrid's own prompt scored on dev to choose between the two (with the
    LoRA stage: each stage's prompt on test too)."""
    staged = stage_examples(task) if cfg.lora.lora_stage else 0
    return template_method.final_examples(task, cfg.template_search) + len(task.splits.get("dev") or []) + staged


def check_settings(task, cfg: HybridConfig) -> None:
    template_method.check_settings(task, cfg.template_search)
    check_lora_settings(cfg.lora)


def check(task, model, cfg: HybridConfig) -> None:
    check_settings(task, cfg)
    if cfg.lora.lora_stage:  # (modules LoRA cannot find fail before the run)
        lora_targets(model, cfg.lora.lora_targets)


METHOD = Method("hybrid", HybridConfig, search, best_so_far, final_examples,
                help="the template search, then triggers inside its winner (--lora-stage: then LoRA through it)", has_study=True,
                check_settings=check_settings, check=check,
                check_resume=lambda ctx, cfg: (template_method.METHOD.check_resume(ctx, cfg.template_search),
                                               read_checkpoint(ctx.run)))
