"""How a comparison shares its time among its runs (compare.py).

``--time-budget``: every run that searches or trains gets that many seconds. Else ``--total-budget`` (default
2 hours) is the wall time of the whole comparison, shared as it goes: before each run, the time left (less
what the runs still to come will spend beyond their budgets, as runs of their method did so far: scoring
test, the choice on dev, a first trial's warm-up, or less where a method stops early) is divided among the
runs left, the k-th smallest train size getting k shares (a larger train and dev take longer to search and
to train on). Manual runs only score and get none."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DEFAULT_TOTAL_BUDGET = 7200.0  # seconds, the whole comparison
FLOOR = 0.2  # no run gets less than this share of an even split of the total
BUDGET_RULE = ("each run that searches or trains gets --time-budget seconds; else --total-budget is the "
               "comparison's wall time, shared as it goes: the time left, less what the runs to come will spend "
               "beyond their budgets (as runs of their method did so far), goes to the runs left, the k-th "
               "smallest train size getting k shares; manual runs only score")


def shares(config: dict[str, Any], method: str, size: Any) -> int:
    """A run's shares of the time: 0 for manual, else its size's rank among the sizes (1 = the smallest)."""
    return 0 if method == "manual" else config["sizes"].index(size) + 1


def cell_budget(config: dict[str, Any], done: Sequence[dict[str, Any]], left: Sequence[tuple[str, Any, int]],
                method: str, size: Any) -> float | None:
    """Seconds for the next run (``method`` at ``size``; ``left``: the runs not yet done, this one included;
    ``done``: the finished cells, each with its ``seconds`` and ``time_budget``). None: no limit (manual)."""
    if method == "manual":
        return None
    if config.get("time_budget") is not None:
        return float(config["time_budget"])
    total = float(config["total_budget"])
    searching = sum(m != "manual" for m in config["methods"]) * len(config["sizes"]) * len(config["seeds"])
    remaining = total - sum(c["seconds"] for c in done) - sum(beyond(done, m) for m, _, _ in left)
    weights = sum(shares(config, m, s) for m, s, _ in left)
    share = remaining * shares(config, method, size) / weights if weights else 0.0
    return round(max(FLOOR * total / max(1, searching), share), 1)


def beyond(done: Sequence[dict[str, Any]], method: str) -> float:
    """Seconds a run of ``method`` takes beyond its budget, the mean of its method's finished runs (of any
    run's, before one of the method has finished; 0 before any)."""
    same = [c for c in done if c["method"] == method] or list(done)
    if not same:
        return 0.0
    return sum(c["seconds"] - (c.get("time_budget") or 0.0) for c in same) / len(same)

