"""A model with an adapter: a twin of a LanguageModel that shares its weights and adds what was
learned, so the scoring engine runs it unchanged (and every other method's scores stay as they were).

- soft: the input embedding layer is wrapped so that ids past the vocabulary read the soft prompt's
  vectors; a prompt's [T] slots get those ids (``bind``). Every forward (scoring, prefix caches,
  generation) thus gets its ``inputs_embeds`` from one gather and one ``where`` over the whole batch.
- lora: peft's LoRA layers injected into the twin's own copy of the module tree (the base model is
  untouched); its forward is the plain Hugging Face one, so ``hf_model.base_model`` and the output
  head are what the engine already reads.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from autoprompt.adapter import SOFT_TENSOR, Adapter
from autoprompt.errors import ModelError

if TYPE_CHECKING:
    from autoprompt.models.base import LanguageModel
    from autoprompt.prompt import Prompt

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")  # Llama, Mistral, Qwen, SmolLM2


class SoftEmbedding(torch.nn.Module):
    """The input embedding, with ids from ``vocab`` on reading rows of ``soft`` [n_tokens, hidden]."""

    def __init__(self, base: torch.nn.Module, soft: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.vocab = base.weight.shape[0]
        self.soft = torch.nn.Parameter(soft.to(base.weight.device, base.weight.dtype).clone(), requires_grad=False)

    @property
    def weight(self) -> torch.Tensor:  # the vocabulary's rows: vocab_size, tied heads and E stay as they were
        return self.base.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        virtual = input_ids >= self.vocab  # [batch, seq]
        embeds = self.base(torch.where(virtual, 0, input_ids))  # [batch, seq, hidden]
        if not bool(virtual.any()):
            return embeds
        soft = self.soft[(input_ids - self.vocab).clamp(0, len(self.soft) - 1)]
        return torch.where(virtual[..., None], soft.to(embeds.dtype), embeds)


def with_adapter(model: LanguageModel, adapter: Adapter, *, cache: bool = True) -> LanguageModel:
    """``model`` running with ``adapter``: a twin sharing its weights (built once per adapter and model
    unless ``cache`` is False: a search trains the twin's own copy). Its ``adapter_parameters`` are the
    adapter's tensors, by name, as the twin's parameters."""
    if adapter.base_model != model.weights_fingerprint:
        raise ModelError(f"this {adapter.kind} adapter was trained on other weights (fingerprint {adapter.base_model}) "
                         f"than those of {model.name} ({model.weights_fingerprint})")
    for base, twin in adapter.bound if cache else ():
        if base is model:
            return twin
    hf_model = _structure_copy(model.hf_model)
    if adapter.kind == "soft":
        params = _add_soft(hf_model, adapter)
    else:
        params = _add_lora(hf_model, adapter, model.name)
    twin = type(model)(hf_model, model.tokenizer, name=model.name, source=model.source)
    twin.batch_tokens = model.batch_tokens
    for name in ("tokenizer_fingerprint", "weights_fingerprint"):  # the base's: the twin stands for it
        twin.__dict__[name] = getattr(model, name)
    twin.adapter, twin.adapter_parameters = adapter, params
    if cache:
        adapter.bound[:] = [(model, twin)]
    return twin


def bind(model: LanguageModel, prompt: Prompt) -> tuple[LanguageModel, Prompt]:
    """The model and prompt the engine scores: as given without an adapter; else the model with the
    prompt's adapter and, for a soft prompt, [T] slots that read its vectors."""
    adapter = prompt.adapter
    if adapter is None:
        return model, prompt
    if getattr(model, "adapter", None) is not adapter:
        model = with_adapter(model, adapter)
    if adapter.kind == "soft":
        ids = [model.vocab_size + k for k in range(adapter.settings["n_tokens"])]
        prompt = replace(prompt, trigger_ids=tuple(ids))
    return model, prompt


def nearest_tokens(model: LanguageModel, vectors: torch.Tensor) -> list[int]:
    """The vocabulary token whose input embedding is nearest (cosine) each vector, [n, hidden] -> n ids."""
    embedding = model.hf_model.get_input_embeddings().weight.detach().float()
    similarity = torch.nn.functional.normalize(vectors.float().to(embedding.device), dim=1) @ \
        torch.nn.functional.normalize(embedding, dim=1).T  # [n, vocab]
    return similarity.argmax(dim=1).tolist()


def lora_targets(model: LanguageModel, asked: str) -> list[str]:
    """The module names LoRA adapts: ``asked`` (comma-separated), or for "auto" the attention
    projections (q, k, v, o), else what peft knows for the model's family."""
    if asked != "auto":
        return [name.strip() for name in asked.split(",") if name.strip()]
    names = {name.rsplit(".", 1)[-1] for name, module in model.hf_model.named_modules()
             if isinstance(module, torch.nn.Linear)}
    found = [name for name in ATTENTION_PROJECTIONS if name in names]
    if found:
        return found
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as KNOWN

    known = KNOWN.get(getattr(model.hf_model.config, "model_type", None))
    if not known:
        raise ModelError(f"{model.name}: which modules LoRA adapts is not known for this model family; "
                         "name them with --lora-targets (e.g. q_proj,v_proj)")
    return list(known)


def _structure_copy(hf_model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the module tree whose parameters and buffers are the original's (no weight is copied):
    changing the copy's modules leaves the original as it was."""
    memo = {id(t): t for t in (*hf_model.parameters(), *hf_model.buffers())}
    return copy.deepcopy(hf_model, memo)


def _add_soft(hf_model: torch.nn.Module, adapter: Adapter) -> dict[str, torch.nn.Parameter]:
    vectors = adapter.tensors[SOFT_TENSOR]
    base = hf_model.get_input_embeddings()
    if vectors.shape[1] != base.weight.shape[1]:
        raise ModelError(f"a soft prompt of width {vectors.shape[1]} does not fit a model of width {base.weight.shape[1]}")
    embedding = SoftEmbedding(base, vectors)
    hf_model.set_input_embeddings(embedding)
    return {SOFT_TENSOR: embedding.soft}


def _add_lora(hf_model: torch.nn.Module, adapter: Adapter, name: str) -> dict[str, torch.nn.Parameter]:
    """peft's LoRA layers in the module tree; the adapter's tensors loaded into them (none given: peft's
    own initialisation, B = 0, so the model starts as it was)."""
    from peft import LoraConfig, inject_adapter_in_model

    s = adapter.settings
    try:
        config = LoraConfig(r=int(s["r"]), lora_alpha=float(s["alpha"]), lora_dropout=float(s.get("dropout", 0.0)),
                            target_modules=list(s["target_modules"]), bias="none")
        inject_adapter_in_model(config, hf_model)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"LoRA settings {s} do not fit {name}: {exc}") from None
    params = {key: p for key, p in hf_model.named_parameters() if ".lora_A." in key or ".lora_B." in key}
    if adapter.tensors:
        wrong = sorted(set(adapter.tensors) ^ set(params)) or [
            key for key, t in adapter.tensors.items() if t.shape != params[key].shape]
        if wrong:
            raise ModelError(f"the LoRA adapter's tensors do not fit {name} (e.g. {wrong[0]})")
        with torch.no_grad():
            for key, tensor in adapter.tensors.items():
                params[key].copy_(tensor)
    for p in params.values():
        p.requires_grad_(False)
    return params
