"""Sanity checks for the shared test fixtures in ``conftest.py``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

LABEL_WORDS = ["positive", "negative", "great", "terrible", "good", "bad"]


def test_fixture_folders_are_small(bpe_tokenizer_dir: Path, wordpiece_tokenizer_dir: Path):
    for folder in (bpe_tokenizer_dir, wordpiece_tokenizer_dir):
        files = [p for p in folder.iterdir() if p.is_file()]
        assert (folder / "tokenizer.json").is_file()
        assert sum(p.stat().st_size for p in files) < 300 * 1024
        # never commit weights
        assert not any(p.suffix in {".safetensors", ".bin", ".pt"} for p in files)


def test_tiny_causal_loads_and_runs(tiny_causal_dir: Path, bpe_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (tiny_causal_dir / "model.safetensors").is_file()
    config = json.loads((tiny_causal_dir / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["vocab_size"] == len(bpe_tokenizer)

    model = AutoModelForCausalLM.from_pretrained(str(tiny_causal_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_causal_dir))
    model.eval()
    assert model.config.num_hidden_layers == 2
    assert model.config.hidden_size == 32
    assert model.get_input_embeddings().weight.shape == (len(tokenizer), 32)
    # tied embeddings
    assert model.get_output_embeddings().weight.data_ptr() == (model.get_input_embeddings().weight.data_ptr())

    enc = tokenizer(["it was great", "a terrible movie , really"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**enc)
    assert out.logits.shape == (2, enc["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(out.logits).all()


def test_tiny_causal_is_deterministic(tiny_causal_dir: Path):
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(str(tiny_causal_dir))
    b = AutoModelForCausalLM.from_pretrained(str(tiny_causal_dir))
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name


def test_tiny_masked_loads_and_runs(tiny_masked_dir: Path, wordpiece_tokenizer):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    assert (tiny_masked_dir / "model.safetensors").is_file()
    model = AutoModelForMaskedLM.from_pretrained(str(tiny_masked_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_masked_dir))
    model.eval()
    assert model.config.model_type == "bert"
    assert model.config.vocab_size == len(wordpiece_tokenizer) == len(tokenizer)

    enc = tokenizer(["the movie was [MASK] .", "it is great"], return_tensors="pt", padding=True)
    assert "token_type_ids" in enc
    with torch.no_grad():
        out = model(**enc)
    assert out.logits.shape == (2, enc["input_ids"].shape[1], len(tokenizer))
    mask_pos = (enc["input_ids"] == tokenizer.mask_token_id).nonzero()
    assert mask_pos.tolist() == [[0, 4]]
    assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize("word", LABEL_WORDS)
@pytest.mark.parametrize("prefix", ["", " "])
def test_bpe_label_words_are_single_tokens(bpe_tokenizer, word: str, prefix: str):
    ids = bpe_tokenizer.encode(prefix + word, add_special_tokens=False)
    assert len(ids) == 1
    assert bpe_tokenizer.decode(ids) == prefix + word


def test_bpe_tokenizer_specials(bpe_tokenizer):
    tok = bpe_tokenizer
    eot = "<|endoftext|>"
    assert tok.eos_token == tok.bos_token == tok.pad_token == eot
    assert tok.eos_token_id == tok.pad_token_id == tok.convert_tokens_to_ids(eot)
    assert tok.mask_token_id is None
    # GPT-2/SmolLM2 style: no BOS/EOS added by default
    assert tok("hello world")["input_ids"] == tok.encode("hello world", add_special_tokens=False)
    for special in ("<|im_start|>", "<|im_end|>"):
        assert len(tok.encode(special, add_special_tokens=False)) == 1
    text = "Hello world, it was great!"
    assert tok.decode(tok.encode(text)) == text


def test_bpe_chat_template(bpe_tokenizer):
    messages = [{"role": "user", "content": "Is it good?"}]
    rendered = bpe_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nIs it good?<|im_end|>\n<|im_start|>assistant\n"
    no_prompt = bpe_tokenizer.apply_chat_template(messages, tokenize=False)
    assert no_prompt == "<|im_start|>user\nIs it good?<|im_end|>\n"
    ids = bpe_tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert ids[0] == bpe_tokenizer.convert_tokens_to_ids("<|im_start|>")


@pytest.mark.parametrize("word", LABEL_WORDS[:4])
def test_wordpiece_label_words_are_single_tokens(wordpiece_tokenizer, word: str):
    assert len(wordpiece_tokenizer.encode(word, add_special_tokens=False)) == 1
    assert len(wordpiece_tokenizer.encode(word.capitalize(), add_special_tokens=False)) == 1


def test_wordpiece_adds_cls_sep(wordpiece_tokenizer):
    tok = wordpiece_tokenizer
    ids = tok("A great movie")["input_ids"]
    assert ids[0] == tok.cls_token_id
    assert ids[-1] == tok.sep_token_id
    assert ids[1:-1] == tok.encode("A great movie", add_special_tokens=False)
    assert tok.mask_token == "[MASK]" and tok.mask_token_id is not None
    assert tok.pad_token_id is not None and tok.unk_token_id is not None
    assert tok.decode(ids, skip_special_tokens=True) == "a great movie"
    pair = tok("a", "b")
    assert pair["token_type_ids"] == [0, 0, 0, 1, 1]


def _load_conftest():
    # Load a private copy so the test works under any pytest --import-mode.
    path = Path(__file__).resolve().parent / "conftest.py"
    spec = importlib.util.spec_from_file_location("_conftest_copy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_require_real_model_skips_or_fails(monkeypatch):
    conftest = _load_conftest()

    monkeypatch.setattr(conftest, "real_model_available", lambda: False)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        conftest.check_real_model()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        conftest.check_real_model()
    monkeypatch.setattr(conftest, "real_model_available", lambda: True)
    conftest.check_real_model()
