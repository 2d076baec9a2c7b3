"""Ensembles of first-token prompts (LAMA-style facts, precision@1): the members' answer-word
probabilities averaged, through evaluate, the predictor, the prompt file, the choice on dev and the
template search."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_template_search_tasks import FACTS, facts_task

from autoprompt import load_prompt
from autoprompt.data import Example
from autoprompt.ensemble import Ensemble, mean_answer_probs
from autoprompt.optimizer import optimize
from autoprompt.predict import Predictor
from autoprompt.prompt import Prompt
from autoprompt.prompt_file import PromptFile, read_prompt_file, save_prompt_file
from autoprompt.scoring import TOP_ANSWERS, Evaluation, evaluate, score_targets
from autoprompt.searches.ensembles import Candidate, choose_ensemble
from autoprompt.searches.template import TemplateSearchConfig

EXAMPLES = [Example({"subject": s}, o, f"facts:{i}") for i, (s, o) in enumerate(FACTS)]


def members(lm) -> list[Prompt]:
    base = Prompt(template="{subject} is in[P]", model=lm.ref, fields=("subject",))
    return [base, replace(base, template="Where is {subject}? It is in[P]"),
            replace(base, instruction="Answer with one word.",
                    demonstrations=(Example(EXAMPLES[0].fields, EXAMPLES[0].answer, "demonstration"),))]


def test_mean_answer_probs_averages_each_word_over_the_members_likeliest_first() -> None:
    words = [np.array([["France", "Italy", "France"], ["x", "x", "x"]], dtype=object),
             np.array([["Italy", "Spain", "Italy"], ["y", "y", "x"]], dtype=object)]
    probs = [np.array([[0.5, 0.2, 0.5], [0.9, 0.01, 0.9]]), np.array([[0.6, 0.1, 0.6], [0.9, 0.02, 0.0]])]
    got = mean_answer_probs(words, probs)
    assert got[0] == pytest.approx({"Italy": 0.4, "France": 0.25, "Spain": 0.05})  # a missing word counts 0
    assert list(got[0]) == ["Italy", "France", "Spain"]
    assert got[1] == pytest.approx({"x": 0.45, "y": 0.45})  # a word's likeliest token in a member, not their sum
    assert list(got[1]) == ["x", "y"]  # a tie: in word order, the same on every machine


def test_a_prompts_answer_words_are_its_top_tokens_with_the_target_among_them(causal_lm) -> None:
    prompt = members(causal_lm)[0]
    scored = evaluate(causal_lm, prompt, EXAMPLES, metric="precision@1")
    log_probs, ranks, top = score_targets(causal_lm, prompt, EXAMPLES)  # (what a single prompt always reported)
    np.testing.assert_array_equal(scored.target_ranks, ranks)
    assert scored.predictions == [causal_lm.tokenizer.decode([t]).strip() for t in top]
    assert scored.answer_words.shape == scored.answer_probs.shape == (len(EXAMPLES), TOP_ANSWERS + 1)
    for words, probs, predicted, rank in zip(scored.answer_words, scored.answer_probs, scored.predictions, ranks,
                                             strict=True):
        assert (np.diff(probs[:-1]) <= 0).all() and probs[:-1].sum() <= 1 + 1e-6  # the top tokens, likeliest first
        assert words[0] == predicted  # the top token's word is the prediction
        assert (rank == 0) == (probs[-1] >= probs[0])  # the target's token (last) ranked first
    gold = [causal_lm.tokenizer.decode([causal_lm.tokenizer.encode(" " + o, add_special_tokens=False)[0]]).strip()
            for _, o in FACTS]
    assert list(scored.answer_words[:, -1]) == gold


@pytest.mark.parametrize("lm", ["causal_lm", "masked_lm"])
def test_a_first_token_ensemble_predicts_the_likeliest_word_of_its_members_mean(lm, request) -> None:
    causal_lm = request.getfixturevalue(lm)  # (a masked LM: the target's first piece at the mask)
    prompts = members(causal_lm)
    alone = [evaluate(causal_lm, p, EXAMPLES, metric="precision@1") for p in prompts]
    ensemble = Ensemble.of(prompts)
    assert ensemble.combine == "mean_answer_probs"
    together = evaluate(causal_lm, ensemble, EXAMPLES, metric="precision@1")
    targets = alone[0].answer_words[:, -1]
    for n in range(len(EXAMPLES)):  # by hand: each member's likeliest token per word, the mean over the three
        own = [{w: max(p for w2, p in zip(a.answer_words[n], a.answer_probs[n], strict=True) if w2 == w)
                for w in a.answer_words[n]} for a in alone]
        mean = {w: np.mean([o.get(w, 0.0) for o in own]) for w in set().union(*own)}
        assert mean[together.predictions[n]] == pytest.approx(max(mean.values()))
        assert together.target_ranks[n] == sum(p > mean[targets[n]] + 1e-12 for p in mean.values())
    right = [p == t for p, t in zip(together.predictions, targets, strict=True)]
    assert together.metrics["precision@1"] == pytest.approx(np.mean(right))
    assert Predictor(ensemble, causal_lm).predict([e.fields for e in EXAMPLES]) == together.predictions


def test_a_first_token_ensemble_file_round_trips_and_predicts_identically(causal_lm, tmp_path: Path) -> None:
    ensemble = Ensemble.of(members(causal_lm))
    path = save_prompt_file(PromptFile(ensemble, task_name="facts"), tmp_path / "facts.prompt.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["combine"] == "mean_answer_probs" and len(data["members"]) == 3
    assert read_prompt_file(path).prompt == ensemble
    subjects = [s for s, _ in FACTS]
    assert load_prompt(path, model=causal_lm).predict(subjects) == Predictor(ensemble, causal_lm).predict(subjects)
    assert load_prompt(path, model=causal_lm).predict("Paris") == Predictor(ensemble, causal_lm).predict(["Paris"])[0]


def _facts_candidate(top: list[str], trial: int) -> Candidate:
    """A first-token prompt's dev evaluation: the target's word at 0.5 where ``top[i]`` is it, else ``top[i]`` at
    0.9 and the target's at 0.05."""
    targets = [o for _, o in FACTS[:4]]
    words = np.array([[t, g] for t, g in zip(top, targets, strict=True)], dtype=object)  # [n, top 1 + the target]
    probs = np.array([[0.5, 0.5] if t == g else [0.9, 0.05] for t, g in zip(top, targets, strict=True)])
    ranks = np.array([int(t != g) for t, g in zip(top, targets, strict=True)])
    evaluation = Evaluation({"precision@1": float(np.mean(ranks == 0))}, list(top), target_log_probs=np.zeros(4),
                            target_ranks=ranks, answer_words=words, answer_probs=probs)
    return Candidate(Prompt(template=f"{trial} {{subject}} is in[P]", fields=("subject",)), evaluation, {"trial": trial})


def test_the_choice_on_dev_ensembles_first_token_prompts_when_that_is_better() -> None:
    dev = EXAMPLES[:4]
    best = _facts_candidate(["France", "Italy", "Germany", "x"], 1)  # 3 of 4
    second = _facts_candidate(["France", "y", "Germany", "Spain"], 2)  # 3 of 4, right where the best is wrong
    third = _facts_candidate(["z", "Italy", "w", "Spain"], 3)
    chosen = choose_ensemble([best, second, third], dev, "precision@1", 3)
    assert isinstance(chosen.prompt, Ensemble) and chosen.info["ensemble"]["k"] == 3
    assert chosen.info["ensemble"]["combine"] == "mean_answer_probs"
    assert [r["dev"] for r in chosen.info["ensemble"]["candidates"]] == [0.75, 0.5, 1.0]  # two sure wrongs win
    assert chosen.dev.predictions == ["France", "Italy", "Germany", "Spain"]
    alone = choose_ensemble([best, second], dev, "precision@1", 3)  # the pair is worse: the best stays alone
    assert alone.prompt is best.prompt and alone.info["ensemble"]["k"] == 1


def test_the_template_search_ensembles_first_token_prompts(causal_lm, tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("instruction: ['', 'Answer with one word.']\n"
                     "layout: ['{subject} is in[P]', 'Where is {subject}? It is in[P]']\n"
                     "demonstrations: {k: [0, 1, 2], selection: [random], draws: 2}\n", encoding="utf-8")
    cfg = TemplateSearchConfig(space=str(space), trials=6, pruner="none", trial_dev=0, chunk=3, rescore_top=3,
                               ensemble_max=3, trial_dtype="fp32")
    result = optimize(facts_task(), causal_lm, seed=0, runs_dir=tmp_path / "runs", method="template", confidence=0,
                      config=cfg, progress=False)
    info = json.loads((result.run_dir / "result.json").read_text())["ensemble"]
    assert info["combine"] == "mean_answer_probs" and "skipped" not in info
    rows = info["candidates"]
    assert [r["k"] for r in rows] == list(range(1, len(rows) + 1)) and len(rows) >= 2
    best_k = max(rows, key=lambda r: (r["dev"], -r["k"]))["k"]  # the best k on dev, ties to the smaller
    assert info["k"] == best_k
    dev = evaluate(causal_lm, result.prompt, facts_task().examples("dev"), metric="precision@1")
    assert result.metrics["dev"]["precision@1"] == pytest.approx(dev.metrics["precision@1"])
