"""Run folders and what is built from them, each module above the ones it uses:

    folder.py       Run: one job's folder (config, events log, checkpoints, results)
    predictions.py  predictions.json, and per split the metric with bootstrap intervals
    plots.py        the report's PNGs (metrics, confusion matrix, history, Optuna's plots)
    listing.py      list, find, summarize and compare runs (``autoprompt runs``)
    report.py       report.md
"""

from __future__ import annotations

from autoprompt.runs.folder import DEFAULT_RUNS_DIR, Run, invoked_command
from autoprompt.runs.listing import (
    compare_markdown,
    compare_rows,
    find_run,
    format_interval,
    format_seconds,
    format_value,
    list_runs,
    seed_markdown,
    seed_summary,
    summary,
)
from autoprompt.runs.predictions import (
    PREDICTIONS_FORMAT,
    SplitResult,
    overfit_warning,
    read_predictions,
    run_metric,
    side,
    split_record,
    split_results,
)
from autoprompt.runs.report import metrics_table, prompt_section, write_report

__all__ = [
    "DEFAULT_RUNS_DIR", "PREDICTIONS_FORMAT", "Run", "SplitResult", "compare_markdown", "compare_rows", "find_run",
    "format_interval", "format_seconds", "format_value", "invoked_command", "list_runs", "metrics_table",
    "overfit_warning", "prompt_section", "read_predictions", "run_metric", "seed_markdown", "seed_summary",
    "side", "split_record", "split_results", "summary", "write_report",
]
