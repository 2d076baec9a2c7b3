"""``autoprompt bench``: what this machine does with the scoring engine, in one run.

1. the matrix-product ceiling at the model's own layer shapes (fp32, and bf16 where the
   hardware has it);
2. the engine scoring a trigger-search step's candidates (every candidate on every example,
   each example's prefix encoded once, the head only at [P] and only at the label rows):
   scorings/s, tokens/s, achieved GFLOP/s and its fraction of the ceiling, counting only the
   FLOPs that really need doing;
3. the same scores computed the naive way, as the original AutoPrompt code does: one
   candidate at a time, full sequences padded to the batch's longest, the full-vocabulary
   head at every position, fp32; interleaved with the engine, in the same process with the
   same settings (so the ratio is the algorithm's, not the allocator's), and the ratio;
4. one trigger-search step split into gradient and candidate scoring.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import platform
import random
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from autoprompt.gradient import trigger_gradient
from autoprompt.runtime import has_fast_bf16, tune_cpu, tuned
from autoprompt.scoring import encode_examples, label_word_ids, pad_right, task_loss
from autoprompt.searches.trigger import TriggerSearchConfig, allowed_tokens, candidate_losses, initial_prompt

if TYPE_CHECKING:
    from autoprompt.models import LanguageModel
    from autoprompt.prompt import Prompt
    from autoprompt.task import Example, Task

log = logging.getLogger(__name__)


@dataclasses.dataclass
class BenchConfig:
    candidates: int = 17  # a default step: the current triggers and top_k=16 swaps
    examples: int = 32  # the default eval_batch
    rounds: int = 2  # engine/naive pairs, each on another trigger slot
    naive: bool = True
    gemm_rows: int = 2048
    seed: int = 0


# --- counting ------------------------------------------------------------------------------

def model_shapes(model: LanguageModel) -> dict[str, Any]:
    """The linear layers of one transformer block ([out, in] weights), and the sizes FLOPs need."""
    hf = model.hf_model
    config = hf.config
    text = getattr(config, "get_text_config", lambda: config)()
    head = hf.get_output_embeddings() if model.is_causal else None
    skip = {id(hf.get_input_embeddings().weight)} | ({id(head.weight)} if head is not None else set())
    linears = [tuple(m.weight.shape) for name, m in hf.base_model.named_modules()
               if isinstance(m, torch.nn.Linear) and id(m.weight) not in skip]
    layers = text.num_hidden_layers
    return {"linear_params": sum(o * i for o, i in linears), "block_shapes": sorted(set(linears[: len(linears) // layers])),
            "layers": layers, "hidden": text.hidden_size, "heads": text.num_attention_heads,
            "head_dim": getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
            "vocab": model.vocab_size}


def forward_flops(shapes: dict[str, Any], lengths: np.ndarray, starts: np.ndarray | int = 0) -> float:
    """FLOPs of a forward over the tokens ``starts..lengths`` of each sequence (the earlier ones
    cached): 2 per weight per token, plus attention over everything before each token."""
    lengths = np.asarray(lengths, dtype=np.float64)
    starts = np.broadcast_to(np.asarray(starts, dtype=np.float64), lengths.shape)
    tokens = (lengths - starts).sum()
    context = ((lengths * (lengths + 1) - starts * (starts + 1)) / 2).sum()  # sum of 1..L minus 1..start
    attention = 4 * shapes["layers"] * shapes["heads"] * shapes["head_dim"] * context
    return 2 * shapes["linear_params"] * tokens + attention


def head_flops(shapes: dict[str, Any], positions: float, rows: int) -> float:
    return 2 * shapes["hidden"] * rows * positions


# --- timing --------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> tuple[float, Any]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def gemm_ceiling(model: LanguageModel, shapes: dict[str, Any], rows: int, dtype: torch.dtype,
                 seconds: float = 0.5) -> float:
    """GFLOP/s of the block's matrix products ([rows, in] @ [in, out]), by their FLOP share."""
    device = model.device
    gen = torch.Generator(device="cpu").manual_seed(0)
    flops = total = 0.0
    for out_features, in_features in shapes["block_shapes"]:
        x = torch.randn(rows, in_features, generator=gen).to(device, dtype)
        w = torch.randn(out_features, in_features, generator=gen).to(device, dtype)
        F.linear(x, w)  # warm-up
        reps, elapsed = 0, 0.0
        while elapsed < seconds / len(shapes["block_shapes"]) or reps < 2:
            dt, _ = _timed(lambda x=x, w=w: F.linear(x, w), device)
            elapsed += dt
            reps += 1
        flops += 2 * rows * in_features * out_features * reps
        total += elapsed
    return flops / total / 1e9


@contextmanager
def stock_torch():
    """torch as a plain script runs it: MKL's fp32 GEMM, glibc's malloc thresholds."""
    precision = torch.get_float32_matmul_precision()
    tuned = tune_cpu()
    libc = ctypes.CDLL("libc.so.6") if tuned["malloc"] else None
    torch.set_float32_matmul_precision("highest")
    if libc is not None:
        libc.mallopt(-3, 128 << 10)
        libc.mallopt(-1, 128 << 10)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        if libc is not None:
            libc.mallopt(-3, 32 << 20)
            libc.mallopt(-1, 1 << 30)


# --- the naive reference -------------------------------------------------------------------

def naive_candidate_losses(model: LanguageModel, prompt: Prompt, examples: list[Example], candidates: np.ndarray,
                           loss_kind: str = "labels") -> np.ndarray:
    """Candidate losses the way the original AutoPrompt scores them: for each candidate, the
    full sequences of the batch (in its order, padded to its longest), the model's full output
    (every position, the whole vocabulary), then the log-probs at [P]. [n_candidates]."""
    encoded = encode_examples(model, prompt, examples)
    ids, mask = pad_right([e.input_ids for e in encoded], model.pad_id, model.device)
    slots_rows = torch.tensor([r for r, e in enumerate(encoded) for _ in e.trigger_positions])
    slots_cols = torch.tensor([p for e in encoded for p in e.trigger_positions])
    answer = torch.tensor([e.answer_position for e in encoded])
    words = [[w[0] for w in ws] for ws in label_word_ids(model, prompt)]
    gold = torch.tensor([prompt.labels.index(e.answer) for e in examples])
    losses = []
    with torch.no_grad():
        for candidate in np.asarray(candidates):
            batch = ids.clone()
            batch[slots_rows, slots_cols] = torch.as_tensor(candidate, device=batch.device).repeat(len(encoded))
            logits = model.hf_model(input_ids=batch, attention_mask=mask).logits  # [batch, seq, vocab]
            log_probs = F.log_softmax(logits[torch.arange(len(encoded)), answer].float(), dim=-1).cpu()
            scores = torch.stack([torch.logsumexp(log_probs[:, w], dim=1) for w in words], dim=1)
            if prompt.calibration:
                from autoprompt.scoring import calibrate

                scores = torch.as_tensor(calibrate(scores.numpy(), prompt.calibration))
            losses.append(task_loss(scores, gold, loss_kind).mean().item())
    return np.asarray(losses)


# --- the workload --------------------------------------------------------------------------

@dataclasses.dataclass
class Workload:
    prompt: Prompt
    examples: list[Example]
    candidates: np.ndarray
    slot: int


def workloads(model: LanguageModel, task: Task, cfg: BenchConfig) -> list[Workload]:
    """One step's candidate scoring per round: the default initial prompt, fresh train examples,
    the current triggers and ``candidates - 1`` allowed swaps at one slot (slots spread out)."""
    rng = random.Random(cfg.seed)
    prompt = initial_prompt(model, task, TriggerSearchConfig())
    allowed = np.nonzero(allowed_tokens(model, prompt, ascii_only=True, whole_words=False).numpy())[0]
    train = task.examples("train")
    n_slots = len(prompt.trigger_ids)
    out = []
    for r in range(cfg.rounds):
        slot = min(n_slots - 1, round((r + 0.5) * n_slots / cfg.rounds - 0.5))  # spread over the slots
        candidates = np.tile(np.asarray(prompt.trigger_ids), (cfg.candidates, 1))
        candidates[1:, slot] = rng.sample(list(allowed), cfg.candidates - 1)
        out.append(Workload(prompt, rng.sample(train, min(cfg.examples, len(train))), candidates, slot))
    return out


def workload_counts(model: LanguageModel, shapes: dict[str, Any], work: Workload) -> dict[str, float]:
    """Tokens and FLOPs the engine must compute (each example's prefix up to the slot once, each
    candidate's suffix, the label rows at [P]) and those the naive way computes."""
    encoded = encode_examples(model, work.prompt, work.examples)
    lengths = np.array([len(e.input_ids) for e in encoded])
    split = np.array([e.trigger_positions[work.slot] for e in encoded])
    n_cand = len(work.candidates)
    n_rows = len({w[0] for ws in label_word_ids(model, work.prompt) for w in ws})
    engine_tokens = split.sum() + n_cand * (lengths - split).sum()
    engine_flops = (forward_flops(shapes, split) + n_cand * forward_flops(shapes, lengths, split)
                    + head_flops(shapes, n_cand * len(encoded), n_rows))
    padded = np.full_like(lengths, lengths.max())
    naive_flops = n_cand * (forward_flops(shapes, padded) + head_flops(shapes, padded.sum(), shapes["vocab"]))
    return {"engine_tokens": float(engine_tokens), "engine_flops": engine_flops,
            "naive_tokens": float(n_cand * padded.sum()), "naive_flops": naive_flops,
            "mean_length": float(lengths.mean()), "padded_length": float(lengths.max()),
            "suffix_length": float((lengths - split).mean())}


# --- the bench -----------------------------------------------------------------------------

def run_bench(model: LanguageModel, task: Task, cfg: BenchConfig, *, progress=None) -> dict[str, Any]:
    """Everything ``autoprompt bench`` prints, as one dict (every measure with the CPU levers on, as a
    search runs; the stock GEMM ceiling beside them)."""
    with tuned(model.device):
        return _run_bench(model, task, cfg, progress=progress)


def _run_bench(model: LanguageModel, task: Task, cfg: BenchConfig, *, progress=None) -> dict[str, Any]:
    say = progress or (lambda msg: None)
    device = model.device
    shapes = model_shapes(model)
    tuned = tune_cpu() if device.type == "cpu" else {}
    result: dict[str, Any] = {
        "machine": {"device": _device_name(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "tuning": tuned, "fast_bf16": has_fast_bf16(device)},
        "model": {"name": model.name, "dtype": str(model.dtype).replace("torch.", ""), **{
            k: shapes[k] for k in ("layers", "hidden", "vocab")}, "linear_params": shapes["linear_params"]},
        "workload": {"task": task.name, "candidates": cfg.candidates, "examples": cfg.examples, "rounds": cfg.rounds},
    }
    ceiling = _ceilings(model, shapes, cfg, say)
    usable = {k: v for k, v in ceiling.items() if k in ("fp32", "fp32_stock") or
              (k == "bf16" and model.dtype == torch.bfloat16)}
    result["ceiling_gflops"] = {k: round(v, 3) for k, v in ceiling.items()}
    best_ceiling = max(usable.values())
    result["ceiling_used"] = max(usable, key=usable.get)

    works = workloads(model, task, cfg)
    counts = [workload_counts(model, shapes, w) for w in works]
    engine_s, naive_s, max_diff = _engine_and_naive(model, works, cfg, say)
    scorings = sum(len(w.candidates) * len(w.examples) for w in works)
    e_time, e_flops = sum(engine_s), sum(c["engine_flops"] for c in counts)
    result["engine"] = {
        "seconds": round(e_time, 3), "scorings_per_s": round(scorings / e_time, 1),
        "tokens_per_s": round(sum(c["engine_tokens"] for c in counts) / e_time, 1),
        "gflops": round(e_flops / e_time / 1e9, 1), "fraction_of_ceiling": round(e_flops / e_time / 1e9 / best_ceiling, 3),
        "tokens": int(sum(c["engine_tokens"] for c in counts)), "tflop": round(e_flops / 1e12, 3),
        "mean_length": round(np.mean([c["mean_length"] for c in counts]), 1),
        "suffix_length": round(np.mean([c["suffix_length"] for c in counts]), 1),
        "slots": [w.slot for w in works],
    }
    if cfg.naive:
        n_time, n_flops = sum(naive_s), sum(c["naive_flops"] for c in counts)
        result["naive"] = {
            "seconds": round(n_time, 3), "scorings_per_s": round(scorings / n_time, 1),
            "tokens_per_s": round(sum(c["naive_tokens"] for c in counts) / n_time, 1),
            "gflops": round(n_flops / n_time / 1e9, 1), "tokens": int(sum(c["naive_tokens"] for c in counts)),
            "tflop": round(n_flops / 1e12, 3),
            "padded_length": round(np.mean([c["padded_length"] for c in counts]), 1),
        }
        result["speedup"] = round(n_time / e_time, 2)
        result["flop_ratio"] = round(n_flops / e_flops, 2)
        result["max_loss_difference"] = max_diff

    say("one trigger-search step")
    result["step"] = step_split(model, task, works[0], shapes)
    return result


def _ceilings(model: LanguageModel, shapes: dict[str, Any], cfg: BenchConfig, say) -> dict[str, float]:
    """GEMM ceilings: fp32 as tuned, fp32 as torch ships (CPU), bf16 (or bf16 emulated, measured small)."""
    device = model.device
    say("matrix-product ceiling")
    ceiling = {"fp32": gemm_ceiling(model, shapes, cfg.gemm_rows, torch.float32)}
    if device.type == "cpu":
        with stock_torch():
            ceiling["fp32_stock"] = gemm_ceiling(model, shapes, cfg.gemm_rows, torch.float32)
    if has_fast_bf16(device):
        ceiling["bf16"] = gemm_ceiling(model, shapes, cfg.gemm_rows, torch.bfloat16)
    else:  # emulated: measured small, to show why it is not used
        ceiling["bf16_emulated"] = gemm_ceiling(model, shapes, 64, torch.bfloat16, seconds=0.2)
    return ceiling


def _engine_and_naive(model: LanguageModel, works: list, cfg: BenchConfig, say):
    """Seconds of the engine and of the naive reference per round (interleaved), and their largest loss difference."""
    device = model.device
    candidate_losses(model, works[0].prompt, works[0].examples[:2], works[0].candidates[:2], "labels")  # warm-up
    engine_s, naive_s, max_diff = [], [], 0.0
    for r, work in enumerate(works):
        say(f"round {r + 1}/{len(works)}: engine (slot {work.slot})")
        dt, engine_losses = _timed(lambda w=work: candidate_losses(model, w.prompt, w.examples, w.candidates, "labels"),
                                   device)
        engine_s.append(dt)
        if cfg.naive:
            say(f"round {r + 1}/{len(works)}: naive reference")
            dt, naive_losses = _timed(lambda w=work: naive_candidate_losses(model, w.prompt, w.examples, w.candidates),
                                      device)
            naive_s.append(dt)
            max_diff = max(max_diff, float(np.abs(engine_losses - naive_losses).max()))
    return engine_s, naive_s, max_diff


def step_split(model: LanguageModel, task: Task, work: Workload, shapes: dict[str, Any]) -> dict[str, float]:
    """Seconds of one default step: the gradient over grad_batch examples, then the candidates."""
    cfg = TriggerSearchConfig()
    train = task.examples("train")
    grad_examples = random.Random(1).sample(train, min(cfg.grad_batch, len(train)))
    device = model.device
    grad_s, _ = _timed(lambda: trigger_gradient(model, work.prompt, grad_examples, cfg.loss), device)
    score_s, _ = _timed(lambda: candidate_losses(model, work.prompt, work.examples, work.candidates, cfg.loss), device)
    confirm_s, _ = _timed(lambda: candidate_losses(model, work.prompt, work.examples, work.candidates[:2], cfg.loss),
                          device)
    encoded = encode_examples(model, work.prompt, grad_examples)
    lengths = np.array([len(e.input_ids) for e in encoded])
    first = np.array([e.trigger_positions[0] for e in encoded])
    # the prefix forward once; the rest forward and backward to the inputs only (the weights are
    # frozen: about 2x a forward); the head at [P]
    grad_flops = (forward_flops(shapes, first) + 2 * forward_flops(shapes, lengths, first)
                  + 2 * head_flops(shapes, len(encoded), shapes["vocab"]))
    return {"gradient_s": round(grad_s, 3), "gradient_gflops": round(grad_flops / grad_s / 1e9, 1),
            "candidates_s": round(score_s, 3), "confirm_s": round(confirm_s, 3),
            "total_s": round(grad_s + score_s + confirm_s, 3)}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} cpu"


def format_table(result: dict[str, Any]) -> str:
    """The bench as a Markdown table (what README shows)."""
    m, e = result["machine"], result["engine"]
    ceiling = result["ceiling_gflops"]
    lines = [f"device: {m['device']}, {m['threads']} threads, torch {m['torch']}, model {result['model']['name']} "
             f"({result['model']['dtype']}); workload: {result['workload']['task']}, "
             f"{result['workload']['candidates']} candidates x {result['workload']['examples']} examples "
             f"x {result['workload']['rounds']} rounds (slots {e['slots']})", "",
             "| measure | value |", "|---|---|"]
    for k, v in ceiling.items():
        label = {"fp32": "GEMM ceiling fp32 (as tuned)", "fp32_stock": "GEMM ceiling fp32 (torch stock)",
                 "bf16": "GEMM ceiling bf16", "bf16_emulated": "GEMM bf16 (no bf16 hardware: emulated)"}[k]
        lines.append(f"| {label} | {v:,.1f} GFLOP/s |")
    lines += [f"| engine: candidate x example scorings | {e['scorings_per_s']:,.1f} /s |",
              f"| engine: tokens computed | {e['tokens_per_s']:,.0f} /s (suffix {e['suffix_length']} of "
              f"{e['mean_length']} tokens per sequence) |",
              f"| engine: achieved | {e['gflops']:,.1f} GFLOP/s = {100 * e['fraction_of_ceiling']:.0f}% of the "
              f"{result['ceiling_used']} ceiling |"]
    if "naive" in result:
        n = result["naive"]
        lines += [f"| naive: candidate x example scorings | {n['scorings_per_s']:,.1f} /s |",
                  f"| naive: tokens computed | {n['tokens_per_s']:,.0f} /s (padded to {n['padded_length']}) |",
                  f"| naive: achieved | {n['gflops']:,.1f} GFLOP/s |",
                  f"| **engine / naive** | **{result['speedup']:.1f}x** ({result['flop_ratio']:.1f}x fewer FLOPs) |",
                  f"| largest loss difference, engine vs naive | {result['max_loss_difference']:.1e} |"]
    s = result["step"]
    lines += [f"| one trigger step: gradient | {s['gradient_s']:.2f} s ({s['gradient_gflops']:.0f} GFLOP/s) |",
              f"| one trigger step: candidates + confirm | {s['candidates_s']:.2f} s + {s['confirm_s']:.2f} s |",
              f"| one trigger step: total | {s['total_s']:.2f} s |"]
    return "\n".join(lines)
