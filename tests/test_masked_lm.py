"""Masked LMs of each family autoprompt knows (BERT, RoBERTa, DistilBERT, the ELECTRA
generator) and of one it does not: label scores and the trigger gradient equal those of a
plain Hugging Face forward, and a trigger-search step runs.

The models are tiny and random; every parameter (biases and norms too) is redrawn with a
large spread, so a head that skipped a layer, a bias or an activation would score visibly
differently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autoprompt import evaluate, load_model
from autoprompt.errors import ModelError
from autoprompt.gradient import trigger_gradient
from autoprompt.models import MaskedLM
from autoprompt.models import base as model_module
from autoprompt.prompt import Prompt
from autoprompt.scoring import encode_examples, label_word_ids, score_labels
from autoprompt.searches.trigger import TriggerSearchConfig, trigger_search
from autoprompt.task import Example, Task

FAMILIES = ["bert", "roberta", "distilbert", "electra"]
TEMPLATE = "{text} [T] [T] it was [P] ."
VERBALIZER = {"negative": ["bad"], "positive": ["good"]}
EXAMPLES = [Example({"text": t}, a, f"test:{i}") for i, (t, a) in enumerate([
    ("a fine film", "positive"), ("the plot is thin and the film is long", "negative"),
    ("what a cast", "positive"), ("slow", "negative")])]


def _tokenizer(family: str, wordpiece: Path, bpe: Path):
    from transformers import AutoTokenizer

    if family != "roberta":
        return AutoTokenizer.from_pretrained(wordpiece)
    tokenizer = AutoTokenizer.from_pretrained(bpe)  # byte-level BPE, as RoBERTa reads
    tokenizer.add_special_tokens({"mask_token": "<mask>"})
    return tokenizer


def _hf_model(family: str, tokenizer) -> torch.nn.Module:
    import transformers as tf

    size = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, max_position_embeddings=64)
    layers = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    if family == "bert":
        model = tf.BertForMaskedLM(tf.BertConfig(**size, **layers))
    elif family == "roberta":
        model = tf.RobertaForMaskedLM(tf.RobertaConfig(**size, **layers))
    elif family == "distilbert":
        model = tf.DistilBertForMaskedLM(tf.DistilBertConfig(**size, dim=32, n_layers=2, n_heads=4, hidden_dim=64))
    else:  # the generator; embedding_size < hidden_size, as in the released ones
        model = tf.ElectraForMaskedLM(tf.ElectraConfig(**size, **layers, embedding_size=16))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def _save(hf_model, tokenizer, folder: Path) -> Path:
    hf_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory, wordpiece_tokenizer_dir: Path,
                bpe_tokenizer_dir: Path) -> dict[str, Path]:
    dirs = {}
    with torch.random.fork_rng(devices=[]):
        for seed, family in enumerate(FAMILIES):
            torch.manual_seed(seed)
            tokenizer = _tokenizer(family, wordpiece_tokenizer_dir, bpe_tokenizer_dir)
            dirs[family] = _save(_hf_model(family, tokenizer), tokenizer, tmp_path_factory.mktemp(family))
    return dirs


def _prompt(model) -> Prompt:
    trigger = model.tokenizer("the", add_special_tokens=False)["input_ids"]
    assert len(trigger) == 1
    prompt = Prompt(template=TEMPLATE, verbalizer=VERBALIZER, fields=("text",), model=model.ref)
    return prompt.with_triggers(trigger * 2, ["the"] * 2)


def _label_ids(model, prompt) -> list[int]:
    words = label_word_ids(model, prompt)
    assert all(len(w) == 1 and len(w[0]) == 1 for w in words)  # one single-token word per label
    return [w[0][0] for w in words]


def _plain_label_log_probs(model, prompt) -> np.ndarray:
    """Each example alone through hf_model(**inputs).logits, log-softmaxed at the mask."""
    label_ids = _label_ids(model, prompt)
    rows = []
    with torch.no_grad():
        for enc in encode_examples(model, prompt, EXAMPLES):
            assert enc.input_ids[enc.answer_position] == model.tokenizer.mask_token_id
            ids = torch.tensor([enc.input_ids])
            logits = model.hf_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, enc.answer_position]
            rows.append(F.log_softmax(logits.float(), dim=-1)[label_ids].numpy())
    return np.array(rows)


def _plain_gradient(model, prompt) -> torch.Tensor:
    """-d loss / d one-hot triggers by autograd through the whole hf_model (loss: -log p(gold word))."""
    hf = model.hf_model
    embedding = hf.get_input_embeddings().weight
    one_hot = torch.zeros(len(prompt.trigger_ids), model.vocab_size)
    one_hot[torch.arange(len(prompt.trigger_ids)), torch.tensor(prompt.trigger_ids)] = 1
    one_hot.requires_grad_(True)
    triggers = one_hot @ embedding
    encoded = encode_examples(model, prompt, EXAMPLES)
    length = max(len(e.input_ids) for e in encoded)
    embeds, mask = [], torch.zeros(len(encoded), length, dtype=torch.long)
    for i, enc in enumerate(encoded):
        ids = enc.input_ids + [model.pad_id] * (length - len(enc.input_ids))
        slot_at = {p: s for s, p in enumerate(enc.trigger_positions)}
        embeds.append(torch.stack([triggers[slot_at[p]] if p in slot_at else embedding[t] for p, t in enumerate(ids)]))
        mask[i, : len(enc.input_ids)] = 1
    logits = hf(inputs_embeds=torch.stack(embeds), attention_mask=mask).logits
    at_mask = logits[torch.arange(len(encoded)), torch.tensor([e.answer_position for e in encoded])]
    label_ids = _label_ids(model, prompt)
    gold = torch.tensor([label_ids[prompt.labels.index(e.answer)] for e in EXAMPLES])
    loss = -F.log_softmax(at_mask.float(), dim=-1)[torch.arange(len(EXAMPLES)), gold].mean()
    loss.backward()
    return -one_hot.grad


def _assert_scores_equal_plain_forward(model) -> None:
    prompt = _prompt(model)
    got = evaluate(model, prompt, EXAMPLES).label_log_probs
    expected = _plain_label_log_probs(model, prompt)
    assert np.ptp(expected) > 0.05  # the labels' scores differ, so a wrong head cannot match by chance
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    # over the labels only, the head computes just the label words' rows of the vocabulary
    over_labels = score_labels(model, prompt, EXAMPLES, over="labels")
    np.testing.assert_allclose(over_labels, torch.log_softmax(torch.tensor(expected), dim=1).numpy(), atol=1e-4, rtol=0)


def _assert_gradient_equals_autograd(model) -> None:
    prompt = _prompt(model)
    got = trigger_gradient(model, prompt, EXAMPLES, "vocab")
    expected = _plain_gradient(model, prompt)
    scale = expected.abs().max().item()
    assert got.shape == expected.shape == (2, model.vocab_size) and scale > 0
    assert (got - expected).abs().max().item() <= 1e-4 * scale


@pytest.mark.parametrize("family", FAMILIES)
def test_label_scores_equal_a_plain_forward(family: str, family_dirs) -> None:
    model = load_model(family_dirs[family], device="cpu")
    assert isinstance(model, MaskedLM) and model.kind == "masked"
    assert model_module._masked_lm_head(model.hf_model) is not None  # the fast path: the head at [P] only
    _assert_scores_equal_plain_forward(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_trigger_gradient_equals_autograd(family: str, family_dirs) -> None:
    _assert_gradient_equals_autograd(load_model(family_dirs[family], device="cpu"))


@pytest.mark.parametrize("family", FAMILIES)
def test_one_trigger_search_step(family: str, family_dirs) -> None:
    model = load_model(family_dirs[family], device="cpu")
    task = Task(name="tiny", template=TEMPLATE, verbalizer=VERBALIZER,
                splits={"train": EXAMPLES, "dev": EXAMPLES, "test": EXAMPLES})
    cfg = TriggerSearchConfig(steps=1, top_k=4, grad_batch=4, eval_batch=4, confirm_batch=4, dev_every=1,
                              init_token="the", rank_dtype="fp32", loss="vocab")
    prompt, state = trigger_search(model, task, cfg, progress=False)
    assert state.step == 1
    assert len(prompt.trigger_ids) == 2 and all(0 <= t < model.vocab_size for t in prompt.trigger_ids)
    assert list(prompt.trigger_ids) == state.best_trigger_ids


@pytest.mark.parametrize("family", FAMILIES)
def test_a_head_autoprompt_does_not_know(family: str, family_dirs, monkeypatch) -> None:
    """A family outside autoprompt's table is scored by full forwards (the same scores) and refused by the
    trigger gradient in one line that names the families it supports."""
    model = load_model(family_dirs[family], device="cpu")
    monkeypatch.setattr(model_module, "_masked_lm_head", lambda hf_model: None)
    _assert_scores_equal_plain_forward(model)
    refusal = (rf"^masked LM {type(model.hf_model).__name__}: .* only for BertForMaskedLM, DistilBertForMaskedLM, "
               r"ElectraForMaskedLM, RobertaForMaskedLM; this model can be scored and template-searched, not trigger")
    with pytest.raises(ModelError, match=refusal):
        trigger_gradient(model, _prompt(model), EXAMPLES, "vocab")
