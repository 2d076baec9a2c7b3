"""Fuzzing the parsers of untrusted input: each one succeeds or raises the package's own error.

Prompt files, templates, search spaces and data files come from users and from disk; anything
else than an AutoPromptError escaping them is a traceback on the command line.
"""

from __future__ import annotations

import copy
import json
import os
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from autoprompt.errors import AutoPromptError, PromptFileError, TemplateError
from autoprompt.prompt_file import FORMAT, MAX_DEPTH, from_json, read_prompt_file
from autoprompt.space import space_from_dict
from autoprompt.task import Example, Task, read_examples
from autoprompt.template import count_triggers, escape_literal, fill_template, parse_template, template_fields

# The loaded profile's settings (tests/conftest.py), nothing overridden: "ci" by default, the
# same examples every run; "explore" (make fuzz) fresh random ones. A key set here would
# override the profile's for these tests.
FUZZ = settings()


def test_every_fuzz_test_runs_under_the_loaded_profile() -> None:
    """No @settings here overrides the profile (tests/conftest.py): under "ci", the default, every
    run replays the same examples; under "explore" (make fuzz) they are fresh and more."""
    profile = settings()
    tests = [value for value in globals().values() if hasattr(value, "hypothesis")]
    assert len(tests) >= 7
    for test in tests:
        used = test._hypothesis_internal_use_settings
        for key in ("derandomize", "max_examples", "deadline", "print_blob", "suppress_health_check"):
            assert getattr(used, key) == getattr(profile, key), (test.__name__, key)
    if os.environ.get("HYPOTHESIS_PROFILE", "ci") == "ci":
        assert profile.derandomize and profile.database is None and profile.deadline is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=10**300) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)

VALID = {
    "format": FORMAT, "autoprompt_version": "0.1.0", "created": "2025-01-01T00:00:00+00:00",
    "task": {"name": "toy", "fields": ["text"], "metric": "accuracy"},
    "template": "Review: {text} [T]\nSentiment:[P]", "instruction": "Say it.",
    "demonstrations": [{"fields": {"text": "fine"}, "answer": "positive"}], "demo_k": 0,
    "verbalizer": {"negative": ["bad"], "positive": ["good"]}, "triggers": [{"id": 5, "text": "x"}],
    "chat": False, "calibration": [0.1, -0.1],
    "model": {"name": "m", "source": "m", "kind": "causal", "tokenizer_fingerprint": "sha256:00"},
    "metrics": {"dev": {"accuracy": 0.5}}, "search": {"method": "manual"},
}
KEYS = sorted(VALID) + ["extra"]


def test_the_valid_prompt_loads() -> None:
    assert from_json(copy.deepcopy(VALID)).prompt.template == VALID["template"]


@FUZZ
@given(json_values)
def test_prompt_json_of_any_shape(data) -> None:
    try:
        from_json(data)
    except PromptFileError:
        pass


def _path_into(data: dict, rng: st.DataObject) -> tuple[dict | list, object]:
    """A container inside data and a key or index of it (the top level or one level down)."""
    key = rng.draw(st.sampled_from(KEYS))
    inner = data.get(key)
    if isinstance(inner, dict) and inner and rng.draw(st.booleans()):
        return inner, rng.draw(st.sampled_from(sorted(inner)))
    if isinstance(inner, list) and inner and rng.draw(st.booleans()):
        return inner, rng.draw(st.integers(0, len(inner) - 1))
    return data, key


@FUZZ
@given(st.data())
def test_a_valid_prompt_with_one_value_changed(rng: st.DataObject) -> None:
    data = copy.deepcopy(VALID)
    for _ in range(rng.draw(st.integers(1, 3))):
        container, key = _path_into(data, rng)
        if rng.draw(st.booleans()) and isinstance(container, dict):
            container.pop(key, None)
        else:
            container[key] = rng.draw(json_values)
    try:
        from_json(data)
    except PromptFileError:
        pass


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode) | json_values.map(lambda v: json.dumps(v).encode()))
def test_prompt_file_of_any_bytes(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.prompt.json"
        path.write_bytes(content)
        try:
            read_prompt_file(path)
        except PromptFileError as exc:
            assert str(path) in str(exc)


def _nested_in(key: str, opener: str, closer: str, depth: int) -> str:
    """The valid prompt file with ``key`` replaced by ``depth`` nested arrays or objects around a 1."""
    return (json.dumps({**VALID, key: 0})[:-1] + f', "{key}": ' + opener * depth + "1" + closer * depth + "}")


NESTING = (("[", "]"), ('{"a": ', "}"))


def test_deep_nesting_anywhere_is_refused_cleanly(tmp_path: Path) -> None:
    """README: a prompt file nested too deeply is refused, whether json could parse it (65 levels)
    or not (100,000 would overflow the parser), in any field."""
    path = tmp_path / "p.prompt.json"
    for key in ("search", "metrics", "demonstrations", "extra"):
        for depth in (MAX_DEPTH, 100, 500, 2_000, 100_000):  # with the top-level object: depth + 1 levels
            for opener, closer in NESTING:
                path.write_text(_nested_in(key, opener, closer, depth), encoding="utf-8")
                with pytest.raises(PromptFileError, match=f"^{re.escape(str(path))}: JSON nested too deeply"):
                    read_prompt_file(path)
                if depth < 500:  # what json parses, from_json refuses too
                    with pytest.raises(PromptFileError, match="nested too deeply"):
                        from_json(json.loads(path.read_text(encoding="utf-8")))


def test_nesting_up_to_the_limit_loads(tmp_path: Path) -> None:
    path = tmp_path / "p.prompt.json"
    for depth in (1, 10, MAX_DEPTH - 1):  # the top-level object is the 64th level
        path.write_text(_nested_in("search", '{"a": ', "}", depth), encoding="utf-8")
        search = read_prompt_file(path).search
        for _ in range(depth - 1):
            search = search["a"]
        assert search == {"a": 1}
    path.write_text(json.dumps(VALID), encoding="utf-8")
    assert read_prompt_file(path).metrics == VALID["metrics"]


template_pieces = st.sampled_from([*"{}[]PTtext_ x:\n", "{text}", "[T]", "[P]", "{{", "}}", "{instruction}"])
template_text = st.lists(template_pieces, max_size=25).map("".join) | st.text(max_size=40)


@FUZZ
@given(template_text)
def test_templates_of_any_text(template: str) -> None:
    try:
        segments = parse_template(template)
    except TemplateError:
        return
    assert sum(s.kind == "answer" for s in segments) == 1
    fields = template_fields(template)
    assert count_triggers(template) == template.count("[T]")  # [T] has no escape: each one is a slot
    try:
        fill_template(template, {f: "v" for f in fields} | {"instruction": "", "demos": ""}, answer="yes")
    except TemplateError:
        pass


@FUZZ
@given(st.text(max_size=40))
def test_any_text_escaped_is_one_literal(text: str) -> None:
    assume("[T]" not in text and "[P]" not in text)
    segments = parse_template(escape_literal(text) + "[P]")
    assert "".join(s.value for s in segments if s.kind == "text") == text


@FUZZ
@given(json_values)
def test_search_spaces_of_any_shape(data) -> None:
    task = Task(name="toy", template="Review: {text}\nSentiment:[P]", verbalizer={"negative": ["bad"], "positive": ["good"]},
                splits={"train": [Example({"text": "good"}, "positive"), Example({"text": "bad"}, "negative")],
                        "dev": [Example({"text": "fine"}, "positive"), Example({"text": "poor"}, "negative")]})
    try:
        space_from_dict(data, source="space.yaml").for_task(task)
    except AutoPromptError:
        pass


@FUZZ
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode), st.sampled_from([".jsonl", ".csv", ".tsv"]))
def test_data_files_of_any_bytes(content: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data{suffix}"
        path.write_bytes(content)
        try:
            examples = read_examples(path)
        except AutoPromptError:
            return
        assert examples and all(isinstance(e, Example) for e in examples)
