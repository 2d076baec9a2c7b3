"""The fast engine against the naive reference, the FLOP counts, OOM halving and `autoprompt bench`."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from autoprompt import bench, bench_reference, bench_table
from autoprompt.cli import main
from autoprompt.models import CPU_BATCH_TOKENS
from autoprompt.prompt import Prompt
from autoprompt.runtime import has_fast_bf16, onednn_fp32_is_exact, tune_cpu
from autoprompt.scoring import log_normalize, score_labels
from autoprompt.searches.trigger import TriggerSearchConfig, candidate_losses, initial_prompt
from autoprompt.task import Example, Task

VERBALIZER = {"negative": ["negative"], "positive": ["positive"]}
TEXTS = ["a fine film", "the plot is thin and the acting is worse than the plot", "it moves", "what a cast",
         "slow and long", "i laughed until i cried , then i laughed again", "a mess", "worth it"]


def toy_task(verbalizer=VERBALIZER) -> Task:
    labels = list(verbalizer)
    examples = [Example({"text": t}, labels[i % 2], f"toy:{i}") for i, t in enumerate(TEXTS)]
    return Task(name="toy", template="Review: {text}\nSentiment:[P]", verbalizer=verbalizer,
                splits={"train": examples, "dev": examples, "test": examples})


def step_workload(model, task, slot=1):
    prompt = initial_prompt(model, task, TriggerSearchConfig())
    candidates = np.tile(np.asarray(prompt.trigger_ids), (6, 1))
    candidates[1:, slot] = [40, 41, 300, 301, 555]
    return prompt, task.examples("train"), candidates


@pytest.mark.parametrize("loss", ["labels", "vocab"])
def test_engine_equals_the_naive_reference_in_fp32(causal_lm, loss) -> None:
    """Prefix caches, packed batches and label-row heads change no loss: the engine's candidate
    losses equal full-sequence, full-vocabulary, one-candidate-at-a-time ones."""
    prompt, examples, candidates = step_workload(causal_lm, toy_task())
    engine = candidate_losses(causal_lm, prompt, examples, candidates, loss)
    naive = bench_reference.naive_candidate_losses(causal_lm, prompt, examples, candidates, loss)
    np.testing.assert_allclose(engine, naive, atol=1e-5, rtol=0)
    assert len(set(np.round(naive, 6))) > 1  # the candidates really differ, so equality means something
    nanogcg = bench_reference.nanogcg_candidate_losses(causal_lm, prompt, examples, candidates, loss)
    np.testing.assert_allclose(nanogcg, naive, atol=1e-5, rtol=0)  # the second reference computes the same


def test_nanogcg_way_with_calibration_and_demonstrations(causal_lm) -> None:
    """nanoGCG's way (per example, Hugging Face's prefix cache expanded to the candidates) equals the
    naive losses with a calibrated prompt whose demonstrations come before the triggers."""
    task = toy_task()
    prompt, examples, candidates = step_workload(causal_lm, task)
    prompt = dataclasses.replace(prompt, calibration=(0.3, -0.3), demonstrations=tuple(task.examples("train")[:2]))
    naive = bench_reference.naive_candidate_losses(causal_lm, prompt, examples, candidates)
    np.testing.assert_allclose(bench_reference.nanogcg_candidate_losses(causal_lm, prompt, examples, candidates),
                               naive, atol=1e-5, rtol=0)


@pytest.mark.parametrize("verbalizer", [VERBALIZER, {"negative": ["negative", "bad"], "positive": ["positive", "good"]},
                                        {"negative": ["not good at all"], "positive": ["positive"]}])
def test_label_normalised_scores_equal_vocab_scores_renormalised(causal_lm, verbalizer) -> None:
    """over="labels" computes only the label rows when every word is one token (else the full
    head) and equals the vocabulary-normalised scores renormalised over the labels."""
    prompt = Prompt("Review: {text}\nSentiment:[P]", verbalizer, fields=("text",))
    examples = toy_task(verbalizer).examples("dev")
    vocab = score_labels(causal_lm, prompt, examples)
    labels = score_labels(causal_lm, prompt, examples, over="labels")
    np.testing.assert_allclose(labels, log_normalize(vocab), atol=1e-5)
    assert not np.allclose(vocab, labels)  # the vocabulary normaliser really was dropped


def test_head_rows_only_when_words_are_single_tokens(causal_lm, monkeypatch) -> None:
    seen = []
    real = type(causal_lm).log_probs_at

    def spy(self, *args, vocab_rows=None, **kwargs):
        seen.append(vocab_rows)
        return real(self, *args, vocab_rows=vocab_rows, **kwargs)

    monkeypatch.setattr(type(causal_lm), "log_probs_at", spy)
    prompt = Prompt("Review: {text}\nSentiment:[P]", VERBALIZER, fields=("text",))
    out = score_labels(causal_lm, prompt, toy_task().examples("dev"), over="labels")
    assert out.shape == (len(TEXTS), 2)
    assert seen and all(rows is not None and len(rows) == 2 for rows in seen)


def test_out_of_memory_halves_the_batch_for_good(causal_lm, monkeypatch) -> None:
    """A CUDA out-of-memory on a batch halves the model's token budget, re-packs what is left,
    and the scores are those of an undisturbed run."""
    prompt, examples, candidates = step_workload(causal_lm, toy_task())
    expected = candidate_losses(causal_lm, prompt, examples, candidates, "labels")
    real = type(causal_lm).log_probs_at
    failures = []

    def tight_memory(self, input_ids, *args, **kwargs):
        if input_ids.numel() > 100:
            failures.append(input_ids.numel())
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(type(causal_lm), "log_probs_at", tight_memory)
    monkeypatch.setattr(causal_lm, "batch_tokens", 512)
    got = candidate_losses(causal_lm, prompt, examples, candidates, "labels")
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert failures and causal_lm.batch_tokens <= 128  # halved until the batches fit, and kept
    before = len(failures)
    np.testing.assert_allclose(candidate_losses(causal_lm, prompt, examples, candidates, "labels"), expected, atol=1e-5)
    assert len(failures) == before  # the next call starts small: no out-of-memory again


def test_cpu_batch_budget_and_tuning_are_set_once(cpu_only, causal_lm) -> None:
    assert causal_lm.batch_tokens == CPU_BATCH_TOKENS
    first = tune_cpu()
    assert tune_cpu() is first  # once per process
    assert first["fp32_gemm"] in ("mkl", "onednn")
    if first["fp32_gemm"] == "onednn":
        assert onednn_fp32_is_exact()
    assert isinstance(has_fast_bf16(torch.device("cpu")), bool)
    assert has_fast_bf16(torch.device("meta")) is False


def test_forward_flops_by_hand() -> None:
    shapes = {"linear_params": 100, "layers": 2, "heads": 3, "head_dim": 4, "hidden": 12, "vocab": 50}
    # tokens 0..2 of a 3-token sequence: 3 tokens, contexts 1+2+3 = 6
    assert bench.forward_flops(shapes, [3]) == 2 * 100 * 3 + 4 * 2 * 3 * 4 * 6
    # the same sequence with its first 2 tokens cached: 1 token, context 3
    assert bench.forward_flops(shapes, [3], [2]) == 2 * 100 * 1 + 4 * 2 * 3 * 4 * 3
    assert bench.forward_flops(shapes, [3, 3], [0, 2]) == bench.forward_flops(shapes, [3]) + bench.forward_flops(shapes, [3], [2])
    assert bench.head_flops(shapes, 5, 50) == 2 * 12 * 50 * 5


def test_run_bench_measures_and_agrees(causal_lm) -> None:
    cfg = bench.BenchConfig(candidates=4, examples=6, rounds=2, gemm_rows=64)
    result = bench.run_bench(causal_lm, toy_task(), cfg)
    assert result["max_loss_difference"] < 1e-4
    assert result["engine"]["slots"] == [1, 3]  # spread over the 5 default trigger slots
    assert result["flop_ratio"] > 1  # the naive way computes more
    assert result["engine"]["tokens"] < result["naive"]["tokens"]
    assert result["speedup"] > 0 and result["ceiling_gflops"]["fp32"] > 0
    assert 0 < result["engine"]["fraction_of_ceiling"]
    assert result["step"]["total_s"] == pytest.approx(
        result["step"]["gradient_s"] + result["step"]["candidates_s"] + result["step"]["confirm_s"], abs=2e-3)
    fp32 = result["dtypes"]["fp32"]
    assert fp32["nanogcg"]["max_loss_difference"] < 1e-4 and fp32["vs_nanogcg"] > 0
    assert fp32["template"]["demos_0_per_s"] > 0 and fp32["template"]["demos_8_per_s"] > 0
    assert set(result["dtypes"]) == ({"fp32", "bf16"} if has_fast_bf16(causal_lm.device) else {"fp32"})
    table = bench_table.format_table(result)
    assert "engine / naive" in table and f"{result['speedup']:.1f}x" in table
    assert "engine / nanoGCG's way" in table and f"{fp32['vs_nanogcg']:.2f}x" in table


def test_bench_cli_json(tiny_causal_dir, tmp_path) -> None:
    task_file = tmp_path / "toy.py"
    task_file.write_text(
        "from autoprompt.task import Example, Task\n"
        f"ex = [Example({{'text': t}}, ['negative', 'positive'][i % 2], f'toy:{{i}}') for i, t in enumerate({TEXTS!r})]\n"
        f"task = Task(name='toy', template='Review: {{text}}\\nSentiment:[P]', verbalizer={VERBALIZER!r},\n"
        "            splits={'train': ex, 'dev': ex, 'test': ex})\n")
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", "--model", str(tiny_causal_dir), "--task", str(task_file),
                                       "--candidates", "3", "--examples", "4", "--rounds", "1", "--no-naive",
                                       "--json", "-o", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["workload"] == {"task": "toy", "candidates": 3, "examples": 4, "rounds": 1}
    assert "naive" not in data and data["engine"]["scorings_per_s"] > 0


def test_bench_refuses_a_free_form_task(tiny_causal_dir, tmp_path) -> None:
    task_file = tmp_path / "facts.py"
    task_file.write_text(
        "from autoprompt.task import Example, Task\n"
        "ex = [Example({'subject': 'Paris'}, 'France', 'f:0'), Example({'subject': 'Rome'}, 'Italy', 'f:1')]\n"
        "task = Task(name='facts', template='{subject} is in[P]', splits={'train': ex, 'dev': ex, 'test': ex})\n")
    result = CliRunner().invoke(main, ["bench", "--model", str(tiny_causal_dir), "--task", str(task_file)])
    assert result.exit_code == 2
    assert "classification" in result.output and "Traceback" not in result.output


def test_bf16_ranking_confirms_in_the_model_dtype(causal_lm, monkeypatch) -> None:
    """rank_dtype=bf16: gradient and candidate scores come from a bf16 copy; the swap kept is
    confirmed on fresh examples in fp32, and dev is scored in fp32."""
    from autoprompt.searches import trigger as ts

    calls = []
    real_losses, real_grad, real_eval = ts.candidate_losses, ts.trigger_gradient, ts.evaluate
    monkeypatch.setattr(ts, "candidate_losses", lambda m, *a, **k: calls.append(("cand", m.dtype)) or real_losses(m, *a, **k))
    monkeypatch.setattr(ts, "trigger_gradient", lambda m, *a, **k: calls.append(("grad", m.dtype)) or real_grad(m, *a, **k))
    monkeypatch.setattr(ts, "evaluate", lambda m, *a, **k: calls.append(("dev", m.dtype)) or real_eval(m, *a, **k))
    cfg = TriggerSearchConfig(steps=3, top_k=4, eval_batch=4, grad_batch=4, confirm_batch=4, dev_every=1,
                              rank_dtype="bf16", n_triggers=2)
    prompt, state = ts.trigger_search(causal_lm, toy_task(), cfg, progress=False)
    assert causal_lm.dtype == torch.float32 and state.step == 3
    assert {d for kind, d in calls if kind == "grad"} == {torch.bfloat16}
    cand = [d for kind, d in calls if kind == "cand"]
    assert cand.count(torch.bfloat16) == 3  # each step ranks its candidates in bf16 ...
    assert all(prev == torch.bfloat16 for prev, d in zip(cand, cand[1:], strict=False) if d == torch.float32)
    assert all(d == torch.float32 for kind, d in calls if kind == "dev")  # ... and confirms and checks in fp32
    assert ts.ranking_model(causal_lm, TriggerSearchConfig(rank_dtype="fp32")) is causal_lm
    ranker = ts.ranking_model(causal_lm, cfg)  # a bf16 copy the search keeps; the model keeps nothing
    assert ranker is not causal_lm and ranker.dtype == torch.bfloat16 and "_dtype_copies" not in vars(causal_lm)


def test_bf16_ranking_encodes_the_demonstrations_once_per_dtype(causal_lm, monkeypatch) -> None:
    """Ranking in bf16 and confirming in fp32 keep a head cache each: the demonstrations every
    input starts with are encoded once per dtype for the whole search, not twice a step."""
    from autoprompt.scoring import prefix
    from autoprompt.searches import trigger as ts

    encoded = []
    real = type(causal_lm).prefix_cache
    monkeypatch.setattr(type(causal_lm), "prefix_cache",
                        lambda self, ids, *a, **k: encoded.append((self.dtype, ids.shape[1])) or real(self, ids, *a, **k))
    task = toy_task()
    base = Prompt("Review: {text} [T] [T]\nSentiment:[P]", VERBALIZER, fields=("text",),
                  instruction="Say if the review is positive or negative.",
                  demonstrations=tuple(task.examples("train")[:3]))
    cfg = TriggerSearchConfig(steps=4, top_k=4, eval_batch=4, grad_batch=4, confirm_batch=4, dev_every=2,
                              rank_dtype="bf16", n_triggers=2)
    heads = []
    real_head = prefix.head_cache
    monkeypatch.setattr(prefix, "head_cache", lambda m, h, c=None: heads.append((m.dtype, len(h))) or real_head(m, h, c))
    ts.trigger_search(causal_lm, task, cfg, progress=False, base=base)
    assert heads and min(n for _, n in heads) >= 30  # instruction + three demonstrations
    long_encodings = [dtype for dtype, n in encoded if n >= min(n for _, n in heads)]
    assert sorted(long_encodings, key=str) == sorted([torch.bfloat16, torch.float32], key=str)


def test_shared_demonstrations_are_encoded_once_and_change_nothing(causal_lm, monkeypatch) -> None:
    """With an instruction and demonstrations every example starts with, that head's KV cache is
    computed once (kept on the model) and continued per example: candidate losses still equal
    the naive reference, and the gradient equals the one computed without the head cache."""
    from autoprompt import scoring
    from autoprompt.gradient import trigger_gradient
    from autoprompt.scoring import prefix  # noqa: F401  (scoring.prefix below)

    task = toy_task()
    demos = tuple(task.examples("train")[:2])
    prompt, examples, candidates = step_workload(causal_lm, task)
    prompt = dataclasses.replace(prompt, instruction="Say if the review is positive or negative.",
                                 demonstrations=demos)
    heads = []
    real = scoring.prefix.head_cache
    monkeypatch.setattr(scoring.prefix, "head_cache", lambda m, h, c=None: heads.append(len(h)) or real(m, h, c))
    engine = candidate_losses(causal_lm, prompt, examples, candidates, "labels")
    assert heads and heads[0] >= 20  # instruction + two demonstrations
    np.testing.assert_allclose(engine, bench_reference.naive_candidate_losses(causal_lm, prompt, examples, candidates), atol=1e-5)
    with_head = trigger_gradient(causal_lm, prompt, examples, "labels")
    monkeypatch.setattr(scoring, "COMMON_PREFIX_MIN", 10_000)
    monkeypatch.setattr(scoring.common_head, "__defaults__", (10_000,))
    without = trigger_gradient(causal_lm, prompt, examples, "labels")
    torch.testing.assert_close(with_head, without, atol=1e-4, rtol=1e-4)
    assert len(heads) >= 2  # the gradient used the head cache too (first call above)


def test_prefix_attention_in_place_equals_the_copying_path(causal_lm, monkeypatch) -> None:
    """Rows grouped in equal runs per prefix, rows in any order, and Hugging Face's own cache
    path (a copy of the prefix per row) give the same losses."""
    from autoprompt.models import attention

    prompt, examples, candidates = step_workload(causal_lm, toy_task(), slot=2)
    runs = []
    real_runs = attention._runs
    monkeypatch.setattr(attention, "_runs", lambda rows: runs.append(real_runs(rows)[1]) or real_runs(rows))
    grouped = candidate_losses(causal_lm, prompt, examples, candidates, "labels")
    assert runs and all(r == len(candidates) for r in runs)  # whole runs of candidates per example
    monkeypatch.setattr(attention, "_runs", lambda rows: (None, 0))  # per-row gather of the prefix
    gathered = candidate_losses(causal_lm, prompt, examples, candidates, "labels")
    monkeypatch.setattr(attention, "supported", lambda model: False)  # transformers' DynamicCache copies
    copied = candidate_losses(causal_lm, prompt, examples, candidates, "labels")
    np.testing.assert_allclose(grouped, copied, atol=1e-5, rtol=0)
    np.testing.assert_allclose(gathered, copied, atol=1e-5, rtol=0)


def test_lean_mlps_change_no_loss_and_skip_the_last_layers_unread_rows(causal_lm, monkeypatch) -> None:
    """Inside the prefix path the gated MLPs run in place, and the last layer's only at the positions
    scores read (none while a prefix is encoded for its KV cache): the losses equal those of
    transformers' own MLPs, with far fewer rows through that last MLP."""
    import contextlib

    from autoprompt.models import attention

    prompt, examples, candidates = step_workload(causal_lm, toy_task(), slot=1)
    last = causal_lm.hf_model.base_model.layers[-1].mlp

    def rows_through_last_mlp(fn):
        seen = []
        handle = last.gate_proj.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[:-1].numel()))
        try:
            return fn(), sum(seen)
        finally:
            handle.remove()

    lean, lean_rows = rows_through_last_mlp(lambda: candidate_losses(causal_lm, prompt, examples, candidates, "labels"))
    assert causal_lm.hf_model.base_model.layers[-1].mlp is last  # put back
    monkeypatch.setattr(attention, "lean_mlps", lambda model, needed: contextlib.nullcontext())
    plain, plain_rows = rows_through_last_mlp(lambda: candidate_losses(causal_lm, prompt, examples, candidates, "labels"))
    np.testing.assert_allclose(lean, plain, atol=1e-5, rtol=0)
    answer_rows = len(candidates) * len(examples)  # at least one read position per candidate x example
    assert answer_rows <= lean_rows <= 2 * answer_rows < plain_rows
