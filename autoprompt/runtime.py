"""Process-wide speed settings for CPU scoring, and what the hardware can do.

Measured on a 2-core AMD EPYC (AVX2, no AVX-512): glibc's malloc returning every large
activation buffer to the OS costs page faults on each forward; oneDNN's fp32 GEMM (what
``float32_matmul_precision("medium")`` selects on CPU) beats MKL's at the model's shapes.
Both are applied once, when a model is loaded on the CPU, and only when they are exact.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import platform
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@functools.lru_cache(maxsize=1)
def tune_cpu() -> dict[str, object]:
    """Apply the CPU levers once per process; returns what was applied."""
    applied: dict[str, object] = {"malloc": False, "fp32_gemm": "mkl"}
    if platform.system() == "Linux":
        try:
            libc = ctypes.CDLL("libc.so.6")
            # keep freed activation buffers instead of unmapping them: no page faults per forward
            applied["malloc"] = bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
                                     and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
        except OSError:  # not glibc (musl, ...): nothing to tune
            pass
    if torch.get_float32_matmul_precision() == "highest" and onednn_fp32_is_exact():
        torch.set_float32_matmul_precision("medium")
        applied["fp32_gemm"] = "onednn"
    log.debug("cpu tuning: %s", applied)
    return applied


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
