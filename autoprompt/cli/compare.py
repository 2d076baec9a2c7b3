"""``autoprompt compare-methods``: prompt or fine-tune? A thin wrapper over ``autoprompt.compare_methods``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from autoprompt.cli.options import TASK_FLAGS, Duration, model_options, resolve_task, task_options


@click.command("compare-methods")
@click.argument("task")
@click.option("--methods", default=None, help="Methods to compare, comma-separated [default: "
              "manual,template,trigger,soft,lora].")
@click.option("--shots", default=None, help="Train sizes, comma-separated: examples per class for a label task "
              "(a seeded class-balanced sample of train; dev a sample as large), examples in all otherwise; all: the "
              "task's train and dev [default: 16,64,256,all].")
@click.option("--seeds", default=None, help="Seeds, comma-separated: each size is sampled and each method run once "
              "per seed [default: 0,1,2].")
@click.option("--model", default=None, help="Model alias, folder, .gguf file or hub id [default: smollm2-135m].")
@click.option("--time-budget", type=Duration(), default=None, help="Seconds (90, 10m, 1h) for each run that searches "
              "or trains [default: shares of --total-budget].")
@click.option("--total-budget", type=Duration(), default=None, help="Wall time of the whole comparison, shared as it "
              "goes: the time left goes to the runs left, a larger train size getting more [default: 2h].")
@click.option("--confidence", type=click.FloatRange(min=0, max=1, max_open=True), default=None,
              help="A run keeps the task's own prompt unless the found prompt's dev gain is above zero with this "
              "confidence (0: unless it is worse on dev) [default: 0: each method's own result].")
@click.option("--runs-dir", type=click.Path(file_okay=False), default="runs", show_default=True,
              help="The comparison goes to RUNS_DIR/<timestamp>-<task>-compare/.")
@click.option("--resume", type=click.Path(file_okay=False, exists=True), default=None,
              help="Finish this comparison folder: its finished cells are kept, the rest run.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@model_options
@task_options
def compare_methods(task: str, methods: str | None, shots: str | None, seeds: str | None, model: str | None,
                    time_budget: float | None, total_budget: float | None, confidence: float | None, runs_dir: str,
                    resume: str | None, as_json: bool, device: str | None, dtype: str | None, trust_remote_code: bool,
                    **task_flags) -> None:
    """Run each method at each train size and seed on TASK, and write one report: the table that says whether a
    better prompt or fine-tuning is worth it (comparison.md, .json, .png, and every cell in cells.jsonl).

    TASK is a built-in task, a task file (.py) or a data file (.csv, .tsv, .jsonl; --input, --label)."""
    from autoprompt.compare import COMPARE_CONFIDENCE, parse_methods, parse_seeds, parse_sizes, plan
    from autoprompt.compare import compare_methods as run_comparison
    from autoprompt.errors import AutoPromptError
    from autoprompt.models import DEFAULT_MODEL, load_model

    flags = {name: task_flags.pop(name) for name in TASK_FLAGS}
    given = {"methods": methods, "sizes": shots, "seeds": seeds, "time_budget": time_budget,
             "total_budget": total_budget, "settings": None}
    if resume is not None:
        if any(v is not None for v in given.values()) or confidence is not None:
            raise AutoPromptError(f"--resume {resume} finishes the comparison with the settings it was started "
                                  "with; give no --methods, --shots, --seeds, budget or --confidence with it")
        model = model or _saved_model(resume)
    else:
        parse_methods(methods), parse_sizes(shots), parse_seeds(seeds)  # (before the task loads)
    the_task = resolve_task(task, **flags)
    confidence = COMPARE_CONFIDENCE if confidence is None else confidence
    if resume is None:
        plan(the_task, given, confidence)  # (bad sizes fail before the model loads)
    lm = load_model(model or DEFAULT_MODEL, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    result = run_comparison(the_task, lm, methods=methods, shots=shots, seeds=seeds, time_budget=time_budget,
                            total_budget=total_budget, confidence=confidence, runs_dir=runs_dir, resume=resume)
    if as_json:
        click.echo(json.dumps({"folder": str(result.folder), "files": {k: str(v) for k, v in result.files.items()},
                               "config": result.config, "summary": result.summary, "cells": result.cells}))
        return
    from autoprompt.compare_report import best_text

    click.echo(f"{len(result.cells)} cells; best test {result.config['metric']} at each size:")
    for size in result.config["sizes"]:
        click.echo("  " + best_text(result.config, result.summary, size).replace("**", ""))
    click.echo(f"report: {result.files['markdown']}")
    click.echo(f"folder: {result.folder}")


def _saved_model(folder: str) -> str | None:
    """The model a comparison folder was run on (None: compare_methods says what is wrong with the folder)."""
    try:
        saved = json.loads((Path(folder) / "comparison.json").read_text(encoding="utf-8"))
        return saved["config"]["model"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
