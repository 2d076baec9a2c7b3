"""Never ship a prompt that is only lucky: the found prompt replaces the task's own only when its dev gain is
above zero with the asked confidence (paired bootstrap); otherwise the run keeps the baseline and says why."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from autoprompt.optimizer import optimize
from autoprompt.prompt import Prompt
from autoprompt.prompt_file import read_prompt_file
from autoprompt.searches.template import TemplateSearchConfig
from autoprompt.searches.trigger import TriggerSearchConfig
from autoprompt.selection import judge
from autoprompt.task import Example, Task


def sides(gold: list[str], right_found: int, right_base: int, shared: int = 100) -> tuple[dict, dict]:
    """Two prompts' answers: both right on the first ``shared`` examples; then the baseline right on the next
    ``right_base - shared``, the found prompt on ``right_found - shared`` examples after those."""
    flip = {"a": "b", "b": "a"}
    found = set(range(shared)) | set(range(right_base, right_base + right_found - shared))
    return ({"predicted": [g if i in found else flip[g] for i, g in enumerate(gold)]},
            {"predicted": [g if i < right_base else flip[g] for i, g in enumerate(gold)]})


def test_a_clear_gain_is_kept_and_a_small_one_is_not() -> None:
    gold = ["a", "b"] * 100  # 200 dev examples
    assert judge("accuracy", gold, *sides(gold, 170, 140), labels=["a", "b"]).keep_found  # +15 points
    small = judge("accuracy", gold, *sides(gold, 143, 140), labels=["a", "b"])  # +1.5 points: noise
    assert not small.keep_found and small.found == pytest.approx(0.715) and small.baseline == pytest.approx(0.70)
    assert small.gain_low <= 0 < small.found - small.baseline
    assert "not above zero with 95% confidence" in small.reason("accuracy", 0.95)
    assert judge("accuracy", gold, *sides(gold, 143, 140), labels=["a", "b"], confidence=0).keep_found
    assert not judge("accuracy", gold, *sides(gold, 139, 140), labels=["a", "b"], confidence=0).keep_found


def test_free_form_answers_are_judged_on_their_ranks() -> None:
    gold = ["x"] * 100
    found, base = {"ranks": [0] * 60 + [3] * 40}, {"ranks": [0] * 30 + [1] * 70}
    verdict = judge("precision@1", gold, found, base)
    assert verdict.keep_found and verdict.found == 0.6 and verdict.baseline == 0.3


def random_label_task(n: int = 60) -> Task:
    """Labels drawn at random: nothing a prompt does can be better than chance, however lucky on dev."""
    rng = random.Random(7)
    words = ["good", "bad", "film", "plot", "slow", "fun", "cast", "long", "the", "a"]
    examples = [Example({"text": " ".join(rng.choice(words) for _ in range(4))}, rng.choice(["negative", "positive"]),
                        f"r:{i}") for i in range(n)]
    return Task(name="noise", template="{text} =>[P]", verbalizer={"negative": ["negative"], "positive": ["positive"]},
                splits={"train": examples[:30], "dev": examples[30:50], "test": examples[50:]})


@pytest.mark.parametrize("method", ["template", "trigger"])
def test_on_random_labels_the_search_keeps_the_baseline_and_says_so(method: str, causal_lm, tmp_path: Path) -> None:
    task = random_label_task()
    space = tmp_path / "space.yaml"
    space.write_text("instruction: ['', 'Positive or negative?', 'Say the label.']\n"
                     "demonstrations: {k: [0, 2, 4]}\ncalibration: [none, contextual]\n", encoding="utf-8")
    config = (TemplateSearchConfig(space=str(space), trials=10, pruner="none", trial_dev=0) if method == "template"
              else TriggerSearchConfig(steps=4, n_triggers=2, top_k=8, grad_batch=8, eval_batch=8, dev_every=1))
    result = optimize(task, causal_lm, config=config, runs_dir=tmp_path / "runs", progress=False)
    manual = Prompt.from_task(task)
    assert result.kept_baseline and "the task's own prompt is kept" in result.kept_baseline
    assert (result.prompt.template, result.prompt.verbalizer, result.prompt.demonstrations, result.prompt.trigger_ids) == \
        (manual.template, manual.verbalizer, (), ())
    assert result.metrics == result.baseline  # the kept prompt is the baseline, scored once
    saved = read_prompt_file(result.prompt_file)
    assert saved.prompt.template == manual.template and saved.search["kept_baseline"] == result.kept_baseline
    verdict = json.loads((result.run_dir / "result.json").read_text())["verdict"]
    assert verdict["keep_found"] is False and verdict["gain_low"] <= 0


# --- generated answers: the gold answers' likelihood as a second witness -----------------------------

def answers(right: set[int], n: int = 49) -> dict:
    """A side of exact-match answers: right on the examples in ``right``."""
    return {"predicted": ["X"] * n, "scores": [1.0 if i in right else 0.0 for i in range(n)]}


def test_a_small_metric_gain_backed_by_the_gold_answers_likelihood_is_kept() -> None:
    gold, rng = ["FRA"] * 49, np.random.default_rng(0)
    base_lp = rng.normal(-8.0, 1.0, 49)
    better = base_lp + 0.5 + rng.normal(0, 0.3, 49)  # every gold answer likelier, by about half a nat
    found, base = answers({3, 17}), answers({3})  # 2 of 49 against 1: no gain exact match supports alone
    assert not judge("exact_match", gold, found, base).keep_found
    verdict = judge("exact_match", gold, found, base, log_probs=(better, base_lp))
    assert verdict.keep_found and verdict.by_likelihood and verdict.gain_low <= 0 < verdict.log_prob_gain_low
    assert "log-likelihood" in verdict.reason("exact_match", 0.95) and verdict.as_dict()["by_likelihood"] is True
    # a tie on the metric keeps the baseline, however much likelier the gold answers are
    tie = judge("exact_match", gold, answers({3}), base, log_probs=(better, base_lp))
    assert not tie.keep_found and "the task's own prompt is kept" in tie.reason("exact_match", 0.95)
    # ahead on the metric, but the likelihood only noise: kept is the baseline
    noise = base_lp + rng.normal(0, 1.0, 49)
    assert not judge("exact_match", gold, found, base, log_probs=(noise, base_lp)).keep_found
    # a gain the metric supports alone needs no witness
    clear = judge("exact_match", gold, answers(set(range(20))), base, log_probs=(base_lp - 1, base_lp))
    assert clear.keep_found and not clear.by_likelihood


@pytest.mark.parametrize("kind", ["generation", "labels"])
def test_the_run_asks_the_likelihood_only_of_generated_answers(kind: str, causal_lm, tmp_path: Path) -> None:
    from test_generation import code_task

    task = code_task() if kind == "generation" else random_label_task()
    config = TriggerSearchConfig(steps=2, n_triggers=2, top_k=4, grad_batch=4, eval_batch=4, dev_every=1)
    result = optimize(task, causal_lm, config=config, runs_dir=tmp_path / "runs", progress=False, holdout=0)
    verdict = json.loads((result.run_dir / "result.json").read_text())["verdict"]  # (triggers: never the task's own)
    assert ("log_prob_gain_low" in verdict) == (kind == "generation")
    report = (result.run_dir / "report.md").read_text()
    assert f"Against the baseline on dev: {verdict['reason']}." in report
