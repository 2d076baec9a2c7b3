"""Run folders: one per job in runs/, with its config, an events log, checkpoints and results.

    runs/<timestamp>-<task>-<method>/
        config.json        the full resolved config (seed included), written once
        log.jsonl          one JSON object per step or trial, appended and fsync'ed
        checkpoint.json    the search state after the last step (atomic)
        study.db           a template search's Optuna study (unless --storage names a shared one)
        best.prompt.json   the best prompt so far (atomic)
        result.json        final metrics and state (finished / interrupted / failed)
        predictions.json   per split, gold answers and the found and baseline prompts' predictions
        report.md          the report, with its PNGs (autoprompt.report)

and the functions behind ``autoprompt runs``: list, find, summarize and compare run folders.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import statistics
from pathlib import Path
from typing import Any

from autoprompt.errors import AutoPromptError
from autoprompt.prompt_file import write_atomic

DEFAULT_RUNS_DIR = Path("runs")


class Run:
    """A run folder."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, task_name: str, method: str, config: dict[str, Any], *,
               runs_dir: str | os.PathLike = DEFAULT_RUNS_DIR) -> Run:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", task_name).strip("-") or "task"
        base = Path(runs_dir) / f"{stamp}-{slug}-{method}"
        path, n = base, 1
        while True:
            try:
                path.mkdir(parents=True)
                break
            except FileExistsError:
                n += 1
                path = base.with_name(f"{base.name}-{n}")
        run = cls(path)
        run.write_json("config.json", config)
        return run

    @classmethod
    def open(cls, path: str | os.PathLike) -> Run:
        run = cls(path)
        if not (run.path / "config.json").is_file():
            raise AutoPromptError(f"{path}: not a run folder (no config.json)")
        return run

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def best_prompt_path(self) -> Path:
        return self.path / "best.prompt.json"

    def config(self) -> dict[str, Any]:
        return self.read_json("config.json")

    def write_json(self, name: str, data: Any, *, compact: bool = False) -> Path:
        target = self.path / name
        write_atomic(target, json.dumps(data, indent=None if compact else 2, ensure_ascii=False) + "\n")
        return target

    def read_json(self, name: str) -> Any:
        target = self.path / name
        try:
            return json.loads(target.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise AutoPromptError(f"{target}: missing") from None
        except json.JSONDecodeError as exc:
            raise AutoPromptError(f"{target}:{exc.lineno}: not valid JSON ({exc.msg})") from None

    def log(self, event: dict[str, Any]) -> None:
        """Append one event to log.jsonl, durable before returning."""
        line = json.dumps(event, ensure_ascii=False) + "\n"
        with open(self.path / "log.jsonl", "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def events(self) -> list[dict[str, Any]]:
        """The logged events; a torn last line (a killed writer) is ignored."""
        target = self.path / "log.jsonl"
        if not target.exists():
            return []
        events = []
        for line in target.read_text(encoding="utf-8").splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return events

    def truncate_log(self, keep: int) -> None:
        """Keep the first ``keep`` events (a resume drops steps after its checkpoint)."""
        kept = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in self.events()[:keep])
        write_atomic(self.path / "log.jsonl", kept)


# --- listing and comparing runs --------------------------------------------------------------

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


def invoked_command() -> str | None:
    """The autoprompt command line this process runs, if it is the CLI (None for the Python API)."""
    import shlex
    import sys

    from autoprompt.storage import redact_url

    first = sys.argv[0] if sys.argv else ""
    if Path(first).name == "autoprompt" or first.endswith(("autoprompt/cli.py", "autoprompt/__main__.py")):
        return shlex.join(["autoprompt", *map(redact_url, sys.argv[1:])])  # a --storage URL without its password
    return None


def summary(run: Run) -> dict[str, Any]:
    """What ``runs list`` shows of a run: task, method, model, metric on dev and test (found prompt
    and baseline), trials or steps, seconds and state."""
    from autoprompt.report import run_metric

    config = run.config()
    result = run.read_json("result.json") if (run.path / "result.json").exists() else {}
    metric = run_metric(run)
    metrics, baseline = result.get("metrics") or {}, result.get("baseline") or {}
    steps, trials = _work(run, result)
    work = " + ".join(w for w in (f"{trials} trials" if trials is not None else "",
                                  f"{steps} steps" if steps is not None else "") if w)
    return {"id": run.name, "path": str(run.path), "task": config.get("task"), "method": config.get("method"),
            "model": config.get("model"), "metric": metric,
            "dev": (metrics.get("dev") or {}).get(metric), "test": (metrics.get("test") or {}).get(metric),
            "baseline_dev": (baseline.get("dev") or {}).get(metric),
            "baseline_test": (baseline.get("test") or {}).get(metric),
            "steps": steps, "trials": trials, "work": work or "—",
            "seconds": result.get("seconds", result.get("search_seconds")),
            "seed": (config.get("trigger") or {}).get("seed"), "state": result.get("state", "unknown"),
            "winner": result.get("winner"), "command": config.get("command")}


def _work(run: Run, result: dict[str, Any]) -> tuple[int | None, int | None]:
    """Trigger steps and template trials done (from result.json, else counted in the log)."""
    method = run.config().get("method")
    steps = trials = None
    if method in ("trigger", "hybrid"):
        steps = result.get("steps")
        if steps is None:
            steps = max((e["step"] for e in run.events() if "step" in e and e.get("stage", "trigger") == "trigger"),
                        default=0)
    if method in ("template", "hybrid"):
        counts = result.get("trials")
        trials = (sum(v for k, v in counts.items() if k != "failed") if isinstance(counts, dict)
                  else sum(1 for e in run.events() if e.get("stage") == "template" and "trial" in e))
    return steps, trials


def compare_rows(runs: list[Run], *, seed: int = 0) -> list[dict[str, Any]]:
    """One row per run, grouped by task: the metric on dev and test with 95% intervals, the baseline, time."""
    from autoprompt.report import split_results

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
    from autoprompt.report import format_interval, format_seconds, format_value

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
                           "runs": [{k: r[k] for k in ("id", "seed", "dev", "test", "seconds")} for r in rows]}
    for split in ("dev", "test"):
        values = [r[split] for r in rows if r[split] is not None]
        if values:
            out[split] = {"mean": statistics.fmean(values),
                          "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}
    return out


def seed_markdown(result: dict[str, Any]) -> str:
    """seed_summary as Markdown: one row per seed, then mean ± std."""
    from autoprompt.report import format_value

    metric = result["metric"]
    lines = [f"# {result['task']} · {result['method']} · {len(result['runs'])} seeds", "",
             f"| seed | run | dev {metric} | test {metric} |", "|---|---|---|---|"]
    lines += [f"| {r['seed']} | `{r['id']}` | {format_value(r['dev'])} | {format_value(r['test'])} |" for r in result["runs"]]
    spread = {split: f"{format_value(result[split]['mean'])} ± {format_value(result[split]['std'])}" if split in result else "—"
              for split in ("dev", "test")}
    lines.append(f"| mean ± std (n-1) | | {spread['dev']} | {spread['test']} |")
    return "\n".join(lines) + "\n"
