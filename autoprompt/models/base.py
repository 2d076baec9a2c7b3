"""LanguageModel, what the scorer asks of a model, and its two kinds: causal and masked."""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import logging
from abc import ABC
from collections.abc import Callable
from contextlib import nullcontext
from functools import cache, cached_property

import torch
import torch.nn.functional as F

from autoprompt.errors import ModelError
from autoprompt.models import attention
from autoprompt.models.device import MIN_BATCH_TOKENS, pick_batch_tokens
from autoprompt.prompt import ModelRef
from autoprompt.template import TemplateRenderer

log = logging.getLogger(__name__)


class LanguageModel(ABC):
    """A loaded model and tokenizer, and the two things the scorer asks of them."""

    kind: str
    adapter = None  # the Adapter a twin of a model runs with (autoprompt.models.adapters); None: the model itself

    def __init__(self, hf_model: torch.nn.Module, tokenizer, *, name: str, source: str) -> None:
        self.hf_model = hf_model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.source = source
        for p in self.hf_model.parameters():
            p.requires_grad_(False)
        self.batch_tokens = pick_batch_tokens(self)  # halved for good on a CUDA out-of-memory

    def halve_batch(self) -> int:
        """After an out-of-memory: a smaller token budget per batch, kept for the rest of the run."""
        if self.batch_tokens <= MIN_BATCH_TOKENS:
            raise ModelError(f"out of memory even at {self.batch_tokens} tokens per batch on {self.device}")
        self.batch_tokens = max(MIN_BATCH_TOKENS, self.batch_tokens // 2)
        log.warning("out of memory on %s: batches of %d tokens from now on", self.device, self.batch_tokens)
        return self.batch_tokens

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf_model.parameters()).dtype

    @property
    def is_causal(self) -> bool:
        return self.kind == "causal"

    @property
    def pad_id(self) -> int:
        """The id padding uses (masked out, so any id works when the tokenizer has none)."""
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    @property
    def vocab_size(self) -> int:
        return self.hf_model.get_input_embeddings().weight.shape[0]

    @cached_property
    def renderer(self) -> TemplateRenderer:
        """Renders templates to ids for this tokenizer (caches literal pieces)."""
        return TemplateRenderer(self.tokenizer, causal=self.is_causal, max_length=self.max_length)

    @cached_property
    def max_length(self) -> int | None:
        """The most tokens the model reads at once (its position embeddings), where its config says."""
        config = self.hf_model.config
        n = getattr(getattr(config, "get_text_config", lambda: config)(), "max_position_embeddings", None)
        return n if isinstance(n, int) and n > 0 else None

    @cached_property
    def token_texts(self) -> list[str]:
        """Every token's text, decoded once (what trigger filters, label-word search and the answer-end
        masks read)."""
        return self.tokenizer.batch_decode([[i] for i in range(self.vocab_size)])

    @cached_property
    def tokenizer_fingerprint(self) -> str:
        return tokenizer_fingerprint(self.tokenizer)

    @cached_property
    def weights_fingerprint(self) -> str:
        """A hash of the weights (a sample of each tensor): what an adapter was trained on."""
        from autoprompt.adapter import weights_fingerprint

        return weights_fingerprint(self.hf_model)

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.name, self.source, self.kind, self.tokenizer_fingerprint)

    def hidden_states(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor, *,
                      inputs_embeds: torch.Tensor | None = None,
                      past: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
                      position_ids: torch.Tensor | None = None, prefix=None,
                      needed: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Last hidden states, [batch, seq, hidden] (final norm applied); ``past`` is a prefix's
        per-layer (keys, values) and ``attention_mask`` then covers prefix and ids. ``prefix``
        is (PrefixCache, row index): the cached prefix each row continues, read in place where
        the architecture allows (``autoprompt.models.attention``), else copied into ``past``.
        ``needed``: the (row, position) pairs the caller reads; the others may then be left unfinished."""
        if prefix is not None:
            cache, index = prefix
            if attention.supported(self):
                return attention.prefix_forward(self, cache.layers, cache.mask, index, input_ids, attention_mask,
                                                position_ids, inputs_embeds, needed)
            past = [(k[index], v[index]) for k, v in cache.layers]
            attention_mask = torch.cat([cache.mask[index], attention_mask], dim=1)
        kwargs = {}
        if past is not None:
            from transformers import DynamicCache

            kwargs[self._cache_argument] = DynamicCache(ddp_cache_data=past)
        out = self.hf_model.base_model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                       position_ids=position_ids, use_cache=past is not None, **kwargs)
        return out.last_hidden_state

    @cached_property
    def _cache_argument(self) -> str:
        """transformers >= 5.24 renames forward's past_key_values to cache."""
        params = inspect.signature(self.hf_model.base_model.forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    def prefix_cache(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                     past: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
                     position_ids: torch.Tensor | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer (keys, values) of a batch of prefixes, each [batch, kv_heads, seq, head_dim].
        With ``past`` (an earlier head's cache) they continue it and include it."""
        kwargs = {}
        if past is not None:
            from transformers import DynamicCache

            kwargs[self._cache_argument] = DynamicCache(ddp_cache_data=past)
        nowhere = (torch.zeros(0, dtype=torch.long, device=input_ids.device),) * 2
        with attention.lean_mlps(self, nowhere) if attention.supported(self) else nullcontext():
            out = self.hf_model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                           position_ids=position_ids, use_cache=True, **kwargs)
        cache = getattr(out, "cache", None)
        cache = out.past_key_values if cache is None else cache
        return [(layer.keys, layer.values) for layer in cache.layers]

    def head_logits(self, hidden: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Output logits of a few hidden states, [n, hidden] -> [n, vocab] (or [n, len(rows)])."""
        raise NotImplementedError

    def log_probs_at(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor,
                     positions: torch.Tensor, vocab_rows: torch.Tensor | None = None, **past) -> torch.Tensor:
        """Full-vocabulary log-probabilities at the given (row, position) pairs, [n, vocab], fp32.
        With ``vocab_rows``: only those tokens' logits, unnormalised, [n, len(vocab_rows)]."""
        hidden = self.hidden_states(input_ids, attention_mask, needed=(rows, positions), **past)[rows, positions]
        if vocab_rows is not None:
            return self.head_logits(hidden, vocab_rows).float()
        return F.log_softmax(self.head_logits(hidden).float(), dim=-1)


class CausalLM(LanguageModel):
    kind = "causal"

    def head_logits(self, hidden: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        head = self.hf_model.get_output_embeddings()
        weight = head.weight if rows is None else head.weight[rows]
        bias = getattr(head, "bias", None)
        if bias is not None and rows is not None:
            bias = bias[rows]
        logits = F.linear(hidden, weight, bias)  # 2-D on purpose: a 3-D slice copies the head
        cap = getattr(self.hf_model.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits


class MaskedLM(LanguageModel):
    """An encoder with a masked-LM head. For the families in ``_masked_lm_head`` the head is
    applied only where an answer is read; any other family is scored by full forwards (slower)
    and has no trigger gradient."""

    kind = "masked"

    def hidden_states(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor, *,
                      inputs_embeds: torch.Tensor | None = None, past=None,
                      position_ids: torch.Tensor | None = None, prefix=None, needed=None) -> torch.Tensor:
        """Last hidden states, [batch, seq, hidden]. An encoder reads its whole input at once, so
        there is no prefix cache; only the arguments given reach the encoder's forward (not
        every encoder's forward takes position_ids, and use_cache is for a causal LM's cache)."""
        if past is not None or prefix is not None:
            raise ValueError("a masked LM reads its whole input at once: it has no prefix cache")
        kwargs = {} if position_ids is None else {"position_ids": position_ids}
        out = self.hf_model.base_model(input_ids=input_ids, inputs_embeds=inputs_embeds,
                                       attention_mask=attention_mask, **kwargs)
        return out.last_hidden_state

    def head_logits(self, hidden: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        head = _masked_lm_head(self.hf_model)
        if head is None:
            known = ", ".join(sorted(c.__name__ for c in _known_heads()))
            raise ModelError(f"masked LM {type(self.hf_model).__name__}: autoprompt runs the output head apart from "
                             f"the encoder (the trigger gradient needs it) only for {known}; this model can be "
                             "scored and template-searched, not trigger-searched")
        transform, decoder = head
        weight, bias = decoder.weight, decoder.bias
        if rows is not None:
            weight, bias = weight[rows], None if bias is None else bias[rows]
        return F.linear(transform(hidden), weight, bias)

    def log_probs_at(self, input_ids, attention_mask, rows, positions, vocab_rows=None, **past):
        if _masked_lm_head(self.hf_model) is None:  # a family we don't know: the full forward, slower
            logits = self.hf_model(input_ids=input_ids, attention_mask=attention_mask).logits[rows, positions]
            return logits[:, vocab_rows].float() if vocab_rows is not None else F.log_softmax(logits.float(), dim=-1)
        return super().log_probs_at(input_ids, attention_mask, rows, positions, vocab_rows, **past)


def _masked_lm_head(hf_model: torch.nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.nn.Linear] | None:
    """The output head of a masked LM family autoprompt knows, as (transform, decoder): exactly
    what its ``*ForMaskedLM.forward`` applies to the encoder's last hidden state, the decoder
    (a Linear) last so that a few vocabulary rows of it can be applied. None for other families
    (subclasses included: they may change the forward)."""
    heads = _known_heads()
    return heads[type(hf_model)](hf_model) if type(hf_model) in heads else None


@cache
def _known_heads() -> dict[type, Callable]:
    from transformers import BertForMaskedLM, DistilBertForMaskedLM, ElectraForMaskedLM, RobertaForMaskedLM
    from transformers.activations import gelu as roberta_gelu  # what RobertaLMHead.forward calls

    def roberta(m):
        h = m.lm_head
        return (lambda x: h.layer_norm(roberta_gelu(h.dense(x)))), h.decoder

    def distilbert(m):
        return (lambda x: m.vocab_layer_norm(m.activation(m.vocab_transform(x)))), m.vocab_projector

    return {
        BertForMaskedLM: lambda m: (m.cls.predictions.transform, m.cls.predictions.decoder),
        RobertaForMaskedLM: roberta,
        DistilBertForMaskedLM: distilbert,
        ElectraForMaskedLM: lambda m: (m.generator_predictions, m.generator_lm_head),  # the generator
    }


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what decides token ids: the vocabulary and the ids of a probe text."""
    probe = "Review: it's 3.14 fun — naïve Straße 東京 <tag> {x}\n\tend"
    payload = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "probe": tokenizer(probe, add_special_tokens=True)["input_ids"],
        "special": sorted(str(t) for t in tokenizer.all_special_tokens),
    }
    digest = hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()
    return "sha256:" + digest[:32]


def in_dtype(model: LanguageModel, dtype: torch.dtype) -> LanguageModel:
    """A copy of ``model`` with its weights in ``dtype`` (the caller keeps it); the model itself if the same."""
    if dtype == model.dtype:
        return model
    twin = type(model)(copy.deepcopy(model.hf_model).to(dtype), model.tokenizer, name=model.name, source=model.source)
    twin.batch_tokens = model.batch_tokens
    return twin


def fast_twin(model: LanguageModel, choice: str) -> LanguageModel:
    """The model a search's many quick decisions run on (the trigger search's ranking, the template
    search's trials): ``fp32`` the model itself; ``bf16`` a bf16 copy of an fp32 model; ``auto`` that
    copy on a CPU whose bf16 is fast (``has_fast_bf16``: bf16 units and a GEMM probe), else the model.
    (On CUDA, auto keeps fp32: an H200 ran the 135M model slower in bf16; models of 1B+ parameters
    load in bf16 there anyway.)
    What is kept and reported is decided on the model itself."""
    from autoprompt.runtime import has_fast_bf16

    if choice == "fp32" or model.dtype != torch.float32:
        return model
    if choice == "bf16" or (model.device.type == "cpu" and has_fast_bf16(model.device)):
        return in_dtype(model, torch.bfloat16)
    return model
