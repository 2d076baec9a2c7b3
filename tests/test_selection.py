"""Never ship a prompt that is only lucky: the found prompt replaces the task's own only when its dev gain is
above zero with the asked confidence (paired bootstrap); otherwise the run keeps the baseline and says why."""

from __future__ import annotations

import json
import random
from pathlib import Path

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
