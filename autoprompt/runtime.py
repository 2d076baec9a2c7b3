"""Speed settings for CPU scoring, and what the hardware can do.

Measured on a 2-core AMD EPYC (AVX2, no AVX-512): glibc's malloc returning every large
activation buffer to the OS costs page faults on each forward; oneDNN's fp32 GEMM (what
``float32_matmul_precision("medium")`` selects on CPU) beats MKL's at the model's shapes.

Nothing changes on import or on loading a model. The first time autoprompt scores on the CPU
(``tuned``), glibc's malloc is told to keep freed buffers (process-wide, for the rest of the
process: it only keeps memory mapped); the fp32 GEMM choice is made only while autoprompt's own
scoring runs and the previous one is restored after it, and only where a probe shows it exact.
``AUTOPROMPT_CPU_TUNING=0`` turns both off.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import platform
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


TUNING_ENV = "AUTOPROMPT_CPU_TUNING"


@functools.lru_cache(maxsize=1)
def tune_cpu() -> dict[str, object]:
    """Apply the process-wide CPU lever (malloc) once, and decide the fp32 GEMM that ``tuned``
    selects while scoring; returns what was chosen."""
    applied: dict[str, object] = {"malloc": False, "fp32_gemm": "mkl"}
    if os.environ.get(TUNING_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        log.debug("cpu tuning off ($%s)", TUNING_ENV)
        return applied
    if platform.system() == "Linux":
        try:
            libc = ctypes.CDLL("libc.so.6")
            # keep freed activation buffers instead of unmapping them: no page faults per forward
            applied["malloc"] = bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
                                     and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
        except OSError:  # not glibc (musl, ...): nothing to tune
            pass
    if onednn_fp32_is_exact():
        applied["fp32_gemm"] = "onednn"
    log.debug("cpu tuning: %s", applied)
    return applied


@contextlib.contextmanager
def tuned(device: torch.device):
    """The CPU levers while autoprompt scores on ``device``; the caller's matmul precision after."""
    if device.type != "cpu":
        yield
        return
    previous = torch.get_float32_matmul_precision()
    faster = previous == "highest" and tune_cpu()["fp32_gemm"] == "onednn"
    if faster:
        torch.set_float32_matmul_precision("medium")
    try:
        yield
    finally:
        if faster:
            torch.set_float32_matmul_precision(previous)


def cpu_tuned(method):
    """A method of a model (``self.device``) or a function of one (first argument) run ``tuned``."""
    @functools.wraps(method)
    def run(model, *args, **kwargs):
        with tuned(model.device):
            return method(model, *args, **kwargs)

    return run


def onednn_fp32_is_exact() -> bool:
    """Whether "medium" matmul precision keeps fp32 accuracy on this CPU. On CPUs with bf16
    units (AMX, AVX512-BF16) oneDNN then computes in bf16; elsewhere it runs fp32 kernels."""
    previous = torch.get_float32_matmul_precision()
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 576, generator=gen), torch.randn(576, 64, generator=gen)
    exact = a.double() @ b.double()
    try:
        torch.set_float32_matmul_precision("highest")
        err_highest = ((a @ b).double() - exact).abs().max().item()
        torch.set_float32_matmul_precision("medium")
        err_medium = ((a @ b).double() - exact).abs().max().item()
    finally:
        torch.set_float32_matmul_precision(previous)
    return err_medium <= 4 * err_highest + 1e-6


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def has_fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix products run in hardware: CUDA with bf16, or a CPU with AVX512-BF16 or AMX.
    (Elsewhere torch emulates bf16 on the CPU: 0.8 GFLOP/s on the 2-core AVX2 machine, 100x slower.)"""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    return False
