"""What predictions.json holds, and the numbers that follow from it: per split, the task metric of
the found prompt and of the baseline (the task's manual prompt) with bootstrap intervals.

predictions.json holds, per split, the gold answers and what each prompt predicted for each
example (and the target's rank, for free-form answers), so a report is rebuilt without the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autoprompt.errors import AutoPromptError
from autoprompt.metrics import N_RESAMPLES, bootstrap, interval, metric_value
from autoprompt.runs.folder import Run
from autoprompt.untouched import RUN_SPLITS, SPLIT

if TYPE_CHECKING:
    from autoprompt.scoring import Evaluation
    from autoprompt.task import Example

PREDICTIONS_FORMAT = "autoprompt.predictions/v1"
OPTIMISM_GAP = 0.05  # without intervals: a dev gain this far above the slice's gain is called optimistic
MIN_SLICE_TO_JUDGE = 30  # a smaller slice is shown, not judged by: on 10 examples where both prompts answer
# alike, the gain's bootstrap interval is [0, 0] and any dev gain would be "above" it
OVERFIT_GAP = 0.05  # train above test by more than this (and beyond both intervals): a warning
SPLITS = RUN_SPLITS


def split_record(examples: list[Example], found: Evaluation, baseline: Evaluation, *, of: int,
                 indices: list[int] | None = None) -> dict[str, Any]:
    """One split of predictions.json: gold answers and both prompts' predictions (and ranks)."""
    record: dict[str, Any] = {"examples": len(examples), "of": of, "gold": [e.answer for e in examples],
                              "prompt": side(found), "baseline": side(baseline)}
    if indices is not None:
        record["indices"] = indices
    return record


def side(evaluation: Evaluation) -> dict[str, Any]:
    side: dict[str, Any] = {"predicted": list(evaluation.predictions)}
    if evaluation.target_ranks is not None:
        side["ranks"] = [int(r) for r in evaluation.target_ranks]
    if evaluation.scores is not None:  # generated answers: each one's value of the task's metric
        side["scores"] = [float(v) for v in evaluation.scores]
    return side


def side_value(metric: str, gold: list[str], side: dict[str, Any], labels: list[str] | None = None) -> float:
    """The metric of one side of a split record (one prompt's answers), on all its examples."""
    return metric_value(metric, gold, predicted=side.get("predicted"), ranks=side.get("ranks"), labels=labels,
                        scores=side.get("scores"))


def read_predictions(run: Run) -> dict[str, Any] | None:
    """predictions.json of a run (None for runs made before it existed, or unfinished ones)."""
    if not (run.path / "predictions.json").exists():
        return None
    data = run.read_json("predictions.json")
    if not isinstance(data, dict) or data.get("format") != PREDICTIONS_FORMAT:
        raise AutoPromptError(f"{run.path / 'predictions.json'}: not {PREDICTIONS_FORMAT}")
    return data


def run_metric(run: Run) -> str | None:
    """The task's metric: result.json says it; older runs: the prompt file, else the first metric."""
    result = run.result()
    if result.get("metric"):
        return result["metric"]
    if run.best_prompt_path.exists():
        metric = (run.read_json(run.best_prompt_path.name).get("task") or {}).get("metric")
        if metric:
            return metric
    for values in (result.get("metrics") or {}).values():
        return next(iter(values), None)
    return None


@dataclass
class SplitResult:
    """The found prompt and the baseline on one split, with 95% intervals when predictions are saved."""

    split: str
    examples: int | None  # scored (a sample of train)
    of: int | None  # in the split
    value: float | None
    baseline: float | None
    interval: tuple[float, float] | None = None
    baseline_interval: tuple[float, float] | None = None
    gain_interval: tuple[float, float] | None = None  # found minus baseline, paired resamples


def split_results(run: Run, *, seed: int = 0, n_resamples: int = N_RESAMPLES) -> list[SplitResult]:
    """Per split: the task metric of the found prompt and of the baseline, with bootstrap intervals
    from predictions.json (without it, the values of result.json and no intervals)."""
    predictions = read_predictions(run)
    if predictions is None:
        result = run.result()
        metric = run_metric(run)
        return [SplitResult(split, None, None, result["metrics"][split].get(metric),
                            (result.get("baseline") or {}).get(split, {}).get(metric))
                for split in SPLITS if split in (result.get("metrics") or {})]
    metric, labels = predictions["metric"], predictions.get("labels")
    rows = []
    for split in SPLITS:
        record = predictions["splits"].get(split)
        if not record:
            continue
        gold, sides = record["gold"], [record["prompt"], record["baseline"]]
        values = bootstrap(metric, gold, sides, labels, n_resamples=n_resamples, seed=seed)
        rows.append(SplitResult(split, record["examples"], record["of"], side_value(metric, gold, sides[0], labels),
                                side_value(metric, gold, sides[1], labels), interval(values[0]), interval(values[1]),
                                interval(values[0] - values[1])))
    return rows


def overfit_warning(rows: list[SplitResult]) -> str | None:
    """A warning when the found prompt does clearly better on train than on test."""
    by_split = {r.split: r for r in rows}
    train, test = by_split.get("train"), by_split.get("test")
    if train is None or test is None or train.value is None or test.value is None:
        return None
    gap = train.value - test.value
    beyond = train.interval is None or test.interval is None or train.interval[0] > test.interval[1]
    if gap <= OVERFIT_GAP or not beyond:
        return None
    return (f"the found prompt scores {train.value:.3f} on train but {test.value:.3f} on test, a gap of {gap:.3f} "
            f"(more than {OVERFIT_GAP} and beyond both 95% intervals): it overfits the examples it was searched on")


def optimism_note(rows: list[SplitResult]) -> str | None:
    """What the untouched slice says about the choice on dev: the found prompt's gain over the baseline on dev
    and on the slice (with its paired 95% interval when predictions are saved). A dev gain above that interval
    (without intervals: more than OPTIMISM_GAP above the slice's gain) is called optimistic; a slice under
    MIN_SLICE_TO_JUDGE examples is too small to call anything."""
    by_split = {r.split: r for r in rows}
    dev, untouched = by_split.get("dev"), by_split.get(SPLIT)
    if dev is None or untouched is None or None in (dev.value, dev.baseline, untouched.value, untouched.baseline):
        return None
    dev_gain, slice_gain = dev.value - dev.baseline, untouched.value - untouched.baseline
    bounds = untouched.gain_interval
    shown = f" [{bounds[0]:.3f}, {bounds[1]:.3f}]" if bounds else ""
    text = (f"dev at selection {dev.value:.3f}, untouched dev slice {untouched.value:.3f} ({untouched.examples} "
            f"examples the search never saw); the found prompt's gain over the baseline: {dev_gain:+.3f} on dev, "
            f"{slice_gain:+.3f}{shown} on the slice")
    if untouched.examples < MIN_SLICE_TO_JUDGE:
        return text + f": too few examples to judge the choice by (under {MIN_SLICE_TO_JUDGE})"
    if (dev_gain > bounds[1]) if bounds else (dev_gain - slice_gain > OPTIMISM_GAP):
        return text + ": the dev gain is above what the slice supports, the choice on dev looks optimistic"
    return text
