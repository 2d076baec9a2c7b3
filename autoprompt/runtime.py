"""Speed settings for CPU scoring, and what the hardware can do.

Measured on a 2-core AMD EPYC (AVX2, no AVX-512): glibc's malloc returning every large
activation buffer to the OS costs page faults on each forward; oneDNN's fp32 GEMM (what
``float32_matmul_precision("medium")`` selects on CPU) beats MKL's at the model's shapes. On a
2-core Intel Xeon with AVX512-BF16 (no AMX) it is the other way round (MKL 224 against oneDNN 182
GFLOP/s), and bf16 is *slower* than fp32 (147 GFLOP/s), although the CPU has bf16 instructions;
on AMX and Zen 5 bf16 is 2-7x faster. So the flags only say what may be fast: a short GEMM probe
at the model's layer shapes, a small and a full batch (well under a second, once per machine:
the result is kept in the cache folder), decides.

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
import hashlib
import json
import logging
import os
import platform
import time
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
    if onednn_fp32_is_exact() and cpu_gemm_speeds()["fp32_onednn"] >= ONEDNN_MARGIN * cpu_gemm_speeds()["fp32_mkl"]:
        applied["fp32_gemm"] = "onednn"
    log.debug("cpu tuning: %s", applied)
    return applied


# oneDNN's fp32 GEMM is chosen over MKL's when it is at least this much faster; bf16 over fp32 when it
# is at least BF16_MARGIN faster (the gains it is for are 2-7x; a margin keeps a noisy probe from
# flipping the choice, and with it the results, between two runs on one machine)
ONEDNN_MARGIN = 1.15
BF16_MARGIN = 1.5
_PROBE_SHAPES = ((64, 576, 1536), (512, 576, 1536))  # rows x in x out: SmolLM2-135M's MLP, a small and a full batch


def _gemm_seconds(dtype: torch.dtype, precision: str, shape: tuple[int, int, int], reps: int = 5) -> float:
    """Seconds of one [rows, in] @ [in, out] product, the best of ``reps`` (after a warm-up)."""
    rows, inner, outer = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, inner, generator=gen).to(dtype)
    w = torch.randn(outer, inner, generator=gen).to(dtype)
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision(precision)
        torch.nn.functional.linear(x, w)  # warm-up
        best = float("inf")
        for _ in range(reps):
            start = time.perf_counter()
            torch.nn.functional.linear(x, w)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_float32_matmul_precision(previous)
    return best


def _gemm_gflops(paths: dict[str, tuple[torch.dtype, str]], rounds: int = 3) -> dict[str, float]:
    """GFLOP/s of each path over the probe shapes (their FLOPs over their summed best times), the paths
    measured in alternation so that other work on the CPU slows them alike."""
    best = {name: [float("inf")] * len(_PROBE_SHAPES) for name in paths}
    for _ in range(rounds):
        for name, (dtype, precision) in paths.items():
            for i, shape in enumerate(_PROBE_SHAPES):
                best[name][i] = min(best[name][i], _gemm_seconds(dtype, precision, shape))
    flops = sum(2 * r * i * o for r, i, o in _PROBE_SHAPES)
    return {name: flops / sum(times) / 1e9 for name, times in best.items()}


@functools.lru_cache(maxsize=1)
def cpu_gemm_speeds() -> dict[str, float]:
    """GFLOP/s of this CPU's GEMM paths at the probe shapes: fp32 through MKL and through oneDNN, and
    bf16 where the CPU has bf16 instructions (0 where it has none: torch emulates it, ~100x slower,
    not worth measuring). Measured once per machine and kept in the cache folder (keyed by the CPU,
    its flags, torch and the thread count), so that two runs on one machine always take the same
    paths: a probe repeated under other load could choose differently, and with it change results."""
    from autoprompt.files import cache_dir, read_json, write_atomic

    path = cache_dir() / f"cpu-probe-{_machine_key()}.json"
    try:
        kept = read_json(path) if path.exists() else None
    except Exception:  # a damaged file: measure again
        kept = None
    if isinstance(kept, dict) and {"fp32_mkl", "fp32_onednn", "bf16"} <= kept.keys():
        return {k: float(kept[k]) for k in ("fp32_mkl", "fp32_onednn", "bf16")}
    paths = {"fp32_mkl": (torch.float32, "highest")}
    if onednn_fp32_is_exact():
        paths["fp32_onednn"] = (torch.float32, "medium")
    if has_bf16_units(torch.device("cpu")):
        paths["bf16"] = (torch.bfloat16, "highest")
    speeds = {"fp32_onednn": 0.0, "bf16": 0.0, **_gemm_gflops(paths)}
    log.debug("cpu gemm probe (GFLOP/s): %s", speeds)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(speeds, indent=2) + "\n")
    except OSError as exc:  # a read-only home: the probe still holds for this process
        log.debug("cpu probe not kept: %s", exc)
    return speeds


def _machine_key() -> str:
    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines()
                  if line.startswith("model name")), platform.processor())
    text = json.dumps([model, sorted(cpu_flags()), torch.__version__, torch.get_num_threads()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_flags() -> set[str]:
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def has_bf16_units(device: torch.device) -> bool:
    """Whether bf16 matrix products run in hardware: CUDA with bf16, or a CPU with AVX512-BF16 or AMX.
    (Elsewhere torch emulates bf16 on the CPU: 0.8 GFLOP/s on the 2-core AVX2 machine, 100x slower.)"""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    return False


def has_fast_bf16(device: torch.device) -> bool:
    """Whether bf16 is worth using for speed: CUDA with bf16; a CPU with bf16 units where the GEMM probe
    finds bf16 at least BF16_MARGIN times as fast as the faster fp32 path (``cpu_gemm_speeds``)."""
    if device.type == "cpu":
        if not has_bf16_units(device):
            return False
        speeds = cpu_gemm_speeds()
        return speeds["bf16"] >= BF16_MARGIN * max(speeds["fp32_mkl"], speeds["fp32_onednn"])
    return has_bf16_units(device)
