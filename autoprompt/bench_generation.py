"""``autoprompt bench --task <a generation task>``: how fast this machine scores whole answers (teacher
forcing, the trigger search's candidates and the likelihood reports) and generates them (greedy, batched,
with a KV cache), in tokens per second, measured in one process with the CPU levers on."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from autoprompt.bench import BenchConfig, _device_name, _timed
from autoprompt.prompt import Prompt
from autoprompt.runtime import has_fast_bf16, tune_cpu, tuned
from autoprompt.scoring import encode_examples, greedy_tokens, score_targets, target_ids
from autoprompt.scoring.endings import ending_tokens

if TYPE_CHECKING:
    from autoprompt.models import LanguageModel
    from autoprompt.task import Task


def run_generation_bench(model: LanguageModel, task: Task, cfg: BenchConfig) -> dict[str, Any]:
    """Scoring and generation throughput on ``cfg.examples`` dev examples of a generation task."""
    with tuned(model.device):
        prompt = replace(Prompt.from_task(task), model=model.ref)
        dev = task.examples("dev")
        examples = random.Random(cfg.seed).sample(dev, min(cfg.examples, len(dev)))
        inputs = [e.input_ids for e in encode_examples(model, prompt, examples)]
        targets = target_ids(model, prompt, examples)
        ends = ending_tokens(model)
        budget = prompt.generation.max_new_tokens
        score_targets(model, prompt, examples[:2])  # warm-up
        greedy_tokens(model, inputs[:2], 2, ends)
        score_s, _ = _timed(lambda: score_targets(model, prompt, examples), model.device)
        gen_s, generated = _timed(lambda: greedy_tokens(model, inputs, budget, ends), model.device)
    scored = sum(len(i) + len(t) - 1 for i, t in zip(inputs, targets, strict=True))
    new = sum(len(g) for g in generated)
    return {"machine": {"device": _device_name(model.device), "threads": torch.get_num_threads(),
                        "torch": torch.__version__, "tuning": tune_cpu() if model.device.type == "cpu" else {},
                        "fast_bf16": has_fast_bf16(model.device)},
            "model": {"name": model.name, "dtype": str(model.dtype).replace("torch.", "")},
            "workload": {"task": task.name, "examples": len(examples), "max_new_tokens": budget,
                         "prompt_tokens": sum(map(len, inputs)), "answer_tokens": sum(map(len, targets))},
            "scoring": {"seconds": round(score_s, 3), "examples_per_s": round(len(examples) / score_s, 1),
                        "tokens_per_s": round(scored / score_s, 1)},
            "generation": {"seconds": round(gen_s, 3), "examples_per_s": round(len(examples) / gen_s, 1),
                           "new_tokens": new, "new_tokens_per_s": round(new / gen_s, 1),
                           "tokens_per_s": round((sum(map(len, inputs)) + new) / gen_s, 1)}}


def format_generation_table(result: dict[str, Any]) -> str:
    m, w, s, g = result["machine"], result["workload"], result["scoring"], result["generation"]
    return "\n".join([
        f"device: {m['device']}, {m['threads']} threads, torch {m['torch']}, model {result['model']['name']} "
        f"({result['model']['dtype']}); workload: {w['task']}, {w['examples']} dev examples "
        f"({w['prompt_tokens']} prompt tokens, {w['answer_tokens']} answer tokens, up to {w['max_new_tokens']} new each)",
        "", "| measure | value |", "|---|---|",
        f"| scoring whole answers (teacher forcing) | {s['examples_per_s']} examples/s, {s['tokens_per_s']} tokens/s |",
        f"| generating answers (greedy, batched) | {g['examples_per_s']} examples/s, {g['new_tokens_per_s']} new "
        f"tokens/s ({g['tokens_per_s']} with the prompts) |",
        f"| seconds: scoring / generation | {s['seconds']} / {g['seconds']} |"]) + "\n"
