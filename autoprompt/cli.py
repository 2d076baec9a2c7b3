"""The ``autoprompt`` command: a thin click layer over the library.

Every AutoPromptError becomes one line on stderr and exit code 2; commands that report
metrics take ``--json`` and then print exactly one JSON object on stdout.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import click

from autoprompt.errors import AutoPromptError

log = logging.getLogger("autoprompt")


class _TqdmHandler(logging.Handler):
    """Log lines that do not break progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be, so a run stops the same clean way."""


def _raise_terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the clean-up short
    raise _Terminated


def _close_progress_bars() -> None:
    """Bars an interrupt left open would redraw themselves below the last line at exit."""
    from tqdm.auto import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        in_main_thread = threading.current_thread() is threading.main_thread()  # (signals can only be set there)
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
        try:
            return super().invoke(ctx)
        except AutoPromptError as exc:
            message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            click.echo(f"error: {message}", err=True)
            ctx.exit(2)
        except click.UsageError as exc:  # a bad flag: the same one line, not click's usage block
            hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
            click.echo(f"error: {exc.format_message()}{hint}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt as exc:
            _close_progress_bars()
            terminated = isinstance(exc, _Terminated)
            click.echo("terminated" if terminated else "interrupted", err=True)
            ctx.exit(128 + (signal.SIGTERM if terminated else signal.SIGINT))
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.version_option(package_name="autoprompt")
def main(verbose: int, quiet: bool) -> None:
    """Find the prompt that makes a local language model do a labelled task best."""
    level = logging.WARNING if quiet else logging.INFO if verbose <= 1 else logging.DEBUG
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s" if verbose == 0 else "%(levelname)s %(name)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level if (verbose or quiet) else logging.INFO)
    log.propagate = False
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # transformers missing is reported where it is needed
        pass


def _model_options(f):
    f = click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default=None,
                     help="Weights' dtype (default: fp32; bf16 on CUDA for models of 1B+ parameters).")(f)
    f = click.option("--device", default=None, help="cuda, mps or cpu (default: the best there is).")(f)
    f = click.option("--trust-remote-code", is_flag=True, help="Run a hub model's own code (off by default).")(f)
    return f


@main.command()
@click.argument("task")
@click.option("--prompt", "prompt_path", type=click.Path(dir_okay=False), help="A prompt file to evaluate instead of the task's manual prompt.")
@click.option("--split", type=click.Choice(["train", "dev", "test"]), default="dev", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Score only the first N examples.")
@click.option("--model", default=None, help="Model alias, folder, .gguf file or hub id (default: the prompt file's, else smollm2-135m).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the evaluated prompt, with its metrics, as a prompt file.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@_model_options
def evaluate(task: str, prompt_path: str | None, split: str, limit: int | None, model: str | None,
             output: str | None, as_json: bool, device: str | None, dtype: str | None, trust_remote_code: bool) -> None:
    """Score a prompt (the task's manual one by default) on a split of TASK.

    TASK is a task file (tasks/sst2.py) or a built-in name (sst2, lama_p19, lama_p103)."""
    from autoprompt.models import DEFAULT_MODEL, load_model
    from autoprompt.predict import load_prompt
    from autoprompt.prompt import Prompt
    from autoprompt.prompt_file import PromptFile, save_prompt_file
    from autoprompt.scoring import evaluate as evaluate_prompt
    from autoprompt.task import load_task

    the_task = load_task(task)
    examples = the_task.examples(split)[:limit]
    if prompt_path:
        predictor = load_prompt(prompt_path, model=model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        lm, prompt = predictor.model, predictor.prompt
    else:
        lm = load_model(model or DEFAULT_MODEL, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        prompt = Prompt.from_task(the_task)
        if the_task.template != prompt.template:
            log.info("the task's [T] slots have no triggers yet: evaluating the template without them")
    prompt = replace(prompt, model=lm.ref)
    started = time.perf_counter()
    result = evaluate_prompt(lm, prompt, examples, metric=the_task.metric, progress=True)
    seconds = time.perf_counter() - started
    written = None
    if output:
        search = {"method": "manual" if not prompt_path else "evaluated", "source": prompt_path}
        written = str(save_prompt_file(PromptFile(prompt, task_name=the_task.name, metric=the_task.metric,
                                                  metrics={split: result.metrics}, search=search), output))
    report = {"task": the_task.name, "split": split, "n_examples": len(examples), "model": lm.name,
              "template": prompt.template, "metrics": result.metrics, "seconds": round(seconds, 2),
              "prompt_file": written}
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(f"{the_task.name} [{split}, {len(examples)} examples] on {lm.name}: {seconds:.1f}s")
    click.echo(f"template: {prompt.template!r}")
    for name, value in result.metrics.items():
        click.echo(f"  {name:>20}: {value:.4f}")
    if written:
        click.echo(f"prompt file: {written}")


class _Duration(click.ParamType):
    """Seconds, or a number with s, m or h: 90, 90s, 10m, 1.5h."""

    name = "duration"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return float(value)
        text = str(value).strip().lower()
        scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:], None)
        try:
            seconds = float(text[:-1] if scale else text) * (scale or 1)
        except ValueError:
            self.fail(f"{value!r} is not a duration (e.g. 90s, 10m, 1h)", param, ctx)
        if seconds <= 0:
            self.fail(f"{value!r} must be positive", param, ctx)
        return seconds


def _config_options(cls):
    """click options generated from a config dataclass: help and defaults come from its fields."""
    import dataclasses

    def decorate(f):
        for fld in reversed(dataclasses.fields(cls)):
            flag = "--" + fld.name.replace("_", "-")
            meta = fld.metadata
            kind = str(fld.type)
            if kind == "bool":
                option = click.option(f"{flag}/--no-{flag[2:]}", fld.name, default=None, help=meta.get("help"))
            else:
                if "choices" in meta:
                    ptype = click.Choice(meta["choices"])
                elif fld.name == "time_budget":
                    ptype = _Duration()
                elif kind.startswith("int"):
                    ptype = click.IntRange(min=meta.get("min", 1))
                elif kind.startswith("float"):
                    ptype = click.FloatRange(min=0, min_open=True)
                else:
                    ptype = str
                option = click.option(flag, fld.name, type=ptype, default=None, envvar=meta.get("envvar"),
                                      help=f"{meta.get('help', '')} [default: {fld.default}]")
            f = option(f)
        return f

    return decorate


@main.command()
@click.argument("task")
@click.option("--method", type=click.Choice(["trigger", "template", "hybrid"]), default="trigger", show_default=True,
              help="trigger: gradient-guided trigger tokens; template: Optuna search over a --space; "
                   "hybrid: template search, then triggers inside the winner.")
@click.option("--model", default=None, help="Model alias, folder, .gguf file or hub id [default: smollm2-135m].")
@click.option("--resume", type=click.Path(file_okay=False, exists=True), default=None, help="Continue this run folder.")
@click.option("--runs-dir", type=click.Path(file_okay=False), default="runs", show_default=True)
@click.option("--search-labels", is_flag=True, help="First search label words; use the best one per label.")
@click.option("--seeds", default=None, help="Run the search once per seed (e.g. 0,1,2), one run folder each, and "
              "report mean ± std; the summary goes to RUNS_DIR/<first run>-seeds.json and .md.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@_model_options
@_config_options(__import__("autoprompt.trigger_search", fromlist=["TriggerSearchConfig"]).TriggerSearchConfig)
@_config_options(__import__("autoprompt.template_search", fromlist=["TemplateSearchConfig"]).TemplateSearchConfig)
def optimize(task: str, method: str, model: str | None, resume: str | None, runs_dir: str, search_labels: bool,
             seeds: str | None, as_json: bool, device: str | None, dtype: str | None, trust_remote_code: bool,
             **settings) -> None:
    """Search for a better prompt for TASK and save it in a run folder."""
    from autoprompt.models import DEFAULT_MODEL, load_model
    from autoprompt.optimize import optimize as run_optimize
    from autoprompt.optimize import optimize_seeds
    from autoprompt.runs import Run
    from autoprompt.task import load_task
    from autoprompt.template_search import TemplateSearchConfig
    from autoprompt.trigger_search import TriggerSearchConfig

    seed_list = _parse_seeds(seeds, settings.get("seed"), resume) if seeds is not None else None
    ctx = click.get_current_context()
    given = {k: v for k, v in settings.items()  # flags on the command line ($AUTOPROMPT_STORAGE is a default)
             if v is not None and ctx.get_parameter_source(k) != click.core.ParameterSource.ENVIRONMENT}
    if resume is not None:
        saved = Run.open(resume).config()
        if ctx.get_parameter_source("method") != click.core.ParameterSource.DEFAULT \
                and method != saved.get("method", method):
            raise AutoPromptError(f"--resume {resume}: that run is a {saved.get('method')} run, not {method}")
        model = model or saved.get("model")
        method = saved.get("method", method)
        _check_resume_flags(given, search_labels, resume)
        if "storage" in given and not (saved.get("template_search") or {}).get("storage"):
            raise AutoPromptError(f"--resume {resume}: that run keeps its study in its own study.db; "
                                  "--storage names a shared one")
    else:
        _check_method_flags(method, given, search_labels)
    the_task = load_task(task)
    template_names = {f.name for f in dataclasses.fields(TemplateSearchConfig)}
    every = {k: v for k, v in settings.items() if v is not None}
    config = TriggerSearchConfig(**{k: v for k, v in every.items() if k not in template_names})
    template_config = TemplateSearchConfig(**{k: v for k, v in every.items() if k in template_names})
    if method in ("template", "hybrid") and resume is None:
        from autoprompt.space import load_space

        load_space(template_config.space).for_task(the_task)  # a bad space or storage fails before the model loads
        if template_config.storage:
            from autoprompt.storage import open_storage

            open_storage(template_config.storage)
    lm = load_model(model or DEFAULT_MODEL, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    options = {"runs_dir": runs_dir, "search_labels": search_labels, "progress": True, "method": method,
               "template_config": template_config}
    if seed_list is not None:
        results, summary_path = optimize_seeds(the_task, config, lm, seed_list, **options)
        _print_seeds(results, summary_path, the_task, method, lm.name, as_json)
        return
    result = run_optimize(the_task, config, lm, resume=resume, **options)
    report = _result_report(result, the_task, method, lm.name)
    if as_json:
        click.echo(json.dumps(report))
        return
    metric = the_task.metric
    if method != "trigger":
        p = result.prompt
        click.echo(f"template: {p.template!r}  instruction: {p.instruction!r}  demonstrations: {len(p.demonstrations)}"
                   f"  chat: {p.chat}  calibrated: {bool(p.calibration)}")
        if p.verbalizer:
            click.echo(f"verbalizer: {p.verbalizer}")
    if result.prompt.trigger_tokens:
        click.echo(f"triggers: {list(result.prompt.trigger_tokens)}")
    if result.train:
        click.echo(f"  train {metric}: {result.train['metrics'][metric]:.4f}  (manual template: "
                   f"{result.train['baseline'][metric]:.4f}; {result.train['examples']} examples)")
    for split in result.metrics:
        click.echo(f"  {split:>5} {metric}: {result.metrics[split][metric]:.4f}  "
                   f"(manual template: {result.baseline[split][metric]:.4f})")
    click.echo(f"run folder: {result.run_dir}")
    click.echo(f"prompt file: {result.prompt_file}")
    click.echo(f"report: {result.report}")


RUN_SETTINGS = ("seed", "time_budget")  # every method's; the rest belong to one search


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_method_flags(method: str, given: dict, search_labels: bool) -> None:
    """A flag the chosen method would ignore is an error, not a silent no-op."""
    from autoprompt.template_search import TemplateSearchConfig
    from autoprompt.trigger_search import TriggerSearchConfig

    users = {name: ("trigger", "hybrid") for name in (f.name for f in dataclasses.fields(TriggerSearchConfig))}
    users |= {name: ("template", "hybrid") for name in (f.name for f in dataclasses.fields(TemplateSearchConfig))}
    users |= {name: ("trigger", "template", "hybrid") for name in RUN_SETTINGS}
    users["search_labels"] = ("trigger",)
    unused = [name for name in [*given, *(["search_labels"] if search_labels else [])] if method not in users[name]]
    if unused:
        which = " or ".join(users[unused[0]])
        raise AutoPromptError(f"--method {method} does not use {', '.join(map(_flag, unused))} "
                              f"({_flag(unused[0])} is a setting of --method {which})")


def _check_resume_flags(given: dict, search_labels: bool, resume: str) -> None:
    """--resume continues a run with its saved settings; only the storage URL (its password is never saved) is given again."""
    changed = [_flag(name) for name in given if name not in ("storage",)] + (["--search-labels"] if search_labels else [])
    if changed:
        raise AutoPromptError(f"--resume {resume} continues the run with the settings it was started with; "
                              f"{', '.join(changed)} cannot change them (start a new run instead)")


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
    """What optimize --json prints of a run."""
    return {"task": task.name, "method": method, "model": model, "run": str(result.run_dir),
            "prompt_file": str(result.prompt_file), "template": result.prompt.template,
            "instruction": result.prompt.instruction, "demonstrations": len(result.prompt.demonstrations),
            "chat": result.prompt.chat, "calibrated": bool(result.prompt.calibration),
            "triggers": list(result.prompt.trigger_tokens), "verbalizer": result.prompt.verbalizer,
            "metrics": result.metrics, "baseline": result.baseline, "train": result.train,
            "report": str(result.report), "seconds": round(result.seconds, 1)}


def _print_seeds(results, summary_path: Path, task, method: str, model: str, as_json: bool) -> None:
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    if as_json:
        click.echo(json.dumps({"summary": summary, "summary_file": str(summary_path),
                               "runs": [_result_report(r, task, method, model) for r in results]}))
        return
    from autoprompt.runs import format_value

    metric = task.metric
    for row, result in zip(summary["runs"], results, strict=True):
        click.echo(f"seed {row['seed']}: dev {metric} {format_value(row['dev'])}, test {format_value(row['test'])}"
                   f"  ({result.run_dir})")
    for split in ("dev", "test"):
        if split in summary:
            click.echo(f"  {split:>4} {metric}: {summary[split]['mean']:.4f} ± {summary[split]['std']:.4f} "
                       f"(mean ± std over {summary[split]['n']} seeds)")
    click.echo(f"summary: {summary_path} and {summary_path.with_suffix('.md')}")


@main.command()
@click.argument("task")
@click.option("--model", default=None, help="Model alias, folder, .gguf file or hub id [default: smollm2-135m].")
@click.option("--top-k", type=click.IntRange(min=1), default=10, show_default=True, help="Words proposed per label.")
@click.option("--examples", type=click.IntRange(min=2), default=500, show_default=True, help="Train examples to fit on.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@_model_options
def labels(task: str, model: str | None, top_k: int, examples: int, seed: int, as_json: bool,
           device: str | None, dtype: str | None, trust_remote_code: bool) -> None:
    """Propose label words for TASK (AutoPrompt's label search)."""
    from autoprompt.label_search import search_label_words
    from autoprompt.models import DEFAULT_MODEL, load_model
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


@main.command()
@click.option("--prompt", "prompt_path", required=True, type=click.Path(dir_okay=False), help="The prompt file.")
@click.argument("source", default="-", type=click.Path(allow_dash=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default="-", help="JSONL out (default stdout).")
@click.option("--model", default=None, help="Use this model instead of the one the file names.")
@click.option("--allow-tokenizer-mismatch", is_flag=True, help="Use a model whose tokenizer differs from the file's.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True, help="Inputs scored at once.")
@_model_options
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


@main.command()
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


@main.command()
@click.argument("run", type=click.Path(file_okay=False, exists=True))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
def dashboard(run: str, host: str, port: int) -> None:
    """Open optuna-dashboard on the study of a template or hybrid RUN."""
    from autoprompt.redaction import redact_url
    from autoprompt.runs import Run
    from autoprompt.storage import open_storage, study_storage

    config = Run.open(run).config()
    if config.get("method") not in ("template", "hybrid"):
        raise AutoPromptError(f"{run}: a {config.get('method')} run has no Optuna study (template and hybrid runs do)")
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise AutoPromptError("the dashboard needs optuna-dashboard: pip install 'autoprompt[dashboard]'") from None
    url = study_storage(Run.open(run))
    click.echo(f"study storage: {redact_url(url)}; dashboard on http://{host}:{port}/ (Ctrl-C stops it)")
    run_server(open_storage(url), host=host, port=port)


@main.command()
@click.option("--model", default=None, help="Model alias, folder, .gguf file or hub id [default: smollm2-135m].")
@click.option("--task", "task_spec", default="sst2", show_default=True, help="A classification task (name or file).")
@click.option("--candidates", type=click.IntRange(min=2), default=17, show_default=True,
              help="Trigger sequences scored per example (a default step: the current one and top_k=16 swaps).")
@click.option("--examples", type=click.IntRange(min=1), default=32, show_default=True, help="Examples each is scored on.")
@click.option("--rounds", type=click.IntRange(min=1), default=2, show_default=True,
              help="Engine/naive pairs, interleaved, each swapping another trigger slot.")
@click.option("--no-naive", is_flag=True, help="Skip the naive reference (it takes most of the time).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Also write the JSON to this file.")
@_model_options
def bench(model: str | None, task_spec: str, candidates: int, examples: int, rounds: int, no_naive: bool, seed: int,
          as_json: bool, output: str | None, device: str | None, dtype: str | None, trust_remote_code: bool) -> None:
    """Measure this machine: GEMM ceiling, the scoring engine against the naive way, one trigger step."""
    from autoprompt.bench import BenchConfig, format_table, run_bench
    from autoprompt.files import write_atomic
    from autoprompt.models import DEFAULT_MODEL, load_model
    from autoprompt.task import load_task

    task = load_task(task_spec)
    if not task.is_classification:
        raise AutoPromptError(f"{task.name}: bench measures a classification task's trigger step (e.g. sst2)")
    lm = load_model(model or DEFAULT_MODEL, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    cfg = BenchConfig(candidates=candidates, examples=examples, rounds=rounds, naive=not no_naive, seed=seed)
    result = run_bench(lm, task, cfg, progress=lambda msg: log.info("bench: %s", msg))
    if output:
        write_atomic(Path(output), json.dumps(result, indent=2) + "\n")
    click.echo(json.dumps(result, indent=2) if as_json else format_table(result))


from autoprompt.cli_runs import export, runs  # noqa: E402 - registered after main exists

main.add_command(runs)
main.add_command(export)

if __name__ == "__main__":
    main()
