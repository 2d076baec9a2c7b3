"""The trigger search's state: what a step changes, what a checkpoint holds and how a resumed
run reads it back (checked field by field: the file may not be one of ours)."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any

from autoprompt.errors import AutoPromptError


@dataclass
class TriggerState:
    """Everything a step changes: what a checkpoint holds."""

    step: int = 0
    trigger_ids: list[int] = field(default_factory=list)
    best_trigger_ids: list[int] = field(default_factory=list)
    best_dev: float = float("-inf")
    best_dev_log_prob: float = float("-inf")  # breaks ties of the dev metric
    best_dev_metrics: dict[str, float] = field(default_factory=dict)  # all dev metrics of the best
    dev_checks_without_gain: int = 0
    rng_state: Any = None
    seconds: float = 0.0


def read_checkpoint(run) -> TriggerState | None:
    """The state saved in a run's checkpoint.json (None if it has none), checked field by field."""
    path = run.path / "checkpoint.json"
    if not path.exists():
        return None
    data = run.read_json("checkpoint.json")
    fields = {f.name: f for f in dataclasses.fields(TriggerState)}
    problem = None
    if not isinstance(data, dict):
        problem = "not a JSON object"
    elif set(data) - set(fields):
        problem = f"unknown keys {', '.join(sorted(set(data) - set(fields)))}"
    elif not _is_int(data.get("step", 0)) or data.get("step", 0) < 0:
        problem = f"step must be an integer >= 0, not {data.get('step')!r}"
    else:
        for key in ("trigger_ids", "best_trigger_ids"):
            ids = data.get(key, [])
            if not isinstance(ids, list) or not all(_is_int(i) and i >= 0 for i in ids):
                problem = f"{key} must be a list of token ids"
        for key in ("best_dev", "best_dev_log_prob", "seconds"):
            if key in data and (not isinstance(data[key], (int, float)) or isinstance(data[key], bool)):
                problem = f"{key} must be a number, not {data[key]!r}"
        try:
            if data.get("rng_state") is not None:
                random.Random().setstate(tuple_state(data["rng_state"]))
        except (TypeError, ValueError, IndexError):
            problem = "rng_state is not a random generator's state"
    if problem is not None:
        raise AutoPromptError(f"{path}: not a trigger search checkpoint this version can resume ({problem})")
    return TriggerState(**data)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def record(run, state: TriggerState, event: dict) -> None:
    if run is not None:
        run.log(event)
        run.write_json("checkpoint.json", {**state.__dict__, "rng_state": _json_state(state.rng_state)})


def _json_state(state):
    return None if state is None else [state[0], list(state[1]), state[2]]


def tuple_state(state):
    return (state[0], tuple(state[1]), state[2]) if isinstance(state, list) else state
