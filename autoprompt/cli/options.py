"""Options several commands share, and the optimize command's options made from the search
methods' config dataclasses (their help and defaults come from the fields)."""

from __future__ import annotations

import dataclasses

import click

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
    elif kind.startswith("float"):
        ptype = click.FloatRange(min=0, min_open=True)
    else:
        ptype = str
    return click.option(flag, fld.name, type=ptype, default=None, envvar=meta.get("envvar"),
                        help=f"{meta.get('help', '')} [default: {fld.default}]")
