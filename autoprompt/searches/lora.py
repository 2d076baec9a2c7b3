"""Prompt-based fine-tuning (LM-BFF, Gao et al. 2021) with LoRA (Hu et al. 2021): the model learns
the task through the task's own template and verbalizer (the hybrid's LoRA stage: through its winner),
the answer read at [P] as in every other method, with low-rank updates to its attention projections
(peft's LoRA layers). B starts at zero, so step 0 is the prompt on the untouched model. The adapter's
tensors go beside the prompt file."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

import torch

from autoprompt.adapter import Adapter
from autoprompt.models.adapters import lora_targets, with_adapter
from autoprompt.prompt import Prompt
from autoprompt.scoring import encode_examples
from autoprompt.searches import tuning
from autoprompt.searches.base import Context, Found, Method, final_split_examples, opt

if TYPE_CHECKING:
    from autoprompt.models import LanguageModel
    from autoprompt.task import Task


@dataclass
class LoraTuningConfig(tuning.TuningConfig):
    """Settings of LoRA fine-tuning; the seed and time budget are the run's (RunSettings)."""

    section: ClassVar[str] = "lora"  # its key in config.json

    lora_r: int = opt(8, "Rank of the LoRA updates.")
    lora_alpha: float = opt(16.0, "LoRA's scale: updates are multiplied by alpha / r.")
    lora_dropout: float = opt(0.05, "Dropout on LoRA's input while training (0: none).", min=0)
    lora_targets: str = opt("auto", "Modules LoRA adapts, comma-separated (auto: the attention projections "
                            "q_proj,k_proj,v_proj,o_proj, else peft's choice for the model family).")
    lora_lr: float = opt(5e-4, "Learning rate of the LoRA weights (AdamW).")


def plan(model: LanguageModel, task: Task, cfg: LoraTuningConfig, seed: int,
         prompt: Prompt | None = None) -> tuning.Plan:
    """``prompt`` (default: the task's own) on the model with fresh LoRA layers (A seeded, B zero): the
    hybrid's LoRA stage trains through its winner."""
    prompt = replace(prompt or Prompt.from_task(task), model=model.ref)
    settings = {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
                "target_modules": lora_targets(model, cfg.lora_targets)}
    fingerprint = model.weights_fingerprint
    with torch.random.fork_rng(devices=[]):  # peft draws A from the global generator
        torch.manual_seed(seed)
        fresh = with_adapter(model, Adapter("lora", settings, {}, fingerprint), cache=False)
    initial = {name: p.detach().to("cpu", torch.float32).clone() for name, p in fresh.adapter_parameters.items()}

    def finish(tensors):
        return replace(prompt, adapter=Adapter("lora", settings, tensors, fingerprint))

    return tuning.Plan(finish(initial), cfg.lora_lr, finish)


def search(ctx: Context, cfg: LoraTuningConfig) -> Found:
    return untouched(tuning.tune(ctx, cfg, plan(ctx.model, ctx.task, cfg, ctx.seed)))


def best_so_far(ctx: Context, cfg: LoraTuningConfig) -> Found | None:
    found = tuning.best_so_far(ctx, plan(ctx.model, ctx.task, cfg, ctx.seed))
    return None if found is None else untouched(found)


def untouched(found: Found) -> Found:
    """No step beat step 0 on dev: the prompt alone (B is zero: the adapter would change nothing but the
    files to ship and load)."""
    if found.info.get("best_step") != 0:
        return found
    return replace(found, prompt=replace(found.prompt, adapter=None),
                   info={**found.info, "adapter": "none: no step was better on dev than the untouched model"})


def check(task: Task, model: LanguageModel, cfg: LoraTuningConfig) -> None:
    """Unknown target modules, or a template the data does not fit, fail before a run folder exists."""
    prompt = replace(plan(model, task, cfg, 0).prompt, adapter=None)
    encode_examples(model, prompt, [task.examples(split)[0] for split in task.splits])


METHOD = Method("lora", LoraTuningConfig, search, best_so_far,
                final_examples=lambda task, cfg: 2 * final_split_examples(task),
                help="prompt-based fine-tuning with LoRA adapters, through the task's template and verbalizer",
                check=check, check_resume=lambda ctx, cfg: tuning.check_resume(
                    ctx, lambda: plan(ctx.model, ctx.task, cfg, ctx.seed)))
