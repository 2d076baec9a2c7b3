"""Options several commands share, and the optimize command's options made from the search
methods' config dataclasses (their help and defaults come from the fields)."""

from __future__ import annotations

import dataclasses

import click

from autoprompt.errors import AutoPromptError
from autoprompt.searches import METHODS, RunSettings, fields_of


def model_options(f):
    f = click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default=None,
                     help="Weights' dtype (default: fp32; bf16 on CUDA for models of 1B+ parameters).")(f)
    f = click.option("--device", default=None, help="cuda, mps or cpu (default: the best there is).")(f)
    f = click.option("--trust-remote-code", is_flag=True, help="Run a hub model's own code (off by default).")(f)
    return f


class Duration(click.ParamType):
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


def setting_fields() -> dict[str, tuple[dataclasses.Field, tuple[str, ...]]]:
    """Every setting a run can take: its field, and the methods that use it (all, for RunSettings')."""
    out: dict[str, tuple[dataclasses.Field, tuple[str, ...]]] = {
        name: (f, tuple(METHODS)) for name, f in fields_of(RunSettings).items()}
    for method in METHODS.values():
        for name, f in fields_of(method.config).items():
            users = out[name][1] if name in out else ()
            out[name] = (out[name][0] if name in out else f, (*users, method.name))
    return out


def setting_options(f):
    """One click option per setting (None unless given, so a given flag can be told from a default)."""
    for fld, _ in reversed(setting_fields().values()):
        f = _option(fld)(f)
    return f


def _option(fld: dataclasses.Field):
    flag, meta, kind = "--" + fld.name.replace("_", "-"), fld.metadata, str(fld.type)
    if kind == "bool":
        return click.option(f"{flag}/--no-{flag[2:]}", fld.name, default=None, help=meta.get("help"))
    if "choices" in meta:
        ptype = click.Choice(meta["choices"])
    elif fld.name == "time_budget":
        ptype = Duration()
    elif kind.startswith("int"):
        ptype = click.IntRange(min=meta.get("min", 1))
    elif meta.get("share"):  # a fraction in [0, 1): a confidence, a share of dev
        ptype = click.FloatRange(min=0, max=1, max_open=True)
    elif kind.startswith("float"):  # positive, or from a given min on (lora_dropout: 0 is no dropout)
        ptype = click.FloatRange(min=meta.get("min", 0), min_open="min" not in meta)
    else:
        ptype = str
    return click.option(flag, fld.name, type=ptype, default=None, envvar=meta.get("envvar"),
                        help=f"{meta.get('help', '')} [default: {fld.default}]")


TASK_FLAGS = ("inputs", "label", "answer", "template", "verbalizer", "metric", "dev_file", "test_file",
              "split_fractions")


def task_options(f):
    """TASK as a built-in name, a task file, or a data file (.csv, .tsv, .jsonl) read with these flags."""
    options = [
        click.option("--input", "inputs", multiple=True, help="A data file's input column (repeat for several; "
                     "default: every column but the label or answer)."),
        click.option("--label", default=None, help="A data file's label column: a classification task [default: label]."),
        click.option("--answer", default=None, help="A data file's answer column instead: answers the model "
                     "generates (extraction, normalisation, short answers)."),
        click.option("--template", default=None, help="The task's template (default: the task's own; for a data file "
                     "one 'Column: {column}' line per input, then 'Label:[P]')."),
        click.option("--verbalizer", default=None, help="A data file's label words: LABEL=WORD[|WORD],... "
                     "(default: each label is its own word)."),
        click.option("--metric", type=click.Choice(["accuracy", "macro_f1", "precision@1", "exact_match", "token_f1",
                                                    "contains"]), default=None,
                     help="A data file's metric [default: accuracy for labels; exact_match for generated answers; "
                     "precision@1 judges only an answer's first token]."),
        click.option("--dev", "dev_file", default=None, help="A data file of dev examples (else split from TASK)."),
        click.option("--test", "test_file", default=None, help="A data file of test examples (else split from TASK)."),
        click.option("--fractions", "split_fractions", default=None,
                     help="Train,dev,test fractions a data file is split in [default: 0.6,0.2,0.2], stratified by label."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def resolve_task(spec: str, *, inputs=(), label=None, answer=None, template=None, verbalizer=None, metric=None,
                 dev_file=None, test_file=None, split_fractions=None, seed: int = 0):
    """The task TASK names, with the task flags applied (the data-file ones only to a data file)."""
    from autoprompt.data_task import DEFAULT_SPLIT, DataTaskSpec, is_data_file, parse_verbalizer, task_from_data
    from autoprompt.task import load_task

    data_flags = {"--input": inputs, "--label": label, "--answer": answer, "--verbalizer": verbalizer,
                  "--metric": metric, "--dev": dev_file, "--test": test_file, "--fractions": split_fractions}
    if not is_data_file(spec):
        given = [flag for flag, value in data_flags.items() if value]
        if given:
            raise AutoPromptError(f"{', '.join(given)} read a data file (.csv, .tsv, .jsonl); {spec} is a task")
        task = load_task(spec)
        if template:
            task = dataclasses.replace(task, template=template)
            task.validate()
        return task
    return task_from_data(spec, DataTaskSpec(
        inputs=tuple(inputs), label=label, answer=answer, template=template,
        verbalizer=parse_verbalizer(verbalizer) if verbalizer else None, metric=metric, dev=dev_file, test=test_file,
        split=_fractions(split_fractions) if split_fractions else DEFAULT_SPLIT, seed=seed))


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise AutoPromptError(f"--fractions {text!r}: three fractions for train, dev and test, e.g. 0.6,0.2,0.2")
    return values
