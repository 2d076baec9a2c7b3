"""What a soft prompt or a LoRA run learns besides the prompt text: an Adapter, its tensors on disk
as safetensors (never a pickle), found again by their sha256, and the fingerprint of the base model
whose weights they were trained on (an adapter means nothing on other weights)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from autoprompt.errors import PromptFileError
from autoprompt.files import write_atomic

KINDS = ("soft", "lora")
SOFT_TENSOR = "soft_prompt"  # a soft adapter's one tensor, [n_tokens, hidden]
MAX_ADAPTER_BYTES = 4 * 1024**3  # far above a LoRA adapter of a 7B model at rank 64
_SAMPLE = 4096  # values per weight tensor the fingerprint reads


@dataclass(frozen=True, eq=False)
class Adapter:
    """Learned tensors a prompt runs with. ``soft``: ``soft_prompt`` [n_tokens, hidden], the input
    embeddings of the prompt's [T] slots; ``lora``: LoRA matrices by the name of the weight they adapt.
    Equal only to itself (tensors have no one truth value)."""

    kind: str
    settings: dict[str, Any]  # soft: {"n_tokens"}; lora: {"r", "alpha", "dropout", "target_modules"}
    tensors: dict[str, torch.Tensor]  # on the CPU, fp32
    base_model: str  # weights_fingerprint of the model it was trained on
    bound: list = field(default_factory=list, repr=False)  # [(base model, the model with it)]: built once

    @property
    def n_parameters(self) -> int:
        return sum(t.numel() for t in self.tensors.values())


def weights_fingerprint(hf_model: torch.nn.Module) -> str:
    """A hash of a model's weights: every tensor's name and shape, and an evenly spaced sample of its
    values at bf16 precision (so an fp32 and a bf16 load of the same weights agree)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(hf_model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // _SAMPLE)][:_SAMPLE]
        if sample.is_floating_point():
            sample = sample.to("cpu", torch.bfloat16).float()
        digest.update(f"{name}:{tuple(tensor.shape)}:".encode())
        digest.update(sample.cpu().numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:32]


def adapter_bytes(adapter: Adapter) -> bytes:
    """The adapter's tensors as a safetensors file."""
    from safetensors.torch import save

    tensors = {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in adapter.tensors.items()}
    return save(tensors, metadata={"format": "pt", "autoprompt.adapter": adapter.kind})


def write_adapter(adapter: Adapter, path: Path) -> str:
    """Write the adapter's tensors to ``path`` (atomically); returns their sha256 (hex)."""
    data = adapter_bytes(adapter)
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def read_adapter(path: Path, *, kind: str, sha256: str, settings: dict[str, Any], base_model: str) -> Adapter:
    """An adapter from its file, refused when missing, altered (its sha256 is not ``sha256``) or not
    tensors of its kind. The bytes checked are the bytes parsed."""
    try:
        size = path.stat().st_size
        if size > MAX_ADAPTER_BYTES:
            raise PromptFileError(f"adapter file {path.name}: {size:,} bytes is too big (limit {MAX_ADAPTER_BYTES:,})")
        data = path.read_bytes()
    except FileNotFoundError:
        raise PromptFileError(f"adapter file {path.name} is missing (it must lie beside the prompt file)") from None
    except OSError as exc:
        raise PromptFileError(f"adapter file {path.name}: cannot read ({exc.strerror or exc})") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise PromptFileError(f"adapter file {path.name} was altered: its sha256 {actual[:16]}... is not the "
                              f"{sha256[:16]}... the prompt file records")
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(data)
    except (SafetensorError, ValueError) as exc:
        raise PromptFileError(f"adapter file {path.name}: not a safetensors file ({exc})") from None
    _check_tensors(path.name, kind, settings, tensors)
    return Adapter(kind, settings, {name: t.float() for name, t in tensors.items()}, base_model)


def _check_tensors(name: str, kind: str, settings: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    problem = None
    if not all(t.is_floating_point() and t.dim() == 2 and bool(torch.isfinite(t).all()) for t in tensors.values()):
        problem = "every tensor must be a finite 2-D float matrix"
    elif kind == "soft" and (set(tensors) != {SOFT_TENSOR} or len(tensors[SOFT_TENSOR]) != settings.get("n_tokens")):
        problem = f"a soft prompt is one tensor {SOFT_TENSOR!r} of {settings.get('n_tokens')} rows"
    elif kind == "lora" and not (tensors and all(".lora_A." in k or ".lora_B." in k for k in tensors)):
        problem = "a LoRA adapter holds lora_A and lora_B matrices only"
    if problem:
        raise PromptFileError(f"adapter file {name}: {problem}")
