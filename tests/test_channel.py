"""Noisy-channel prompts (Min et al. 2022): the layout, the scores (the input's likelihood after each label
word), their calibration, the prompt file and predictor, and the channel partner the template search's
ensembles may take."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_ensemble import _config, _on
from test_template_search import word_task

from autoprompt import load_prompt
from autoprompt.data import Example
from autoprompt.ensemble import Ensemble
from autoprompt.errors import PromptFileError, TemplateError
from autoprompt.optimizer import optimize
from autoprompt.predict import Predictor
from autoprompt.prompt import Prompt
from autoprompt.prompt_file import PromptFile, read_prompt_file, save_prompt_file, to_json
from autoprompt.runs.report import ensemble_section
from autoprompt.scoring import evaluate, log_normalize, score_labels, score_targets, target_ids
from autoprompt.scoring.scores import CHANNEL_TEMPERATURE, batch_inputs, channel_calibration
from autoprompt.searches.ensembles import choose_ensemble
from autoprompt.template import channel_layout, fill_template

VERBALIZER = {"negative": ["bad", "negative"], "positive": ["good"]}
TEXTS = ["a good film", "the plot was slow and long", "fun cast", "bad"]


def channel_prompt(lm, **changes) -> Prompt:
    demos = (Example({"text": "fun film"}, "positive", "demonstration"), Example({"text": "dull"}, "negative", "demonstration"))
    prompt = Prompt(template="Review: {text}\nSentiment:[P]", verbalizer=VERBALIZER, demonstrations=demos,
                    fields=("text",), model=lm.ref, channel=True)
    return replace(prompt, **changes)


@pytest.mark.parametrize(("template", "channel"), [
    ("Review: {text}\nSentiment:[P]", "Sentiment: {label_word}\nReview:[P]"),
    ("{instruction}\nText: {text}\nLabel:[P]", "{instruction}\nLabel: {label_word}\nText:[P]"),
    ("{text} =>[P]", "=> {label_word}\n[P]"),
    ("Q: {{x}} {text}\nA:[P]", "A: {label_word}\nQ: {{x}}[P]"),
])
def test_the_channel_layout_asks_with_the_label_first_and_reads_the_input_last(template: str, channel: str) -> None:
    assert channel_layout(template) == channel


@pytest.mark.parametrize("changes", [
    {"template": "{premise} {hypothesis}\nLabel:[P]", "fields": ("premise", "hypothesis")},  # two inputs
    {"template": "{text}[P]"},  # nothing between the input and [P]
    {"template": "{text} [T]\nLabel:[P]"},  # a trigger slot
    {"verbalizer": None},  # no labels to put first
    {"demo_k": 1},  # a pool of demonstrations
])
def test_a_channel_prompt_of_another_shape_is_refused(causal_lm, changes: dict) -> None:
    with pytest.raises(TemplateError):
        channel_prompt(causal_lm, **changes)


def test_the_channel_form_shows_demonstrations_and_inputs_after_their_label_word(causal_lm) -> None:
    prompt = channel_prompt(causal_lm, instruction="Rate it.")
    form = prompt.channel_form()
    rows = prompt.channel_rows([Example({"text": "a film"}, "positive", "x")])
    assert [r.fields for r in rows] == [{"label_word": "bad"}, {"label_word": "good"}]  # each label's first word
    assert [r.answer for r in rows] == ["a film", "a film"]
    read = fill_template(form.model_template(), rows[1].fields, answer=rows[1].answer)
    assert read == "Rate it.\nSentiment: good\nReview: fun film\n\nSentiment: bad\nReview: dull\n\nSentiment: good\nReview: a film"


def test_channel_scores_are_the_inputs_mean_log_likelihood_per_token_after_each_label_word(causal_lm) -> None:
    prompt = channel_prompt(causal_lm)
    examples = [Example({"text": t}, "positive", f"x{i}") for i, t in enumerate(TEXTS)]
    scores = score_labels(causal_lm, prompt, examples)
    form, by_hand = prompt.channel_form(), []
    for label_word in ("bad", "good"):  # the input as the answer after each label word, scored as free-form text
        rows = [Example({"label_word": label_word}, t, "") for t in TEXTS]
        log_p, _, _ = score_targets(causal_lm, form, rows)
        by_hand.append(log_p / [len(ids) for ids in target_ids(causal_lm, form, rows)])
    expected = log_normalize(np.stack(by_hand, axis=1) / CHANNEL_TEMPERATURE)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert len({len(ids) for ids in target_ids(causal_lm, form, rows)}) > 1  # (the inputs' lengths differ)


def test_a_channel_prompts_calibration_is_its_mean_label_log_probs_over_train_inputs(causal_lm) -> None:
    prompt = channel_prompt(causal_lm)
    train = [Example({"text": f"{t} {i}"}, "positive" if i % 2 else "negative", f"train:{i}")
             for i, t in enumerate(TEXTS * 3)]
    calibration = channel_calibration(causal_lm, prompt, train, seed=0)
    raw = score_labels(causal_lm, prompt, batch_inputs(prompt, train, 0))
    np.testing.assert_allclose(calibration, raw.mean(axis=0), atol=1e-6)
    examples = [Example({"text": t}, "positive", f"x{i}") for i, t in enumerate(TEXTS)]
    calibrated = score_labels(causal_lm, replace(prompt, calibration=calibration), examples)
    expected = log_normalize(score_labels(causal_lm, prompt, examples) - np.array(calibration))
    np.testing.assert_allclose(calibrated, expected, atol=1e-6)


def test_a_masked_lm_cannot_score_a_channel_prompt(masked_lm) -> None:
    with pytest.raises(TemplateError, match="causal LM"):
        score_labels(masked_lm, channel_prompt(masked_lm), [Example({"text": "a film"}, "positive", "x")])


def test_a_channel_prompt_file_round_trips_and_predicts_identically(causal_lm, tmp_path: Path) -> None:
    prompt = replace(channel_prompt(causal_lm), calibration=(-0.3, -1.2))
    path = save_prompt_file(PromptFile(prompt, task_name="words"), tmp_path / "c.prompt.json")
    assert json.loads(path.read_text())["channel"] is True
    loaded = read_prompt_file(path).prompt
    assert loaded == prompt
    examples = [Example({"text": t}, "positive", f"x{i}") for i, t in enumerate(TEXTS)]
    assert load_prompt(path, model=causal_lm).predict(TEXTS) == evaluate(causal_lm, prompt, examples).predictions
    direct = replace(prompt, channel=False, calibration=())  # in an ensemble with a direct prompt: v3
    ensemble = Ensemble.of([direct, prompt])
    path = save_prompt_file(PromptFile(ensemble, task_name="words"), tmp_path / "e.prompt.json")
    assert read_prompt_file(path).prompt == ensemble
    assert load_prompt(path, model=causal_lm).predict(TEXTS) == Predictor(ensemble, causal_lm).predict(TEXTS)
    assert Predictor(ensemble, causal_lm).predict(TEXTS) == evaluate(causal_lm, ensemble, examples).predictions


@pytest.mark.parametrize(("change", "message"), [({"channel": "yes"}, "channel"),
                                                 ({"channel": True, "verbalizer": None}, "channel prompt")])
def test_a_prompt_file_with_a_bad_channel_entry_is_refused(causal_lm, tmp_path: Path, change: dict,
                                                           message: str) -> None:
    data = to_json(PromptFile(channel_prompt(causal_lm), task_name="words")) | change
    path = tmp_path / "bad.prompt.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(PromptFileError, match=message):
        read_prompt_file(path)


GOLD = ["a" if i % 2 else "b" for i in range(60)]
DEV = [Example({"text": str(i)}, g, f"dev:{i}") for i, g in enumerate(GOLD)]


def test_the_channel_partner_joins_the_ensemble_only_when_it_is_better_on_dev() -> None:
    """Best right on 0-39, second on 4-43; a partner right on 0-3, 8-43 makes the three right on 44 (each example
    goes the way two go): chosen, the partner last. A partner right on 0-9 only: the best stays alone."""
    best, second = _on(GOLD, set(range(40)), 1), _on(GOLD, set(range(4, 44)), 2)
    partner = _on(GOLD, set(range(4)) | set(range(8, 44)), 1)
    partner.origin = {"trial": 1, "channel": True}
    chosen = choose_ensemble([best, second], DEV, "accuracy", 3, partner=partner)
    info = chosen.info["ensemble"]
    assert chosen.members == [best, second, partner] and info["k"] == 3 and info["channel"] is True
    assert chosen.dev.metrics["accuracy"] == pytest.approx(44 / 60)
    assert [(r["k"], r.get("channel", False)) for r in info["candidates"]] == [(1, False), (2, False), (2, True), (3, True)]
    assert info["partner"]["channel"] is True and info["partner"]["dev"] == partner.dev.metrics["accuracy"]
    weak = _on(GOLD, set(range(10)), 1)
    chosen = choose_ensemble([best, second], DEV, "accuracy", 3, partner=weak)
    assert chosen.members == [best] and chosen.info["ensemble"]["channel"] is False
    lines = ensemble_section(info)
    assert "| + channel, k = 3 (member) | 1 (channel) | 0.667 | 0.733 ✓ |" in lines
    assert "| 1 (member) | 1 | 0.667 | 0.667 |" in lines and "| 2 (member) | 2 | 0.667 | 0.667 |" in lines


def test_the_template_search_tries_its_best_prompt_the_channel_way(causal_lm, tmp_path: Path) -> None:
    task = word_task()
    result = optimize(task, causal_lm, seed=0, runs_dir=tmp_path / "runs", method="template", confidence=0,
                      config=_config(tmp_path, channel=True), progress=False)
    info = json.loads((result.run_dir / "result.json").read_text())["ensemble"]
    partner = info["partner"]
    assert partner["channel"] is True and partner["trial"] == info["ranked"][0]["trial"]
    assert partner["choice"] == {**info["ranked"][0]["choice"], "channel": True}
    assert [r["k"] for r in info["candidates"] if r.get("channel")] == [2, 3]
    rescored = [e for e in result.history if e.get("stage") == "rescore" and e.get("channel")]
    assert [e["dev"] for e in rescored] == [partner["dev"]]
    best = max(info["candidates"], key=lambda r: r["dev"])  # (the first of the best: ties keep the earlier)
    assert (info["k"], info["channel"]) == (best["k"], bool(best.get("channel")))
    saved = read_prompt_file(result.prompt_file).prompt
    members = saved.members if isinstance(saved, Ensemble) else [saved]
    assert [m.channel for m in members] == [False] * (len(members) - info["channel"]) + [True] * info["channel"]
    texts = [e.fields["text"] for e in task.examples("test")]
    assert load_prompt(result.prompt_file, model=causal_lm).predict(texts) == result.predict(texts)
    off = optimize(task, causal_lm, seed=0, runs_dir=tmp_path / "off", method="template", confidence=0,
                   config=_config(tmp_path, channel=False), progress=False)
    assert "partner" not in json.loads((off.run_dir / "result.json").read_text())["ensemble"]
