"""Prompt files: a Prompt on disk as versioned JSON, validated completely before use.

v1 is a prompt alone; v2 adds "adapter": the learned tensors the prompt runs with (a soft prompt,
LoRA weights), in a safetensors file beside the prompt file, named there with its sha256 and the
fingerprint of the base model's weights. A v1 file is written whenever there is no adapter, so
every prompt file of the earlier kinds reads (and is written) as before. v3 is an ensemble
(autoprompt.ensemble): "members", each a whole v1 prompt object validated as one, and "combine"."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoprompt.adapter import KINDS, Adapter, read_adapter, write_adapter
from autoprompt.answers import DEFAULT_NORMALIZE, NORMALIZE_STEPS, Generation
from autoprompt.data import Example
from autoprompt.ensemble import Ensemble
from autoprompt.errors import AutoPromptError, PromptFileError, TemplateError
from autoprompt.files import write_atomic
from autoprompt.prompt import ModelRef, Prompt
from autoprompt.template import parse_template

FORMAT = "autoprompt.prompt/v1"
FORMAT_ADAPTER = "autoprompt.prompt/v2"  # a prompt with an adapter
FORMAT_ENSEMBLE = "autoprompt.prompt/v3"  # an ensemble of v1 prompts
FORMATS = (FORMAT, FORMAT_ADAPTER, FORMAT_ENSEMBLE)
SUFFIX = ".prompt.json"
ADAPTER_SUFFIX = ".adapter.safetensors"
MAX_BYTES = 16 * 1024 * 1024  # a prompt is kilobytes; anything this big is not one
MAX_DEPTH = 64  # JSON objects and arrays nested in each other; a prompt file needs about 5

_TOP_KEYS = {"format", "autoprompt_version", "created", "task", "template", "instruction", "demonstrations",
             "demo_k", "demo_per_label", "channel", "verbalizer", "triggers", "chat", "calibration", "model", "metrics", "search",
             "generation"}
_REQUIRED = {"format", "template", "model", "task"}
_ENSEMBLE_KEYS = {"format", "autoprompt_version", "created", "task", "combine", "members", "metrics", "search"}


@dataclass
class PromptFile:
    """A Prompt with what the file says about it: task, metrics, how it was found."""

    prompt: Prompt | Ensemble
    task_name: str = ""
    metric: str = "accuracy"
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> metric -> value
    search: dict[str, Any] = field(default_factory=lambda: {"method": "manual"})
    created: str = ""
    autoprompt_version: str = ""


def to_json(pf: PromptFile, adapter: dict[str, Any] | None = None) -> dict[str, Any]:
    """The prompt file's JSON; ``adapter``: what it says of the prompt's adapter file (save_prompt_file
    writes that file and says it)."""
    from autoprompt.version import __version__

    p = pf.prompt
    if isinstance(p, Ensemble):
        return _ensemble_json(pf)
    if p.model is None:
        raise PromptFileError("a prompt file needs the model the prompt was made for")
    if (p.adapter is None) != (adapter is None):
        raise PromptFileError("a prompt with an adapter is written by save_prompt_file (its tensors go to a file "
                              "beside the prompt file)")
    return {
        "format": FORMAT if adapter is None else FORMAT_ADAPTER,
        "autoprompt_version": pf.autoprompt_version or __version__,
        "created": pf.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "task": {"name": pf.task_name, "fields": list(p.fields), "metric": pf.metric},
        "template": p.template,
        "instruction": p.instruction,
        "demonstrations": [{"fields": d.fields, "answer": d.answer} for d in p.demonstrations],
        "demo_k": p.demo_k,
        # only when set: a reader that does not know it refuses the file rather than show other demonstrations
        **({"demo_per_label": True} if p.demo_per_label else {}),
        **({"channel": True} if p.channel else {}),  # (likewise: a reader that does not know it refuses the file)
        "verbalizer": p.verbalizer,
        "triggers": [{"id": i, "text": t} for i, t in zip(p.trigger_ids, p.trigger_tokens, strict=False)],
        "chat": p.chat,
        "calibration": list(p.calibration),
        "generation": None if p.generation is None else {"max_new_tokens": p.generation.max_new_tokens,
                                                         "stop": list(p.generation.stop),
                                                         "normalize": list(p.generation.normalize)},
        "model": {"name": p.model.name, "source": p.model.source, "kind": p.model.kind,
                  "tokenizer_fingerprint": p.model.tokenizer_fingerprint},
        "metrics": pf.metrics,
        "search": pf.search,
        **({"adapter": adapter} if adapter is not None else {}),
    }


def save_prompt_file(pf: PromptFile, path: str | os.PathLike) -> Path:
    """Write a prompt file atomically; returns its path. A prompt's adapter goes first to
    ``<name>.adapter.safetensors`` beside it, so the prompt file never names a file not yet there."""
    path = Path(path)
    entry = None
    adapter = None if isinstance(pf.prompt, Ensemble) else pf.prompt.adapter  # (ensemble members have none)
    if adapter is not None:
        target = path.with_name(adapter_file_name(path))
        entry = {"kind": adapter.kind, "file": target.name, "sha256": write_adapter(adapter, target),
                 "base_model": adapter.base_model, "settings": adapter.settings}
    write_atomic(path, json.dumps(to_json(pf, entry), indent=2, ensure_ascii=False) + "\n")
    return path


def adapter_file_name(path: Path) -> str:
    """The adapter file of a prompt file: its name with .adapter.safetensors for .prompt.json (or .json)."""
    stem = path.name.removesuffix(SUFFIX) if path.name.endswith(SUFFIX) else path.name.removesuffix(".json")
    return stem + ADAPTER_SUFFIX


def read_prompt_file(path: str | os.PathLike) -> PromptFile:
    """Read and validate a prompt file; all or nothing."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        raise PromptFileError(f"{path}: no such prompt file") from None
    if size > MAX_BYTES:
        raise PromptFileError(f"{path}: {size:,} bytes is too big for a prompt file (limit {MAX_BYTES:,})")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PromptFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise PromptFileError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise PromptFileError(f"{path}: JSON nested too deeply") from None
    except OSError as exc:  # a folder, no permission
        raise PromptFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return from_json(data, folder=path.parent)
    except PromptFileError as exc:
        raise PromptFileError(f"{path}: {exc}") from None
    except AutoPromptError as exc:  # e.g. a template the parser rejects
        raise PromptFileError(f"{path}: {exc}") from None


def from_json(data: Any, folder: Path | None = None) -> PromptFile:
    """Build a PromptFile from parsed JSON, checking every field's type first. Anything
    malformed raises PromptFileError, naming the field where it can. ``folder``: where the
    prompt file is, for its adapter file (a file with an adapter needs it)."""
    _check_top(data)
    if data["format"] == FORMAT_ENSEMBLE:
        return _ensemble_from_json(data)
    adapter = _adapter(data.get("adapter"), folder)
    task = _typed(data["task"], dict, "task")
    model = _model_ref(_typed(data["model"], dict, "model"))
    fields = [_typed(f, str, "task.fields[]") for f in _typed(task.get("fields", []), list, "task.fields")]
    verbalizer = _verbalizer(data.get("verbalizer"))
    triggers = _triggers(data.get("triggers", []))
    demos = _demonstrations(data.get("demonstrations", []))
    demo_k = _typed(data.get("demo_k", 0), int, "demo_k")
    _check(not isinstance(demo_k, bool) and 0 <= demo_k <= len(demos),
           f"demo_k must be 0..{len(demos)} (the number of demonstrations), not {demo_k!r}")
    per_label = _typed(data.get("demo_per_label", False), bool, "demo_per_label")
    _check(not per_label or (demo_k > 0 and verbalizer is not None),
           "demo_per_label needs a pool to choose from (demo_k > 0) and labels (a verbalizer)")
    _check(not per_label or all(d.answer in verbalizer for d in demos),
           "demo_per_label: every demonstration's answer must be one of the verbalizer's labels")
    calibration = _typed(data.get("calibration", []), list, "calibration")
    _check(all(isinstance(v, (int, float)) and not isinstance(v, bool) and _finite(v) for v in calibration),
           "calibration must be a list of finite numbers")
    _check(not calibration or len(calibration) == len(verbalizer or {}),
           f"calibration has {len(calibration)} values but the verbalizer {len(verbalizer or {})} labels")
    metrics = _typed(data.get("metrics", {}), dict, "metrics")
    for split, values in metrics.items():
        _check(isinstance(values, dict) and all(isinstance(v, (int, float)) for v in values.values()),
               f"metrics[{split!r}] must map metric names to numbers")
    prompt = _prompt(_template(data["template"]), verbalizer=verbalizer, trigger_ids=tuple(t["id"] for t in triggers),
                     trigger_tokens=tuple(t["text"] for t in triggers),
                     instruction=_typed(data.get("instruction", ""), str, "instruction"), demonstrations=tuple(demos),
                     demo_k=demo_k, demo_per_label=per_label, chat=_typed(data.get("chat", False), bool, "chat"),
                     calibration=tuple(float(v) for v in calibration), model=model, fields=tuple(fields),
                     generation=_generation(data.get("generation")), adapter=adapter,
                     channel=_typed(data.get("channel", False), bool, "channel"))
    _check(prompt.n_trigger_slots == len(triggers),
           f"template has {prompt.n_trigger_slots} [T] slots but the file lists {len(triggers)} triggers")
    return PromptFile(prompt=prompt, task_name=_typed(task.get("name", ""), str, "task.name"),
                      metric=_typed(task.get("metric", "accuracy"), str, "task.metric"), metrics=metrics,
                      search=_typed(data.get("search", {}), dict, "search"),
                      created=_typed(data.get("created", ""), str, "created"),
                      autoprompt_version=_typed(data.get("autoprompt_version", ""), str, "autoprompt_version"))


def _check_top(data: Any) -> None:
    _check(_depth(data) <= MAX_DEPTH, f"JSON nested too deeply (more than {MAX_DEPTH} levels)")
    _check(isinstance(data, dict), "the top level must be a JSON object")
    fmt = data.get("format")
    if fmt not in FORMATS:
        _check(isinstance(fmt, str) and fmt.startswith("autoprompt.prompt/"),
               f"not an autoprompt prompt file (format {fmt!r}, expected {FORMAT!r})")
        raise PromptFileError(f"format {fmt!r} is not one this version reads ({', '.join(FORMATS)}); "
                              "upgrade autoprompt or re-export the prompt")
    known = _ENSEMBLE_KEYS if fmt == FORMAT_ENSEMBLE else _TOP_KEYS | ({"adapter"} if fmt == FORMAT_ADAPTER else set())
    unknown = sorted(set(data) - known)
    _check(not unknown, f"unknown keys: {', '.join(unknown)}")
    required = {"format", "task", "combine", "members"} if fmt == FORMAT_ENSEMBLE else _REQUIRED
    missing = sorted(required - set(data))
    _check(not missing, f"missing keys: {', '.join(missing)}")


def _ensemble_json(pf: PromptFile) -> dict[str, Any]:
    """A v3 file: the ensemble's own metrics and search, each member a whole v1 prompt object."""
    members = [to_json(PromptFile(m, task_name=pf.task_name, metric=pf.metric, search={}, created=pf.created,
                                  autoprompt_version=pf.autoprompt_version)) for m in pf.prompt.members]
    first = members[0]
    return {"format": FORMAT_ENSEMBLE, "autoprompt_version": first["autoprompt_version"], "created": first["created"],
            "task": first["task"], "combine": pf.prompt.combine, "members": members, "metrics": pf.metrics,
            "search": pf.search}


def _ensemble_from_json(data: dict[str, Any]) -> PromptFile:
    """An ensemble file: every member read as a v1 prompt file would be, then the ensemble checked."""
    members = _typed(data["members"], list, "members")
    _check(len(members) >= 2, f"members: an ensemble needs at least two prompts, not {len(members)}")
    prompts = []
    for n, member in enumerate(members):
        _check(isinstance(member, dict) and member.get("format") == FORMAT,
               f"members[{n}] must be a prompt object of format {FORMAT!r}")
        try:
            prompts.append(from_json(member).prompt)
        except PromptFileError as exc:
            raise PromptFileError(f"members[{n}]: {exc}") from None
    combine = _typed(data["combine"], str, "combine")
    try:
        ensemble = Ensemble(tuple(prompts), combine)
    except TemplateError as exc:
        raise PromptFileError(f"not a valid ensemble: {exc}") from None
    task = _typed(data["task"], dict, "task")
    metrics = _typed(data.get("metrics", {}), dict, "metrics")
    _check(all(isinstance(v, dict) and all(isinstance(x, (int, float)) for x in v.values()) for v in metrics.values()),
           "metrics must map splits to {metric: number}")
    return PromptFile(prompt=ensemble, task_name=_typed(task.get("name", ""), str, "task.name"),
                      metric=_typed(task.get("metric", "accuracy"), str, "task.metric"), metrics=metrics,
                      search=_typed(data.get("search", {}), dict, "search"),
                      created=_typed(data.get("created", ""), str, "created"),
                      autoprompt_version=_typed(data.get("autoprompt_version", ""), str, "autoprompt_version"))


def _adapter(entry: Any, folder: Path | None) -> Adapter | None:
    """The adapter a v2 file names, read from its file beside the prompt file (checked by its sha256)."""
    if entry is None:
        return None
    entry = _typed(entry, dict, "adapter")
    unknown = sorted(set(entry) - {"kind", "file", "sha256", "base_model", "settings"})
    _check(not unknown, f"adapter: unknown keys {', '.join(unknown)}")
    _check(entry.get("kind") in KINDS, f"adapter.kind must be one of {', '.join(KINDS)}, not {entry.get('kind')!r}")
    name = _typed(entry.get("file"), str, "adapter.file")
    _check(name and Path(name).name == name and not name.startswith("."),
           f"adapter.file must be a file name beside the prompt file, not {name!r}")
    sha256 = _typed(entry.get("sha256"), str, "adapter.sha256")
    _check(len(sha256) == 64 and all(c in "0123456789abcdef" for c in sha256), "adapter.sha256 must be 64 hex digits")
    base_model = _typed(entry.get("base_model"), str, "adapter.base_model")
    settings = _typed(entry.get("settings", {}), dict, "adapter.settings")
    if folder is None:
        raise PromptFileError("this prompt file names an adapter file: read it with read_prompt_file(path)")
    return read_adapter(folder / name, kind=entry["kind"], sha256=sha256, settings=settings, base_model=base_model)


def _model_ref(model: dict) -> ModelRef:
    for key in ("name", "source", "kind", "tokenizer_fingerprint"):
        _typed(model.get(key), str, f"model.{key}")
    _check(model["kind"] in ("causal", "masked"), f"model.kind must be causal or masked, not {model['kind']!r}")
    return ModelRef(model["name"], model["source"], model["kind"], model["tokenizer_fingerprint"])


def _verbalizer(verbalizer: Any) -> dict[str, list[str]] | None:
    if verbalizer is None:
        return None
    _typed(verbalizer, dict, "verbalizer")
    _check(len(verbalizer) >= 2, "verbalizer needs at least two labels")
    for label, words in verbalizer.items():
        _check(isinstance(words, list) and words and all(isinstance(w, str) and w for w in words),
               f"verbalizer[{label!r}] must be a non-empty list of words")
    return {k: list(v) for k, v in verbalizer.items()}


def _triggers(triggers: Any) -> list[dict]:
    for t in _typed(triggers, list, "triggers"):
        _check(isinstance(t, dict) and isinstance(t.get("id"), int) and not isinstance(t.get("id"), bool)
               and t["id"] >= 0 and isinstance(t.get("text"), str), "each trigger must be {\"id\": int >= 0, \"text\": str}")
    return triggers


def _demonstrations(demos: Any) -> list[Example]:
    out = []
    for d in _typed(demos, list, "demonstrations"):
        _check(isinstance(d, dict) and isinstance(d.get("fields"), dict)
               and all(isinstance(v, str) for v in d["fields"].values()) and isinstance(d.get("answer"), str),
               "each demonstration must be {\"fields\": {name: str}, \"answer\": str}")
        out.append(Example(fields=dict(d["fields"]), answer=d["answer"], source="demonstration"))
    return out


def _generation(value: Any) -> Generation | None:
    if value is None:
        return None
    value = _typed(value, dict, "generation")
    unknown = sorted(set(value) - {"max_new_tokens", "stop", "normalize"})
    _check(not unknown, f"generation: unknown keys {', '.join(unknown)}")
    budget = _typed(value.get("max_new_tokens", 16), int, "generation.max_new_tokens")
    _check(0 < budget <= 4096, f"generation.max_new_tokens must be 1..4096, not {budget}")
    stop = _typed(value.get("stop", []), list, "generation.stop")
    _check(all(isinstance(s, str) and s for s in stop), "generation.stop must be a list of non-empty strings")
    normalize = _typed(value.get("normalize", list(DEFAULT_NORMALIZE)), list, "generation.normalize")
    _check(all(step in NORMALIZE_STEPS for step in normalize),
           f"generation.normalize takes steps of: {', '.join(NORMALIZE_STEPS)}")
    return Generation(budget, tuple(stop), tuple(normalize))


def _template(template: Any) -> str:
    _typed(template, str, "template")
    try:
        parse_template(template)
    except TemplateError as exc:
        raise PromptFileError(f"field template: {exc}") from None
    return template


def _prompt(template: str, **parts: Any) -> Prompt:
    try:
        return Prompt(template=template, **parts)
    except PromptFileError:
        raise
    except AutoPromptError as exc:  # what Prompt itself refuses, should a check above miss it
        raise PromptFileError(f"not a valid prompt: {exc}") from None


def _depth(data: Any) -> int:
    """How deeply JSON arrays and objects nest in data (a scalar: 0); without recursion, so a
    bomb of nested brackets cannot exhaust the stack."""
    deepest = 0
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        elif not isinstance(value, list):
            continue
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:  # deep enough to refuse: no need to walk the rest
            break
        stack.extend((item, depth + 1) for item in value)
    return deepest


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too big for a float
        return False


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise PromptFileError(message)


def _typed(value: Any, kind: type, name: str) -> Any:
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise PromptFileError(f"{name} must be {kind.__name__}, not {type(value).__name__}")
    return value

