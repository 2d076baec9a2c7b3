"""load_prompt(path).predict(...) on prompt files saved for the tiny models."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from autoprompt import Example, Predictor, Prompt, load_prompt
from autoprompt.errors import ModelError, PromptFileError, TemplateError
from autoprompt.models import LanguageModel
from autoprompt.prompt_file import PromptFile, save_prompt_file
from autoprompt.scoring import evaluate, score_labels

TEMPLATE = "Review: {text} [T] [T]\nSentiment:[P]"
TEXTS = ["great movie", "a terrible , boring film", "ok", "the cast is fine but the plot is bad", "no", "wonderful"]


def sentiment_prompt(lm: LanguageModel, **changes) -> Prompt:
    trigger_ids = lm.tokenizer(" great movie", add_special_tokens=False)["input_ids"]
    assert len(trigger_ids) == 2
    fields = dict(template=TEMPLATE, verbalizer={"negative": ["negative", "bad"], "positive": ["positive"]},
                  trigger_ids=tuple(trigger_ids), trigger_tokens=tuple(lm.tokenizer.decode([i]) for i in trigger_ids),
                  demonstrations=(Example({"text": "fun"}, "positive"),), model=lm.ref, fields=("text",))
    return Prompt(**{**fields, **changes})


def save(prompt: Prompt, path: Path) -> Path:
    return save_prompt_file(PromptFile(prompt, task_name="sst2"), path)


@pytest.fixture
def prompt_path(causal_lm: LanguageModel, tmp_path: Path) -> Path:
    return save(sentiment_prompt(causal_lm), tmp_path / "s.prompt.json")


def test_predictions_match_evaluate(prompt_path: Path, causal_lm: LanguageModel) -> None:
    predictor = load_prompt(prompt_path, device="cpu")  # loads the model the file names
    assert predictor.model is not causal_lm and predictor.model.kind == "causal"
    examples = [Example({"text": t}, "positive") for t in TEXTS]
    expected = evaluate(causal_lm, sentiment_prompt(causal_lm), examples).predictions
    assert predictor.predict(TEXTS) == expected
    assert predictor.info.task_name == "sst2"


def test_predict_single_and_list(prompt_path: Path, causal_lm: LanguageModel) -> None:
    predictor = load_prompt(prompt_path, model=causal_lm)
    assert predictor.model is causal_lm
    single = predictor.predict("great movie")
    assert isinstance(single, str) and single in predictor.labels
    many = predictor.predict(["great movie", {"text": "ok"}])
    assert isinstance(many, list) and many[0] == single and len(many) == 2
    assert predictor.predict({"text": "great movie", "extra": 1}) == single
    assert predictor.predict([]) == []


def test_predict_proba(prompt_path: Path, causal_lm: LanguageModel) -> None:
    predictor = load_prompt(prompt_path, model=causal_lm)
    probas = predictor.predict_proba(TEXTS)
    scores = score_labels(causal_lm, predictor.prompt, [Example({"text": t}, None) for t in TEXTS])
    for text, proba, row in zip(TEXTS, probas, scores, strict=True):
        assert list(proba) == ["negative", "positive"]
        assert sum(proba.values()) == pytest.approx(1.0, abs=1e-9)
        assert max(proba, key=proba.get) == predictor.predict(text)
        # the ratio of probabilities is the ratio of label likelihoods
        assert np.log(proba["positive"] / proba["negative"]) == pytest.approx(row[1] - row[0], abs=1e-6)
    assert predictor.predict_proba("ok") == probas[2]


def test_render_text(prompt_path: Path, causal_lm: LanguageModel) -> None:
    predictor = load_prompt(prompt_path, model=causal_lm)
    assert predictor.render("so <|im_start|> good") == (
        "Review: fun\nSentiment: positive\n\nReview: so <|im_start|> good great movie\nSentiment:")


def test_render_chat_prompt(causal_lm: LanguageModel) -> None:
    predictor = Predictor(sentiment_prompt(causal_lm, chat=True, demonstrations=()), causal_lm)
    assert predictor.render({"text": "ok"}) == (
        "<|im_start|>user\nReview: ok great movie\nSentiment:<|im_end|>\n<|im_start|>assistant\n")
    assert predictor.predict("ok") in ("negative", "positive")


def test_render_masked(masked_lm: LanguageModel) -> None:
    prompt = Prompt("Review: {text} It was [P].", {"negative": ["bad"], "positive": ["good"]},
                    model=masked_lm.ref, fields=("text",))
    predictor = Predictor(prompt, masked_lm)
    assert predictor.render("ok") == "Review: ok It was [MASK]."
    assert predictor.predict(["ok", "great movie"])[0] in ("negative", "positive")


def test_input_errors(causal_lm: LanguageModel) -> None:
    two_fields = Prompt("Premise: {premise}\nHypothesis: {hypothesis}\nAnswer:[P]", {"no": ["no"], "yes": ["yes"]},
                        model=causal_lm.ref, fields=("premise", "hypothesis"))
    predictor = Predictor(two_fields, causal_lm)
    with pytest.raises(TemplateError, match="input 0: a plain string needs a one-field prompt.*premise, hypothesis"):
        predictor.predict("it rains")
    with pytest.raises(TemplateError, match="input 1: missing field\\(s\\) hypothesis"):
        predictor.predict([{"premise": "a", "hypothesis": "b"}, {"premise": "a"}])
    with pytest.raises(TemplateError, match="input 0: expected a string or a dict"):
        predictor.predict([3])
    assert predictor.predict({"premise": "it rains", "hypothesis": "it is wet"}) in ("no", "yes")


def test_free_form_predict(causal_lm: LanguageModel) -> None:
    predictor = Predictor(Prompt("{subject} was born in[P]", None, model=causal_lm.ref, fields=("subject",)),
                          causal_lm)
    evaluation = evaluate(causal_lm, predictor.prompt, [Example({"subject": "Ada"}, "Paris")])
    assert predictor.predict("Ada") == evaluation.predictions[0]
    with pytest.raises(TemplateError, match="needs a classification prompt"):
        predictor.predict_proba("Ada")


def _edit_model(path: Path, **values: str) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data["model"].update(values)
    path.write_text(json.dumps(data), encoding="utf-8")


def test_tokenizer_mismatch(prompt_path: Path, causal_lm: LanguageModel, caplog: pytest.LogCaptureFixture) -> None:
    _edit_model(prompt_path, tokenizer_fingerprint="sha256:" + "0" * 32)
    with pytest.raises(PromptFileError, match="not the one the prompt was made for.*allow_tokenizer_mismatch"):
        load_prompt(prompt_path, model=causal_lm)
    with caplog.at_level(logging.WARNING, logger="autoprompt.predict"):
        predictor = load_prompt(prompt_path, model=causal_lm, allow_tokenizer_mismatch=True)
    assert "trigger ids would mean other tokens" in caplog.text
    assert predictor.predict("ok") in ("negative", "positive")


def test_kind_mismatch(prompt_path: Path, masked_lm: LanguageModel) -> None:
    with pytest.raises(PromptFileError, match="made for a causal LM, but .* is masked"):
        load_prompt(prompt_path, model=masked_lm)


def test_trigger_id_outside_vocabulary(causal_lm: LanguageModel, tmp_path: Path) -> None:
    path = save(sentiment_prompt(causal_lm, trigger_ids=(5, causal_lm.vocab_size)), tmp_path / "t.prompt.json")
    with pytest.raises(PromptFileError, match="outside the vocabulary"):
        load_prompt(path, model=causal_lm)


def test_model_named_by_file_must_exist(prompt_path: Path, tmp_path: Path) -> None:
    _edit_model(prompt_path, name=str(tmp_path / "gone"))
    with pytest.raises(ModelError, match="gone"):
        load_prompt(prompt_path, device="cpu")
