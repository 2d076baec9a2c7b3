"""Prompt tuning (Lester et al. 2021; P-tuning's placement, Liu et al. 2021): n continuous vectors
in the task's template, where its [T] slots are (else after its last field), trained while the
model stays frozen. They start as the embeddings of the template's own words (or of ``init_text``),
so step 0 is close to the task's prompt. The prompt file shows each vector's nearest vocabulary
token in its [T] slot (for people); the model reads the vectors, from the adapter file beside it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

from autoprompt.adapter import SOFT_TENSOR, Adapter
from autoprompt.errors import AutoPromptError
from autoprompt.models.adapters import nearest_tokens
from autoprompt.prompt import Prompt
from autoprompt.scoring import encode_examples
from autoprompt.searches import tuning
from autoprompt.searches.base import Context, Found, Method, final_split_examples, opt
from autoprompt.template import count_triggers, parse_template, with_trigger_slots

if TYPE_CHECKING:
    from autoprompt.models import LanguageModel
    from autoprompt.task import Task


@dataclass
class SoftPromptConfig(tuning.TuningConfig):
    """Settings of prompt tuning; the seed and time budget are the run's (RunSettings)."""

    section: ClassVar[str] = "soft"  # its key in config.json

    n_tokens: int = opt(10, "Soft prompt vectors, put in [T] slots after the last field (a template with [T] "
                        "slots keeps its own number and places).")
    init_text: str = opt("", "Text whose tokens' embeddings start the vectors, repeated to fill them "
                         "(default: the template's own words).")
    prompt_lr: float = opt(0.01, "Learning rate of the soft prompt (AdamW).")


def plan(model: LanguageModel, task: Task, cfg: SoftPromptConfig) -> tuning.Plan:
    """The task's prompt with [T] slots, their vectors from the initial text's embeddings."""
    template = with_trigger_slots(task.template, cfg.n_tokens)
    n_tokens = count_triggers(template)
    if n_tokens == 0:
        raise AutoPromptError(f"{task.name}: a soft prompt needs at least one vector (--n-tokens)")
    text = cfg.init_text or "".join(s.value for s in parse_template(template) if s.kind == "text").strip() or "the"
    init = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    init = (init * n_tokens)[:n_tokens]
    base = Prompt(template=template, verbalizer=task.verbalizer, fields=tuple(task.fields), model=model.ref,
                  generation=task.generation)
    embedding = model.hf_model.get_input_embeddings().weight.detach()
    settings, fingerprint = {"n_tokens": n_tokens}, model.weights_fingerprint

    def finish(tensors):
        ids = nearest_tokens(model, tensors[SOFT_TENSOR])
        prompt = base.with_triggers(ids, [model.tokenizer.decode([i]) for i in ids])
        return replace(prompt, adapter=Adapter("soft", settings, tensors, fingerprint))

    initial = finish({SOFT_TENSOR: embedding[init].to("cpu").float().clone()})
    return tuning.Plan(initial, cfg.prompt_lr, finish)


def search(ctx: Context, cfg: SoftPromptConfig) -> Found:
    return tuning.tune(ctx, cfg, plan(ctx.model, ctx.task, cfg))


def best_so_far(ctx: Context, cfg: SoftPromptConfig) -> Found | None:
    return tuning.best_so_far(ctx, plan(ctx.model, ctx.task, cfg))


def check(task: Task, model: LanguageModel, cfg: SoftPromptConfig) -> None:
    """A template or label words the model cannot read fail before a run folder exists."""
    prompt = plan(model, task, cfg).prompt
    encode_examples(model, replace(prompt, adapter=None), [task.examples(split)[0] for split in task.splits])


METHOD = Method("soft", SoftPromptConfig, search, best_so_far,
                final_examples=lambda task, cfg: 2 * final_split_examples(task),
                help="prompt tuning: trained vectors in the template's [T] slots, the model frozen", check=check,
                check_resume=lambda ctx, cfg: tuning.check_resume(ctx, lambda: plan(ctx.model, ctx.task, cfg)))
