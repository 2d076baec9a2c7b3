"""Device, dtype and batch size: where a model runs, in what precision, and how many tokens a
scoring batch holds. These decisions live here and nowhere else."""

from __future__ import annotations

from typing import Any

import torch

from autoprompt.errors import ModelError

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
           "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}

BF16_MIN_PARAMS = 1_000_000_000
CPU_BATCH_TOKENS = 4096  # rows of the model's GEMMs: past ~2k the CPU's GEMM rate is flat
MIN_BATCH_TOKENS = 64
MAX_BATCH_TOKENS = 1 << 16


def pick_device(device: str | None = None) -> torch.device:
    if device:
        try:
            chosen = torch.device(device)
        except RuntimeError:
            raise ModelError(f"unknown device {device!r}; use cuda, mps or cpu") from None
        available = {"cpu": True, "cuda": torch.cuda.is_available(),
                     "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
        if not available.get(chosen.type, True):
            raise ModelError(f"device {device!r} is not available on this machine")
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_batch_tokens(model: Any) -> int:
    """Padded tokens per scoring batch, chosen once per loaded model: on CUDA from the free
    memory (a quarter of it for activations and the copied prefix KV cache), else 4096.
    ``model`` is a LanguageModel (its device, dtype and hf_model.config are read)."""
    device = model.device
    if device.type != "cuda":
        return CPU_BATCH_TOKENS
    free, _ = torch.cuda.mem_get_info(device)
    config = model.hf_model.config
    text = getattr(config, "get_text_config", lambda: config)()
    hidden = getattr(text, "hidden_size", 1024)
    layers = getattr(text, "num_hidden_layers", 24)
    inter = getattr(text, "intermediate_size", 4 * hidden)
    element = torch.finfo(model.dtype).bits // 8
    # live per token: the KV cache of every layer plus one layer's widest activations
    per_token = element * (2 * layers * hidden + 4 * hidden + 3 * inter)
    budget = int(free * 0.25 / per_token)
    return int(min(MAX_BATCH_TOKENS, max(MIN_BATCH_TOKENS, 1 << max(budget, 1).bit_length() - 1)))


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None, n_params: int | None = None) -> torch.dtype:
    """The asked dtype, else fp32, except bf16 for models of 1B parameters or more on CUDA.

    Small models stay fp32 on CUDA: on an H200, SmolLM2-135M scored SST-2 5.7x faster in fp32
    than in bf16 (its kernels are too small for bf16 to pay) and 1 point more accurately."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype:
        if dtype not in _DTYPES:
            raise ModelError(f"unknown dtype {dtype!r}; use one of: fp32, bf16, fp16")
        return _DTYPES[dtype]
    if device.type == "cuda" and n_params is not None and n_params >= BF16_MIN_PARAMS:
        return torch.bfloat16
    return torch.float32


def estimate_params(config) -> int | None:
    """Parameters of a transformer from its config (12 L h^2 + V h), without loading it."""
    text = getattr(config, "get_text_config", lambda: config)()
    hidden, layers = getattr(text, "hidden_size", None), getattr(text, "num_hidden_layers", None)
    if not hidden or not layers:
        return None
    return 12 * layers * hidden * hidden + (getattr(text, "vocab_size", 0) or 0) * hidden
