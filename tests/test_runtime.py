"""CPU tuning happens while autoprompt scores, never on import or load, and the caller's settings come back."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from autoprompt import runtime
from autoprompt.prompt import Prompt
from autoprompt.scoring import score_labels
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


def test_the_fast_fp32_gemm_only_while_scoring(causal_lm, monkeypatch, fresh_tuning) -> None:
    """Where oneDNN's fp32 GEMM is exact (the AVX2 AMD machine), scoring uses it; the caller's precision is back after."""
    monkeypatch.setattr(runtime, "onednn_fp32_is_exact", lambda: True)
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
