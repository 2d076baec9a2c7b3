"""Exports of a prompt to other tools: json (the native prompt file), langchain, text, promptfoo.

Only ``json`` keeps the trigger token ids; the other formats write triggers as text, which a
tokenizer may split differently (export_prompt warns when it does). The text formats write
what the model reads: instruction, demonstrations and chat wrapping in place, ``{field}``
placeholders (``{{ field }}`` for promptfoo), and for a masked LM the mask token at [P].
"""

from __future__ import annotations

import json
import logging
import os
import string
from pathlib import Path
from typing import Any

from autoprompt.ensemble import Ensemble
from autoprompt.errors import AutoPromptError
from autoprompt.prompt import DEMO_SEPARATOR, Prompt
from autoprompt.prompt_file import PromptFile, read_prompt_file, to_json
from autoprompt.template import escape_literal, spaced_answer, text_before_answer, text_pieces

log = logging.getLogger(__name__)

FORMATS = ("json", "langchain", "text", "promptfoo")


def export_prompt(source: str | os.PathLike, fmt: str, *, runs_dir: str | os.PathLike = "runs",
                  task: str | None = None, yaml: bool = False) -> str:
    """The prompt of a run folder (its best.prompt.json) or of a prompt file, in format ``fmt``.

    ``task``: the task whose test split becomes promptfoo's test cases (default: the run's task,
    or the task the prompt file names). ``yaml``: LangChain's file as YAML instead of JSON."""
    if fmt not in FORMATS:
        raise AutoPromptError(f"unknown export format {fmt!r}; formats are: {', '.join(FORMATS)}")
    pf, task_spec = _read_source(source, runs_dir)
    if isinstance(pf.prompt, Ensemble) and fmt != "json":
        raise AutoPromptError(f"{source}: this prompt file is an ensemble of {len(pf.prompt.members)} prompts, which a "
                              f"{fmt} export cannot express (one text); export json, or use it with load_prompt")
    if not isinstance(pf.prompt, Ensemble) and pf.prompt.adapter is not None:  # the text is not the prompt: the model reads learned tensors too
        raise AutoPromptError(f"{source}: this prompt runs with its {pf.prompt.adapter.kind} adapter (a safetensors "
                              "file), which no export format carries; use the prompt file with load_prompt")
    if fmt == "json":
        return json.dumps(to_json(pf), indent=2, ensure_ascii=False) + "\n"
    prompt = pf.prompt
    if prompt.calibration:
        log.warning("this prompt's contextual calibration is applied to label scores; a %s export cannot carry it",
                    fmt)
    tokenizer = _tokenizer_for(prompt)
    if fmt == "text":
        return format_string(prompt, tokenizer)
    if fmt == "langchain":
        config = langchain_config(prompt, tokenizer)
        if yaml:
            return _yaml(config)
        return json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    from autoprompt.task import load_task

    try:
        the_task = load_task(task or task_spec)
    except AutoPromptError as exc:
        raise type(exc)(f"{exc} (the promptfoo export takes its test cases from the task: pass --task)") from None
    return promptfoo_config(pf, tokenizer, the_task, source=str(source))


def _read_source(source: str | os.PathLike, runs_dir) -> tuple[PromptFile, str]:
    """The prompt file of a run folder or a prompt file path, and the task it names."""
    from autoprompt.runs import find_run

    path = Path(source)
    if path.is_file():
        pf = read_prompt_file(path)
        return pf, pf.task_name
    run = find_run(source, runs_dir)
    if not run.best_prompt_path.exists():
        raise AutoPromptError(f"{run.path}: the run has no best.prompt.json yet (it stopped before its first step)")
    config = run.config()
    return read_prompt_file(run.best_prompt_path), config.get("task_source") or config.get("task", "")


def _tokenizer_for(prompt: Prompt):
    """The tokenizer of the prompt's model, when the export needs it: chat wrapping and the mask
    token need it; trigger texts are checked with it. Only the tokenizer is loaded."""
    masked = prompt.model is not None and prompt.model.kind == "masked"
    if not (prompt.chat or masked or prompt.trigger_ids) or prompt.model is None:
        return None
    from autoprompt.models import load_tokenizer, tokenizer_fingerprint

    tokenizer, error = None, None
    for spec in dict.fromkeys((prompt.model.name, prompt.model.source)):
        try:
            tokenizer = load_tokenizer(spec)
            break
        except AutoPromptError as exc:
            error = exc
    if tokenizer is None:
        if prompt.chat or masked:
            raise AutoPromptError(f"exporting this {'chat' if prompt.chat else 'masked-LM'} prompt needs the "
                                  f"tokenizer of {prompt.model.name}: {error}")
        log.warning("cannot check that the triggers' text gives the same tokens: %s", error)
        return None
    if tokenizer_fingerprint(tokenizer) != prompt.model.tokenizer_fingerprint:
        log.warning("the tokenizer loaded for %s is not the one the prompt was made for (fingerprints differ)",
                    prompt.model.name)
    for problem in trigger_problems(prompt, tokenizer):
        log.warning("%s: a text export does not give the model the same tokens (only the json format keeps ids)",
                    problem)
    return tokenizer


def trigger_problems(prompt: Prompt, tokenizer) -> list[str]:
    """Triggers whose text does not tokenize back to their ids (alone, or written together)."""
    problems = []
    for k, (token_id, text) in enumerate(zip(prompt.trigger_ids, prompt.trigger_tokens, strict=True), 1):
        again = tokenizer(text, add_special_tokens=False)["input_ids"]
        if again != [token_id]:
            problems.append(f"trigger {k} {text!r} (id {token_id}) tokenizes to {again}")
    if prompt.trigger_ids and not problems:
        together = "".join(prompt.trigger_tokens)
        again = tokenizer(together, add_special_tokens=False)["input_ids"]
        if again != list(prompt.trigger_ids):
            problems.append(f"the triggers written together, {together!r}, tokenize to {again}, "
                            f"not {list(prompt.trigger_ids)}")
    return problems


# --- text: a str.format string -----------------------------------------------------------------

def format_string(prompt: Prompt, tokenizer=None, *, template: str | None = None, depth: int = 1,
                  answer_variable: str | None = None) -> str:
    """What the model reads as a ``str.format`` string: ``{field}`` placeholders, triggers written
    in, literal braces doubled (``depth`` times, for text formatted more than once), and for a
    masked LM the mask token at [P] (``answer_variable``: a placeholder there instead)."""
    if prompt.demo_k:
        log.warning("each input of this prompt is shown its %d nearest demonstrations; a static export shows "
                    "the first %d of the pool", prompt.demo_k, prompt.demo_k)
    template = prompt.model_template(tokenizer) if template is None else template
    masked = prompt.model is not None and prompt.model.kind == "masked"
    mask = tokenizer.mask_token if masked and tokenizer is not None and answer_variable is None else None
    out = []
    for kind, value in text_pieces(template, triggers=list(prompt.trigger_tokens), answer=mask):
        if kind == "text":
            out.append(_escape(value, depth))
        elif kind == "field":
            out.append("{" + value + "}")
        elif answer_variable:
            out.append("{" + answer_variable + "}")
    return "".join(out)


def _escape(text: str, depth: int) -> str:
    for _ in range(depth):
        text = escape_literal(text)
    return text


def _variables(text: str) -> list[str]:
    return list(dict.fromkeys(name for _, name, _, _ in string.Formatter().parse(text) if name))


# --- langchain -----------------------------------------------------------------------------

def langchain_config(prompt: Prompt, tokenizer=None) -> dict[str, Any]:
    """A LangChain prompt file (``load_prompt`` reads it): ``_type: prompt``, or ``_type: few_shot``
    when the prompt has demonstrations and their layout can be written as LangChain's."""
    full = format_string(prompt, tokenizer)
    plain = {"_type": "prompt", "input_variables": _variables(full), "template": full, "template_format": "f-string"}
    if not prompt.demonstrations:
        return plain
    few_shot = _few_shot(prompt, full)
    if few_shot is None:
        log.info("the demonstrations' layout does not fit LangChain's few_shot; they are written into the template")
        return plain
    return few_shot


def _few_shot(prompt: Prompt, full: str) -> dict[str, Any] | None:
    """FewShotPromptTemplate joins prefix, the examples and suffix, then formats the whole again
    with the inputs: example text is escaped twice. The demonstrations' separator goes into the
    example template, on the side where the layout has it. None when the result would differ."""
    shown = prompt.demonstrations[: prompt.demo_k] if prompt.demo_k else prompt.demonstrations
    block = escape_literal(prompt.showing(shown).demos_text())
    at = full.find(block)
    if not block or at < 0:
        return None
    head, tail = full[:at], full[at + len(block) :]
    answer = "answer" if "answer" not in prompt.fields else "answer_word"
    demo_template = prompt.demo_template()
    example = format_string(prompt.showing(prompt.demonstrations), template=demo_template, depth=2,
                            answer_variable=answer).strip()
    if tail.startswith(DEMO_SEPARATOR):
        example, prefix, suffix = example + DEMO_SEPARATOR, head, tail[len(DEMO_SEPARATOR) :]
    elif head.endswith(DEMO_SEPARATOR):
        example, prefix, suffix = DEMO_SEPARATOR + example, head[: -len(DEMO_SEPARATOR)], tail
    else:
        return None
    before = text_before_answer(demo_template)
    examples = [{**{name: escape_literal(demo.fields.get(name, "")) for name in _variables(example) if name != answer},
                 answer: escape_literal(spaced_answer(prompt.answer_word(demo.answer), before))} for demo in shown]
    config = {"_type": "few_shot", "input_variables": _variables(prefix + suffix), "prefix": prefix, "suffix": suffix,
              "example_prompt": {"_type": "prompt", "input_variables": _variables(example), "template": example,
                                 "template_format": "f-string"},
              "examples": examples, "example_separator": "", "template_format": "f-string"}
    probe = {name: f"<{name}>" for name in _variables(full)}
    return config if render_langchain(config, probe) == full.format(**probe) else None


def render_langchain(config: dict[str, Any], values: dict[str, str]) -> str:
    """What LangChain's format() gives for a config of langchain_config (its algorithm, without LangChain)."""
    if config["_type"] == "prompt":
        return config["template"].format(**values)
    example_strings = [config["example_prompt"]["template"].format(**e) for e in config["examples"]]
    pieces = [config["prefix"], *example_strings, config["suffix"]]
    return config["example_separator"].join(p for p in pieces if p).format(**values)


# --- promptfoo -----------------------------------------------------------------------------

def promptfoo_config(pf: PromptFile, tokenizer, task, *, source: str = "") -> str:
    """promptfooconfig.yaml: the prompt (Nunjucks) and the task's test split as test cases, each
    asserting that the output contains the expected label word (or target)."""
    prompt = pf.prompt
    masked = prompt.model is not None and prompt.model.kind == "masked"
    pieces = text_pieces(prompt.model_template(tokenizer), triggers=list(prompt.trigger_tokens),
                         answer=tokenizer.mask_token if masked else None)
    raw = "".join(_nunjucks(kind, value) for kind, value in pieces)
    fields = [value for kind, value in pieces if kind == "field"]
    tests = [{"vars": {name: example.fields[name] for name in dict.fromkeys(fields)},
              "assert": [_expected(prompt, example.answer, task.name, example, pf.metric)]}
             for example in task.examples("test")]
    data = {"description": f"{pf.task_name or task.name}: prompt exported by autoprompt from {source}",
            "prompts": [{"label": f"autoprompt {pf.task_name or task.name}", "raw": raw}],
            "providers": _providers(prompt), "tests": tests}
    header = (f"# promptfoo config exported by autoprompt from {source}; the test cases are the test split of "
              f"task {task.name!r}.\n# providers: the model the prompt was found for ({prompt.model.name}); "
              "point it at wherever you serve that model.\n")
    return header + _yaml(data)


def _yaml(data: Any) -> str:
    """YAML with multi-line strings as literal blocks (|), as people write prompts."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def string(dumper, value: str):
        style = "|" if "\n" in value and not value.endswith((" ", "\n")) and "\r" not in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, string)
    return yaml.dump(data, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=1 << 20)


def _nunjucks(kind: str, value: str) -> str:
    if kind == "field":
        return "{{ " + value + " }}"
    if kind == "text" and ("{" in value or "}" in value):
        return "{% raw %}" + value + "{% endraw %}"
    return value if kind == "text" else ""


def _expected(prompt: Prompt, answer: str, task_name: str, example=None, metric: str = "") -> dict[str, Any]:
    if prompt.generation is not None:  # a generated answer: equal to (exact match) or containing an acceptable one
        golds = list(example.golds) if example is not None else [answer]
        if metric == "exact_match" and len(golds) == 1:
            return {"type": "equals", "value": golds[0]}
        return {"type": "icontains", "value": golds[0]} if len(golds) == 1 else {"type": "icontains-any", "value": golds}
    if not prompt.verbalizer:
        return {"type": "icontains", "value": answer}
    if answer not in prompt.verbalizer:
        raise AutoPromptError(f"task {task_name!r}: label {answer!r} is not in the prompt's verbalizer "
                              f"({', '.join(prompt.verbalizer)})")
    words = prompt.verbalizer[answer]
    return {"type": "icontains", "value": words[0]} if len(words) == 1 else {"type": "icontains-any", "value": words}


def _providers(prompt: Prompt) -> list[str]:
    from autoprompt.models import BUILTIN_MODELS

    name = prompt.model.name if prompt.model else ""
    hub_id = BUILTIN_MODELS[name].hub_id if name in BUILTIN_MODELS else (
        name if "/" in name and not Path(name).exists() and not name.startswith((".", "/")) else "")
    return [f"huggingface:text-generation:{hub_id}"] if hub_id else []
