"""The scoring engine on tiny random models, checked against plain Hugging Face forwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autoprompt import Example, Prompt
from autoprompt.errors import TemplateError
from autoprompt.metrics import accuracy, macro_f1, mrr, precision_at_1
from autoprompt.models import LanguageModel
from autoprompt.scoring import encode_examples, evaluate, pack_batches, score_labels, score_targets
from autoprompt.template import fill_template

SST2 = "Review: {text}\nSentiment:[P]"
MASKED = "Review: {text} It was [P]."
TEXTS = ["great movie", "a terrible , boring film that never ends", "ok", "it was good and then bad and then good",
         "the cast is fine", "bad", "what a wonderful , moving story about a dog", "no"]


def examples(labels: tuple[str, ...] = ("positive", "negative")) -> list[Example]:
    return [Example({"text": t}, labels[i % len(labels)], f"ex:{i}") for i, t in enumerate(TEXTS)]


def sentiment(template: str = SST2, **verbalizer: list[str]) -> Prompt:
    return Prompt(template, verbalizer or {"negative": ["negative"], "positive": ["positive"]}, fields=("text",))


def reference_causal(lm: LanguageModel, prompt_text: str, answer_ids: list[int]) -> float:
    """log p(answer | prompt) by teacher forcing, one full unpadded forward."""
    context = lm.tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([context + answer_ids[:-1]], device=lm.device)
    with torch.no_grad():
        log_probs = torch.log_softmax(lm.hf_model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(log_probs[len(context) - 1 + k, t].item() for k, t in enumerate(answer_ids))


def reference_masked(lm: LanguageModel, prompt_text: str, token_id: int) -> float:
    enc = lm.tokenizer(prompt_text, return_tensors="pt").to(lm.device)
    mask_position = enc["input_ids"][0].tolist().index(lm.tokenizer.mask_token_id)
    with torch.no_grad():
        logits = lm.hf_model(**enc).logits[0, mask_position].float()
    return torch.log_softmax(logits, dim=-1)[token_id].item()


def single_token(lm: LanguageModel, text: str) -> int:
    (token,) = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    return token


# --- score_labels ------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["causal", "masked"])
def test_batched_equals_one_by_one(which: str, causal_lm: LanguageModel, masked_lm: LanguageModel) -> None:
    lm, template = (causal_lm, SST2) if which == "causal" else (masked_lm, MASKED)
    prompt, data = sentiment(template), examples()
    lengths = [len(e.input_ids) for e in encode_examples(lm, prompt, data)]
    assert 3 <= len(pack_batches(lengths, 40)) < len(data)  # several batches, some of more than one row
    batched = score_labels(lm, prompt, data, batch_tokens=40)
    one_by_one = np.concatenate([score_labels(lm, prompt, [e]) for e in data])
    assert batched.shape == (len(data), 2)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5, rtol=0)


def test_causal_scores_match_plain_forward(causal_lm: LanguageModel) -> None:
    scores = score_labels(causal_lm, sentiment(), examples(), batch_tokens=64)
    negative, positive = single_token(causal_lm, " negative"), single_token(causal_lm, " positive")
    for row, example in zip(scores, examples(), strict=True):
        text = fill_template(SST2, example.fields)
        expected = [reference_causal(causal_lm, text, [negative]), reference_causal(causal_lm, text, [positive])]
        np.testing.assert_allclose(row, expected, atol=1e-4, rtol=0)


def test_masked_scores_match_plain_forward(masked_lm: LanguageModel) -> None:
    scores = score_labels(masked_lm, sentiment(MASKED), examples(), batch_tokens=64)
    negative, positive = single_token(masked_lm, "negative"), single_token(masked_lm, "positive")
    for row, example in zip(scores, examples(), strict=True):
        text = fill_template(MASKED, example.fields, answer=masked_lm.tokenizer.mask_token)
        expected = [reference_masked(masked_lm, text, negative), reference_masked(masked_lm, text, positive)]
        np.testing.assert_allclose(row, expected, atol=1e-4, rtol=0)


def test_multi_token_word_is_teacher_forced_sum(causal_lm: LanguageModel) -> None:
    marvelous = causal_lm.tokenizer(" marvelous", add_special_tokens=False)["input_ids"]
    assert len(marvelous) >= 2
    prompt = sentiment(negative=["negative"], positive=["marvelous"])
    scores = score_labels(causal_lm, prompt, examples(), batch_tokens=48)
    for row, example in zip(scores, examples(), strict=True):
        expected = reference_causal(causal_lm, fill_template(SST2, example.fields), marvelous)
        assert row[1] == pytest.approx(expected, abs=1e-4)
        # the sum over 3 tokens is far below a single-token score; a first-token-only bug would not be
        assert row[1] < reference_causal(causal_lm, fill_template(SST2, example.fields), marvelous[:1]) - 1


def test_label_with_two_words_is_logsumexp(causal_lm: LanguageModel) -> None:
    data = examples()
    words = score_labels(causal_lm, sentiment(a=["positive"], b=["great"], c=["terrific"]), data)
    both = score_labels(causal_lm, sentiment(negative=["negative"], positive=["positive", "great", "terrific"]), data)
    np.testing.assert_allclose(both[:, 1], np.logaddexp.reduce(words, axis=1), atol=1e-6)


def test_left_padding_side_changes_nothing(causal_lm: LanguageModel, monkeypatch: pytest.MonkeyPatch) -> None:
    prompt, data = sentiment(), examples()
    right = score_labels(causal_lm, prompt, data, batch_tokens=64)
    monkeypatch.setattr(causal_lm.tokenizer, "padding_side", "left")
    left = score_labels(causal_lm, prompt, data, batch_tokens=64)
    np.testing.assert_allclose(left, right, atol=1e-5, rtol=0)


def test_masked_multi_token_word_is_an_error(masked_lm: LanguageModel) -> None:
    with pytest.raises(TemplateError, match="'marvelous' is 3 tokens"):
        score_labels(masked_lm, sentiment(MASKED, negative=["negative"], positive=["marvelous"]), examples())


def test_no_examples_gives_empty_scores(causal_lm: LanguageModel) -> None:
    assert score_labels(causal_lm, sentiment(), []).shape == (0, 2)


def test_error_names_the_example(causal_lm: LanguageModel) -> None:
    with pytest.raises(TemplateError, match="^bad.jsonl:3: template field"):
        score_labels(causal_lm, sentiment(), [Example({"sentence": "x"}, "positive", "bad.jsonl:3")])


# --- free-form targets ------------------------------------------------------------------------------


def test_score_targets_ranks_and_log_probs(causal_lm: LanguageModel) -> None:
    prompt = Prompt("{subject} was born in[P]", None, fields=("subject",))
    context = fill_template(prompt.template, {"subject": "Ada"})
    ids = torch.tensor([causal_lm.tokenizer(context, add_special_tokens=False)["input_ids"]], device=causal_lm.device)
    with torch.no_grad():
        log_probs = torch.log_softmax(causal_lm.hf_model(input_ids=ids).logits[0, -1].float(), dim=-1)
    top = int(log_probs.argmax())
    top_text = causal_lm.tokenizer.decode([top])
    assert causal_lm.renderer.answer_ids(top_text, prompt.template)[0] == top  # usable as a target
    targets = [top_text, "Paris", "London town", "positive"]
    data = [Example({"subject": "Ada"}, t, f"t:{i}") for i, t in enumerate(targets)]
    target_log_probs, ranks, tops = score_targets(causal_lm, prompt, data, batch_tokens=32)
    for k, target in enumerate(targets):
        target_ids = causal_lm.renderer.answer_ids(target, prompt.template)
        first = log_probs[target_ids[0]]
        assert ranks[k] == int((log_probs > first).sum())
        assert (ranks[k] == 0) == (target_ids[0] == top)
        assert tops[k] == top
        assert target_log_probs[k] == pytest.approx(reference_causal(causal_lm, context, target_ids), abs=1e-4)
    assert ranks[0] == 0 and ranks[1:].min() > 0
    result = evaluate(causal_lm, prompt, data, metric="precision@1")
    assert list(result.metrics)[0] == "precision@1"
    assert result.metrics["precision@1"] == 0.25
    assert result.predictions == [top_text.strip()] * 4


def test_masked_score_targets_use_first_piece(masked_lm: LanguageModel) -> None:
    prompt = Prompt("{subject} was born in [P].", None, fields=("subject",))
    data = [Example({"subject": "ada"}, "marvelous", "t:0")]
    target_log_probs, _, _ = score_targets(masked_lm, prompt, data)
    text = fill_template(prompt.template, data[0].fields, answer=masked_lm.tokenizer.mask_token)
    first_piece = masked_lm.tokenizer("marvelous", add_special_tokens=False)["input_ids"][0]
    assert target_log_probs[0] == pytest.approx(reference_masked(masked_lm, text, first_piece), abs=1e-4)


# --- evaluate and metrics -------------------------------------------------------------------------------


def test_evaluate_predictions_follow_scores(causal_lm: LanguageModel) -> None:
    prompt, data = sentiment(), examples()
    result = evaluate(causal_lm, prompt, data, metric="macro_f1")
    scores = score_labels(causal_lm, prompt, data)
    assert result.predictions == [prompt.labels[k] for k in scores.argmax(axis=1)]
    assert list(result.metrics)[0] == "macro_f1"
    assert result.metrics["accuracy"] == accuracy(result.predictions, [e.answer for e in data])
    gold_index = [prompt.labels.index(e.answer) for e in data]
    assert result.metrics["mean_gold_log_prob"] == pytest.approx(scores[np.arange(len(data)), gold_index].mean())


def test_accuracy_and_macro_f1_by_hand() -> None:
    predicted, gold = ["a", "a", "b", "b"], ["a", "b", "b", "b"]
    assert accuracy(predicted, gold) == 0.75
    # a: tp 1, fp 1, fn 0 -> 2/3;  b: tp 2, fp 0, fn 1 -> 4/5
    assert macro_f1(predicted, gold, ["a", "b"]) == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert macro_f1(["a"] * 4, gold, ["a", "b"]) == pytest.approx((2 / 5 + 0) / 2)
    with pytest.raises(ValueError):
        accuracy(["a"], ["a", "b"])


def test_rank_metrics_by_hand() -> None:
    ranks = np.array([0, 1, 3, 0])
    assert precision_at_1(ranks) == 0.5
    assert mrr(ranks) == pytest.approx((1 + 1 / 2 + 1 / 4 + 1) / 4)
    assert precision_at_1(np.array([], dtype=int)) == 0.0 and mrr(np.array([], dtype=int)) == 0.0


@pytest.mark.parametrize("budget", [1, 10, 40, 100, 10_000])
def test_pack_batches_budget_and_cover(budget: int) -> None:
    rng = np.random.default_rng(budget)
    lengths = [int(n) for n in rng.integers(1, 30, size=57)]
    batches = pack_batches(lengths, budget)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        padded = len(batch) * max(lengths[i] for i in batch)
        assert padded <= budget or len(batch) == 1  # a single over-long sequence still runs alone
    if budget >= 100:
        assert len(batches) < len(lengths)  # it does pack


@pytest.mark.parametrize("which", ["causal", "masked"])
def test_candidates_equal_scoring_each_prompt(which: str, causal_lm: LanguageModel, masked_lm: LanguageModel) -> None:
    lm = causal_lm if which == "causal" else masked_lm
    template = "Review: {text} [T] [T]\nSentiment:[P]" if which == "causal" else "Review: {text} [T] [T] It was [P]."
    prompt = sentiment(template).with_triggers([10, 11], ["a", "b"])
    candidates = np.array([[10, 11], [12, 11], [300, 301], [10, 500]])
    data = examples()
    together = score_labels(lm, prompt, data, candidates=candidates, batch_tokens=64)
    assert together.shape == (len(candidates), len(data), 2)
    for k, trigger_ids in enumerate(candidates.tolist()):
        alone = score_labels(lm, prompt.with_triggers(trigger_ids, ["a", "b"]), data)
        np.testing.assert_allclose(together[k], alone, atol=1e-5, rtol=0)


def test_prefix_cache_gives_the_same_scores(causal_lm) -> None:
    """Scoring with the examples' prefixes encoded beforehand equals scoring full sequences."""
    from autoprompt.scoring import PrefixCache

    examples = [Example({"text": t}, "positive", f"t:{i}") for i, t in enumerate(TEXTS)]
    prompt = Prompt(template="Review: {text} [T] [T]\nSentiment:[P]", verbalizer={"negative": ["negative"], "positive": ["positive"]},
                    fields=("text",)).with_triggers([40, 41], ["a", "b"])
    cache = PrefixCache.for_examples(causal_lm, prompt, examples)
    for triggers in ([40, 41], [99, 7]):
        p = prompt.with_triggers(triggers, ["x", "y"])
        np.testing.assert_allclose(score_labels(causal_lm, p, examples, prefix_cache=cache),
                                   score_labels(causal_lm, p, examples), atol=1e-5)


def test_a_prefix_every_input_shares_is_encoded_once_with_the_same_scores(causal_lm, monkeypatch) -> None:
    import autoprompt.scoring as scoring

    prompt = Prompt(SST2, {"negative": ["negative", "bad"], "positive": ["positive"]}, fields=("text",),
                    instruction="Read the movie review below and say whether it is positive or negative.")
    shared = []
    real = scoring.Queries.share_common_prefix
    monkeypatch.setattr(scoring.Queries, "share_common_prefix", lambda self, *a: shared.append(real(self, *a)) or shared[-1])
    with_sharing = score_labels(causal_lm, prompt, examples())
    assert shared and shared[-1] >= scoring.COMMON_PREFIX_MIN  # the instruction and "Review:" went into one prefix
    monkeypatch.setattr(scoring, "COMMON_PREFIX_MIN", 10**6)
    monkeypatch.setattr(scoring.Queries, "share_common_prefix", lambda self, min_length=10**6: real(self, min_length))
    without = score_labels(causal_lm, prompt, examples())
    np.testing.assert_allclose(with_sharing, without, atol=1e-4)
    # nothing to share: sequences that differ early are scored whole
    assert scoring.Queries().share_common_prefix() == 0


def test_label_words_with_the_same_tokens_are_refused(masked_lm: LanguageModel) -> None:
    """A lowercasing tokenizer reads "Good" and "good" as one token: the two labels could never differ."""
    prompt = Prompt(template="{text} it was [P] .", verbalizer={"negative": ["Good"], "positive": ["good"]})
    with pytest.raises(TemplateError, match="'negative' and 'positive' both answer with the tokens of 'good'"):
        score_labels(masked_lm, prompt, [Example({"text": "fine"}, "positive")])
