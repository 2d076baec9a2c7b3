"""Every bad input: exit code 2, one ``error:`` line that says what and where, no traceback, nothing written.

Each case builds its files in a fresh folder and runs the CLI through click's runner. Cases pass
``-o env.out`` where the command takes it; that file (and its folder) must not exist afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from autoprompt.cli import main
from autoprompt.models import tokenizer_fingerprint
from autoprompt.prompt import ModelRef, Prompt
from autoprompt.prompt_file import PromptFile, to_json

ROWS = [
    {"text": "a great movie", "label": "positive"},
    {"text": "a terrible movie", "label": "negative"},
    {"text": "loved it", "label": "positive"},
]
TEMPLATE = "Review: {text}\nSentiment:[P]"
VERBALIZER = {"negative": ["terrible"], "positive": ["great"]}


@dataclass
class Env:
    """Where a case builds its files, and the models it may use."""

    tmp: Path
    causal: Path
    masked: Path
    fingerprint: str  # the causal model's tokenizer

    @property
    def out(self) -> Path:
        return self.tmp / "out" / "result.json"

    def task(self, template: str = TEMPLATE, *, verbalizer: dict | None = None, rows: list[dict] = ROWS,
             data: str | None = None, body: str | None = None) -> Path:
        """A task file (toy.py) over dev.jsonl; ``data`` is the raw JSONL, ``body`` the whole task file."""
        lines = "".join(json.dumps(row) + "\n" for row in rows)
        (self.tmp / "dev.jsonl").write_text(lines if data is None else data, encoding="utf-8")
        verbalizer = VERBALIZER if verbalizer is None else verbalizer
        path = self.tmp / "toy.py"
        path.write_text(body if body is not None else (
            "from pathlib import Path\n"
            "from autoprompt.task import Task, read_examples\n"
            f"task = Task(name='toy', template={template!r}, verbalizer={verbalizer!r},\n"
            "            splits={'dev': read_examples(Path(__file__).parent / 'dev.jsonl')})\n"), encoding="utf-8")
        return path

    def prompt(self, text: str | None = None, **changes) -> Path:
        """A prompt file for the tiny causal model (p.prompt.json); ``model`` and ``task`` changes are merged,
        other keys replaced."""
        prompt = Prompt(template=TEMPLATE, verbalizer=VERBALIZER, fields=("text",),
                        model=ModelRef(str(self.causal), str(self.causal), "causal", self.fingerprint))
        data = to_json(PromptFile(prompt, task_name="toy"))
        for key, value in changes.items():
            if key in ("model", "task"):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        path = self.tmp / "p.prompt.json"
        path.write_text(json.dumps(data, indent=2) if text is None else text, encoding="utf-8")
        return path

    def inputs(self, text: str) -> Path:
        path = self.tmp / "inputs.jsonl"
        path.write_text(text, encoding="utf-8")
        return path


@dataclass
class Run:
    args: list
    stdin: str | None = None


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Env], Run]
    expect: tuple[str, ...]  # words the error message must contain


def evaluate(*args) -> Callable[[Env], Run]:
    """evaluate TASK ... with -o env.out; an arg that is a callable is called with env."""
    return lambda env: Run(["evaluate", *[a(env) if callable(a) else a for a in args], "-o", env.out])


def _truncated(env: Env) -> Path:
    full = env.prompt().read_text(encoding="utf-8")
    return env.prompt(text="".join(full.splitlines(keepends=True)[:5]))


def _unwritable(env: Env) -> Run:
    (env.tmp / "out").write_text("a file where the output's folder should be", encoding="utf-8")
    return Run(["evaluate", env.task(), "--model", env.causal, "-o", env.out])


def _task_body(code: str) -> Callable[[Env], Path]:
    return lambda env: env.task(body=code)


def _predict(prompt: Callable[[Env], Path], source: Callable[[Env], Path] | str = "-",
             stdin: str | None = "a great movie\n") -> Callable[[Env], Run]:
    def build(env: Env) -> Run:
        src = source(env) if callable(source) else source
        return Run(["predict", "--prompt", prompt(env), src, "-o", env.out], stdin)
    return build


def _space(env: Env, text: str) -> Path:
    path = env.tmp / "space.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _optimize(*args) -> Callable[[Env], Run]:
    """optimize TASK --method template ...; its runs folder is env.out's, which must stay empty."""
    return lambda env: Run(["optimize", env.task(), "--method", "template", "--model", env.causal,
                            "--runs-dir", env.out.parent / "runs", *[a(env) if callable(a) else a for a in args]])


def _run_folder(env: Env) -> Path:
    """A (finished-looking) run folder to resume."""
    folder = env.tmp / "runs" / "20990101-000000-toy-trigger"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"method": "trigger", "task": "toy", "model": str(env.causal)}))
    return folder


def _empty_model_folder(env: Env) -> Path:
    folder = env.tmp / "empty-model"
    folder.mkdir()
    return folder


def _config_only_folder(env: Env) -> Path:
    folder = env.tmp / "cfg"
    folder.mkdir()
    (folder / "config.json").write_text((env.causal / "config.json").read_text(encoding="utf-8"), encoding="utf-8")
    return folder


def _generation_task(env: Env, rows: list[dict] | None = None, stop: tuple = ()) -> Path:
    """A generation task (gen.py) over answers.jsonl: field ``q``, answer ``a``, exact match."""
    rows = rows or [{"q": "a", "a": "A"}, {"q": "b", "a": "B"}]
    (env.tmp / "answers.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    path = env.tmp / "gen.py"
    path.write_text("from pathlib import Path\nfrom autoprompt.task import Task, read_examples\n"
                    "rows = read_examples(Path(__file__).parent / 'answers.jsonl', fields=['q'], answer='a')\n"
                    f"task = Task(name='gen', template='Q: {{q}}\\nA:[P]', metric='exact_match', stop={stop!r},\n"
                    "            splits={'dev': rows})\n", encoding="utf-8")
    return path


def _causal(env: Env) -> Path:
    return env.causal


def _masked(env: Env) -> Path:
    return env.masked


CASES = [
    # --- data and task files
    Case("field-not-in-data", evaluate(lambda e: e.task("{sentence} Sentiment:[P]"), "--model", _causal),
         ("toy.py", "{sentence}", "not in the data", "dev.jsonl:1", "fields are: text")),
    Case("label-not-in-verbalizer",
         evaluate(lambda e: e.task(rows=[*ROWS, {"text": "meh", "label": "neutral"}]), "--model", _causal),
         ("dev.jsonl:4", "'neutral'", "not in the verbalizer", "labels are: negative, positive")),
    Case("empty-data-file", evaluate(lambda e: e.task(data=""), "--model", _causal), ("dev.jsonl", "no examples")),
    Case("blank-data-file", evaluate(lambda e: e.task(data="\n  \n"), "--model", _causal), ("dev.jsonl", "no examples")),
    Case("missing-data-file",
         evaluate(_task_body("from autoprompt.task import Task, read_examples\n"
                             "task = Task(name='toy', template='{text}[P]', verbalizer={'a': ['a'], 'b': ['b']},\n"
                             "            splits={'dev': read_examples('/nonexistent/missing.jsonl')})\n"),
                  "--model", _causal),
         ("missing.jsonl", "no such file")),
    Case("malformed-jsonl-line",
         evaluate(lambda e: e.task(data=json.dumps(ROWS[0]) + '\n{"text": "oops", "label"\n'), "--model", _causal),
         ("dev.jsonl:2", "not valid JSON")),
    Case("jsonl-line-not-an-object",
         evaluate(lambda e: e.task(data=json.dumps(ROWS[0]) + "\n\n[1, 2]\n"), "--model", _causal),
         ("dev.jsonl:3", "expected a JSON object")),
    Case("jsonl-line-without-label",
         evaluate(lambda e: e.task(rows=[ROWS[0], {"text": "no label"}]), "--model", _causal),
         ("dev.jsonl:2", "missing field 'label'")),
    Case("task-file-raises",
         evaluate(_task_body("import json\n\nraise ValueError('boom')\n"), "--model", _causal),
         ("toy.py:3", "ValueError", "boom")),
    Case("task-file-raises-multiline-message",
         evaluate(_task_body("raise RuntimeError('first\\nsecond')\n"), "--model", _causal),
         ("toy.py:1", "first second")),
    Case("task-file-syntax-error", evaluate(_task_body("x = 1\ntask = (\n"), "--model", _causal),
         ("toy.py:2", "SyntaxError")),
    Case("task-file-without-task", evaluate(_task_body("name = 'toy'\n"), "--model", _causal),
         ("toy.py", "defines no `task`")),
    Case("task-not-a-Task", evaluate(_task_body("task = {'name': 'toy'}\n"), "--model", _causal),
         ("toy.py", "must be a Task", "dict")),
    Case("task-file-missing", evaluate(lambda e: e.tmp / "nope.py", "--model", _causal), ("nope.py", "no such file")),
    Case("unknown-task-name", evaluate("no_such_task", "--model", _causal), ("unknown task 'no_such_task'", "sst2")),
    Case("unknown-split", evaluate(lambda e: e.task(), "--split", "test", "--model", _causal),
         ("toy", "no split 'test'", "splits are: dev")),
    Case("limit-0", evaluate(lambda e: e.task(), "--limit", "0", "--model", _causal), ("--limit", "0")),
    # --- generation tasks (answers that are text)
    Case("generation-empty-answer", evaluate(lambda e: _generation_task(e, [{"q": "a", "a": "A"}, {"q": "b", "a": " "}]),
                                             "--model", _causal),
         ("answers.jsonl:2", "no target text")),
    Case("generation-empty-stop-string", evaluate(lambda e: _generation_task(e, stop=("",)), "--model", _causal),
         ("gen.py", "a stop string is empty")),
    Case("generation-answer-longer-than-context",
         evaluate(lambda e: _generation_task(e, [{"q": "a", "a": "word " * 600}]), "--model", _causal),
         ("answers.jsonl:1", "the answer is", "tokens; the model reads at most 512")),
    # --- templates
    Case("answer-slot-missing", evaluate(lambda e: e.task("Review: {text}"), "--model", _causal),
         ("toy.py", "no [P] answer slot")),
    Case("answer-slot-repeated", evaluate(lambda e: e.task("[P] {text} [P]"), "--model", _causal),
         ("toy.py", "2 [P] slots")),
    Case("answer-slot-not-at-end-causal", evaluate(lambda e: e.task("[P] is how {text} feels"), "--model", _causal),
         ("dev.jsonl:1", "[P] must end the template", "causal LM")),
    Case("unbalanced-brace", evaluate(lambda e: e.task("Review: {text [P]"), "--model", _causal),
         ("toy.py", "unbalanced '{'")),
    Case("multi-token-label-masked",
         evaluate(lambda e: e.task("{text} It was [P] .", verbalizer={"negative": ["terrible"],
                                                                      "positive": ["unbelievable"]}),
                  "--model", _masked),
         ("label 'positive'", "'unbelievable'", "6 tokens", "single-token label words")),
    # --- models
    Case("unknown-model-alias", evaluate(lambda e: e.task(), "--model", "smollm2-999m"),
         ("unknown model 'smollm2-999m'", "smollm2-135m")),
    Case("model-folder-without-config",
         evaluate(lambda e: e.task(), "--model", _empty_model_folder),
         ("empty-model", "no config.json")),
    Case("model-folder-without-weights",
         evaluate(lambda e: e.task(), "--model", _config_only_folder),
         ("cannot load model", "cfg")),
    Case("unknown-device", evaluate(lambda e: e.task(), "--model", _causal, "--device", "quantum"),
         ("unknown device 'quantum'",)),
    Case("output-folder-is-a-file", _unwritable, ("result.json", "cannot write")),
    # --- prompt files
    Case("prompt-file-other-version",
         evaluate(lambda e: e.task(), "--prompt", lambda e: e.prompt(format="autoprompt.prompt/v9")),
         ("p.prompt.json", "'autoprompt.prompt/v9'", "not one this version reads")),
    Case("prompt-file-not-a-prompt-file",
         evaluate(lambda e: e.task(), "--prompt", lambda e: e.prompt(format="something/else")),
         ("p.prompt.json", "not an autoprompt prompt file")),
    Case("prompt-file-wrong-fingerprint",
         evaluate(lambda e: e.task(), "--prompt", lambda e: e.prompt(model={"tokenizer_fingerprint": "sha256:00"})),
         ("p.prompt.json", "tokenizer", "sha256:00", "not the one the prompt was made for")),
    Case("prompt-file-truncated", evaluate(lambda e: e.task(), "--prompt", _truncated),
         ("p.prompt.json:6", "not valid JSON")),
    Case("prompt-file-missing", evaluate(lambda e: e.task(), "--prompt", lambda e: e.tmp / "nope.prompt.json"),
         ("nope.prompt.json", "no such prompt file")),
    Case("prompt-file-bad-field-type",
         evaluate(lambda e: e.task(), "--prompt", lambda e: e.prompt(chat="yes")),
         ("p.prompt.json", "chat must be bool")),
    Case("prompt-file-for-a-masked-lm",
         evaluate(lambda e: e.task(), "--prompt", lambda e: e.prompt(model={"kind": "masked"})),
         ("p.prompt.json", "made for a masked LM", "causal")),
    Case("prompt-file-trigger-outside-vocab",
         evaluate(lambda e: e.task(), "--prompt",
                  lambda e: e.prompt(template="Review: {text} [T]\nSentiment:[P]",
                                     triggers=[{"id": 10**9, "text": "?"}])),
         ("p.prompt.json", "trigger ids [1000000000]", "outside the vocabulary")),
    Case("prompt-labels-not-the-tasks",
         evaluate(lambda e: e.task(), "--prompt", lambda e: e.prompt(verbalizer={"no": ["no"], "yes": ["yes"]})),
         ("dev.jsonl:1", "'positive'", "not one of the prompt's labels")),
    Case("prompt-fields-not-the-tasks",
         evaluate(lambda e: e.task(), "--prompt",
                  lambda e: e.prompt(template="Review: {sentence}\nSentiment:[P]", task={"fields": ["sentence"]})),
         ("dev.jsonl:1", "{sentence}", "fields are: text")),
    # --- predict
    Case("predict-without-prompt", lambda e: Run(["predict", "-", "-o", e.out], "hi\n"), ("--prompt",)),
    Case("predict-input-file-missing", _predict(Env.prompt, lambda e: e.tmp / "nope.jsonl"),
         ("nope.jsonl", "No such file")),
    Case("predict-malformed-json-line", _predict(Env.prompt, lambda e: e.inputs('{"text": "ok"}\n{"text": \n')),
         ("inputs.jsonl:2", "not valid JSON")),
    Case("predict-malformed-json-stdin", _predict(Env.prompt, "-", 'plain\n\n{"text" "x"}\n'),
         ("<stdin>:3", "not valid JSON")),
    Case("predict-input-missing-field",
         _predict(Env.prompt, lambda e: e.inputs('{"text": "a"}\n\n{"txt": "b"}\n'), stdin=None),
         ("inputs.jsonl:3", "missing field(s) text")),
    Case("predict-plain-text-for-two-fields",
         _predict(lambda e: e.prompt(template="{title}: {text}\nSentiment:[P]", task={"fields": ["title", "text"]}),
                  lambda e: e.inputs("just text\n")),
         ("inputs.jsonl:1", "one-field prompt", "title, text")),
    Case("predict-prompt-other-version", _predict(lambda e: e.prompt(format="autoprompt.prompt/v9")),
         ("p.prompt.json", "'autoprompt.prompt/v9'")),
    Case("predict-prompt-wrong-fingerprint",
         _predict(lambda e: e.prompt(model={"tokenizer_fingerprint": "sha256:00"})),
         ("p.prompt.json", "tokenizer", "allow_tokenizer_mismatch")),
    Case("predict-prompt-truncated", _predict(_truncated), ("p.prompt.json:6", "not valid JSON")),
    # --- optimize --method template
    Case("template-space-missing", _optimize("--space", lambda e: e.tmp / "nope.yaml"),
         ("nope.yaml", "no such search space file", "default, demo, facts, sentiment")),
    Case("template-space-unknown-key", _optimize("--space", lambda e: _space(e, "colour: [red]\n")),
         ("space.yaml", "unknown key(s) colour")),
    Case("template-space-layout-without-answer", _optimize("--space", lambda e: _space(e, "layout: ['{text}']\n")),
         ("space.yaml", "no [P] answer slot")),
    Case("template-space-field-the-task-lacks",
         _optimize("--space", lambda e: _space(e, "layout: ['{title}: {text}[P]']\n")),
         ("space.yaml", "uses title", "its fields: text")),
    Case("template-space-empty-list", _optimize("--space", lambda e: _space(e, "instruction: []\n")),
         ("space.yaml", "instruction is an empty list")),
    Case("template-space-bad-yaml", _optimize("--space", lambda e: _space(e, "layout: ['{text}[P]'\n")),
         ("space.yaml", "not valid YAML")),
    Case("template-storage-not-a-url", _optimize("--storage", "mysql-somewhere"), ("storage 'mysql-somewhere'",)),
    Case("template-with-a-trigger-flag", _optimize("--steps", "3"),
         ("--method template does not use --steps", "setting of --method trigger or hybrid")),
    Case("template-with-search-labels", _optimize("--search-labels"), ("--method template does not use --search-labels",)),
    Case("trigger-with-a-template-flag", lambda e: Run(["optimize", e.task(), "--method", "trigger", "--model", e.causal,
                                                        "--trials", "3",
                                                        "--runs-dir", e.out.parent / "runs"]),
         ("--method trigger does not use --trials", "setting of --method template or hybrid")),
    Case("resume-with-a-changed-setting", lambda e: Run(["optimize", e.task(), "--resume", _run_folder(e), "--steps", "9"]),
         ("continues the run with the settings it was started with", "--steps cannot change them")),
    Case("template-resume-not-a-run", lambda e: Run(["optimize", e.task(), "--resume", e.tmp, "--model", e.causal]),
         ("not a run folder",)),
    Case("dashboard-not-a-run", lambda e: Run(["dashboard", e.tmp]), ("not a run folder",)),
    # --- runs and export
    Case("runs-list-missing-folder", lambda e: Run(["runs", "list", "--dir", e.tmp / "nope"]), ("nope", "no such runs folder")),
    Case("runs-show-unknown-run", lambda e: Run(["runs", "show", "20990101-000000-x", "--dir", e.tmp]),
         ("20990101-000000-x", "no such run folder", "runs list")),
    Case("runs-show-not-a-run", lambda e: Run(["runs", "show", e.tmp]), ("not a run folder",)),
    Case("runs-show-model-folder", lambda e: Run(["runs", "show", e.causal]), ("not a run folder", "method")),
    Case("runs-compare-one-unknown", lambda e: Run(["runs", "compare", e.tmp / "nope", "--markdown"]),
         ("nope", "no such run folder")),
    Case("runs-report-not-a-run", lambda e: Run(["runs", "report", e.tmp]), ("not a run folder",)),
    Case("export-unknown-format", lambda e: Run(["export", e.prompt(), "--format", "xml", "-o", e.out]),
         ("unknown export format 'xml'", "json, langchain, text, promptfoo")),
    Case("export-unknown-run", lambda e: Run(["export", e.tmp / "nope", "--format", "text", "-o", e.out]),
         ("nope", "no such run folder")),
    Case("export-bad-prompt-file", lambda e: Run(["export", _truncated(e), "--format", "text", "-o", e.out]),
         ("p.prompt.json:6", "not valid JSON")),
    Case("export-promptfoo-unknown-task",
         lambda e: Run(["export", e.prompt(), "--format", "promptfoo", "-o", e.out]),
         ("unknown task 'toy'", "pass --task")),
    Case("optimize-seeds-not-numbers", _optimize("--seeds", "0,one"), ("--seeds '0,one'", "e.g. 0,1,2")),
    Case("optimize-seeds-and-seed", _optimize("--seeds", "0,1", "--seed", "3"), ("--seeds cannot go with --seed",)),
    Case("predict-unknown-model",
         lambda e: Run(["predict", "--prompt", e.prompt(), "--model", "no-such-model", "-", "-o", e.out], "hi\n"),
         ("unknown model 'no-such-model'",)),
]


@pytest.fixture(scope="module")
def causal_fingerprint(tiny_causal_dir: Path) -> str:
    from transformers import AutoTokenizer

    return tokenizer_fingerprint(AutoTokenizer.from_pretrained(str(tiny_causal_dir)))


def test_case_names_are_unique() -> None:
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input(case: Case, tmp_path: Path, tiny_causal_dir: Path, tiny_masked_dir: Path,
                   causal_fingerprint: str) -> None:
    env = Env(tmp_path, tiny_causal_dir, tiny_masked_dir, causal_fingerprint)
    run = case.build(env)
    result = CliRunner().invoke(main, [str(arg) for arg in run.args], input=run.stdin)

    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stdout == ""  # no half report, no half predictions
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    message = lines[-1]
    assert message.startswith(("error: ", "Error: ")), result.stderr
    if message.startswith("error: "):  # ours: exactly one line, and it is the last
        assert [line for line in lines if line.startswith("error")] == [message]
    for word in case.expect:
        assert word in message, f"{word!r} not in {message!r}"
    assert not env.out.exists()
    assert not env.out.parent.is_dir() or not any(env.out.parent.iterdir())  # no temp files either
