"""CPU tuning happens while autoprompt scores, never on import or load, and the caller's settings come back."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from autoprompt import runtime
from autoprompt.prompt import Prompt
from autoprompt.scoring import evaluate, score_labels
from autoprompt.task import Example


def test_importing_and_loading_change_no_process_setting(tiny_causal_dir) -> None:
    code = ("import torch, autoprompt; before = torch.get_float32_matmul_precision();"
            f"autoprompt.load_model({str(tiny_causal_dir)!r}, device='cpu');"
            "from autoprompt import runtime; assert runtime.tune_cpu.cache_info().currsize == 0, 'tuned on load';"
            "assert torch.get_float32_matmul_precision() == before; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.fixture
def fresh_tuning(monkeypatch):
    runtime.tune_cpu.cache_clear()
    yield
    runtime.tune_cpu.cache_clear()


def test_the_fast_fp32_gemm_only_while_scoring(cpu_only, causal_lm, monkeypatch, fresh_tuning) -> None:
    """Where oneDNN's fp32 GEMM is exact and faster (the AVX2 AMD machine), scoring uses it; the caller's
    precision is back after."""
    monkeypatch.setattr(runtime, "onednn_fp32_is_exact", lambda: True)
    monkeypatch.setattr(runtime, "cpu_gemm_speeds", lambda: {"fp32_mkl": 200.0, "fp32_onednn": 416.0, "bf16": 0.0})
    seen = []
    forward = type(causal_lm).hidden_states

    def spy(self, *args, **kwargs):
        seen.append(torch.get_float32_matmul_precision())
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(causal_lm), "hidden_states", spy)
    prompt = Prompt(template="{text} =>[P]", verbalizer={"negative": ["bad"], "positive": ["good"]})
    assert torch.get_float32_matmul_precision() == "highest"
    score_labels(causal_lm, prompt, [Example({"text": "fine"}, "positive")])
    assert seen and set(seen) == {"medium"}
    assert torch.get_float32_matmul_precision() == "highest"
    seen.clear()  # free-form answers too (a first-token prompt's answer words: answer_words)
    evaluate(causal_lm, Prompt(template="{text} is a[P]", fields=("text",)), [Example({"text": "fine"}, "good")],
             metric="precision@1")
    assert seen and set(seen) == {"medium"}
    torch.set_float32_matmul_precision("high")  # a caller's own choice is left alone
    try:
        seen.clear()
        score_labels(causal_lm, prompt, [Example({"text": "fine"}, "positive")])
        assert set(seen) == {"high"} and torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision("highest")


def test_tuning_can_be_turned_off(monkeypatch, fresh_tuning) -> None:
    monkeypatch.setattr(runtime, "onednn_fp32_is_exact", lambda: True)
    monkeypatch.setenv("AUTOPROMPT_CPU_TUNING", "0")
    assert runtime.tune_cpu() == {"malloc": False, "fp32_gemm": "mkl"}
    with runtime.tuned(torch.device("cpu")):
        assert torch.get_float32_matmul_precision() == "highest"


@pytest.mark.parametrize(("speeds", "onednn", "bf16"), [
    ({"fp32_mkl": 200.0, "fp32_onednn": 416.0, "bf16": 800.0}, True, True),    # AMD Zen 5: both levers
    ({"fp32_mkl": 224.0, "fp32_onednn": 182.0, "bf16": 147.0}, False, False),  # the Intel AVX512-BF16 Xeon
    ({"fp32_mkl": 300.0, "fp32_onednn": 310.0, "bf16": 2173.0}, False, True),  # AMX: oneDNN within the margin
    ({"fp32_mkl": 200.0, "fp32_onednn": 210.0, "bf16": 290.0}, False, False),  # bf16 a little faster: kept off
])
def test_the_probe_not_the_flags_picks_the_fast_paths(monkeypatch, fresh_tuning, speeds, onednn, bf16) -> None:
    """The flags say what may be fast; the GEMM probe decides: oneDNN's fp32 only when exact and clearly
    faster than MKL's, bf16 only when clearly faster than the faster fp32."""
    monkeypatch.setattr(runtime, "onednn_fp32_is_exact", lambda: True)
    monkeypatch.setattr(runtime, "cpu_gemm_speeds", lambda: speeds)
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert (runtime.tune_cpu()["fp32_gemm"] == "onednn") is onednn
    assert runtime.has_fast_bf16(torch.device("cpu")) is bf16
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2"})  # no bf16 units: never, whatever is measured
    assert runtime.has_fast_bf16(torch.device("cpu")) is False


def test_the_gemm_probe_measures_each_path_once() -> None:
    speeds = runtime.cpu_gemm_speeds()
    assert runtime.cpu_gemm_speeds() is speeds  # once per process
    assert speeds["fp32_mkl"] > 0 and (speeds["bf16"] > 0) is runtime.has_bf16_units(torch.device("cpu"))


def test_the_probe_is_kept_so_two_runs_take_the_same_paths(monkeypatch, tmp_path) -> None:
    """Measured once per machine and kept: a later process reads the same speeds (a probe repeated
    under other load could choose another GEMM path, and with it change a run's results)."""
    calls = []
    monkeypatch.setenv("AUTOPROMPT_CACHE", str(tmp_path))
    monkeypatch.setattr(runtime, "_gemm_gflops", lambda paths: calls.append(1) or {n: 100.0 + len(n) for n in paths})
    runtime.cpu_gemm_speeds.cache_clear()
    try:
        first = runtime.cpu_gemm_speeds()
        runtime.cpu_gemm_speeds.cache_clear()  # as a new process would
        assert runtime.cpu_gemm_speeds() == first and len(calls) == 1
        (kept,) = tmp_path.glob("cpu-probe-*.json")
        kept.write_text("{not json", encoding="utf-8")  # damaged: measured again, and kept again
        runtime.cpu_gemm_speeds.cache_clear()
        assert runtime.cpu_gemm_speeds() == first and len(calls) == 2
        assert json.loads(kept.read_text(encoding="utf-8")) == first
    finally:
        runtime.cpu_gemm_speeds.cache_clear()
