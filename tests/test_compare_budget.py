"""How a comparison shares its total time among its runs (autoprompt.compare_budget): shares by train size, the
time runs spend beyond their budgets, a floor, a fixed --time-budget, and the report's sentence."""

from __future__ import annotations

import pytest

from autoprompt.compare import cells_to_run
from autoprompt.compare_budget import FLOOR, beyond, cell_budget, shares
from autoprompt.compare_report import markdown, summarize

CONFIG = {"methods": ["manual", "template", "lora"], "sizes": [16, 64, "all"], "seeds": [0, 1],
          "time_budget": None, "total_budget": 1000.0}


def cell(method, size, seed, seconds, budget):
    return {"method": method, "size": size, "seed": seed, "seconds": seconds, "time_budget": budget}


def test_the_kth_smallest_size_gets_k_shares_and_manual_none() -> None:
    assert [shares(CONFIG, "lora", s) for s in CONFIG["sizes"]] == [1, 2, 3]
    assert shares(CONFIG, "manual", "all") == 0
    assert cell_budget(CONFIG, [], cells_to_run(CONFIG), "manual", 16) is None


def test_before_any_run_the_total_is_shared_by_size() -> None:
    left = cells_to_run(CONFIG)  # 2 searching methods x 2 seeds x (1 + 2 + 3) shares = 24 shares
    assert cell_budget(CONFIG, [], left, "template", 16) == pytest.approx(1000 / 24, abs=0.1)
    assert cell_budget(CONFIG, [], left, "lora", "all") == pytest.approx(3 * 1000 / 24, abs=0.1)


def test_time_spent_and_time_runs_take_beyond_their_budgets_come_off_what_is_shared() -> None:
    todo = cells_to_run(CONFIG)
    done = [cell("manual", 16, 0, 20.0, None), cell("template", 16, 0, 70.0, 40.0)]
    left = todo[2:]  # lora at 16, seed 0, then the rest
    assert beyond(done, "template") == 30.0 and beyond(done, "manual") == 20.0
    assert beyond(done, "lora") == pytest.approx((20.0 + 30.0) / 2)  # none of its own yet: every run's mean
    expected_left = 1000 - 90 - sum(beyond(done, m) for m, _, _ in left)
    weights = sum(shares(CONFIG, m, s) for m, s, _ in left)
    assert cell_budget(CONFIG, done, left, "lora", 16) == pytest.approx(expected_left / weights, abs=0.1)
    faster = [cell("manual", 16, 0, 20.0, None), cell("template", 16, 0, 10.0, 40.0)]  # stopped early
    assert cell_budget(CONFIG, faster, left, "lora", 16) > cell_budget(CONFIG, done, left, "lora", 16)


def test_no_run_gets_less_than_the_floor_when_time_runs_out() -> None:
    done = [cell("template", 16, 0, 5000.0, 40.0)]
    searching = 2 * 3 * 2
    assert cell_budget(CONFIG, done, cells_to_run(CONFIG)[2:], "lora", 16) == pytest.approx(FLOOR * 1000 / searching,
                                                                                             abs=0.1)


def test_a_fixed_time_budget_is_every_runs() -> None:
    fixed = {**CONFIG, "time_budget": 90.0}
    done = [cell("template", 16, 0, 5000.0, 90.0)]
    assert cell_budget(fixed, done, cells_to_run(fixed)[2:], "lora", "all") == 90.0
    assert cell_budget(fixed, done, cells_to_run(fixed)[2:], "manual", "all") is None


def test_the_report_says_the_total_and_each_sizes_budget() -> None:
    config = {**CONFIG, "task": "toy", "model": "tiny", "metric": "accuracy", "unit": "examples per class", "confidence": 0.0, "settings": {},
              "budget_rule": "shared as it goes", "splits": {"train": 100, "dev": 50, "test": 30}}
    cells = [{**cell(m, s, 0, 10.0, None if m == "manual" else b), "test": 0.5, "dev": 0.5, "trainable_parameters": 0,
              "artifact_bytes": 100, "examples": {"train": 4, "dev": 4, "test": 30}}
             for m in config["methods"] for s, b in ((16, 30.0), (64, 60.0), ("all", 91.0))]
    text = markdown(config, summarize(config, cells), picture=False)
    assert "1000 s in all; a run's budget, the mean at each size: 16 30 s, 64 60 s, all 91 s." in text
