"""The untouched slice of dev: kept from the search, scored after the choice, set beside dev in the report."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from autoprompt.optimizer import optimize
from autoprompt.runs.predictions import SplitResult, optimism_note
from autoprompt.searches import METHODS
from autoprompt.searches.trigger import TriggerSearchConfig
from autoprompt.task import Example, Task
from autoprompt.untouched import SPLIT, hold_out
from tests.test_cli import invoke

VERBALIZER = {"negative": ["negative"], "positive": ["positive"]}


def label_task(n_dev: int = 60, positives: int = 20) -> Task:
    words = ["good", "bad", "film", "plot", "slow", "fun"]
    def example(i: int, label: str) -> Example:
        return Example({"text": f"{words[i % 6]} {words[(i // 6) % 6]} {i}"}, label, f"d:{i}")
    dev = [example(i, "positive" if i % 3 == 0 and i // 3 < positives else "negative") for i in range(n_dev)]
    train = [example(100 + i, ["negative", "positive"][i % 2]) for i in range(20)]
    return Task(name="slice", template="{text} =>[P]", verbalizer=VERBALIZER,
                splits={"train": train, "dev": dev, "test": train[:10]})


def test_the_slice_is_a_fixed_share_of_each_label_and_disjoint_from_dev() -> None:
    task = label_task()  # 60 dev: 20 positive, 40 negative
    held = hold_out(task, 0.2)
    dev, untouched = held.splits["dev"], held.splits[SPLIT]
    assert [e.answer for e in untouched].count("positive") == 4 and len(untouched) == 12  # a fifth of each label
    assert not {e.source for e in dev} & {e.source for e in untouched}
    assert sorted(e.source for e in dev + untouched) == sorted(e.source for e in task.splits["dev"])
    assert [e.source for e in dev] == [e.source for e in task.splits["dev"] if e not in untouched]  # dev's order kept
    assert hold_out(label_task(), 0.2).splits[SPLIT] == untouched  # fixed: the same slice every time
    assert held.splits["train"] is task.splits["train"] and held.splits["test"] is task.splits["test"]
    assert hold_out(held, 0.2) is held  # (a task already split is not split again)


def test_no_slice_when_the_share_is_zero_or_leaves_a_side_empty() -> None:
    task = label_task()
    assert hold_out(task, 0) is task
    tiny = dataclasses.replace(task, splits={**task.splits, "dev": task.splits["dev"][:2]})
    assert hold_out(tiny, 0.2) is tiny  # a fifth of one example of each label rounds to none


def test_a_free_form_task_is_sliced_as_one_group() -> None:
    task = dataclasses.replace(label_task(n_dev=50), verbalizer=None, metric="exact_match")
    assert len(hold_out(task, 0.2).splits[SPLIT]) == 10


def test_the_note_says_when_the_choice_on_dev_looks_optimistic() -> None:
    def rows(found_untouched: float, interval: tuple[float, float] | None, n: int = 40) -> list[SplitResult]:
        return [SplitResult("dev", 160, 160, 0.80, 0.60),
                SplitResult(SPLIT, n, n, found_untouched, 0.58, gain_interval=interval)]

    optimistic = optimism_note(rows(0.62, (-0.1, 0.15)))  # dev gain +0.20, above the slice's interval
    assert "dev at selection 0.800, untouched dev slice 0.620 (40 examples" in optimistic
    assert "+0.200 on dev, +0.040 [-0.100, 0.150] on the slice" in optimistic and "looks optimistic" in optimistic
    assert "optimistic" not in optimism_note(rows(0.62, (-0.1, 0.25)))  # a slice too small to say
    assert "optimistic" in optimism_note(rows(0.70, None))  # without intervals: +0.20 against +0.12
    assert "optimistic" not in optimism_note(rows(0.77, None))
    assert optimism_note(rows(0.8, None)[:1]) is None  # no slice, no note
    # ten examples both prompts answer alike: the interval is [0, 0], too few to call any dev gain optimistic
    small = optimism_note(rows(0.58, (0.0, 0.0), n=10))
    assert "optimistic" not in small and "too few examples to judge the choice by (under 30)" in small


def test_the_search_never_sees_the_slice_and_the_run_reports_it(causal_lm, tmp_path: Path, monkeypatch) -> None:
    task, seen = label_task(), []
    spec = METHODS["trigger"]

    def spy(ctx, config):
        seen.append({split: [e.source for e in examples] for split, examples in ctx.task.splits.items()})
        return spec.search(ctx, config)

    monkeypatch.setitem(METHODS, "trigger", dataclasses.replace(spec, search=spy))
    config = TriggerSearchConfig(steps=2, n_triggers=2, top_k=4, grad_batch=8, eval_batch=8, dev_every=1)
    result = optimize(task, causal_lm, config=config, runs_dir=tmp_path / "runs", progress=False)
    untouched = [e.source for e in hold_out(task, 0.2).splits[SPLIT]]
    assert len(untouched) == 12 and not set(untouched) & set(seen[0]["dev"]) and len(seen[0]["dev"]) == 48
    assert set(result.metrics) == {"dev", SPLIT, "test"} and set(result.baseline) == {"dev", SPLIT, "test"}
    predictions = json.loads((result.run_dir / "predictions.json").read_text())
    assert predictions["splits"][SPLIT]["examples"] == 12 and predictions["splits"]["dev"]["examples"] == 48
    assert json.loads((result.run_dir / "config.json").read_text())["holdout"] == 0.2
    report = result.report.read_text()
    assert f"| {SPLIT} | 12 |" in report and "untouched dev slice" in report


def test_holdout_zero_searches_all_of_dev(causal_lm, tmp_path: Path) -> None:
    config = TriggerSearchConfig(steps=1, n_triggers=1, top_k=4, grad_batch=8, eval_batch=8, dev_every=1)
    result = optimize(label_task(), causal_lm, config=config, holdout=0, runs_dir=tmp_path / "runs", progress=False)
    assert set(result.metrics) == {"dev", "test"}
    assert json.loads((result.run_dir / "predictions.json").read_text())["splits"]["dev"]["examples"] == 60


@pytest.mark.parametrize("value", ["1", "-0.1", "x"])
def test_a_bad_holdout_is_one_error_line(value: str, tmp_path: Path) -> None:
    out = invoke("optimize", "sst2", "--holdout", value, "--runs-dir", tmp_path)
    assert out.exit_code == 2 and "--holdout" in out.output and "Traceback" not in out.output
    assert not (tmp_path / "runs").exists() and not any(tmp_path.iterdir())
