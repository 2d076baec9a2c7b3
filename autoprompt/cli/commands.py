"""The commands around a search: evaluate, predict, labels, models, dashboard and bench."""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import click

from autoprompt.cli.options import model_options, resolve_task, task_options
from autoprompt.ensemble import Ensemble
from autoprompt.errors import AutoPromptError

log = logging.getLogger("autoprompt")


@click.command()
@click.argument("task")
@click.option("--prompt", "prompt_path", type=click.Path(dir_okay=False), help="A prompt file to evaluate instead of the task's manual prompt.")
@click.option("--split", type=click.Choice(["train", "dev", "test"]), default="dev", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Score only the first N examples.")
@click.option("--model", default=None, help="Model alias, folder, .gguf file or hub id (default: the prompt file's, else smollm2-135m).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the evaluated prompt, with its metrics, as a prompt file.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@model_options
@task_options
def evaluate(task: str, prompt_path: str | None, split: str, limit: int | None, model: str | None,
             output: str | None, as_json: bool, device: str | None, dtype: str | None, trust_remote_code: bool,
             **task_flags) -> None:
    """Score a prompt (the task's manual one by default) on a split of TASK.

    TASK is a built-in name (sst2, lama_p19, lama_p103), a task file (.py) or a data file (.csv, .tsv,
    .jsonl: --input, --label; split by seed 0, as optimize splits it)."""
    from autoprompt.models import DEFAULT_MODEL, load_model
    from autoprompt.predict import load_prompt
    from autoprompt.prompt import Prompt
    from autoprompt.prompt_file import PromptFile, save_prompt_file
    from autoprompt.scoring import evaluate as evaluate_prompt

    the_task = resolve_task(task, **task_flags)
    examples = the_task.examples(split)[:limit]
    if prompt_path:
        predictor = load_prompt(prompt_path, model=model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        lm, prompt = predictor.model, predictor.prompt
    else:
        lm = load_model(model or DEFAULT_MODEL, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        prompt = Prompt.from_task(the_task)
        if the_task.template != prompt.template:
            log.info("the task's [T] slots have no triggers yet: evaluating the template without them")
    ensemble = isinstance(prompt, Ensemble)
    prompt = prompt.for_model(lm.ref) if ensemble else replace(prompt, model=lm.ref)
    started = time.perf_counter()
    result = evaluate_prompt(lm, prompt, examples, metric=the_task.metric, progress=True)
    seconds = time.perf_counter() - started
    written = None
    if output:
        search = {"method": "manual" if not prompt_path else "evaluated", "source": prompt_path}
        written = str(save_prompt_file(PromptFile(prompt, task_name=the_task.name, metric=the_task.metric,
                                                  metrics={split: result.metrics}, search=search), output))
    template = prompt.best.template if ensemble else prompt.template  # (an ensemble's best member's)
    report = {"task": the_task.name, "split": split, "n_examples": len(examples), "model": lm.name,
              "template": template, "metrics": result.metrics, "seconds": round(seconds, 2),
              "prompt_file": written}
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(f"{the_task.name} [{split}, {len(examples)} examples] on {lm.name}: {seconds:.1f}s")
    click.echo(f"template: {template!r}" + (f" (the best of an ensemble of {len(prompt.members)})" if ensemble else ""))
    for name, value in result.metrics.items():
        click.echo(f"  {name:>20}: {value:.4f}")
    if written:
        click.echo(f"prompt file: {written}")


@click.command()
@click.argument("task")
@click.option("--model", default=None, help="Model alias, folder, .gguf file or hub id [default: smollm2-135m].")
@click.option("--top-k", type=click.IntRange(min=1), default=10, show_default=True, help="Words proposed per label.")
@click.option("--examples", type=click.IntRange(min=2), default=500, show_default=True, help="Train examples to fit on.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@model_options
def labels(task: str, model: str | None, top_k: int, examples: int, seed: int, as_json: bool,
           device: str | None, dtype: str | None, trust_remote_code: bool) -> None:
    """Propose label words for TASK (AutoPrompt's label search)."""
    from autoprompt.models import DEFAULT_MODEL, load_model
    from autoprompt.searches.labels import search_label_words
    from autoprompt.task import load_task

    the_task = load_task(task)
    lm = load_model(model or DEFAULT_MODEL, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    result = search_label_words(lm, the_task, n_examples=examples, top_k=top_k, seed=seed)
    if as_json:
        click.echo(json.dumps({"task": the_task.name, "model": lm.name, "train_accuracy": result.train_accuracy,
                               "words": result.words, "verbalizer": result.verbalizer(1)}))
        return
    click.echo(f"{the_task.name} on {lm.name}: classifier train accuracy {result.train_accuracy:.3f}")
    for label, ranked in result.words.items():
        click.echo(f"  {label}: " + ", ".join(f"{w} ({s:.2f})" for w, s in ranked))


@click.command()
@click.option("--prompt", "prompt_path", required=True, type=click.Path(dir_okay=False), help="The prompt file.")
@click.argument("source", default="-", type=click.Path(allow_dash=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default="-", help="JSONL out (default stdout).")
@click.option("--model", default=None, help="Use this model instead of the one the file names.")
@click.option("--allow-tokenizer-mismatch", is_flag=True, help="Use a model whose tokenizer differs from the file's.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True, help="Inputs scored at once.")
@model_options
def predict(prompt_path: str, source: str, output: str, model: str | None, allow_tokenizer_mismatch: bool,
            batch_size: int, device: str | None, dtype: str | None, trust_remote_code: bool) -> None:
    """Predict with a prompt file. SOURCE: JSONL objects or one text per line ('-': stdin)."""
    from autoprompt.files import write_atomic
    from autoprompt.predict import load_prompt

    predictor = load_prompt(prompt_path, model=model, device=device, dtype=dtype,
                            allow_tokenizer_mismatch=allow_tokenizer_mismatch, trust_remote_code=trust_remote_code)
    inputs = _read_inputs(source, predictor.prompt.fields)
    lines = []
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start : start + batch_size]
        if predictor.prompt.is_classification:
            for item, proba in zip(chunk, predictor.predict_proba(chunk), strict=True):
                lines.append({"input": item, "prediction": max(proba, key=proba.get), "probabilities": proba})
        else:
            lines.extend({"input": item, "prediction": p} for item, p in zip(chunk, predictor.predict(chunk), strict=True))
        if output == "-":
            for line in lines:
                click.echo(json.dumps(line, ensure_ascii=False))
            lines.clear()
    if output != "-":
        write_atomic(Path(output), "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
        log.info("wrote %d predictions to %s", len(lines), output)


def _read_inputs(source: str, fields: tuple[str, ...]) -> list:
    """Lines of JSON objects or plain text, each checked against the prompt's fields; blank lines skipped."""
    name = "<stdin>" if source == "-" else source
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise AutoPromptError(f"{name}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise AutoPromptError(f"{name}: not UTF-8 text") from None
    inputs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AutoPromptError(f"{name}:{number}: not valid JSON ({exc.msg})") from None
            missing = [f for f in fields if f not in item]
            if missing:
                raise AutoPromptError(f"{name}:{number}: missing field(s) {', '.join(missing)}; "
                                      f"the prompt takes {', '.join(fields)}")
        elif len(fields) != 1:
            raise AutoPromptError(f"{name}:{number}: a plain-text line needs a one-field prompt; this one takes "
                                  f"{', '.join(fields) or 'unknown fields'} (write a JSON object)")
        else:
            item = line
        inputs.append(item)
    return inputs


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def models(as_json: bool) -> None:
    """Built-in model aliases: installed or not, cached or not."""
    from autoprompt.models import cache_dir, model_status

    rows = model_status()
    if as_json:
        click.echo(json.dumps({"cache": str(cache_dir()), "models": rows}))
        return
    click.echo(f"{'alias':<16} {'installed':<10} {'cached':<7} description")
    for row in rows:
        click.echo(f"{row['alias']:<16} {'yes' if row['installed'] else 'no':<10} {'yes' if row['cached'] else 'no':<7} {row['description']}")
        if not row["installed"]:
            click.echo(f"{'':<16} install: {row['install']}")
    click.echo(f"cache: {cache_dir()}  (also: any Hugging Face model folder, hub id or .gguf file)")


@click.command()
@click.argument("run", type=click.Path(file_okay=False, exists=True))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
def dashboard(run: str, host: str, port: int) -> None:
    """Open optuna-dashboard on the study of a template or hybrid RUN."""
    from autoprompt.redaction import redact_url
    from autoprompt.runs import Run
    from autoprompt.searches import METHODS
    from autoprompt.storage import open_storage, study_storage

    method = Run.open(run).config().get("method")
    if method not in METHODS or not METHODS[method].has_study:
        studies = " and ".join(name for name, m in METHODS.items() if m.has_study)
        raise AutoPromptError(f"{run}: a {method} run has no Optuna study ({studies} runs do)")
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise AutoPromptError("the dashboard needs optuna-dashboard: pip install 'autoprompt[dashboard]'") from None
    url = study_storage(Run.open(run))
    click.echo(f"study storage: {redact_url(url)}; dashboard on http://{host}:{port}/ (Ctrl-C stops it)")
    run_server(open_storage(url), host=host, port=port)


@click.command()
@click.option("--model", default=None, help="Model alias, folder, .gguf file or hub id [default: smollm2-135m].")
@click.option("--task", "task_spec", default="sst2", show_default=True,
              help="A classification task (a trigger step), or a generation task (scoring and generating answers).")
@click.option("--candidates", type=click.IntRange(min=2), default=17, show_default=True,
              help="Trigger sequences scored per example (a default step: the current one and top_k=16 swaps).")
@click.option("--examples", type=click.IntRange(min=1), default=32, show_default=True, help="Examples each is scored on.")
@click.option("--rounds", type=click.IntRange(min=1), default=2, show_default=True,
              help="Engine/naive pairs, interleaved, each swapping another trigger slot.")
@click.option("--no-naive", is_flag=True, help="Skip the naive reference (it takes most of the time).")
@click.option("--all-dtypes", is_flag=True,
              help="Also measure bf16 where the CPU has bf16 units but the probe found it no faster than fp32.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Also write the JSON to this file.")
@model_options
def bench(model: str | None, task_spec: str, candidates: int, examples: int, rounds: int, no_naive: bool,
          all_dtypes: bool, seed: int,
          as_json: bool, output: str | None, device: str | None, dtype: str | None, trust_remote_code: bool) -> None:
    """Measure this machine: GEMM ceiling, the scoring engine against the naive way, one trigger step."""
    from autoprompt.bench import BenchConfig, run_bench
    from autoprompt.bench_table import format_table
    from autoprompt.files import write_atomic
    from autoprompt.models import DEFAULT_MODEL, load_model
    from autoprompt.task import load_task

    task = load_task(task_spec)
    if not task.is_classification and not task.is_generation:
        raise AutoPromptError(f"{task.name}: bench measures a classification task's trigger step (e.g. sst2) or a "
                              "generation task's scoring and generation (e.g. country_codes)")
    lm = load_model(model or DEFAULT_MODEL, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    cfg = BenchConfig(candidates=candidates, examples=examples, rounds=rounds, naive=not no_naive, seed=seed,
                      all_dtypes=all_dtypes)
    if task.is_generation:
        from autoprompt.bench_generation import format_generation_table, run_generation_bench

        result = run_generation_bench(lm, task, cfg)
        table = format_generation_table(result)
    else:
        result = run_bench(lm, task, cfg, progress=lambda msg: log.info("bench: %s", msg))
        table = format_table(result)
    if output:
        write_atomic(Path(output), json.dumps(result, indent=2) + "\n")
    click.echo(json.dumps(result, indent=2) if as_json else table)


@click.command()
@click.option("--copy", "copy_name", default=None, metavar="NAME",
              help="Copy a built-in task (its file and data) or an example data file into the current folder.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def tasks(copy_name: str | None, as_json: bool) -> None:
    """The built-in tasks and example data files: what each is and its splits."""
    from autoprompt.task import BUILTIN_TASKS, BUILTIN_TASKS_DIR, load_task

    examples = sorted(p.name for p in (BUILTIN_TASKS_DIR / "data").glob("*.csv"))
    if copy_name is not None:
        for written in _copy_builtin(copy_name, BUILTIN_TASKS_DIR, BUILTIN_TASKS, examples):
            click.echo(f"wrote {written}")
        return
    rows = []
    for name in BUILTIN_TASKS:
        task = load_task(name)
        kind = "labels" if task.verbalizer else "generation" if task.is_generation else "first word"
        rows.append({"name": name, "kind": kind, "metric": task.metric,
                     "splits": {s: len(e) for s, e in task.splits.items()}, "description": task.description})
    if as_json:
        click.echo(json.dumps({"tasks": rows, "examples": examples}))
        return
    for row in rows:
        sizes = ", ".join(f"{s} {n}" for s, n in row["splits"].items())
        click.echo(f"{row['name']:<16} {row['kind']:<10} {row['metric']:<11} {sizes:<32} {row['description']}")
    click.echo(f"example data files (autoprompt tasks --copy NAME): {', '.join(examples)}")


def _copy_builtin(name: str, folder: Path, builtin: tuple[str, ...], examples: list[str]) -> list[Path]:
    """Copy a built-in task file with its data folder, or an example data file, into the current folder."""
    import shutil

    if name in examples:
        pairs = [(folder / "data" / name, Path(name))]
    elif name.removesuffix(".py") in builtin:  # the task file and the data files its examples come from
        from autoprompt.task import load_task

        stem = name.removesuffix(".py")
        task = load_task(stem)
        files = sorted({Path(e.source.rsplit(":", 1)[0]) for examples in task.splits.values() for e in examples})
        pairs = [(folder / f"{stem}.py", Path(f"{stem}.py"))] + [(f, f.relative_to(folder)) for f in files]
    else:
        raise AutoPromptError(f"{name}: not a built-in task ({', '.join(builtin)}) or example file ({', '.join(examples)})")
    existing = [str(target) for _, target in pairs if target.exists()]
    if existing:
        raise AutoPromptError(f"{', '.join(existing)} already exists here; nothing was copied")
    for source, target in pairs:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return [target for _, target in pairs]
