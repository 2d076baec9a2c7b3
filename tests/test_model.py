"""Model loading: kinds, errors, tokenizer fingerprints, dtypes; one check on the real model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from autoprompt import Prompt, evaluate, load_model, load_task
from autoprompt.errors import ModelError
from autoprompt.models import CausalLM, MaskedLM, estimate_params, pick_dtype, tokenizer_fingerprint


def test_load_detects_causal(tiny_causal_dir: Path) -> None:
    lm = load_model(str(tiny_causal_dir), device="cpu")
    assert isinstance(lm, CausalLM) and lm.kind == "causal" and lm.is_causal
    assert lm.ref.name == str(tiny_causal_dir)
    assert lm.ref.source == str(tiny_causal_dir.resolve())
    assert lm.ref.kind == "causal"
    assert lm.vocab_size == len(lm.tokenizer)
    assert lm.dtype == torch.float32 and lm.device.type == "cpu"
    assert not any(p.requires_grad for p in lm.hf_model.parameters())


def test_load_detects_masked(tiny_masked_dir: Path) -> None:
    lm = load_model(tiny_masked_dir, device="cpu")
    assert isinstance(lm, MaskedLM) and lm.kind == "masked" and not lm.is_causal


@pytest.mark.parametrize("which", ["causal", "masked"])
def test_kind_without_architectures(which: str, tiny_causal_dir: Path, tiny_masked_dir: Path,
                                    tmp_path: Path) -> None:
    folder = tmp_path / which
    shutil.copytree(tiny_causal_dir if which == "causal" else tiny_masked_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    del config["architectures"]  # detection falls back to the model type
    (folder / "config.json").write_text(json.dumps(config))
    assert load_model(folder, device="cpu").kind == which


def test_load_bf16(tiny_causal_dir: Path) -> None:
    assert load_model(str(tiny_causal_dir), device="cpu", dtype="bf16").dtype == torch.bfloat16


def test_unknown_alias_lists_builtins() -> None:
    with pytest.raises(ModelError, match="unknown model 'no-such-model'.*smollm2-135m"):
        load_model("no-such-model", device="cpu")


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no config.json"):
        load_model(tmp_path, device="cpu")


def test_missing_gguf_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such GGUF file"):
        load_model(tmp_path / "model.gguf", device="cpu")


def test_broken_folder_is_a_model_error(tiny_causal_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(tiny_causal_dir, folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot load model"):
        load_model(folder, device="cpu")


def test_tokenizer_fingerprint(tiny_causal_dir: Path, tiny_masked_dir: Path, bpe_tokenizer,
                               wordpiece_tokenizer) -> None:
    first = load_model(str(tiny_causal_dir), device="cpu").tokenizer_fingerprint
    second = load_model(str(tiny_causal_dir), device="cpu").tokenizer_fingerprint
    masked = load_model(str(tiny_masked_dir), device="cpu").tokenizer_fingerprint
    assert first == second == tokenizer_fingerprint(bpe_tokenizer)
    assert first.startswith("sha256:")
    assert masked == tokenizer_fingerprint(wordpiece_tokenizer) != first
    bpe_tokenizer.add_tokens(["<new-token>"])  # one more id: trigger ids could mean other tokens
    assert tokenizer_fingerprint(bpe_tokenizer) != first


def test_pick_dtype() -> None:
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cuda")) == torch.float32  # size unknown: the safe choice
    assert pick_dtype(torch.device("cuda"), n_params=135_000_000) == torch.float32
    assert pick_dtype(torch.device("cuda"), n_params=7_000_000_000) == torch.bfloat16
    assert pick_dtype(torch.device("cpu"), n_params=7_000_000_000) == torch.float32
    assert pick_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    assert pick_dtype(torch.device("cuda"), "fp32") == torch.float32
    assert pick_dtype(torch.device("cpu"), torch.float16) == torch.float16
    with pytest.raises(ModelError, match="unknown dtype 'int8'; use one of: fp32, bf16, fp16"):
        pick_dtype(torch.device("cpu"), "int8")


@pytest.mark.real_model
@pytest.mark.slow
def test_real_model_sst2_zero_shot(require_real_model: None) -> None:
    lm = load_model("smollm2-135m")
    assert lm.kind == "causal" and lm.vocab_size == 49152
    task = load_task("sst2")
    result = evaluate(lm, Prompt.from_task(task), task.examples("test")[:64])
    assert result.metrics["accuracy"] > 0.65


def test_estimate_params_of_a_config() -> None:
    from transformers import LlamaConfig

    # SmolLM2-135M's shape: 30 layers, hidden 576, vocab 49152 -> about 135M parameters
    config = LlamaConfig(hidden_size=576, num_hidden_layers=30, vocab_size=49152, intermediate_size=1536)
    assert 100e6 < estimate_params(config) < 180e6
    assert estimate_params(object()) is None
