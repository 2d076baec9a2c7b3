"""Models: what scoring asks of one (``base``), how one is loaded (``loading``), where it runs
and in what precision (``device``), and the prefix attention (``attention``)."""

from __future__ import annotations

from autoprompt.files import cache_dir
from autoprompt.models.base import CausalLM, LanguageModel, MaskedLM, fast_twin, in_dtype, tokenizer_fingerprint
from autoprompt.models.device import CPU_BATCH_TOKENS, MIN_BATCH_TOKENS, estimate_params, pick_device, pick_dtype
from autoprompt.models.loading import (
    BUILTIN_MODELS,
    DEFAULT_MODEL,
    load_model,
    load_tokenizer,
    model_status,
)

__all__ = [
    "BUILTIN_MODELS", "CPU_BATCH_TOKENS", "DEFAULT_MODEL", "MIN_BATCH_TOKENS", "CausalLM", "LanguageModel",
    "MaskedLM", "cache_dir", "estimate_params", "fast_twin", "in_dtype", "load_model", "load_tokenizer", "model_status",
    "pick_device", "pick_dtype", "tokenizer_fingerprint",
]
