"""Training through the task's prompt: the loop soft prompts and LoRA share. The learned tensors (an
Adapter) are trained on train with the objective every search minimises (objective.py), AdamW on
seeded mini-batches; dev is scored every few steps with the task's metric and the best tensors are
kept (early stopping). Step 0, before any update, is the baseline. A checkpoint after every dev check
holds the tensors and AdamW's moments (safetensors, never a pickle), so Ctrl-C leaves the best so far
and ``--resume`` goes on to the same result as a run that was never stopped."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from autoprompt.errors import TaskError
from autoprompt.gradient import training_loss
from autoprompt.models.adapters import bind, with_adapter
from autoprompt.objective import objective_for
from autoprompt.scoring import evaluate
from autoprompt.searches.base import Context, Found, opt
from autoprompt.searches.tuning_state import TuningState, read_state, write_state

if TYPE_CHECKING:
    from autoprompt.prompt import Prompt

log = logging.getLogger(__name__)


@dataclass
class TuningConfig:
    """Settings every trained method shares (soft, lora)."""

    epochs: int = opt(10, "Passes over train at most.")
    max_steps: int = opt(1000, "Optimizer steps at most (training stops at whichever of epochs and steps comes first).")
    batch_size: int = opt(8, "Train examples per optimizer step.")
    eval_every: int | None = opt(None, "Score dev every N steps (default: once an epoch, and at least every 50 steps).")
    early_stop: int = opt(5, "Stop after this many dev checks without a gain (0: never).", min=0)


@dataclass
class Plan:
    """What a method trains: the initial prompt with its adapter, the learning rate, and the prompt
    that given tensors make (a soft prompt's [T] slots show their vectors' nearest tokens)."""

    prompt: Prompt
    lr: float
    finish: Callable[[dict[str, torch.Tensor]], Prompt]


class _Tuner:
    """One training run in ctx.run: the model with the adapter (its own parameters), AdamW, the state."""

    def __init__(self, ctx: Context, cfg: TuningConfig, plan: Plan) -> None:
        self.ctx, self.cfg, self.plan = ctx, cfg, plan
        self.train, self.dev = ctx.task.examples("train"), ctx.task.examples("dev")
        if not self.train or not self.dev:
            raise TaskError(f"{ctx.task.name}: training needs train and dev examples")
        self.model = with_adapter(ctx.model, plan.prompt.adapter, cache=False)
        self.params = self.model.adapter_parameters  # name -> parameter of the adapter's tensors
        for p in self.params.values():
            p.requires_grad_(True)
        self.prompt = bind(self.model, plan.prompt)[1]
        self.objective = objective_for(self.prompt)
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=plan.lr)
        self.per_epoch = math.ceil(len(self.train) / cfg.batch_size)
        self.total = min(cfg.epochs * self.per_epoch, cfg.max_steps)
        self.every = cfg.eval_every or min(self.per_epoch, 50)
        self.state = TuningState()
        self.best = self._tensors()
        self.best_eval = None  # the best tensors' dev evaluation, when this process made it
        self._order: tuple[int, list[int]] | None = None

    def resume(self) -> None:
        """Continue from the run's checkpoint (none: from the start)."""
        saved = read_state(self.ctx.run, self.params)
        if saved is None:  # stopped before its first checkpoint: from the start
            self.ctx.run.truncate_log(0)
            return
        self.state, tensors = saved
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(tensors[f"current.{name}"])
        self.best = {name: tensors[f"best.{name}"] for name in self.params}
        if self.state.step:
            for name, p in self.params.items():
                self.optimizer.state[p] = {"step": torch.tensor(float(self.state.step)),
                                           "exp_avg": tensors[f"exp_avg.{name}"].to(p),
                                           "exp_avg_sq": tensors[f"exp_avg_sq.{name}"].to(p)}
        self.ctx.run.truncate_log(sum(1 for e in self.ctx.run.events() if e.get("step", 0) <= self.state.step))
        log.info("resuming %s at step %d", self.ctx.run.path, self.state.step)

    def run(self) -> None:
        """Steps until the last, the time budget or early stopping; dev every few steps."""
        state, budget = self.state, self.ctx.budget
        budget.already = state.seconds
        started = time.perf_counter() - state.seconds
        bar = tqdm(total=self.total, initial=state.step, desc=f"{self.plan.prompt.adapter.kind} training", unit="step",
                   disable=not self.ctx.progress)
        if state.step == 0 and state.best_step < 0:  # the baseline: the initial tensors on dev
            self._record({"step": 0, "dev": self._check_dev()}, started)
        while state.step < self.total:
            if self.cfg.early_stop and state.checks_without_gain >= self.cfg.early_stop:  # (also when resumed after it)
                log.info("no dev gain in %d checks: stopping at step %d", self.cfg.early_stop, state.step)
                break
            if budget.spent():
                log.info("time budget: stopping after %d steps (%s)", state.step, budget.describe())
                break
            t0 = time.perf_counter()
            event = {"step": state.step + 1, "loss": self._step()}
            if state.step % self.every == 0 or state.step == self.total:
                event["dev"] = self._check_dev()
            event["seconds"] = round(time.perf_counter() - t0, 3)
            self._record(event, started, checkpoint="dev" in event)
            bar.update(1)
            bar.set_postfix(loss=f"{event['loss']:.3f}", best_dev=f"{state.best_dev:.3f}")
        bar.close()
        write_state(self.ctx.run, state, self._checkpoint_tensors())

    def _step(self) -> float:
        """One AdamW step on the next mini-batch (seeded by the step: the same after a resume)."""
        step = self.state.step
        batch = self._batch(step)
        self.model.hf_model.train()  # LoRA's (and the model's) dropout
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.ctx.seed * 1_000_003 + step)
                loss = training_loss(self.model, self.prompt, batch, self.objective)
            loss.backward()
        finally:
            self.model.hf_model.eval()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        return loss.item()

    def _batch(self, step: int) -> list:
        epoch, k = divmod(step, self.per_epoch)
        if self._order is None or self._order[0] != epoch:
            order = list(range(len(self.train)))
            random.Random(self.ctx.seed * 1_000_003 + epoch).shuffle(order)
            self._order = (epoch, order)
        size = self.cfg.batch_size
        return [self.train[i] for i in self._order[1][k * size : (k + 1) * size]]

    def _check_dev(self) -> float:
        """The current tensors on dev; kept when best so far (ties: the gold answers' log-probability)."""
        t0, metric, state = time.perf_counter(), self.ctx.task.metric, self.state
        evaluation = evaluate(self.model, self.prompt, self.dev, metric=metric)
        self.ctx.budget.record(len(self.dev), time.perf_counter() - t0)
        metrics = evaluation.metrics
        log_prob = metrics.get("mean_gold_log_prob", metrics.get("mean_target_log_prob", 0.0))
        if (metrics[metric], log_prob) > (state.best_dev, state.best_dev_log_prob):
            state.best_dev, state.best_dev_log_prob, state.best_dev_metrics = metrics[metric], log_prob, metrics
            state.best_step, state.checks_without_gain = state.step, 0
            self.best, self.best_eval = self._tensors(), evaluation
        else:
            state.checks_without_gain += 1
        return metrics[metric]

    def _record(self, event: dict[str, Any], started: float, checkpoint: bool = True) -> None:
        self.state.seconds = time.perf_counter() - started
        self.ctx.run.log(event)
        if checkpoint:
            write_state(self.ctx.run, self.state, self._checkpoint_tensors())

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().to("cpu", torch.float32).clone() for name, p in self.params.items()}

    def _checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"current.{name}": t for name, t in self._tensors().items()}
        out |= {f"best.{name}": t for name, t in self.best.items()}
        for name, p in self.params.items():
            moments = self.optimizer.state.get(p) or {}
            for key in ("exp_avg", "exp_avg_sq"):
                if key in moments:
                    out[f"{key}.{name}"] = moments[key].detach().to("cpu", torch.float32)
        return out


def tune(ctx: Context, cfg: TuningConfig, plan: Plan) -> Found:
    """Train the plan's adapter in ctx.run (from its checkpoint when the run resumes); the best on dev."""
    tuner = _Tuner(ctx, cfg, plan)
    if ctx.resume:
        tuner.resume()
    tuner.run()
    state = tuner.state
    prompt = plan.finish(tuner.best)
    dev = tuner.best_eval if state.best_step >= 0 else None
    return Found(prompt, dev=dev, info=_info(prompt, state, tuner.per_epoch), work={"steps": state.step},
                 dev_metrics=state.best_dev_metrics or None)


def best_so_far(ctx: Context, plan: Plan) -> Found | None:
    """The best tensors of an interrupted run, from its checkpoint."""
    saved = read_state(ctx.run, with_adapter(ctx.model, plan.prompt.adapter, cache=False).adapter_parameters)
    if saved is None or saved[0].best_step < 0:
        return None
    state, tensors = saved
    prompt = plan.finish({name[len("best."):]: t for name, t in tensors.items() if name.startswith("best.")})
    return Found(prompt, info=_info(prompt, state), work={"steps": state.step},
                 dev_metrics=state.best_dev_metrics or None)


def _info(prompt: Prompt, state: TuningState, per_epoch: int | None = None) -> dict[str, Any]:
    adapter = prompt.adapter
    info = {"steps": state.step, "best_step": state.best_step, "search_seconds": round(state.seconds, 1),
            "trainable_parameters": adapter.n_parameters, "adapter_settings": adapter.settings}
    if per_epoch:
        info["epochs"] = round(state.step / per_epoch, 2)
    if adapter.kind == "soft":  # what the vectors are nearest to, for people (the model reads the vectors)
        info["nearest_tokens"] = list(prompt.trigger_tokens)
    return info


def finished(prompt: Prompt, adapter_of: Callable[[dict[str, torch.Tensor]], Any]) -> Callable:
    """A plan's ``finish`` that only swaps the adapter (LoRA: the prompt text stays the task's)."""
    return lambda tensors: replace(prompt, adapter=adapter_of(tensors))


def check_resume(ctx: Context, plan_of: Callable[[], Plan]) -> None:
    """A checkpoint this version cannot resume fails before the run is marked running."""
    if (ctx.run.path / "checkpoint.json").exists():
        read_state(ctx.run, with_adapter(ctx.model, plan_of().prompt.adapter, cache=False).adapter_parameters)

