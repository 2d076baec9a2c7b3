"""The functions behind ``autoprompt runs``: list, find, summarize and compare run folders, and
the formatting of the numbers their tables show."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

from autoprompt.errors import AutoPromptError
from autoprompt.runs.folder import DEFAULT_RUNS_DIR, Run
from autoprompt.runs.predictions import run_metric, split_results


def list_runs(runs_dir: str | os.PathLike = DEFAULT_RUNS_DIR, *, missing_ok: bool = False) -> list[Run]:
    """The run folders in ``runs_dir`` and one level below it (runs/demo/...), oldest first
    (none: an empty list). ``missing_ok``: a folder that does not exist has no runs, not an error."""
    root = Path(runs_dir)
    if not root.is_dir():
        if missing_ok and not root.exists():
            return []
        raise AutoPromptError(f"{root}: no such runs folder")
    folders = {p.parent for pattern in ("*/config.json", "*/*/config.json") for p in root.glob(pattern)}
    return [Run(p) for p in sorted(folders, key=lambda p: (p.name, str(p))) if _is_run(p)]


def find_run(spec: str | os.PathLike, runs_dir: str | os.PathLike = DEFAULT_RUNS_DIR) -> Run:
    """A run folder by path, or by its name in ``runs_dir``."""
    path = Path(spec)
    if not path.exists() and not path.is_absolute() and (Path(runs_dir) / path).exists():
        path = Path(runs_dir) / path
    if not path.exists():
        raise AutoPromptError(f"{spec}: no such run folder (neither a path nor a run in {runs_dir}/; "
                              "autoprompt runs list shows them)")
    if not path.is_dir() or not _is_run(path):
        raise AutoPromptError(f"{spec}: not a run folder (it has no config.json naming a method)")
    return Run(path)


def _is_run(path: Path) -> bool:
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and "method" in config


def summary(run: Run) -> dict[str, Any]:
    """What ``runs list`` shows of a run: task, method, model, metric on dev and test (found prompt
    and baseline), the work done (trials, steps), seconds and state."""
    config, result = run.config(), run.result()
    metric = run_metric(run)
    metrics, baseline = result.get("metrics") or {}, result.get("baseline") or {}
    work = _work(run, result)
    return {"id": run.name, "path": str(run.path), "task": config.get("task"), "method": config.get("method"),
            "model": config.get("model"), "metric": metric,
            "dev": (metrics.get("dev") or {}).get(metric), "test": (metrics.get("test") or {}).get(metric),
            "untouched": (metrics.get("untouched") or {}).get(metric),
            "baseline_dev": (baseline.get("dev") or {}).get(metric),
            "baseline_test": (baseline.get("test") or {}).get(metric),
            "steps": work.get("steps"), "trials": work.get("trials"),
            "work": " + ".join(f"{n} {unit}" for unit, n in work.items()) or "—",
            "seconds": result.get("seconds", result.get("search_seconds")),
            "seed": run.seed(), "state": result.get("state", "unknown"),
            "winner": result.get("winner"), "command": config.get("command")}


def _work(run: Run, result: dict[str, Any]) -> dict[str, int]:
    """The work a run did, unit -> count in the order shown ({"trials": 40}, {"steps": 50}...):
    result.json's "work" where the search records it; else counted the way older runs allow."""
    if isinstance(result.get("work"), dict):
        return dict(result["work"])
    method, work = run.config().get("method"), {}
    if method in ("template", "hybrid"):
        counts = result.get("trials")
        work["trials"] = (sum(v for k, v in counts.items() if k != "failed") if isinstance(counts, dict)
                          else sum(1 for e in run.events() if e.get("stage") == "template" and "trial" in e))
    if method in ("trigger", "hybrid"):
        steps = result.get("steps")
        work["steps"] = steps if steps is not None else max(
            (e["step"] for e in run.events() if "step" in e and e.get("stage", "trigger") == "trigger"), default=0)
    return work


def compare_rows(runs: list[Run], *, seed: int = 0) -> list[dict[str, Any]]:
    """One row per run, grouped by task: the metric on dev and test with 95% intervals, the baseline, time."""
    rows = []
    for run in runs:
        row = summary(run)
        intervals = {r.split: r.interval for r in split_results(run, seed=seed)}
        row["dev_interval"], row["test_interval"] = intervals.get("dev"), intervals.get("test")
        rows.append(row)
    order = list(dict.fromkeys(r["task"] for r in rows))
    return sorted(rows, key=lambda r: order.index(r["task"]))


def compare_markdown(rows: list[dict[str, Any]]) -> str:
    """The rows of compare_rows as a Markdown table for a README."""
    lines = ["| task | method | run | model | metric | dev | test (95% CI) | baseline dev / test | work | time | command |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        command = f"`{r['command']}`".replace("|", "\\|") if r.get("command") else "—"
        lines.append(f"| {r['task']} | {r['method']} | `{r['id']}` | `{r['model']}` | {r['metric']} | {format_value(r['dev'])} | "
                     f"{format_value(r['test'])}{format_interval(r['test_interval'])} | {format_value(r['baseline_dev'])} / "
                     f"{format_value(r['baseline_test'])} | {r['work']} | {format_seconds(r['seconds'])} | {command} |")
    return "\n".join(lines) + "\n"


def seed_summary(runs: list[Run]) -> dict[str, Any]:
    """Mean and standard deviation (n-1) over runs of the same search with different seeds."""
    rows = [summary(run) for run in runs]
    out: dict[str, Any] = {"task": rows[0]["task"], "method": rows[0]["method"], "metric": rows[0]["metric"],
                           "runs": [{k: r[k] for k in ("id", "seed", "dev", "untouched", "test", "seconds")} for r in rows]}
    for split in ("dev", "untouched", "test"):
        values = [r[split] for r in rows if r[split] is not None]
        if values:
            out[split] = {"mean": statistics.fmean(values),
                          "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}
    return out


def seed_markdown(result: dict[str, Any]) -> str:
    """seed_summary as Markdown: one row per seed, then mean ± std."""
    metric = result["metric"]
    lines = [f"# {result['task']} · {result['method']} · {len(result['runs'])} seeds", "",
             f"| seed | run | dev {metric} | untouched dev {metric} | test {metric} |", "|---|---|---|---|---|"]
    lines += [f"| {r['seed']} | `{r['id']}` | {format_value(r['dev'])} | {format_value(r.get('untouched'))} | "
              f"{format_value(r['test'])} |" for r in result["runs"]]
    spread = {split: f"{format_value(result[split]['mean'])} ± {format_value(result[split]['std'])}" if split in result else "—"
              for split in ("dev", "untouched", "test")}
    lines.append(f"| mean ± std (n-1) | | {spread['dev']} | {spread['untouched']} | {spread['test']} |")
    return "\n".join(lines) + "\n"


def format_value(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def format_interval(bounds: tuple[float, float] | None) -> str:
    return "" if bounds is None else f" [{bounds[0]:.3f}, {bounds[1]:.3f}]"


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
