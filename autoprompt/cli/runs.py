"""``autoprompt runs list|show|compare|report`` and ``autoprompt export``: commands over run folders.

They read run folders only; none loads a model (export loads a tokenizer when it must).
Errors are AutoPromptErrors, which the main group turns into one ``error:`` line.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

log = logging.getLogger("autoprompt")

_DIR = click.option("--dir", "runs_dir", default="runs", show_default=True, help="The runs folder.")
_JSON = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")


@click.group()
def runs() -> None:
    """List, show, compare and report the run folders of a runs folder."""


@runs.command("list")
@_DIR
@_JSON
def list_(runs_dir: str, as_json: bool) -> None:
    """A table of the runs: task, method, model, dev and test metric, work, time, state."""
    from autoprompt.runs import list_runs, summary

    default_dir = click.get_current_context().get_parameter_source("runs_dir") == click.core.ParameterSource.DEFAULT
    rows = [summary(run) for run in list_runs(runs_dir, missing_ok=default_dir)]
    for row in rows:
        row["id"] = str(Path(row["path"]).relative_to(runs_dir))
    if as_json:
        click.echo(json.dumps({"runs_dir": runs_dir, "runs": rows}))
        return
    if not rows:  # not an error: nothing has run here yet
        click.echo(f"no runs in {runs_dir}/ yet (autoprompt optimize writes them there)")
        return
    columns = ("id", "task", "method", "model", "metric", "dev", "test", "work", "time", "state")
    table = [[_cell(row, c) for c in columns] for row in rows]
    _echo_table(columns, table)


@runs.command()
@click.argument("run")
@_DIR
@_JSON
def show(run: str, runs_dir: str, as_json: bool) -> None:
    """A run's config, its prompt rendered on one example, metrics with 95% intervals, its files."""
    from dataclasses import asdict

    from autoprompt.runs import find_run, metrics_table, prompt_section, split_results, summary

    the_run = find_run(run, runs_dir)
    info, rows = summary(the_run), split_results(the_run)
    files = [str(p.resolve()) for p in sorted(the_run.path.iterdir()) if not p.name.startswith(".")]
    if as_json:
        click.echo(json.dumps({**info, "config": the_run.config(), "splits": [asdict(r) for r in rows],
                               "files": files}))
        return
    click.echo(f"run {the_run.path.resolve()}")
    click.echo(f"{info['task']} · {info['method']} · {info['model']} · {info['state']} · {info['work']} · "
               f"{_cell(info, 'time')} · seed {info['seed']}")
    click.echo("\nconfig:")
    for key, value in the_run.config().items():
        click.echo(f"  {key}: {json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value}")
    click.echo("")
    click.echo("\n".join(prompt_section(the_run)))
    click.echo(f"metrics: {info['metric']}, 95% bootstrap intervals; baseline = the task's manual template")
    click.echo("\n".join(metrics_table(rows)))
    click.echo("\nfiles:")
    for path in files:
        click.echo(f"  {path}")


@runs.command()
@click.argument("run_specs", metavar="RUN...", nargs=-1, required=True)
@_DIR
@click.option("--markdown", is_flag=True, help="Print a Markdown table, ready for a README.")
@_JSON
def compare(run_specs: tuple[str, ...], runs_dir: str, markdown: bool, as_json: bool) -> None:
    """Runs side by side, grouped by task: metric on dev and test with 95% intervals, baseline, time."""
    from autoprompt.runs import compare_markdown, compare_rows, find_run

    rows = compare_rows([find_run(spec, runs_dir) for spec in run_specs])
    if as_json:
        click.echo(json.dumps({"runs": rows}))
        return
    if markdown:
        click.echo(compare_markdown(rows), nl=False)
        return
    columns = ("task", "method", "id", "metric", "dev", "test", "test 95% CI", "baseline test", "work", "time")
    _echo_table(columns, [[_cell(row, c) for c in columns] for row in rows])


@runs.command()
@click.argument("run")
@_DIR
def report(run: str, runs_dir: str) -> None:
    """Write a run's report.md and PNGs again, from its files (no model needed)."""
    from autoprompt.runs import find_run, write_report

    click.echo(f"report: {write_report(find_run(run, runs_dir))}")


@click.command()
@click.argument("run")
@click.option("--format", "fmt", default="json", show_default=True,
              help="json (the native prompt file: the only one that keeps trigger ids), langchain (a LangChain "
                   "prompt file; YAML when FILE ends in .yaml), text (the template as plain text with {field} "
                   "placeholders) or promptfoo (promptfooconfig.yaml with the task's test split).")
@click.option("-o", "--output", default="-", show_default=True, help="The file to write ('-': stdout).")
@click.option("--task", default=None, help="promptfoo: the task whose test split becomes the test cases "
              "(default: the run's task, or the task the prompt file names).")
@_DIR
def export(run: str, fmt: str, output: str, task: str | None, runs_dir: str) -> None:
    """Export the prompt of RUN (a run folder or a prompt file) to another format."""
    from autoprompt.export import export_prompt
    from autoprompt.files import write_atomic

    text = export_prompt(run, fmt, runs_dir=runs_dir, task=task, yaml=output.endswith((".yaml", ".yml")))
    if output == "-":
        click.echo(text, nl=False)
        return
    write_atomic(Path(output), text)
    log.info("wrote %s", output)


def _cell(row: dict, column: str) -> str:
    from autoprompt.runs import format_interval, format_seconds, format_value

    if column in ("dev", "test"):
        return format_value(row[column])
    if column == "test 95% CI":
        return format_interval(row.get("test_interval")).strip() or "—"
    if column == "baseline test":
        return format_value(row["baseline_test"])
    if column == "time":
        return format_seconds(row["seconds"])
    return str(row.get(column) if row.get(column) is not None else "—")


def _echo_table(columns: tuple[str, ...], table: list[list[str]]) -> None:
    widths = [max(len(c), *(len(r[k]) for r in table)) for k, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in table:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
