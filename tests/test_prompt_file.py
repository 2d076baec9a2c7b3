"""Prompt files: round trip, strict validation, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from autoprompt import prompt_file
from autoprompt.errors import AutoPromptError, PromptFileError
from autoprompt.prompt import ModelRef, Prompt
from autoprompt.prompt_file import PromptFile, read_prompt_file, save_prompt_file, to_json
from autoprompt.task import Example

MODEL = ModelRef("tiny", "/models/tiny", "causal", "sha256:" + "ab" * 16)


def full_prompt_file() -> PromptFile:
    prompt = Prompt(
        template="{instruction}\nReview: {text} [T] [T]\nSentiment:[P]",
        verbalizer={"negative": ["negative", "bad"], "positive": ["positive"]},
        trigger_ids=(17, 402),
        trigger_tokens=("Ġwow", "!"),
        instruction="Classify the review {with braces}.",
        demonstrations=(Example({"text": "fun ✓ film"}, "positive", "demonstration"),
                        Example({"text": "dull"}, "negative", "demonstration")),
        chat=True,
        model=MODEL,
        fields=("text",),
    )
    return PromptFile(prompt, task_name="sst2", metric="macro_f1",
                      metrics={"dev": {"accuracy": 0.75, "macro_f1": 0.7}, "test": {"accuracy": 1}},
                      search={"method": "trigger", "steps": 3, "seed": 0},
                      created="2025-01-02T03:04:05+00:00", autoprompt_version="0.1.0")


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return save_prompt_file(full_prompt_file(), tmp_path / "p.prompt.json")


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def edited(saved: Path, change) -> Path:
    data = json.loads(saved.read_text(encoding="utf-8"))
    change(data)
    return write_json(saved, data)


# --- round trip ----------------------------------------------------------------------------------------


def test_round_trip_is_equal(saved: Path) -> None:
    original = full_prompt_file()
    loaded = read_prompt_file(saved)
    assert loaded == original
    assert loaded.prompt.trigger_ids == (17, 402) and loaded.prompt.chat is True
    assert loaded.prompt.model == MODEL
    assert loaded.metrics == {"dev": {"accuracy": 0.75, "macro_f1": 0.7}, "test": {"accuracy": 1}}


def test_round_trip_free_form_minimal(tmp_path: Path) -> None:
    original = PromptFile(Prompt("{subject} was born in[P]", model=MODEL, fields=("subject",)), task_name="p19",
                          metric="precision@1", created="x", autoprompt_version="0.1.0")
    assert read_prompt_file(save_prompt_file(original, tmp_path / "f.prompt.json")) == original


def test_file_is_readable_json(saved: Path) -> None:
    data = json.loads(saved.read_text(encoding="utf-8"))
    assert data["format"] == "autoprompt.prompt/v1"
    assert data["triggers"] == [{"id": 17, "text": "Ġwow"}, {"id": 402, "text": "!"}]
    assert "fun ✓ film" in saved.read_text(encoding="utf-8")  # not \u-escaped


def test_save_needs_a_model() -> None:
    with pytest.raises(PromptFileError, match="needs the model"):
        to_json(PromptFile(Prompt("{text}[P]")))


# --- strictness: every bad file is a PromptFileError -------------------------------------------------------


def _set(path: list[str], value: Any):
    def change(data: dict) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


def _delete(*path: str):
    def change(data: dict) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return change


BAD_EDITS = {
    "format version": (_set(["format"], "autoprompt.prompt/v7"), "upgrade autoprompt"),  # (v2: with an adapter)
    "adapter in v1": (_set(["adapter"], {"kind": "lora"}), "unknown keys: adapter"),
    "other format": (_set(["format"], "dspy.program"), "not an autoprompt prompt file"),
    "format not a string": (_set(["format"], 1), "not an autoprompt prompt file"),
    "unknown key": (_set(["temperature"], 0.7), "unknown keys: temperature"),
    "missing key": (_delete("template"), "missing keys: template"),
    "missing model field": (_delete("model", "tokenizer_fingerprint"), "model.tokenizer_fingerprint must be str"),
    "bad model kind": (_set(["model", "kind"], "seq2seq"), "causal or masked"),
    "trigger id as string": (_set(["triggers", 0, "id"], "17"), "each trigger"),
    "trigger id as bool": (_set(["triggers", 0, "id"], True), "each trigger"),
    "negative trigger id": (_set(["triggers", 0, "id"], -1), "each trigger"),
    "chat as int": (_set(["chat"], 1), "chat must be bool, not int"),
    "template as list": (_set(["template"], ["{text}[P]"]), "template must be str"),
    "one-label verbalizer": (_set(["verbalizer"], {"a": ["x"]}), "at least two labels"),
    "verbalizer word not a list": (_set(["verbalizer", "positive"], "positive"), "non-empty list"),
    "empty verbalizer word": (_set(["verbalizer", "positive"], [""]), "non-empty list"),
    "demo answer missing": (_delete("demonstrations", 0, "answer"), "each demonstration"),
    "demo field not text": (_set(["demonstrations", 0, "fields", "text"], 3), "each demonstration"),
    "metric not a number": (_set(["metrics", "dev", "accuracy"], "high"), "metrics\\['dev'\\]"),
    "task fields not strings": (_set(["task", "fields"], [1]), "task.fields\\[\\] must be str"),
    "search not an object": (_set(["search"], "trigger"), "search must be dict"),
    "bad template": (_set(["template"], "{text} [T] [T]"), "no \\[P\\]"),
    "too few triggers": (_set(["template"], "{instruction}\nReview: {text} [T]\nSentiment:[P]"),
                         "1 \\[T\\] slots but the file lists 2 triggers"),
    "too many triggers": (_set(["template"], "[T] [T] [T] {text}:[P]"), "3 \\[T\\] slots"),
}


@pytest.mark.parametrize("case", list(BAD_EDITS))
def test_bad_content(saved: Path, case: str) -> None:
    change, message = BAD_EDITS[case]
    path = edited(saved, change)
    with pytest.raises(PromptFileError, match=message) as info:
        read_prompt_file(path)
    assert str(info.value).startswith(f"{path}: ")
    assert type(info.value) is PromptFileError


@pytest.mark.parametrize("case", list(BAD_EDITS))
def test_bad_content_from_json(saved: Path, case: str) -> None:
    """from_json itself (not only read_prompt_file, which prefixes the path) raises PromptFileError."""
    change, message = BAD_EDITS[case]
    data = json.loads(saved.read_text(encoding="utf-8"))
    change(data)
    with pytest.raises(PromptFileError, match=message) as info:
        prompt_file.from_json(data)
    assert type(info.value) is PromptFileError


@pytest.mark.parametrize("template", ["", "{text}", "{text} [T] [T]", "[P] {text} [P]", "{text [T] [T][P]", "}[P]"])
def test_a_template_the_parser_refuses_is_a_prompt_file_error(saved: Path, template: str) -> None:
    """A template Prompt would refuse with a TemplateError (found by the fuzz test: "" escaped as one)."""
    data = json.loads(saved.read_text(encoding="utf-8"))
    data["template"] = template
    with pytest.raises(PromptFileError, match="^field template: template ") as info:
        prompt_file.from_json(data)
    assert type(info.value) is PromptFileError
    write_json(saved, data)
    with pytest.raises(PromptFileError, match=f"^{saved}: field template: ") as info:
        read_prompt_file(saved)
    assert type(info.value) is PromptFileError


@pytest.mark.parametrize("data", [[], "text", None, 3])
def test_top_level_not_an_object(tmp_path: Path, data: Any) -> None:
    with pytest.raises(PromptFileError, match="JSON object"):
        read_prompt_file(write_json(tmp_path / "p.prompt.json", data))


def test_truncated_json_names_the_line(saved: Path) -> None:
    text = saved.read_text(encoding="utf-8")
    cut = text[: text.index('"chat"')]
    saved.write_text(cut, encoding="utf-8")
    line = cut.count("\n") + 1
    with pytest.raises(PromptFileError, match=f"^{saved}:{line}: not valid JSON"):
        read_prompt_file(saved)


def test_not_utf8(saved: Path) -> None:
    saved.write_bytes(saved.read_bytes().replace(b"fun \xe2\x9c\x93", b"fun \xff\xfe"))
    with pytest.raises(PromptFileError, match="not UTF-8"):
        read_prompt_file(saved)


def test_deeply_nested_json(tmp_path: Path) -> None:
    path = tmp_path / "bomb.prompt.json"
    path.write_text("[" * 100_000, encoding="utf-8")
    with pytest.raises(PromptFileError, match="nested too deeply"):
        read_prompt_file(path)


def test_too_big(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prompt_file, "MAX_BYTES", 100)
    with pytest.raises(PromptFileError, match="too big"):
        read_prompt_file(saved)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(PromptFileError, match="no such prompt file"):
        read_prompt_file(tmp_path / "nope.prompt.json")
    (tmp_path / "dir.prompt.json").mkdir()
    with pytest.raises(PromptFileError, match="cannot read"):
        read_prompt_file(tmp_path / "dir.prompt.json")


# --- atomic writes ------------------------------------------------------------------------------------------


def test_save_leaves_no_temp_files(tmp_path: Path) -> None:
    pf = full_prompt_file()
    save_prompt_file(pf, tmp_path / "p.prompt.json")
    save_prompt_file(pf, tmp_path / "p.prompt.json")  # overwrite
    save_prompt_file(pf, tmp_path / "sub" / "q.prompt.json")  # creates the folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.prompt.json", "sub"]
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["q.prompt.json"]


def test_failed_write_keeps_old_file(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = saved.read_bytes()

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    changed = full_prompt_file()
    changed.task_name = "other"
    with pytest.raises(AutoPromptError, match="cannot write \\(disk full\\)"):
        save_prompt_file(changed, saved)
    monkeypatch.undo()
    assert saved.read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]


def _leaf_paths(value: Any, path: tuple = ()) -> list[tuple]:
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    out = [path] if path else []
    for key, child in children:
        out += _leaf_paths(child, (*path, key))
    return out


def test_any_wrong_value_is_a_prompt_file_error(saved: Path) -> None:
    """Every value in the file replaced by each JSON type: it loads or raises PromptFileError, nothing else."""
    original = json.loads(saved.read_text(encoding="utf-8"))
    rejected = 0
    for path in _leaf_paths(original):
        for replacement in (None, -1, 2.5, True, "", "x", [], [1], {}, {"k": 1}):
            data = json.loads(json.dumps(original))
            _set(list(path), replacement)(data)
            try:
                prompt_file.from_json(json.loads(json.dumps(data)))
            except PromptFileError:
                pass
            write_json(saved, data)
            try:
                read_prompt_file(saved)
            except PromptFileError:
                rejected += 1
    assert rejected > 100


def test_written_files_get_the_usual_mode(tmp_path) -> None:
    """Atomic writes go through mkstemp (mode 0600); the result must be readable like any file."""
    import os
    import stat

    from autoprompt.files import write_atomic

    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644


def test_atomic_writes_sync_the_file_and_its_folder(tmp_path, monkeypatch) -> None:
    """A killed process or a power cut leaves the old file or the new one: data and rename both synced."""
    import os
    import stat

    from autoprompt.files import write_atomic

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(stat.S_ISDIR(os.fstat(fd).st_mode)) or real(fd))
    (tmp_path / "a.json").write_text("old", encoding="utf-8")
    write_atomic(tmp_path / "a.json", "new")
    assert synced == [False, True]
    assert (tmp_path / "a.json").read_text(encoding="utf-8") == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_ctrl_c_during_an_atomic_write_leaves_no_temporary_file(tmp_path, monkeypatch) -> None:
    """A signal that comes just after the temporary file is made (an interrupted hybrid once left a
    `.checkpoint.json.*.tmp` behind) takes effect once the write is done: the new file, no temporary one."""
    import signal
    import tempfile

    from autoprompt.files import write_atomic

    real = tempfile.mkstemp

    def made_then_interrupted(*args, **kwargs):
        made = real(*args, **kwargs)
        signal.raise_signal(signal.SIGINT)  # Python's handler raises KeyboardInterrupt at the next bytecode
        return made

    monkeypatch.setattr(tempfile, "mkstemp", made_then_interrupted)
    (tmp_path / "a.json").write_text("old", encoding="utf-8")
    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "a.json", "new")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    assert (tmp_path / "a.json").read_text(encoding="utf-8") == "new"
