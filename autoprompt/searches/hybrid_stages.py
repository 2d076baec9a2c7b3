"""The hybrid's optional third stage (``--lora-stage``): LoRA trained through the winner of the template and
trigger stages, shipped only when strictly better on dev; and each stage's dev and test side by side.

The stage is a part of the run of its own (StageRun): its training checkpoint (checkpoint.json and its
tensors, tuning_state.py) lives in the run's ``lora/`` folder, so it never meets the trigger stage's
checkpoint.json, and its events go to the run's log.jsonl with ``"stage": "lora"``. The winner it trains
through is saved first (hybrid_choice.json): a resumed run trains through the same prompt, from the stage's
checkpoint, without searching triggers again."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from autoprompt.errors import AutoPromptError
from autoprompt.runs.folder import Run
from autoprompt.scoring import evaluate
from autoprompt.searches import lora, tuning
from autoprompt.searches.base import Context, Found, opt
from autoprompt.searches.tuning_state import CHECKPOINT

if TYPE_CHECKING:
    from autoprompt.prompt import Prompt

CHOICE_FILE = "hybrid_choice.json"  # the template and trigger stages' winner, once chosen (the LoRA stage's start)
LORA_FOLDER = "lora"  # the LoRA stage's checkpoint files, inside the run folder


@dataclass
class LoraStageConfig(lora.LoraTuningConfig):
    """LoRA's settings (--method lora's), and whether the hybrid trains it through its winner."""

    section: ClassVar[str] = "lora"  # its key in config.json

    lora_stage: bool = opt(False, "Hybrid: after the template and trigger stages, train LoRA through their winner "
                           "(the time budget in three); the tuned prompt ships only when strictly better on dev.")


@dataclass
class Chosen:
    """The template and trigger stages' outcome: what they ship, and each stage's best prompt with its dev metrics."""

    found: Found
    stages: dict[str, tuple[Prompt, dict[str, float]]]

    @property
    def dev(self) -> dict[str, float]:
        return self.stages["trigger" if self.found.info["winner"] == "hybrid" else "template"][1]


class StageRun(Run):
    """The LoRA stage's part of a hybrid run: files in the run's lora/ folder, events in the run's log."""

    def __init__(self, run: Run) -> None:
        super().__init__(run.path / LORA_FOLDER)
        self.parent = run

    def write_json(self, name: str, data: Any, *, compact: bool = False):
        self.path.mkdir(exist_ok=True)
        return super().write_json(name, data, compact=compact)

    def log(self, event: dict[str, Any]) -> None:
        self.parent.log({"stage": "lora", **event})

    def events(self) -> list[dict[str, Any]]:
        return [e for e in self.parent.events() if e.get("stage") == "lora"]

    def truncate_log(self, keep: int) -> None:
        """Keep the stage's first ``keep`` events (the stage is the run's last: its events end the log)."""
        events = self.parent.events()
        first = next((i for i, e in enumerate(events) if e.get("stage") == "lora"), len(events))
        self.parent.truncate_log(first + keep)


def write_choice(run: Run, chosen: Chosen) -> None:
    trigger, dev = chosen.stages["trigger"]
    run.write_json(CHOICE_FILE, {"winner": chosen.found.info["winner"], "trigger_ids": list(trigger.trigger_ids),
                                 "trigger_dev": dev, "steps": chosen.found.work["steps"]})


def lora_stage(ctx: Context, cfg: LoraStageConfig, chosen: Chosen) -> Found:
    """LoRA trained through the chosen prompt (step 0: that prompt, untouched); the tuned prompt ships when
    its best dev metric is strictly above the chosen prompt's, else the chosen prompt as it is (no adapter)."""
    metric = ctx.task.metric
    plan = lora.plan(ctx.model, ctx.task, cfg, ctx.seed, prompt=chosen.found.prompt)
    tuned = tuning.tune(dataclasses.replace(ctx, run=StageRun(ctx.run)), cfg, plan)
    found = _lora_choice(chosen, tuned, metric)
    stages = {**chosen.stages, "lora": (tuned.prompt, tuned.dev_metrics or {})}
    table = stage_table(ctx, stages, _stage_of(found.info["winner"]))
    return dataclasses.replace(found, info={**found.info, "stages": table})


def _lora_choice(chosen: Chosen, tuned: Found, metric: str) -> Found:
    """The tuned prompt when strictly better on dev than the chosen one, else the chosen one; with the training's info."""
    found = chosen.found
    info = {**found.info, "lora": tuned.info}
    work = {**found.work, "LoRA steps": tuned.work["steps"]}
    if (tuned.dev_metrics or {}).get(metric, float("-inf")) > chosen.dev[metric]:
        return Found(tuned.prompt, tuned.dev, {**info, "winner": "lora"}, work, tuned.dev_metrics)
    return dataclasses.replace(found, info=info, work=work)


def _stage_of(winner: str) -> str:
    return {"hybrid": "trigger"}.get(winner, winner)


def stage_table(ctx: Context, stages: dict[str, tuple[Prompt, dict[str, float]]], winner: str) -> dict[str, dict]:
    """Each stage's best prompt: its dev metric (as the stage measured it) and its test metric, scored here once
    at the end (reported, never used to choose); ``"chosen"`` marks the stage whose prompt the hybrid ships."""
    metric, test = ctx.task.metric, ctx.task.examples("test") if ctx.task.splits.get("test") else []
    table = {}
    for name, (prompt, dev) in stages.items():
        row: dict[str, Any] = {"dev": dev.get(metric)}
        if test:
            row["test"] = evaluate(ctx.model, prompt, test, metric=metric).metrics[metric]
        table[name] = {**row, "chosen": name == winner}
    return table


def stage_examples(task) -> int:
    """What the stage table scores after the search: each stage's prompt on test."""
    return 3 * len(task.splits.get("test") or [])


def lora_best_so_far(ctx: Context, cfg: LoraStageConfig, chosen: Chosen) -> Found:
    """An interrupted LoRA stage's best: the tuned prompt of its checkpoint when strictly better on dev than
    the chosen prompt, else the chosen prompt."""
    run = StageRun(ctx.run)
    plan = lora.plan(ctx.model, ctx.task, cfg, ctx.seed, prompt=chosen.found.prompt)
    stage_ctx = dataclasses.replace(ctx, run=run)
    tuned = tuning.best_so_far(stage_ctx, plan) if (run.path / CHECKPOINT).exists() else None
    if tuned is None:
        return dataclasses.replace(chosen.found, dev_metrics=chosen.dev)
    return _lora_choice(chosen, tuned, ctx.task.metric)


def check_lora_settings(cfg: LoraStageConfig) -> None:
    """LoRA settings without --lora-stage would do nothing (with it, the template stage keeps one prompt:
    ``HybridConfig`` sets its ensemble_max to 1, as an ensemble has no one prompt to train through)."""
    if not cfg.lora_stage:
        defaults = LoraStageConfig()
        given = [f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(defaults, f.name)]
        if given:
            raise AutoPromptError(f"--method hybrid uses {', '.join('--' + g.replace('_', '-') for g in given)} "
                                  "only with --lora-stage")

