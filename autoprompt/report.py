"""Run reports: final metrics with bootstrap intervals, a confusion matrix and the search's
history, written as report.md and PNG pictures next to a run's files.

A report is built from the run folder's files alone (config.json, result.json, log.jsonl,
predictions.json, the Optuna study), so ``autoprompt runs report RUN`` rebuilds it without
the model. predictions.json holds, per split, the gold answers and what the found prompt
and the baseline (the task's manual prompt) predicted for each example.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autoprompt.errors import AutoPromptError
from autoprompt.prompt_file import write_atomic

if TYPE_CHECKING:
    from autoprompt.runs import Run
    from autoprompt.scoring import Evaluation
    from autoprompt.task import Example

log = logging.getLogger(__name__)

PREDICTIONS_FORMAT = "autoprompt.predictions/v1"
N_RESAMPLES = 1000
LEVEL = 0.95
OVERFIT_GAP = 0.05  # train above test by more than this (and beyond both intervals): a warning
SPLITS = ("train", "dev", "test")


# --- per-example records: what predictions.json holds ----------------------------------------

def split_record(examples: list[Example], found: Evaluation, baseline: Evaluation, *, of: int,
                 indices: list[int] | None = None) -> dict[str, Any]:
    """One split of predictions.json: gold answers and both prompts' predictions (and ranks)."""
    record: dict[str, Any] = {"examples": len(examples), "of": of, "gold": [e.answer for e in examples],
                              "prompt": _side(found), "baseline": _side(baseline)}
    if indices is not None:
        record["indices"] = indices
    return record


def _side(evaluation: Evaluation) -> dict[str, Any]:
    side: dict[str, Any] = {"predicted": list(evaluation.predictions)}
    if evaluation.target_ranks is not None:
        side["ranks"] = [int(r) for r in evaluation.target_ranks]
    return side


# --- metrics, bootstrap, confusion: pure numpy -----------------------------------------------

def metric_value(metric: str, gold: list[str], side: dict[str, Any], labels: list[str] | None = None) -> float:
    """The metric of one side of a split record, on all its examples."""
    return float(_resampled(metric, gold, side, labels, np.arange(len(gold))[None, :])[0]) if gold else 0.0


def bootstrap(metric: str, gold: list[str], sides: list[dict[str, Any]], labels: list[str] | None = None, *,
              n_resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """The metric of each side on the same ``n_resamples`` resamples of the examples, [n_sides, n_resamples]."""
    rng = np.random.default_rng(seed)
    n = len(gold)
    out = np.empty((len(sides), n_resamples))
    rows = max(1, 2_000_000 // max(n, 1))  # resamples drawn at once: bounds the index matrix
    for start in range(0, n_resamples, rows):
        idx = rng.integers(0, n, size=(min(rows, n_resamples - start), n))  # [rows, n]
        for k, side in enumerate(sides):
            out[k, start : start + len(idx)] = _resampled(metric, gold, side, labels, idx)
    return out


def interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of bootstrap values."""
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _resampled(metric: str, gold: list[str], side: dict[str, Any], labels: list[str] | None,
               idx: np.ndarray) -> np.ndarray:
    """The metric on each row of example indices ``idx`` [r, n]; returns [r]."""
    if metric in ("precision@1", "mrr"):
        ranks = np.asarray(side["ranks"])
        per_example = (ranks == 0).astype(float) if metric == "precision@1" else 1.0 / (ranks + 1)
        return per_example[idx].mean(axis=1)
    labels = labels or sorted(set(gold))
    index = {label: k for k, label in enumerate(labels)}
    g = np.asarray([index.get(x, -1) for x in gold])
    p = np.asarray([index.get(x, -2) for x in side["predicted"]])
    if metric == "accuracy":
        return (g == p)[idx].mean(axis=1)
    if metric == "macro_f1":
        g, p = g[idx], p[idx]  # [r, n]
        f1 = np.zeros(len(idx))
        for k in range(len(labels)):
            tp = ((g == k) & (p == k)).sum(axis=1)
            wrong = ((g == k) != (p == k)).sum(axis=1)  # false positives + false negatives
            f1 += np.where(tp + wrong > 0, 2 * tp / np.maximum(2 * tp + wrong, 1), 0.0)
        return f1 / len(labels)
    raise AutoPromptError(f"the report cannot compute metric {metric!r}")


def confusion_matrix(gold: list[str], predicted: list[str], labels: list[str]) -> np.ndarray:
    """Counts [gold label, predicted label]."""
    index = {label: k for k, label in enumerate(labels)}
    g = np.asarray([index[x] for x in gold], dtype=np.int64)
    p = np.asarray([index[x] for x in predicted], dtype=np.int64)
    return np.bincount(g * len(labels) + p, minlength=len(labels) ** 2).reshape(len(labels), len(labels))


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
        result = run.read_json("result.json") if (run.path / "result.json").exists() else {}
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
        rows.append(SplitResult(split, record["examples"], record["of"], metric_value(metric, gold, sides[0], labels),
                                metric_value(metric, gold, sides[1], labels), interval(values[0]), interval(values[1]),
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
    result = run.read_json("result.json") if (run.path / "result.json").exists() else {}
    if result.get("metric"):
        return result["metric"]
    if run.best_prompt_path.exists():
        metric = (run.read_json(run.best_prompt_path.name).get("task") or {}).get("metric")
        if metric:
            return metric
    for values in (result.get("metrics") or {}).values():
        return next(iter(values), None)
    return None


# --- report.md --------------------------------------------------------------------------------

def write_report(run: Run, *, seed: int = 0) -> Path:
    """Write report.md and its PNGs into the run folder (atomically); returns report.md's path.
    ``seed``: the bootstrap's (the same for every run, so reports of runs compare)."""
    from autoprompt import report_plots
    from autoprompt.runs import summary

    info = summary(run)
    predictions = read_predictions(run)
    rows = split_results(run, seed=seed)
    metric = info["metric"] or "metric"
    lines = [f"# Run {run.name}", "",
             f"task **{info['task']}** · method **{info['method']}** · model `{info['model']}` · "
             f"state **{info['state']}** · {info['work']} · {format_seconds(info['seconds'])} · seed {info['seed']}", ""]
    lines += prompt_section(run, predictions)
    lines += [f"## Metrics: {metric}", ""]
    if predictions is None:
        lines += ["This run has no predictions.json (it was made before runs saved them, or did not finish): "
                  "the values of result.json, without intervals or a confusion matrix.", ""]
    else:
        lines += [f"95% percentile bootstrap intervals ({N_RESAMPLES} resamples of the examples, seed {seed}; the "
                  "gain's interval pairs the two prompts on the same resamples). Train is a seeded sample. "
                  "Baseline: the task's manual template. Test was never used to choose.", ""]
    lines += metrics_table(rows)
    warning = overfit_warning(rows)
    if warning:
        log.warning("%s: %s", run.name, warning)
        lines += ["", f"> **Warning:** {warning}."]
    if report_plots.metrics_png(rows, metric, run.path / "metrics.png"):
        lines += ["", "![metrics](metrics.png)"]
    lines += ["", *_confusion_section(run, predictions)]
    lines += ["## Optimization history", ""]
    pictures = report_plots.history_pngs(run, run.events(), run.path)
    lines += [f"![{name}]({name})" for name in pictures] or ["(nothing logged)"]
    lines += ["", "## Files", ""]
    lines += [f"- `{p.name}`" for p in sorted(run.path.iterdir())
              if not p.name.startswith(".") and p.name != "report.md"] + ["- `report.md`"]
    target = run.path / "report.md"
    write_atomic(target, "\n".join(lines) + "\n")
    return target


def metrics_table(rows: list[SplitResult]) -> list[str]:
    """Markdown: per split, the found prompt and the baseline with intervals, and the gain."""
    out = ["| split | examples | found prompt | baseline | gain |", "|---|---|---|---|---|"]
    for r in rows:
        scored = "" if r.examples is None else f"{r.examples}" + (f" of {r.of}" if r.of != r.examples else "")
        gain = "" if r.value is None or r.baseline is None else f"{r.value - r.baseline:+.3f}" + format_interval(r.gain_interval)
        out.append(f"| {r.split} | {scored} | {format_value(r.value)}{format_interval(r.interval)} | {format_value(r.baseline)}"
                   f"{format_interval(r.baseline_interval)} | {gain} |")
    return out


def prompt_section(run: Run, predictions: dict[str, Any] | None = None) -> list[str]:
    """Markdown: the found prompt, its verbalizer and triggers, the prompt on one example, the baseline."""
    predictions = predictions if predictions is not None else read_predictions(run)
    result = run.read_json("result.json") if (run.path / "result.json").exists() else {}
    prompt_file = run.read_json(run.best_prompt_path.name) if run.best_prompt_path.exists() else {}
    text = (predictions or {}).get("prompt_text") or _prompt_file_text(run) or result.get("template")
    lines = ["## The found prompt", ""]
    if not text:
        return lines + ["(no prompt saved)", ""]
    lines += ["```text", text, "```", ""]
    verbalizer = prompt_file.get("verbalizer")
    if verbalizer:
        shown = {label: " / ".join(f"`{w}`" for w in words) for label, words in verbalizer.items()}
        lines.append("verbalizer: " + "; ".join(f"{label} → {words}" for label, words in shown.items()))
    triggers = [t["text"] for t in prompt_file.get("triggers", [])]
    if triggers:
        lines.append("triggers: " + ", ".join(f"`{t!r}`" for t in triggers))
    demos = prompt_file.get("demonstrations") or []
    if demos:
        lines.append(f"demonstrations: {len(demos)}" + (f" (each input is shown the {prompt_file['demo_k']} nearest)"
                                                       if prompt_file.get("demo_k") else ""))
    if prompt_file.get("chat"):
        lines.append("chat: wrapped in the model's chat template")
    if prompt_file.get("calibration"):
        lines.append("calibration: contextual")
    example = (predictions or {}).get("example")
    if example:
        lines += ["", f"On one {example['split']} example (gold: `{example['answer']}`), the model reads:", "",
                  "```text", example["rendered"], "```"]
    if predictions and predictions.get("baseline_text"):
        lines += ["", "Baseline (the task's manual template):", "", "```text", predictions["baseline_text"], "```"]
    return lines + [""]


def _prompt_file_text(run: Run) -> str | None:
    """The template of the run's prompt file with instruction and demonstrations written in
    (chat wrapping needs the tokenizer: the prompt line below says it is wrapped)."""
    from autoprompt.prompt_file import read_prompt_file

    if not run.best_prompt_path.exists():
        return None
    return read_prompt_file(run.best_prompt_path).prompt.expanded_template()


def _confusion_section(run: Run, predictions: dict[str, Any] | None) -> list[str]:
    from autoprompt.report_plots import confusion_png

    labels = (predictions or {}).get("labels")
    split = next((s for s in ("test", "dev") if s in (predictions or {}).get("splits", {})), None)
    if not labels or split is None:
        return []
    record = predictions["splits"][split]
    counts = confusion_matrix(record["gold"], record["prompt"]["predicted"], labels)
    lines = [f"## Confusion matrix ({split}, found prompt)", "",
             "| gold \\ predicted | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    lines += [f"| **{label}** | " + " | ".join(str(int(c)) for c in row) + " |" for label, row in zip(labels, counts, strict=True)]
    name = f"confusion_{split}.png"
    confusion_png(counts, labels, split, run.path / name)
    return [*lines, "", f"![confusion matrix]({name})", ""]


def format_value(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def format_interval(bounds: tuple[float, float] | None) -> str:
    return "" if bounds is None else f" [{bounds[0]:.3f}, {bounds[1]:.3f}]"


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def save_figure(fig, path: Path) -> None:
    """Save a matplotlib figure as PNG atomically: a temp name in the same folder, then a rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tight_layout's notes about crowded axes
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
