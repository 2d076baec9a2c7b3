"""``autoprompt optimize``: its options come from the search methods' registry (one config
dataclass each, and the run's settings), a flag the chosen method does not use is an error, and
the search itself is ``autoprompt.optimize`` (the same call as the Python API's)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from autoprompt.cli.options import (
    TASK_FLAGS,
    model_options,
    resolve_task,
    setting_fields,
    setting_options,
    task_options,
)
from autoprompt.ensemble import Ensemble
from autoprompt.errors import AutoPromptError
from autoprompt.searches import METHODS, RunSettings, config_from, fields_of


@click.command()
@click.argument("task")
@click.option("--method", type=click.Choice(list(METHODS)), default="template", show_default=True,
              help="; ".join(f"{name}: {m.help}" for name, m in METHODS.items()) + ".")
@click.option("--model", default=None, help="Model alias, folder, .gguf file or hub id [default: smollm2-135m].")
@click.option("--resume", type=click.Path(file_okay=False, exists=True), default=None, help="Continue this run folder.")
@click.option("--runs-dir", type=click.Path(file_okay=False), default="runs", show_default=True)
@click.option("--search-labels", is_flag=True, help="First search label words; use the best one per label.")
@click.option("--seeds", default=None, help="Run the search once per seed (e.g. 0,1,2), one run folder each, and "
              "report mean ± std; the summary goes to RUNS_DIR/<first run>-seeds.json and .md.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Also write the found prompt file here (it is always in the run folder).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@model_options
@task_options
@setting_options
def optimize(task: str, method: str, model: str | None, resume: str | None, runs_dir: str, search_labels: bool,
             seeds: str | None, output: str | None, as_json: bool, device: str | None, dtype: str | None, trust_remote_code: bool,
             **settings) -> None:
    """Search for a better prompt for TASK and save it in a run folder.

    TASK is a built-in task (sst2, lama_p19, lama_p103), a task file (.py), or a data file (.csv, .tsv,
    .jsonl) with an input and a label column (--input, --label; one file is split into train, dev and test)."""
    from autoprompt.models import DEFAULT_MODEL, load_model
    from autoprompt.optimizer import optimize as run_optimize
    from autoprompt.optimizer import optimize_seeds
    from autoprompt.runs import Run

    if output and seeds is not None:
        raise AutoPromptError("--output takes one run's prompt file; with --seeds each run folder has its own")
    task_flags = {name: settings.pop(name) for name in TASK_FLAGS}
    seed_list = _parse_seeds(seeds, settings.get("seed"), resume) if seeds is not None else None
    ctx = click.get_current_context()
    given = {k: v for k, v in settings.items()  # flags on the command line ($AUTOPROMPT_STORAGE is a default)
             if v is not None and ctx.get_parameter_source(k) != click.core.ParameterSource.ENVIRONMENT}
    if resume is not None:
        method, model = _resume_method(resume, method, model, given, search_labels, ctx)
    else:
        _check_method_flags(method, {**given, **({"search_labels": True} if search_labels else {})})
    split_seed = settings.get("seed") or 0 if resume is None else Run.open(resume).seed() or 0  # a data file's split
    the_task = resolve_task(task, seed=split_seed, **task_flags)
    spec = METHODS[method]
    every = {k: v for k, v in settings.items() if v is not None}
    config = config_from(spec.config, {k: v for k, v in every.items() if k in fields_of(spec.config)})
    run_settings = RunSettings(**{k: v for k, v in every.items() if k in fields_of(RunSettings)})
    if resume is None:
        spec.check_settings(the_task, config)  # a bad space fails before the model loads
    lm = load_model(model or DEFAULT_MODEL, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    options = {"method": method, "config": config, "runs_dir": runs_dir, "search_labels": search_labels,
               "time_budget": run_settings.time_budget, "confidence": run_settings.confidence,
               "holdout": run_settings.holdout, "progress": True}
    if seed_list is not None:
        results, summary_path = optimize_seeds(the_task, lm, seed_list, **options)
        _print_seeds(results, summary_path, the_task, method, lm.name, as_json)
        return
    result = run_optimize(the_task, lm, seed=run_settings.seed, resume=resume, **options)
    if output:
        result = dataclasses.replace(result, prompt_file=result.save(output))
    _print_result(result, the_task, method, lm.name, as_json)


def _resume_method(resume: str, method: str, model: str | None, given: dict, search_labels: bool, ctx):
    """The method and model of the run to continue; --resume takes no setting but the storage URL again
    (its password is never saved)."""
    from autoprompt.runs import Run

    run = Run.open(resume)
    saved = run.config()
    if ctx.get_parameter_source("method") != click.core.ParameterSource.DEFAULT and method != saved.get("method"):
        raise AutoPromptError(f"--resume {resume}: that run is a {saved.get('method')} run, not {method}")
    changed = [_flag(name) for name in given if name != "storage"] + (["--search-labels"] if search_labels else [])
    if changed:
        raise AutoPromptError(f"--resume {resume} continues the run with the settings it was started with; "
                              f"{', '.join(changed)} cannot change them (start a new run instead)")
    if "storage" in given and not run.settings().get("storage"):
        raise AutoPromptError(f"--resume {resume}: that run keeps its study in its own study.db; "
                              "--storage names a shared one")
    return saved.get("method", method), model or saved.get("model")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_method_flags(method: str, given: dict) -> None:
    """A flag the chosen method would ignore is an error, not a silent no-op."""
    users = {name: methods for name, (_, methods) in setting_fields().items()}
    users["search_labels"] = tuple(name for name, m in METHODS.items() if m.label_search)
    unused = [name for name in given if method not in users[name]]
    if unused:
        which = " or ".join(users[unused[0]])
        raise AutoPromptError(f"--method {method} does not use {', '.join(map(_flag, unused))} "
                              f"({_flag(unused[0])} is a setting of --method {which})")


def _print_result(result, task, method: str, model: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(_result_report(result, task, method, model)))
        return
    metric, p = task.metric, result.prompt
    if isinstance(p, Ensemble):  # its best member is shown
        click.echo(f"ensemble of the best {len(p.members)} prompts ({p.combine}); the best one:")
        p = p.best
    if method != "trigger":
        click.echo(f"template: {p.template!r}  instruction: {p.instruction!r}  demonstrations: {len(p.demonstrations)}"
                   f"  chat: {p.chat}  calibrated: {bool(p.calibration)}")
        if p.verbalizer:
            click.echo(f"verbalizer: {p.verbalizer}")
    if p.trigger_tokens:
        click.echo(f"triggers: {list(p.trigger_tokens)}")
    if result.kept_baseline:
        click.echo(f"kept the task's own prompt: {result.kept_baseline}")
    if result.train:
        click.echo(f"  train {metric}: {result.train['metrics'][metric]:.4f}  (manual template: "
                   f"{result.train['baseline'][metric]:.4f}; {result.train['examples']} examples)")
    for split in result.metrics:
        click.echo(f"  {split:>9} {metric}: {result.metrics[split][metric]:.4f}  "
                   f"(manual template: {result.baseline[split][metric]:.4f})")
    click.echo(f"run folder: {result.run_dir}")
    click.echo(f"prompt file: {result.prompt_file}")
    click.echo(f"report: {result.report}")


def _parse_seeds(text: str, seed: int | None, resume: str | None) -> list[int]:
    if seed is not None or resume is not None:
        raise AutoPromptError(f"--seeds cannot go with {'--seed' if seed is not None else '--resume'}")
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise AutoPromptError(f"--seeds {text!r}: expected distinct seeds >= 0 separated by commas, e.g. 0,1,2")
    return seeds


def _result_report(result, task, method: str, model: str) -> dict:
    """What optimize --json prints of a run (of an ensemble: its best member's prompt, and "ensemble")."""
    ensemble = result.prompt if isinstance(result.prompt, Ensemble) else None
    p = ensemble.best if ensemble else result.prompt
    return {"task": task.name, "method": method, "model": model, "run": str(result.run_dir),
            "prompt_file": str(result.prompt_file), "template": p.template,
            "instruction": p.instruction, "demonstrations": len(p.demonstrations),
            "chat": p.chat, "calibrated": bool(p.calibration),
            "triggers": list(p.trigger_tokens), "verbalizer": p.verbalizer,
            "ensemble": {"k": len(ensemble.members), "combine": ensemble.combine} if ensemble else None,
            "metrics": result.metrics, "baseline": result.baseline, "train": result.train,
            "report": str(result.report), "seconds": round(result.seconds, 1), "kept_baseline": result.kept_baseline}


def _print_seeds(results, summary_path: Path, task, method: str, model: str, as_json: bool) -> None:
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    if as_json:
        click.echo(json.dumps({"summary": summary, "summary_file": str(summary_path),
                               "runs": [_result_report(r, task, method, model) for r in results]}))
        return
    from autoprompt.runs import format_value

    metric = task.metric
    for row, result in zip(summary["runs"], results, strict=True):
        untouched = f", untouched dev {format_value(row['untouched'])}" if row.get("untouched") is not None else ""
        click.echo(f"seed {row['seed']}: dev {metric} {format_value(row['dev'])}{untouched}, "
                   f"test {format_value(row['test'])}  ({result.run_dir})")
    for split in ("dev", "untouched", "test"):
        if split in summary:
            click.echo(f"  {split:>9} {metric}: {summary[split]['mean']:.4f} ± {summary[split]['std']:.4f} "
                       f"(mean ± std over {summary[split]['n']} seeds)")
    click.echo(f"summary: {summary_path} and {summary_path.with_suffix('.md')}")
