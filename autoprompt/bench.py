"""``autoprompt bench``: what this machine does with the scoring engine, in one run.

1. the matrix-product ceiling at the model's own layer shapes (fp32, and bf16 where the
   hardware has it);
2. the engine scoring a trigger-search step's candidates (every candidate on every example,
   each example's prefix encoded once, the head only at [P] and only at the label rows):
   scorings/s, tokens/s, achieved GFLOP/s and its fraction of the ceiling, counting only the
   FLOPs that really need doing;
3. the same scores computed two other ways (bench_reference): nanoGCG's (per example, candidates
   batched on Hugging Face's own prefix cache, logits at the last position) in each dtype the
   engine runs, and the naive way of the original AutoPrompt code (fp32); interleaved with the
   engine, in the same process with the same settings (so the ratio is the algorithm's, not the
   allocator's), and the ratios;
4. steps 2-3 in each dtype the machine runs fast: fp32 always, bf16 where the hardware has it
   (each with its fraction of that dtype's ceiling);
5. one trigger-search step split into gradient and candidate scoring, and a template-search
   trial: dev examples scored per second with 0 and 8 demonstrations.
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

from autoprompt.bench_reference import naive_candidate_losses, nanogcg_candidate_losses
from autoprompt.gradient import trigger_gradient
from autoprompt.models import in_dtype
from autoprompt.runtime import cpu_gemm_speeds, has_bf16_units, has_fast_bf16, tune_cpu, tuned
from autoprompt.scoring import encode_examples, label_word_ids
from autoprompt.searches.trigger import TriggerSearchConfig, allowed_tokens, candidate_losses, initial_prompt

if TYPE_CHECKING:
    from autoprompt.models import LanguageModel
    from autoprompt.prompt import Prompt
    from autoprompt.task import Example, Task

log = logging.getLogger(__name__)

ENGINE_REPEATS = 3  # times the engine scores each round's workload, between slices of the naive way's


@dataclasses.dataclass
class BenchConfig:
    candidates: int = 17  # a default step: the current triggers and top_k=16 swaps
    examples: int = 32  # the default eval_batch
    rounds: int = 2  # engine/naive pairs, each on another trigger slot
    naive: bool = True
    gemm_rows: int = 2048
    template_examples: int = 64  # dev examples a template trial row scores
    all_dtypes: bool = False  # bf16 too where the CPU has bf16 units but the probe found it no faster
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


def last_mlp_params(model: LanguageModel) -> int:
    """Weights of the last layer's MLP when the engine's prefix path skips it at unread positions."""
    from autoprompt.models.attention import gated_mlp, supported

    layers = getattr(model.hf_model.base_model, "layers", None)
    mlp = getattr(layers[-1], "mlp", None) if layers else None
    if not (model.is_causal and supported(model) and gated_mlp(mlp)):
        return 0
    return sum(p.numel() for p in mlp.parameters())


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
    # the last layer's MLP runs only where a score is read (models.attention.lean_mlps)
    engine_flops -= 2 * last_mlp_params(model) * (engine_tokens - n_cand * len(encoded))
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


def bench_models(model: LanguageModel, all_dtypes: bool = False) -> dict[str, LanguageModel]:
    """The dtypes the searches run on this machine, each with its model: the model's own, and a bf16
    copy of an fp32 model where bf16 is fast (what ``rank_dtype``/``trial_dtype`` auto use; with
    ``all_dtypes`` wherever the hardware has bf16 units)."""
    own = str(model.dtype).replace("torch.", "").replace("float32", "fp32").replace("bfloat16", "bf16")
    models = {own: model}
    fast = has_bf16_units(model.device) if all_dtypes else has_fast_bf16(model.device)
    if model.dtype == torch.float32 and fast:
        models["bf16"] = in_dtype(model, torch.bfloat16)
    return models


def _run_bench(model: LanguageModel, task: Task, cfg: BenchConfig, *, progress=None) -> dict[str, Any]:
    say = progress or (lambda msg: None)
    device = model.device
    shapes = model_shapes(model)
    tuned = tune_cpu() if device.type == "cpu" else {}
    result: dict[str, Any] = {
        "machine": {"device": _device_name(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "tuning": tuned, "fast_bf16": has_fast_bf16(device),
                    **({"gemm_probe": cpu_gemm_speeds()} if device.type == "cpu" else {})},
        "model": {"name": model.name, "dtype": str(model.dtype).replace("torch.", ""), **{
            k: shapes[k] for k in ("layers", "hidden", "vocab")}, "linear_params": shapes["linear_params"]},
        "workload": {"task": task.name, "candidates": cfg.candidates, "examples": cfg.examples, "rounds": cfg.rounds},
    }
    ceiling = _ceilings(model, shapes, cfg, say)
    result["ceiling_gflops"] = {k: round(v, 3) for k, v in ceiling.items()}
    works = workloads(model, task, cfg)
    counts = [workload_counts(model, shapes, w) for w in works]
    scorings = sum(len(w.candidates) * len(w.examples) for w in works)
    result["dtypes"] = {}
    for name, m in bench_models(model, cfg.all_dtypes).items():
        naive = cfg.naive and m.dtype == torch.float32
        times = _interleaved(m, works, naive, say, name)
        entry = _engine_entry(times["engine"], counts, scorings, ceiling.get(name) or ceiling["fp32"], works)
        g_time = sum(times["nanogcg"])
        entry["nanogcg"] = {"seconds": round(g_time, 3), "scorings_per_s": round(scorings / g_time, 1),
                            "max_loss_difference": times["nanogcg_diff"]}
        entry["vs_nanogcg"] = round(g_time / sum(times["engine"]), 2)
        say(f"one trigger-search step ({name})")
        entry["step"] = step_split(m, model, task, works[0], shapes)
        say(f"a template-search trial ({name})")
        entry["template"] = template_rows(m, task, cfg)
        result["dtypes"][name] = entry
        if naive:
            _naive_entry(result, times, counts, scorings)
    own = next(iter(result["dtypes"]))
    result["engine"], result["step"] = result["dtypes"][own], result["dtypes"][own]["step"]
    result["ceiling_used"] = own if own in ceiling else "fp32"
    return result


def _engine_entry(seconds: list[float], counts: list[dict], scorings: int, ceiling: float,
                  works: list[Workload]) -> dict[str, Any]:
    e_time, e_flops = sum(seconds), sum(c["engine_flops"] for c in counts)
    return {
        "seconds": round(e_time, 3), "scorings_per_s": round(scorings / e_time, 1),
        "tokens_per_s": round(sum(c["engine_tokens"] for c in counts) / e_time, 1),
        "gflops": round(e_flops / e_time / 1e9, 1), "fraction_of_ceiling": round(e_flops / e_time / 1e9 / ceiling, 3),
        "tokens": int(sum(c["engine_tokens"] for c in counts)), "tflop": round(e_flops / 1e12, 3),
        "mean_length": round(np.mean([c["mean_length"] for c in counts]), 1),
        "suffix_length": round(np.mean([c["suffix_length"] for c in counts]), 1),
        "slots": [w.slot for w in works],
    }


def _naive_entry(result: dict[str, Any], times: dict[str, Any], counts: list[dict], scorings: int) -> None:
    n_time, n_flops = sum(times["naive"]), sum(c["naive_flops"] for c in counts)
    e_time, e_flops = sum(times["engine"]), sum(c["engine_flops"] for c in counts)
    result["naive"] = {
        "seconds": round(n_time, 3), "scorings_per_s": round(scorings / n_time, 1),
        "tokens_per_s": round(sum(c["naive_tokens"] for c in counts) / n_time, 1),
        "gflops": round(n_flops / n_time / 1e9, 1), "tokens": int(sum(c["naive_tokens"] for c in counts)),
        "tflop": round(n_flops / 1e12, 3),
        "padded_length": round(np.mean([c["padded_length"] for c in counts]), 1),
    }
    result["speedup"] = round(n_time / e_time, 2)
    result["flop_ratio"] = round(n_flops / e_flops, 2)
    result["max_loss_difference"] = times["naive_diff"]


def _ceilings(model: LanguageModel, shapes: dict[str, Any], cfg: BenchConfig, say) -> dict[str, float]:
    """GEMM ceilings: fp32 as tuned, fp32 as torch ships (CPU), bf16 (or bf16 emulated, measured small)."""
    device = model.device
    say("matrix-product ceiling")
    ceiling = {"fp32": gemm_ceiling(model, shapes, cfg.gemm_rows, torch.float32)}
    if device.type == "cpu":
        with stock_torch():
            ceiling["fp32_stock"] = gemm_ceiling(model, shapes, cfg.gemm_rows, torch.float32)
    if has_bf16_units(device):  # measured even where it is not faster than fp32 (then the searches keep fp32)
        ceiling["bf16"] = gemm_ceiling(model, shapes, cfg.gemm_rows, torch.bfloat16)
    else:  # emulated: measured small, to show why it is not used
        ceiling["bf16_emulated"] = gemm_ceiling(model, shapes, 64, torch.bfloat16, seconds=0.2)
    return ceiling


def _interleaved(model: LanguageModel, works: list[Workload], naive: bool, say, name: str) -> dict[str, Any]:
    """Seconds per round of the engine, nanoGCG's way and (``naive``) the naive way, interleaved, and
    the largest loss difference of each reference from the engine. The engine (the short one) scores
    each round ENGINE_REPEATS times, between as many slices of the naive way's candidates (it scores
    one candidate at a time, so slicing adds it no work): both are timed across the same minutes of
    a shared machine, whose speed drifts."""
    device = model.device
    w0 = works[0]
    candidate_losses(model, w0.prompt, w0.examples[:2], w0.candidates[:2], "labels")  # warm-up
    nanogcg_candidate_losses(model, w0.prompt, w0.examples[:2], w0.candidates[:2])
    out: dict[str, Any] = {"engine": [], "nanogcg": [], "naive": [], "nanogcg_diff": 0.0, "naive_diff": 0.0}
    for r, work in enumerate(works):
        args = (work.prompt, work.examples, work.candidates)
        engine_s, naive_s, naive_losses = [], 0.0, []
        for part in np.array_split(np.arange(len(work.candidates)), min(ENGINE_REPEATS, len(work.candidates))):
            say(f"round {r + 1}/{len(works)} ({name}): engine (slot {work.slot})")
            dt, engine_losses = _timed(lambda a=args: candidate_losses(model, *a, "labels"), device)
            engine_s.append(dt)
            if naive:
                say(f"round {r + 1}/{len(works)} ({name}): naive reference, candidates {part[0] + 1}-{part[-1] + 1}")
                dt, losses = _timed(lambda p=part, w=work: naive_candidate_losses(model, w.prompt, w.examples,
                                                                                   w.candidates[p]), device)
                naive_s, naive_losses = naive_s + dt, naive_losses + [losses]
        out["engine"].append(sum(engine_s) / len(engine_s))
        say(f"round {r + 1}/{len(works)} ({name}): nanoGCG's way")
        dt, losses = _timed(lambda a=args: nanogcg_candidate_losses(model, *a), device)
        out["nanogcg"].append(dt)
        out["nanogcg_diff"] = max(out["nanogcg_diff"], float(np.abs(engine_losses - losses).max()))
        if naive:
            out["naive"].append(naive_s)
            out["naive_diff"] = max(out["naive_diff"], float(np.abs(engine_losses - np.concatenate(naive_losses)).max()))
    return out


def step_split(ranker: LanguageModel, model: LanguageModel, task: Task, work: Workload,
               shapes: dict[str, Any]) -> dict[str, float]:
    """Seconds of one default step: the gradient over grad_batch examples and the candidates on
    ``ranker``, then the confirmation of the best swap on ``model`` (the model's own dtype)."""
    cfg = TriggerSearchConfig()
    train = task.examples("train")
    grad_examples = random.Random(1).sample(train, min(cfg.grad_batch, len(train)))
    device = model.device
    trigger_gradient(ranker, work.prompt, grad_examples[:2], cfg.loss)  # warm-up (the bf16 copy's first pass)
    grad_s, _ = _timed(lambda: trigger_gradient(ranker, work.prompt, grad_examples, cfg.loss), device)
    score_s, _ = _timed(lambda: candidate_losses(ranker, work.prompt, work.examples, work.candidates, cfg.loss),
                        device)
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


def template_rows(model: LanguageModel, task: Task, cfg: BenchConfig) -> dict[str, float]:
    """Dev examples a template-search trial scores per second: the task's template with 0 and with 8
    train demonstrations (shown to every input: their KV cache is computed once per trial)."""
    from dataclasses import replace

    from autoprompt.prompt import Prompt
    from autoprompt.scoring import Caches, evaluate

    dev = task.examples("dev")
    examples = random.Random(cfg.seed).sample(dev, min(cfg.template_examples, len(dev)))
    train = task.examples("train")
    demos = tuple(random.Random(cfg.seed + 1).sample(train, min(8, len(train))))
    base = replace(Prompt.from_task(task), model=model.ref)
    evaluate(model, base, examples[:2])  # warm-up
    out = {}
    for k, prompt in ((0, base), (len(demos), replace(base, demonstrations=demos))):
        dt, _ = _timed(lambda p=prompt: evaluate(model, p, examples, metric=task.metric, caches=Caches()), model.device)
        out[f"demos_{k}_per_s"] = round(len(examples) / dt, 1)
    return out


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} cpu"
