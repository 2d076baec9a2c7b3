"""``autoprompt demos``: which demonstrations, how many — a thin wrapper over ``autoprompt.study_demonstrations``."""

from __future__ import annotations

import dataclasses
import json

import click

from autoprompt.cli.options import model_options, resolve_task, task_options
from autoprompt.demo_study import SPLITS, DemoStudyConfig
from autoprompt.space import ORDERS


def _help(name: str) -> str:
    return next(f.metadata["help"] for f in dataclasses.fields(DemoStudyConfig) if f.name == name)


@click.command("demos")
@click.argument("task")
@click.option("--k", "k", default="0,1,2,4,8,16", show_default=True, help=_help("k"))
@click.option("--selections", default="random,balanced,similar,balanced_similar", show_default=True,
              help=_help("selections"))
@click.option("--seeds", default="0,1,2", show_default=True, help=_help("seeds"))
@click.option("--split", type=click.Choice(SPLITS), default="dev", show_default=True,
              help=_help("split"))
@click.option("--limit", type=click.IntRange(min=1), default=None, help=_help("limit"))
@click.option("--order", type=click.Choice(ORDERS), default="shuffled", show_default=True,
              help=_help("order"))
@click.option("--model", default=None, help="Model alias, folder, .gguf file or hub id [default: smollm2-135m].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@model_options
@task_options
def demos(task: str, k: str, selections: str, seeds: str, split: str, limit: int | None, order: str,
          model: str | None, as_json: bool, device: str | None, dtype: str | None, trust_remote_code: bool,
          **task_flags) -> None:
    """Score TASK's own template and verbalizer with k demonstrations of each selection, once per seed (no
    search): a table of the metric's mean ± std over seeds, selection by k.

    TASK is a built-in task, a task file (.py) or a data file (.csv, .tsv, .jsonl; --input, --label)."""
    from autoprompt.demo_study import study_demonstrations
    from autoprompt.models import DEFAULT_MODEL, load_model

    config = DemoStudyConfig(k=k, selections=selections, seeds=seeds, split=split, limit=limit, order=order)
    the_task = resolve_task(task, **task_flags)
    lm = load_model(model or DEFAULT_MODEL, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    study = study_demonstrations(lm, the_task, config, progress=True)  # (on stderr: --json keeps stdout one object)
    if as_json:
        click.echo(json.dumps(study.to_dict()))
        return
    click.echo(f"{study.task} [{study.split}, {study.n_examples} examples] on {study.model}: {study.metric}, "
               f"mean ± std over seeds {','.join(map(str, config.seeds))} ({study.seconds:.0f}s)")
    for line in study.table():
        click.echo(line)
