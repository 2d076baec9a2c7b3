"""--time-budget bounds the whole run: the search stops early enough to leave time for the scoring after it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoprompt import budget as budget_module
from autoprompt import optimizer as optimize_module
from autoprompt import shared_scoring
from autoprompt.budget import CACHED_FACTOR, Budget
from autoprompt.optimizer import optimize
from autoprompt.searches.base import TRAIN_SAMPLE
from autoprompt.searches.template import TemplateSearchConfig
from autoprompt.searches.trigger import TriggerSearchConfig
from autoprompt.task import Example, Task


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(budget_module, "_now", clock)
    return clock


def test_the_search_keeps_back_the_time_of_the_scoring_after_it(clock: Clock) -> None:
    budget = Budget(100.0).keep_for(200)
    clock.now += 60
    assert not budget.spent() and budget.reserve() == 0  # nothing measured yet: nothing kept back
    budget.record(25, 5.0, cached=True)  # 5 examples/s with prefix caches: 200 take 40 s, without them 60 s
    assert budget.reserve() == pytest.approx(CACHED_FACTOR * 40)
    assert budget.spent()  # 60 s spent + 60 s kept > 100 s
    clock.now -= 30
    assert not budget.spent()  # 30 + 60 < 100
    budget.record(25, 5.0)  # measured without caches: (5 * 1.5 + 5) s for 50
    assert budget.reserve() == pytest.approx(200 * 12.5 / 50)
    assert Budget(None).keep_for(10 ** 9).spent() is False


def test_a_resumed_search_counts_what_it_spent_before(clock: Clock) -> None:
    assert not Budget(100.0, already=99.0).spent()
    clock.now += 1.5
    assert Budget(100.0, already=99.0, started=clock.now - 1.5).spent()


def test_a_stage_ends_after_its_share_and_measures_for_the_whole(clock: Clock) -> None:
    whole = Budget(100.0).keep_for(100)
    whole.record(10, 1.0)  # 10 ex/s: 10 s kept back, 90 s to search
    stage = whole.stage(0.5)
    clock.now += 44.9
    assert not stage.spent()
    clock.now += 0.2
    assert stage.spent() and not whole.spent()  # half of 90 s
    stage.record(90, 29.0)  # slower than thought: the whole learns it (100 ex in 30 s)
    assert whole.reserve() == pytest.approx(30)


def words_task() -> Task:
    rng = np.random.default_rng(0)
    words = ["good", "bad", "film", "plot", "the", "a", "is", "slow", "fun", "cast"]

    def examples(n: int, split: str) -> list[Example]:
        return [Example({"text": " ".join(rng.choice(words, size=4))}, "positive" if i % 2 else "negative",
                        f"{split}:{i}") for i in range(n)]

    return Task(name="words", template="{text} =>[P]", verbalizer={"negative": ["negative"], "positive": ["positive"]},
                splits={"train": examples(30, "train"), "dev": examples(20, "dev"), "test": examples(12, "test")})


def scored_after_search(monkeypatch) -> list[int]:
    """Examples evaluate() scores once the search is over (the final scoring and the hybrid's dev check)."""
    counted: list[int] = []
    real = optimize_module.evaluate

    def counting(model, prompt, examples, **kwargs):
        counted.append(len(examples))
        return real(model, prompt, examples, **kwargs)

    monkeypatch.setattr(optimize_module, "evaluate", counting)  # (the choice on dev)
    monkeypatch.setattr(shared_scoring, "evaluate", counting)  # (the final scoring)
    return counted


def test_the_trigger_search_stops_on_its_budget_and_keeps_what_it_will_score(causal_lm, tmp_path: Path,
                                                                             monkeypatch) -> None:
    task = words_task()
    kept = []
    spent = iter([False, False, True])  # the budget runs out before the third step
    monkeypatch.setattr(Budget, "spent", lambda self: kept.append(self.kept_examples) or next(spent))
    counted = scored_after_search(monkeypatch)
    cfg = TriggerSearchConfig(steps=10, n_triggers=2, top_k=4, grad_batch=4, eval_batch=4, confirm_batch=4,
                              dev_every=1, rank_dtype="fp32")
    result = optimize(task, causal_lm, config=cfg, time_budget=60.0, runs_dir=tmp_path, progress=False)
    assert [e["step"] for e in result.history] == [0, 1, 2]
    final = 2 * (20 + 12 + min(TRAIN_SAMPLE, 30))
    assert set(kept) == {final} and sum(counted) == final


def test_the_template_search_stops_on_its_budget(causal_lm, tmp_path: Path, monkeypatch) -> None:
    task = words_task()
    space = tmp_path / "space.yaml"
    space.write_text("instruction: ['', 'Positive or negative?', 'Say the sentiment.']\n"
                     "demonstrations: {k: [0, 2, 4]}\n", encoding="utf-8")
    kept = []
    spent = iter([False, False, False, True])
    monkeypatch.setattr(Budget, "spent", lambda self: kept.append(self.kept_examples) or next(spent))
    counted = scored_after_search(monkeypatch)
    cfg = TemplateSearchConfig(space=str(space), trials=9, pruner="none", trial_dev=10, chunk=5, rescore_top=2,
                               ensemble_max=1)
    result = optimize(task, causal_lm, time_budget=60.0, runs_dir=tmp_path / "runs", method="template", config=cfg,
                      progress=False)
    assert len([e for e in result.history if e.get("stage") == "template"]) == 3
    rescored = [e for e in result.history if e.get("stage") == "rescore"]
    # re-scoring the best 2 trials on all 16 dev examples (the winner's kept; 4 of the 20 are the untouched slice),
    # both prompts on the untouched slice, test and train
    dev, untouched = 16, 4
    final = 2 * dev + (untouched + 12 + 30) + (dev + untouched + 12 + 30)
    assert len(rescored) == 2 and set(kept) == {final} and sum(counted) + 2 * dev == final  # (re-scoring: its own module)


def test_re_scoring_skips_trials_that_would_end_past_the_budget(causal_lm, tmp_path: Path, monkeypatch) -> None:
    """The search stops taking trials early enough to re-score its best on all of dev; when re-scoring a trial
    would all the same end past the run's budget at the pace of its own trial (one with many demonstrations),
    it is not re-scored. The best trial always is."""
    task = words_task()
    space = tmp_path / "space.yaml"
    space.write_text("instruction: ['', 'Positive or negative?', 'Say the sentiment.']\n", encoding="utf-8")
    cfg = TemplateSearchConfig(space=str(space), trials=9, pruner="none", trial_dev=10, chunk=5, rescore_top=3)
    runs, spent = {}, iter([])
    monkeypatch.setattr(Budget, "spent", lambda self: next(spent))
    for late in (False, True):
        spent = iter([False, False, False, True])
        monkeypatch.setattr(Budget, "elapsed", lambda self, late=late: 59.999 if late else 0.0)
        runs[late] = optimize(task, causal_lm, time_budget=60.0, runs_dir=tmp_path / str(late), method="template",
                              config=cfg, progress=False).history
    rescored = {late: [e["trial"] for e in history if e.get("stage") == "rescore"] for late, history in runs.items()}
    assert len(rescored[False]) == 3 and rescored[True] == rescored[False][:1]
