"""Gradient-guided trigger search (AutoPrompt, Shin et al. 2020; GCG, Zou et al. 2023).

Each step: the gradient of the task loss with respect to the one-hot trigger tokens gives,
per slot, the top-k tokens of ``-grad . E``; candidate swaps are then really scored on an
evaluation batch, all at once, and the best one is kept if it lowers the loss. Every few
steps the current prompt is scored on dev; the prompt with the best dev metric wins.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from autoprompt.budget import Budget
from autoprompt.errors import AutoPromptError
from autoprompt.models import in_dtype
from autoprompt.prompt import Prompt
from autoprompt.runtime import cpu_tuned
from autoprompt.scoring import (
    Caches,
    PrefixCache,
    encode_examples,
    evaluate,
    label_word_ids,
    pad_right,
    render_template,
    score_labels,
    score_targets,
    task_loss,
)
from autoprompt.template import count_triggers

if TYPE_CHECKING:
    from autoprompt.models import LanguageModel
    from autoprompt.task import Example, Task

log = logging.getLogger(__name__)


def _opt(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TriggerSearchConfig:
    """Settings of the trigger search; the defaults are the recommended ones."""

    template: str | None = _opt(None, "Template with [T] slots to search in (default: the task's; without [T] slots, "
                                "n_triggers are added after its last field).")
    n_triggers: int = _opt(5, "[T] slots to add after the last field when the template has none.", min=0)
    steps: int = _opt(20, "Search steps at most.")
    mode: str = _opt("autoprompt", "autoprompt: one slot per step, its top-k all scored; gcg: random single swaps.",
                     choices=("autoprompt", "gcg"))
    top_k: int = _opt(16, "Candidate tokens per slot, from -grad . E.")
    n_candidates: int = _opt(32, "Candidates scored per step in gcg mode (autoprompt mode scores top_k).")
    loss: str = _opt("labels", "vocab: log-prob of the gold label over the vocabulary (AutoPrompt); "
                     "labels: log-softmax over the label set.", choices=("vocab", "labels"))
    grad_batch: int = _opt(32, "Train examples per gradient batch.")
    grad_accumulation: int = _opt(1, "Gradient batches accumulated per step.")
    eval_batch: int = _opt(32, "Train examples each candidate is scored on (fewer: noisier choices).")
    confirm_batch: int = _opt(32, "Fresh train examples the best candidate must also beat the current prompt on "
                              "before it is kept (0: keep it on the evaluation batch alone).", min=0)
    dev_every: int = _opt(5, "Score the current prompt on dev every N steps.")
    dev_limit: int | None = _opt(None, "Dev examples used for selection (default: all; their prefixes are cached).")
    patience: int | None = _opt(None, "Stop after this many dev checks without improvement.")
    time_budget: float | None = _opt(None, "Seconds for the whole command (10m, 1h): the search stops early "
                                     "enough to leave time for the scoring after it.")
    init_token: str = _opt("!", "Initial text of every trigger slot (one token; GCG's \"!\" keeps the template's accuracy).")
    ascii_only: bool = _opt(True, "Only propose tokens whose text is ASCII.")
    whole_words: bool = _opt(False, "Only propose tokens that start a word (leading space).")
    slot_order: str = _opt("cycle", "autoprompt mode: which slot each step changes.", choices=("cycle", "random"))
    rank_dtype: str = _opt("auto", "Dtype of the gradient and the candidates' scores: auto is bf16 where the hardware "
                           "runs it fast (a CPU with AVX512-BF16 or AMX) for an fp32 model, else the model's own. "
                           "The kept swap is confirmed, and dev scored, in the model's dtype.",
                           choices=("auto", "fp32", "bf16"))
    seed: int = _opt(0, "Seed of every random choice; same seed, same run on the same machine.", min=0)


@dataclass
class TriggerState:
    """Everything a step changes: what a checkpoint holds."""

    step: int = 0
    trigger_ids: list[int] = field(default_factory=list)
    best_trigger_ids: list[int] = field(default_factory=list)
    best_dev: float = float("-inf")
    best_dev_log_prob: float = float("-inf")  # breaks ties of the dev metric
    best_dev_metrics: dict[str, float] = field(default_factory=dict)  # all dev metrics of the best
    dev_checks_without_gain: int = 0
    rng_state: Any = None
    seconds: float = 0.0


def read_checkpoint(run) -> TriggerState | None:
    """The state saved in a run's checkpoint.json (None if it has none), checked field by field."""
    path = run.path / "checkpoint.json"
    if not path.exists():
        return None
    data = run.read_json("checkpoint.json")
    fields = {f.name: f for f in dataclasses.fields(TriggerState)}
    problem = None
    if not isinstance(data, dict):
        problem = "not a JSON object"
    elif set(data) - set(fields):
        problem = f"unknown keys {', '.join(sorted(set(data) - set(fields)))}"
    elif not _is_int(data.get("step", 0)) or data.get("step", 0) < 0:
        problem = f"step must be an integer >= 0, not {data.get('step')!r}"
    else:
        for key in ("trigger_ids", "best_trigger_ids"):
            ids = data.get(key, [])
            if not isinstance(ids, list) or not all(_is_int(i) and i >= 0 for i in ids):
                problem = f"{key} must be a list of token ids"
        for key in ("best_dev", "best_dev_log_prob", "seconds"):
            if key in data and (not isinstance(data[key], (int, float)) or isinstance(data[key], bool)):
                problem = f"{key} must be a number, not {data[key]!r}"
        try:
            if data.get("rng_state") is not None:
                random.Random().setstate(_tuple_state(data["rng_state"]))
        except (TypeError, ValueError, IndexError):
            problem = "rng_state is not a random generator's state"
    if problem is not None:
        raise AutoPromptError(f"{path}: not a trigger search checkpoint this version can resume ({problem})")
    return TriggerState(**data)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- the template --------------------------------------------------------------------------

def with_trigger_slots(template: str, n_triggers: int) -> str:
    """Add n [T] slots after the last field when the template has none."""
    if "[T]" in template or n_triggers <= 0:
        return template
    cut = template.rfind("}") + 1
    if cut == 0:
        cut = template.index("[P]")
    return template[:cut] + " [T]" * n_triggers + template[cut:]


# --- token filter --------------------------------------------------------------------------

def allowed_tokens(model: LanguageModel, prompt: Prompt, *, ascii_only: bool, whole_words: bool) -> torch.Tensor:
    """Bool mask [vocab] of tokens a trigger may be: no special tokens, no label words, only
    tokens whose text re-tokenizes to the same single id."""
    tok = model.tokenizer
    vocab = model.vocab_size
    texts = tok.batch_decode([[i] for i in range(vocab)])
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


# --- gradient ------------------------------------------------------------------------------

@cpu_tuned
def trigger_gradient(model: LanguageModel, prompt: Prompt, examples: list[Example], loss_kind: str,
                     caches: Caches | None = None) -> torch.Tensor:
    """-grad . E for every slot and token, [n_slots, vocab]: how much each swap should lower the loss.

    On a causal LM the tokens before the first trigger do not depend on the triggers: they
    are encoded once without a graph (their KV cache), and only the rest is back-propagated."""
    embedding = model.hf_model.get_input_embeddings().weight  # [vocab, hidden]
    encoded = encode_examples(model, prompt, examples, caches)
    n_slots = len(prompt.trigger_ids)
    one_hot = torch.zeros(n_slots, model.vocab_size, device=model.device, dtype=embedding.dtype)
    one_hot[torch.arange(n_slots), torch.tensor(prompt.trigger_ids)] = 1
    one_hot.requires_grad_(True)
    trigger_embeds = one_hot @ embedding  # [n_slots, hidden]
    split = [e.trigger_positions[0] if model.is_causal else 0 for e in encoded]
    if min(split) == 0:
        split = [0] * len(encoded)
    ids, mask = pad_right([e.input_ids[k:] for e, k in zip(encoded, split, strict=False)], model.pad_id, model.device)
    forward = {"attention_mask": mask}
    if split[0]:
        with torch.no_grad():
            cache = PrefixCache(model, [e.input_ids[:k] for e, k in zip(encoded, split, strict=False)], 1 << 16, caches)
        forward = cache.inputs(list(range(len(encoded))), mask)
    rows = torch.tensor([r for r, e in enumerate(encoded) for _ in e.trigger_positions], device=model.device)
    cols = torch.tensor([p - k for e, k in zip(encoded, split, strict=False) for p in e.trigger_positions], device=model.device)
    slots = torch.arange(n_slots, device=model.device).repeat(len(encoded))
    embeds = embedding[ids].index_put((rows, cols), trigger_embeds[slots])  # [batch, seq, hidden]
    states = model.hidden_states(None, inputs_embeds=embeds, **forward)
    answer_pos = torch.tensor([e.answer_position - k for e, k in zip(encoded, split, strict=False)], device=model.device)
    hidden = states[torch.arange(len(encoded), device=model.device), answer_pos]  # [batch, hidden]
    log_probs = F.log_softmax(model.head_logits(hidden).float(), dim=-1)  # [batch, vocab]
    loss = _answer_loss(model, prompt, examples, log_probs, loss_kind).mean()
    loss.backward()
    return -(one_hot.grad.float())


def _answer_loss(model, prompt, examples, log_probs, loss_kind):
    """The task loss from full log-probs at [P]; multi-token answers use their first token here."""
    if prompt.is_classification:
        firsts = [[w[0] for w in words] for words in label_word_ids(model, prompt)]
        scores = torch.stack([torch.logsumexp(log_probs[:, ids], dim=1) for ids in firsts], dim=1)  # [n, labels]
        gold = torch.tensor([prompt.labels.index(e.answer) for e in examples], device=log_probs.device)
        return task_loss(scores, gold, loss_kind)
    template = render_template(model, prompt)
    first = torch.tensor([model.renderer.answer_ids(e.answer, template)[0] for e in examples], device=log_probs.device)
    return -log_probs.gather(1, first[:, None])[:, 0]


# --- candidates ----------------------------------------------------------------------------

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
                     loss_kind: str, caches: Caches | None = None) -> np.ndarray:
    """Mean task loss of each candidate on the examples, [n_candidates], all scored together."""
    if prompt.is_classification:
        over = "labels" if loss_kind == "labels" else "vocab"  # labels: the head computes only their rows
        scores = torch.as_tensor(score_labels(model, prompt, examples, candidates=candidates, over=over,
                                              caches=caches))  # [C, n, labels]
        gold = torch.tensor([prompt.labels.index(e.answer) for e in examples]).repeat(len(candidates))
        losses = task_loss(scores.reshape(-1, scores.shape[-1]), gold, loss_kind)
        return losses.reshape(len(candidates), len(examples)).mean(dim=1).numpy()
    log_probs, _, _ = score_targets(model, prompt, examples, candidates=candidates, caches=caches)  # [C, n]
    return -np.asarray(log_probs).reshape(len(candidates), len(examples)).mean(axis=1)


# --- the search ----------------------------------------------------------------------------

def ranking_model(model: LanguageModel, cfg: TriggerSearchConfig) -> LanguageModel:
    """The model candidates are ranked with: a bf16 copy where bf16 is fast and asked for (or auto)."""
    from autoprompt.runtime import has_fast_bf16

    if cfg.rank_dtype == "fp32" or model.dtype != torch.float32:
        return model
    if cfg.rank_dtype == "bf16" or (model.device.type == "cpu" and has_fast_bf16(model.device)):
        return in_dtype(model, torch.bfloat16)
    return model


def initial_prompt(model: LanguageModel, task: Task, cfg: TriggerSearchConfig, base: Prompt | None = None) -> Prompt:
    """The prompt the search starts from, checked on one example of each split. ``base``: search
    inside this prompt (its instruction, demonstrations, verbalizer and chat; the hybrid)."""
    template = base.template if base is not None else with_trigger_slots(cfg.template or task.template, cfg.n_triggers)
    n_slots = count_triggers(template)
    if n_slots == 0:
        raise AutoPromptError(f"{task.name}: the template has no [T] slots and n_triggers is 0")
    init = model.tokenizer(cfg.init_token, add_special_tokens=False)["input_ids"]
    if len(init) != 1:
        raise AutoPromptError(f"init_token {cfg.init_token!r} is {len(init)} tokens; it must be one")
    if base is not None:
        prompt = dataclasses.replace(base, model=model.ref, calibration=())
    else:
        prompt = Prompt(template=template, verbalizer=task.verbalizer, fields=tuple(task.fields), model=model.ref)
    prompt = prompt.with_triggers(init * n_slots, [cfg.init_token] * n_slots)
    encode_examples(model, prompt, [task.examples(split)[0] for split in task.splits])
    return prompt


def trigger_search(model: LanguageModel, task: Task, cfg: TriggerSearchConfig, *, run=None,
                   state: TriggerState | None = None, progress: bool = True,
                   base: Prompt | None = None, budget: Budget | None = None) -> tuple[Prompt, TriggerState]:
    """Run the search (or continue it from ``state``); returns the best prompt and the final state.
    ``base``: a prompt with [T] slots to search inside (default: the task's template). ``budget``: when
    to stop (default: ``cfg.time_budget`` seconds of search)."""
    from tqdm.auto import tqdm

    base = initial_prompt(model, task, cfg, base)
    if budget is None:
        budget = Budget(cfg.time_budget, already=state.seconds if state else 0.0)
    state = state or TriggerState(trigger_ids=list(base.trigger_ids), best_trigger_ids=list(base.trigger_ids))
    for ids in (state.trigger_ids, state.best_trigger_ids):
        if len(ids) != len(base.trigger_ids) or any(i >= model.vocab_size for i in ids):
            raise AutoPromptError(f"the checkpoint's triggers {ids} do not fit this template's "
                                  f"{len(base.trigger_ids)} [T] slots and this model's vocabulary")
    rng = random.Random(cfg.seed)
    if state.rng_state is not None:
        rng.setstate(_tuple_state(state.rng_state))
    allowed = allowed_tokens(model, base, ascii_only=cfg.ascii_only, whole_words=cfg.whole_words).to(model.device)
    train, dev = task.examples("train"), task.examples("dev")[: cfg.dev_limit]
    started = time.perf_counter() - state.seconds
    bar = tqdm(total=cfg.steps, initial=state.step, desc="trigger search", unit="step", disable=not progress)
    prompt = _with_ids(model, base, state.trigger_ids)
    caches = Caches()  # the demonstrations' KV cache and the like, kept for the whole search
    dev_cache = PrefixCache.for_examples(model, prompt, dev, caches)  # dev is scored every few steps
    ranker = ranking_model(model, cfg)
    if ranker is not model:
        log.info("ranking candidates in %s; confirming and scoring dev in %s", ranker.dtype, model.dtype)
    if state.step == 0:  # the baseline is step 0: the initial triggers on dev
        _check_dev(model, prompt, state, dev, task.metric, dev_cache, budget, caches)
        _record(run, state, {"step": 0, "dev": state.best_dev, "triggers": list(prompt.trigger_tokens)})
    while state.step < cfg.steps:
        if budget.spent():
            log.info("time budget: stopping after %d steps (%s)", state.step, budget.describe())
            break
        t0 = time.perf_counter()
        event = _step(model, prompt, state, cfg, rng, train, allowed, ranker, caches)
        prompt = _with_ids(model, base, state.trigger_ids)
        if state.step % cfg.dev_every == 0 or state.step == cfg.steps:
            event["dev"] = _check_dev(model, prompt, state, dev, task.metric, dev_cache, budget, caches)
        event["seconds"] = round(time.perf_counter() - t0, 3)
        state.seconds = time.perf_counter() - started
        state.rng_state = rng.getstate()
        _record(run, state, event)
        bar.update(1)
        bar.set_postfix(loss=f"{event['loss']:.3f}", best_dev=f"{state.best_dev:.3f}",
                        triggers="".join(prompt.trigger_tokens)[:40])
        if cfg.patience is not None and state.dev_checks_without_gain >= cfg.patience:
            log.info("no dev gain in %d checks: stopping at step %d", cfg.patience, state.step)
            break
    bar.close()
    return _with_ids(model, base, state.best_trigger_ids), state


def _step(model: LanguageModel, prompt: Prompt, state: TriggerState, cfg: TriggerSearchConfig, rng: random.Random,
          train: list[Example], allowed: torch.Tensor, ranker: LanguageModel | None = None,
          caches: Caches | None = None) -> dict[str, Any]:
    """One search step: gradient, candidates, their real scores, keep the best if it helps.
    ``ranker`` (default: the model) computes the gradient and the candidates' scores."""
    ranker = ranker or model
    n_slots = len(state.trigger_ids)
    grads = torch.zeros(n_slots, model.vocab_size, device=model.device)
    for _ in range(cfg.grad_accumulation):  # each batch's graph is freed before the next
        grads += trigger_gradient(ranker, prompt, rng.sample(train, min(cfg.grad_batch, len(train))), cfg.loss,
                                  caches=caches)
    grads[:, ~allowed] = float("-inf")
    candidates = propose(grads, state.trigger_ids, cfg, state.step, rng)
    eval_examples = rng.sample(train, min(cfg.eval_batch, len(train)))
    everyone = np.vstack([np.asarray([state.trigger_ids]), candidates])  # the current prompt is row 0
    losses = candidate_losses(ranker, prompt, eval_examples, everyone, cfg.loss, caches=caches)
    best = int(np.argmin(losses[1:])) + 1
    accepted = bool(losses[best] < losses[0])
    if accepted and cfg.confirm_batch:  # the best of many on one batch is biased low: check it on fresh data
        confirm = rng.sample(train, min(cfg.confirm_batch, len(train)))
        confirm_losses = candidate_losses(model, prompt, confirm, everyone[[0, best]], cfg.loss, caches=caches)
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


def _with_ids(model: LanguageModel, prompt: Prompt, ids: list[int]) -> Prompt:
    return prompt.with_triggers(list(ids), [model.tokenizer.decode([i]) for i in ids])


def _record(run, state: TriggerState, event: dict) -> None:
    if run is not None:
        run.log(event)
        run.write_json("checkpoint.json", {**state.__dict__, "rng_state": _json_state(state.rng_state)})


def _json_state(state):
    return None if state is None else [state[0], list(state[1]), state[2]]


def _tuple_state(state):
    return (state[0], tuple(state[1]), state[2]) if isinstance(state, list) else state
