"""Gradient-guided trigger search (AutoPrompt, Shin et al. 2020; GCG, Zou et al. 2023).

Each step: the gradient of the objective with respect to the one-hot trigger tokens gives, per
slot, the top-k tokens of ``-grad . E``; candidate swaps are then really scored on an evaluation
batch, all at once, and the best one is kept if it lowers the loss (confirmed on fresh examples).
Every few steps the current prompt is scored on dev; the prompt with the best dev metric wins.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from autoprompt.budget import Budget
from autoprompt.errors import AutoPromptError
from autoprompt.gradient import trigger_gradient
from autoprompt.models import fast_twin
from autoprompt.objective import Objective, objective_for
from autoprompt.prompt import Prompt
from autoprompt.scoring import Caches, PrefixCache, encode_examples, evaluate, label_word_ids
from autoprompt.searches.base import Context, Found, Method, final_split_examples, opt
from autoprompt.searches.checkpoint import TriggerState, read_checkpoint, record, tuple_state
from autoprompt.template import count_triggers, with_trigger_slots

if TYPE_CHECKING:
    from autoprompt.data import Example
    from autoprompt.models import LanguageModel
    from autoprompt.task import Task

log = logging.getLogger(__name__)


@dataclass
class TriggerSearchConfig:
    """Settings of the trigger search; the defaults are the recommended ones (the seed and time budget
    are the run's: RunSettings)."""

    section: ClassVar[str] = "trigger"  # its key in config.json

    n_triggers: int = opt(5, "[T] slots to add after the last field when the task's template has none "
                          "(--template places them: '{subject} was born in [T] [T][P]').", min=0)
    steps: int = opt(20, "Search steps at most.")
    mode: str = opt("auto", "autoprompt: one slot per step, its top-k all scored; gcg: random single swaps over all "
                     "slots; auto: gcg for tasks with generated answers, autoprompt for the rest.",
                     choices=("auto", "autoprompt", "gcg"))
    top_k: int | None = opt(None, "Candidate tokens per slot, from -grad . E (default: 16 in autoprompt mode, "
                            "64 in gcg mode).", min=1)
    n_candidates: int = opt(64, "Candidates scored per step in gcg mode (autoprompt mode scores top_k).", min=1)
    loss: str = opt("labels", "vocab: log-prob of the gold label over the vocabulary (AutoPrompt); "
                     "labels: log-softmax over the label set.", choices=("vocab", "labels"))
    grad_batch: int = opt(32, "Train examples per gradient batch.")
    grad_accumulation: int = opt(1, "Gradient batches accumulated per step.")
    eval_batch: int | None = opt(None, "Train examples each candidate is scored on (fewer: noisier choices; default: "
                                 "32 in autoprompt mode, 8 in gcg mode, which scores more candidates).", min=1)
    confirm_batch: int = opt(32, "Fresh train examples the best candidate must also beat the current prompt on "
                              "before it is kept (0: keep it on the evaluation batch alone).", min=0)
    dev_every: int = opt(5, "Score the current prompt on dev every N steps.")
    dev_limit: int | None = opt(None, "Dev examples used for selection (default: all; their prefixes are cached).")
    patience: int | None = opt(None, "Stop after this many dev checks without improvement.")
    init_token: str = opt("!", "Initial text of every trigger slot (one token; GCG's \"!\" keeps the template's accuracy).")
    ascii_only: bool = opt(True, "Only propose tokens whose text is ASCII.")
    whole_words: bool = opt(False, "Only propose tokens that start a word (leading space).")
    slot_order: str = opt("cycle", "autoprompt mode: which slot each step changes.", choices=("cycle", "random"))
    rank_dtype: str = opt("auto", "Dtype of the gradient and the candidates' scores: auto is bf16 where the hardware "
                           "runs it fast (a CPU with AVX512-BF16 or AMX where a GEMM probe finds bf16 1.5x faster "
                           "than fp32) for an fp32 model, else the model's own. "
                           "The kept swap is confirmed, and dev scored, in the model's dtype.",
                           choices=("auto", "fp32", "bf16"))


# the settings each mode defaults to (measured on the built-in generation tasks: docs/results.md)
MODE_DEFAULTS = {"autoprompt": {"top_k": 16, "eval_batch": 32}, "gcg": {"top_k": 64, "eval_batch": 8}}


def resolved(cfg: TriggerSearchConfig, prompt: Prompt) -> TriggerSearchConfig:
    """The settings a search on ``prompt`` runs with: mode auto made concrete (gcg for generated answers,
    whose whole-answer objective gains from many single swaps over all slots, scored on few examples
    each; autoprompt for labels and first-token answers), and the mode's top_k and eval_batch where unset."""
    mode = cfg.mode if cfg.mode != "auto" else ("gcg" if prompt.generation is not None else "autoprompt")
    unset = {name: value for name, value in MODE_DEFAULTS[mode].items() if getattr(cfg, name) is None}
    return dataclasses.replace(cfg, mode=mode, **unset)


# --- candidates ------------------------------------------------------------------------

def allowed_tokens(model: LanguageModel, prompt: Prompt, *, ascii_only: bool, whole_words: bool) -> torch.Tensor:
    """Bool mask [vocab] of tokens a trigger may be: no special tokens, no label words, only
    tokens whose text re-tokenizes to the same single id."""
    tok = model.tokenizer
    vocab = model.vocab_size
    texts = model.token_texts
    reencoded = tok(texts, add_special_tokens=False)["input_ids"]
    mask = torch.tensor([ids == [i] for i, ids in enumerate(reencoded)])
    mask[[i for i in tok.all_special_ids if i < vocab]] = False
    if prompt.is_classification:
        for words in label_word_ids(model, prompt):
            for ids in words:
                mask[ids] = False
    if ascii_only:
        mask &= torch.tensor([t.isascii() and t.strip() != "" for t in texts])
    if whole_words:
        mask &= torch.tensor([t[:1] == " " and t[1:2].isalpha() for t in texts])
    if not mask.any():
        raise AutoPromptError("the token filter leaves no token to propose")
    return mask


def propose(scores: torch.Tensor, current: list[int], cfg: TriggerSearchConfig, step: int,
            rng: random.Random) -> np.ndarray:
    """Candidate trigger sequences [n_candidates, n_slots], each one swap away from current."""
    n_slots = len(current)
    top = scores.topk(cfg.top_k, dim=1).indices.cpu().numpy()  # [n_slots, top_k]
    if cfg.mode == "autoprompt":
        slot = step % n_slots if cfg.slot_order == "cycle" else rng.randrange(n_slots)
        swaps = [(slot, int(t)) for t in top[slot]]
    else:
        swaps = [(s, int(top[s, rng.randrange(cfg.top_k)])) for s in (rng.randrange(n_slots) for _ in range(cfg.n_candidates))]
    candidates = np.tile(np.asarray(current), (len(swaps), 1))
    for row, (slot, token) in enumerate(swaps):
        candidates[row, slot] = token
    keep = np.unique(candidates, axis=0, return_index=True)[1]
    return candidates[np.sort(keep)]


def candidate_losses(model: LanguageModel, prompt: Prompt, examples: list[Example], candidates: np.ndarray,
                     objective: Objective | str, caches: Caches | None = None) -> np.ndarray:
    """Mean loss of each candidate on the examples, [n_candidates], all scored together.
    ``objective``: an Objective, or the loss kind of the prompt's own."""
    objective = objective_for(prompt, objective) if isinstance(objective, str) else objective
    return objective.candidate_losses(model, prompt, examples, candidates, caches)


# --- the search ----------------------------------------------------------------------------

def ranking_model(model: LanguageModel, cfg: TriggerSearchConfig) -> LanguageModel:
    """The model candidates are ranked with: a bf16 copy where bf16 is fast and asked for (or auto)."""
    return fast_twin(model, cfg.rank_dtype)


def initial_prompt(model: LanguageModel, task: Task, cfg: TriggerSearchConfig, base: Prompt | None = None) -> Prompt:
    """The prompt the search starts from, checked on one example of each split. ``base``: search
    inside this prompt (its instruction, demonstrations, verbalizer and chat; the hybrid)."""
    template = base.template if base is not None else with_trigger_slots(task.template, cfg.n_triggers)
    n_slots = count_triggers(template)
    if n_slots == 0:
        raise AutoPromptError(f"{task.name}: the template has no [T] slots and n_triggers is 0")
    init = model.tokenizer(cfg.init_token, add_special_tokens=False)["input_ids"]
    if len(init) != 1:
        raise AutoPromptError(f"init_token {cfg.init_token!r} is {len(init)} tokens; it must be one")
    if base is not None:
        prompt = dataclasses.replace(base, model=model.ref, calibration=())
    else:
        prompt = Prompt(template=template, verbalizer=task.verbalizer, fields=tuple(task.fields), model=model.ref,
                        generation=task.generation)
    prompt = prompt.with_triggers(init * n_slots, [cfg.init_token] * n_slots)
    encode_examples(model, prompt, [task.examples(split)[0] for split in task.splits])
    return prompt


def trigger_search(model: LanguageModel, task: Task, cfg: TriggerSearchConfig, *, seed: int = 0, run=None,
                   state: TriggerState | None = None, progress: bool = True,
                   base: Prompt | None = None, budget: Budget | None = None) -> tuple[Prompt, TriggerState]:
    """Run the search (or continue it from ``state``); returns the best prompt and the final state.
    ``base``: a prompt with [T] slots to search inside (default: the task's template). ``budget``: when
    to stop (default: no limit)."""
    base = initial_prompt(model, task, cfg, base)
    cfg = resolved(cfg, base)
    budget = budget or Budget(None)
    state = state or TriggerState(trigger_ids=list(base.trigger_ids), best_trigger_ids=list(base.trigger_ids))
    for ids in (state.trigger_ids, state.best_trigger_ids):
        if len(ids) != len(base.trigger_ids) or any(i >= model.vocab_size for i in ids):
            raise AutoPromptError(f"the checkpoint's triggers {ids} do not fit this template's "
                                  f"{len(base.trigger_ids)} [T] slots and this model's vocabulary")
    rng = random.Random(seed)
    if state.rng_state is not None:
        rng.setstate(tuple_state(state.rng_state))
    allowed = allowed_tokens(model, base, ascii_only=cfg.ascii_only, whole_words=cfg.whole_words).to(model.device)
    train, dev = task.examples("train"), task.examples("dev")[: cfg.dev_limit]
    started = time.perf_counter() - state.seconds
    bar = tqdm(total=cfg.steps, initial=state.step, desc="trigger search", unit="step", disable=not progress)
    prompt = with_ids(model, base, state.trigger_ids)
    caches = Caches()  # the demonstrations' KV cache and the like, kept for the whole search
    dev_cache = PrefixCache.for_examples(model, prompt, dev, caches)  # dev is scored every few steps
    ranker = ranking_model(model, cfg)
    # the ranker keeps caches of its own: one shared Caches would swap the demonstrations' KV cache
    # between the two dtypes every step, encoding them twice a step
    rank_caches = Caches() if ranker is not model else caches
    if ranker is not model:
        log.info("ranking candidates in %s; confirming and scoring dev in %s", ranker.dtype, model.dtype)
    if state.step == 0:  # the baseline is step 0: the initial triggers on dev
        _check_dev(model, prompt, state, dev, task.metric, dev_cache, budget, caches)
        record(run, state, {"step": 0, "dev": state.best_dev, "triggers": list(prompt.trigger_tokens)})
    while state.step < cfg.steps:
        if budget.spent():
            log.info("time budget: stopping after %d steps (%s)", state.step, budget.describe())
            break
        t0 = time.perf_counter()
        event = _step(model, prompt, state, cfg, rng, train, allowed, ranker, caches, rank_caches)
        prompt = with_ids(model, base, state.trigger_ids)
        if state.step % cfg.dev_every == 0 or state.step == cfg.steps:
            event["dev"] = _check_dev(model, prompt, state, dev, task.metric, dev_cache, budget, caches)
        event["seconds"] = round(time.perf_counter() - t0, 3)
        state.seconds = time.perf_counter() - started
        state.rng_state = rng.getstate()
        record(run, state, event)
        bar.update(1)
        bar.set_postfix(loss=f"{event['loss']:.3f}", best_dev=f"{state.best_dev:.3f}",
                        triggers="".join(prompt.trigger_tokens)[:40])
        if cfg.patience is not None and state.dev_checks_without_gain >= cfg.patience:
            log.info("no dev gain in %d checks: stopping at step %d", cfg.patience, state.step)
            break
    bar.close()
    return with_ids(model, base, state.best_trigger_ids), state


def _step(model: LanguageModel, prompt: Prompt, state: TriggerState, cfg: TriggerSearchConfig, rng: random.Random,
          train: list[Example], allowed: torch.Tensor, ranker: LanguageModel | None = None,
          caches: Caches | None = None, rank_caches: Caches | None = None) -> dict[str, Any]:
    """One search step: gradient, candidates, their real scores, keep the best if it helps.
    ``ranker`` (default: the model) computes the gradient and the candidates' scores (with
    ``rank_caches``; default ``caches``)."""
    ranker = ranker or model
    rank_caches = rank_caches if rank_caches is not None else caches
    n_slots = len(state.trigger_ids)
    objective = objective_for(prompt, cfg.loss)
    grads = torch.zeros(n_slots, model.vocab_size, device=model.device)
    for _ in range(cfg.grad_accumulation):  # each batch's graph is freed before the next
        grads += trigger_gradient(ranker, prompt, rng.sample(train, min(cfg.grad_batch, len(train))), objective,
                                  caches=rank_caches)
    grads[:, ~allowed] = float("-inf")
    candidates = propose(grads, state.trigger_ids, cfg, state.step, rng)
    eval_examples = rng.sample(train, min(cfg.eval_batch, len(train)))
    everyone = np.vstack([np.asarray([state.trigger_ids]), candidates])  # the current prompt is row 0
    losses = candidate_losses(ranker, prompt, eval_examples, everyone, objective, caches=rank_caches)
    best = int(np.argmin(losses[1:])) + 1
    accepted = bool(losses[best] < losses[0])
    if accepted and cfg.confirm_batch:  # the best of many on one batch is biased low: check it on fresh data
        confirm = rng.sample(train, min(cfg.confirm_batch, len(train)))
        confirm_losses = candidate_losses(model, prompt, confirm, everyone[[0, best]], objective, caches=caches)
        accepted = bool(confirm_losses[1] < confirm_losses[0])
    if accepted:
        state.trigger_ids = [int(t) for t in everyone[best]]
    state.step += 1
    return {"step": state.step, "loss": float(losses[0]), "best_candidate_loss": float(losses[best]),
            "accepted": accepted, "n_candidates": len(candidates),
            "triggers": [model.tokenizer.decode([t]) for t in state.trigger_ids]}


def _check_dev(model: LanguageModel, prompt: Prompt, state: TriggerState, dev: list[Example], metric: str,
               cache: PrefixCache | None, budget: Budget, caches: Caches | None = None) -> float:
    """Score the current prompt on dev; remember it if it is the best so far (ties: gold log-prob)."""
    t0 = time.perf_counter()
    metrics = evaluate(model, prompt, dev, metric=metric, prefix_cache=cache, caches=caches).metrics
    budget.record(len(dev), time.perf_counter() - t0, cached=cache is not None)
    log_prob = metrics.get("mean_gold_log_prob", metrics.get("mean_target_log_prob", 0.0))
    if (metrics[metric], log_prob) > (state.best_dev, state.best_dev_log_prob):
        state.best_dev, state.best_dev_log_prob = metrics[metric], log_prob
        state.best_trigger_ids, state.best_dev_metrics = list(state.trigger_ids), metrics
        state.dev_checks_without_gain = 0
    else:
        state.dev_checks_without_gain += 1
    return metrics[metric]


def with_ids(model: LanguageModel, prompt: Prompt, ids: list[int]) -> Prompt:
    return prompt.with_triggers(list(ids), [model.tokenizer.decode([i]) for i in ids])


# --- the method ------------------------------------------------------------------------------

def search(ctx: Context, cfg: TriggerSearchConfig) -> Found:
    """The trigger search in a run: from the run's checkpoint when it resumes."""
    state = read_checkpoint(ctx.run) if ctx.resume else None
    if state is not None:  # drop events logged after the checkpoint
        ctx.run.truncate_log(sum(1 for e in ctx.run.events() if e.get("step", 0) <= state.step))
        log.info("resuming %s at step %d", ctx.run.path, state.step)
    ctx.budget.already = state.seconds if state else 0.0  # a resumed run's earlier search
    prompt, state = trigger_search(ctx.model, ctx.task, cfg, seed=ctx.seed, run=ctx.run, state=state,
                                   progress=ctx.progress, budget=ctx.budget)
    # the checkpoint keeps the best prompt's dev metrics, not its predictions: dev is scored again
    settings = resolved(cfg, prompt)
    return Found(prompt, info={"steps": state.step, "search_seconds": round(state.seconds, 1),
                               "settings": {k: getattr(settings, k) for k in ("mode", "top_k", "eval_batch")}},
                 work={"steps": state.step})


def best_so_far(ctx: Context, cfg: TriggerSearchConfig) -> Found | None:
    """The best prompt of an interrupted run, from its checkpoint."""
    state = read_checkpoint(ctx.run)
    if state is None:
        return None
    prompt = with_ids(ctx.model, initial_prompt(ctx.model, ctx.task, cfg), state.best_trigger_ids)
    return Found(prompt, info={"steps": state.step}, work={"steps": state.step},
                 dev_metrics=state.best_dev_metrics or None)


def final_examples(task: Task, cfg: TriggerSearchConfig) -> int:
    return 2 * final_split_examples(task)  # the found prompt and the baseline


def check(task: Task, model: LanguageModel, cfg: TriggerSearchConfig) -> None:
    """A template without trigger slots, or one the data does not fit, fails before a run folder exists."""
    initial_prompt(model, task, cfg)


METHOD = Method("trigger", TriggerSearchConfig, search, best_so_far, final_examples,
                help="gradient-guided trigger tokens in the task's template (AutoPrompt)", check=check,
                check_resume=lambda ctx, cfg: read_checkpoint(ctx.run), label_search=True)
