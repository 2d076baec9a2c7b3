"""The command line: evaluate, predict and models on tiny random models, through click's runner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
from click.testing import CliRunner, Result

from autoprompt import read_prompt_file
from autoprompt.cli import main

ROWS = [
    {"text": "a great movie", "label": "positive"},
    {"text": "a terrible movie", "label": "negative"},
    {"text": "loved every minute", "label": "positive"},
    {"text": "dull and far too long", "label": "negative"},
    {"text": "a wonderful cast", "label": "positive"},
]
CAUSAL_TEMPLATE = "Review: {text}\nSentiment:[P]"
MASKED_TEMPLATE = "{text} It was [P] ."
VERBALIZER = {"negative": ["terrible"], "positive": ["great"]}


def write_task(folder: Path, template: str, *, name: str = "toy", rows: list[dict] = ROWS) -> Path:
    """A task file and its dev data in ``folder``; returns the task file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dev.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    task = folder / f"{name}.py"
    task.write_text(
        "from pathlib import Path\n"
        "from autoprompt.task import Task, read_examples\n"
        f"task = Task(name={name!r}, template={template!r}, verbalizer={VERBALIZER!r},\n"
        "            splits={'dev': read_examples(Path(__file__).parent / 'dev.jsonl')})\n",
        encoding="utf-8",
    )
    return task


def invoke(*args: object, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], input=stdin)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.output, result.exception)
    assert "Traceback" not in result.output
    return result


def one_json(result: Result) -> dict:
    """The whole of stdout is one JSON object."""
    report = json.loads(result.stdout)
    assert isinstance(report, dict)
    return report


class Setup(NamedTuple):
    task: Path
    model: Path
    kind: str


@pytest.fixture(params=["causal", "masked"])
def setup(request: pytest.FixtureRequest, tmp_path: Path, tiny_causal_dir: Path, tiny_masked_dir: Path) -> Setup:
    """A task file and a model folder, for each kind of LM."""
    if request.param == "causal":
        return Setup(write_task(tmp_path / "task", CAUSAL_TEMPLATE), tiny_causal_dir, "causal")
    return Setup(write_task(tmp_path / "task", MASKED_TEMPLATE), tiny_masked_dir, "masked")


@pytest.fixture
def prompt_file(setup: Setup, tmp_path: Path) -> Path:
    path = tmp_path / "out" / "toy.prompt.json"
    ok(invoke("evaluate", setup.task, "--model", setup.model, "-o", path, "--json"))
    return path


# --- evaluate -----------------------------------------------------------------------------------------------


def test_evaluate_json_is_one_object(setup: Setup) -> None:
    task, model, _ = setup
    report = one_json(ok(invoke("evaluate", task, "--split", "dev", "--json", "--model", model)))
    assert report["task"] == "toy" and report["split"] == "dev"
    assert report["n_examples"] == len(ROWS)
    assert 0.0 <= report["metrics"]["accuracy"] <= 1.0
    assert list(report["metrics"])[0] == "accuracy"  # the task's metric first
    assert report["prompt_file"] is None


def test_evaluate_limit(setup: Setup) -> None:
    task, model, _ = setup
    report = one_json(ok(invoke("evaluate", task, "--limit", 2, "--json", "--model", model)))
    assert report["n_examples"] == 2
    assert report["metrics"]["accuracy"] in (0.0, 0.5, 1.0)


def test_evaluate_text_report(setup: Setup) -> None:
    task, model, _ = setup
    result = ok(invoke("evaluate", task, "--model", model))
    assert "toy [dev, 5 examples]" in result.stdout
    assert "accuracy:" in result.stdout and "macro_f1:" in result.stdout


def test_evaluate_writes_prompt_file(setup: Setup, tmp_path: Path) -> None:
    task, model, _ = setup
    path = tmp_path / "runs" / "toy.prompt.json"  # the folder does not exist yet
    report = one_json(ok(invoke("evaluate", task, "--model", model, "-o", path, "--json")))
    assert report["prompt_file"] == str(path)
    saved = read_prompt_file(path)
    assert saved.prompt.template == report["template"]
    assert saved.prompt.verbalizer == VERBALIZER
    assert saved.prompt.fields == ("text",)
    assert saved.prompt.model.kind == setup.kind
    assert saved.metrics == {"dev": report["metrics"]}
    assert saved.task_name == "toy" and saved.search["method"] == "manual"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left


def test_evaluate_uses_the_prompt_files_prompt(setup: Setup, prompt_file: Path, tmp_path: Path) -> None:
    model = setup.model
    first = read_prompt_file(prompt_file)
    # same data, another manual template: --prompt must win over the task's template
    other = write_task(tmp_path / "other", "Text: {text} Label: [P]", name="other")
    report = one_json(ok(invoke("evaluate", other, "--prompt", prompt_file, "--model", model, "--json")))
    assert report["template"] == first.prompt.template
    assert report["metrics"] == pytest.approx(first.metrics["dev"])


def test_evaluate_prompt_file_names_its_model(setup: Setup, prompt_file: Path) -> None:
    report = one_json(ok(invoke("evaluate", setup.task, "--prompt", prompt_file, "--json")))  # no --model
    assert report["model"] == read_prompt_file(prompt_file).prompt.model.name


def test_quiet_keeps_stderr_clean(tiny_causal_dir: Path, tmp_path: Path) -> None:
    task = write_task(tmp_path, CAUSAL_TEMPLATE)
    result = ok(invoke("-q", "evaluate", task, "--model", tiny_causal_dir, "--json"))
    assert "loaded" not in result.stderr
    one_json(result)


# --- predict ------------------------------------------------------------------------------------------------


def test_predict_stdin_text_and_json(prompt_file: Path) -> None:
    stdin = 'a great movie\n\n   \n{"text": "a terrible movie"}\nplain again\n'
    result = ok(invoke("predict", "--prompt", prompt_file, "-", stdin=stdin))
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["input"] for line in lines] == ["a great movie", {"text": "a terrible movie"}, "plain again"]
    for line in lines:
        probabilities = line["probabilities"]
        assert set(probabilities) == set(VERBALIZER)
        assert sum(probabilities.values()) == pytest.approx(1.0)
        assert line["prediction"] == max(probabilities, key=probabilities.get)


def test_predict_default_source_is_stdin(prompt_file: Path) -> None:
    result = ok(invoke("predict", "--prompt", prompt_file, stdin="a great movie\n"))
    assert len(result.stdout.splitlines()) == 1


def test_predict_batches_give_the_same_answers(prompt_file: Path) -> None:
    stdin = "".join(f"{row['text']}\n" for row in ROWS)
    whole = ok(invoke("predict", "--prompt", prompt_file, "-", stdin=stdin))
    one_by_one = ok(invoke("predict", "--prompt", prompt_file, "--batch-size", 1, "-", stdin=stdin))
    a = [json.loads(line) for line in whole.stdout.splitlines()]
    b = [json.loads(line) for line in one_by_one.stdout.splitlines()]
    assert [x["prediction"] for x in a] == [x["prediction"] for x in b]
    for x, y in zip(a, b, strict=True):
        assert x["probabilities"] == pytest.approx(y["probabilities"], abs=1e-5)


def test_predict_to_file(prompt_file: Path, tmp_path: Path) -> None:
    source = tmp_path / "inputs.jsonl"
    source.write_text('{"text": "a great movie"}\n\n{"text": "dull"}\n', encoding="utf-8")
    out = tmp_path / "preds" / "out.jsonl"
    result = ok(invoke("predict", "--prompt", prompt_file, source, "-o", out))
    assert result.stdout == ""
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [line["input"]["text"] for line in lines] == ["a great movie", "dull"]
    assert all(sum(line["probabilities"].values()) == pytest.approx(1.0) for line in lines)
    assert [p.name for p in out.parent.iterdir()] == ["out.jsonl"]


def test_predict_empty_input_writes_nothing(prompt_file: Path) -> None:
    result = ok(invoke("predict", "--prompt", prompt_file, "-", stdin="\n\n"))
    assert result.stdout == ""


# --- models and help ----------------------------------------------------------------------------------------


def test_models_json() -> None:
    report = one_json(ok(invoke("models", "--json")))
    aliases = {row["alias"]: row for row in report["models"]}
    assert "smollm2-135m" in aliases
    assert set(aliases["smollm2-135m"]) >= {"installed", "cached", "install", "description"}
    assert report["cache"]


def test_models_table() -> None:
    assert "smollm2-135m" in ok(invoke("models")).stdout


@pytest.mark.parametrize("command", [[], ["evaluate"], ["predict"], ["models"]])
def test_help(command: list[str]) -> None:
    result = ok(invoke(*command, "--help"))
    assert result.stdout.startswith("Usage:")
    for option in {"evaluate": ["--json", "--limit", "--prompt", "-o"], "predict": ["--prompt", "--batch-size"],
                   "models": ["--json"]}.get(command[0] if command else "", ["evaluate", "predict", "models"]):
        assert option in result.stdout


def test_real_process_exit_code_and_one_error_line(tmp_path: Path) -> None:
    """Outside click's runner too: exit code 2, one line on stderr, no traceback."""
    missing = tmp_path / "missing.py"
    proc = subprocess.run([sys.executable, "-m", "autoprompt.cli", "evaluate", str(missing)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [f"error: {missing}: no such file"]


# --- optimize and labels ------------------------------------------------------------------------------------

def write_full_task(folder: Path, template: str) -> Path:
    """A task file with train, dev and test splits (the searches need all three)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS), encoding="utf-8")
    task = folder / "full.py"
    task.write_text(
        "from pathlib import Path\n"
        "from autoprompt.task import Task, read_examples\n"
        "rows = read_examples(Path(__file__).parent / 'rows.jsonl')\n"
        f"task = Task(name='full', template={template!r}, verbalizer={VERBALIZER!r},\n"
        "            splits={'train': rows, 'dev': rows, 'test': rows})\n",
        encoding="utf-8",
    )
    return task


def test_optimize_trigger_json_and_resume(tiny_causal_dir: Path, tmp_path: Path) -> None:
    task = write_full_task(tmp_path / "task", CAUSAL_TEMPLATE)
    flags = ["--method", "trigger", "--confidence", 0, "--model", tiny_causal_dir, "--steps", 2, "--n-triggers", 2, "--top-k", 4, "--dev-every", 1,
             "--runs-dir", tmp_path / "runs", "--json"]
    report = one_json(ok(invoke("optimize", task, *flags)))
    run = Path(report["run"])
    assert Path(report["prompt_file"]) == run / "best.prompt.json" and Path(report["prompt_file"]).exists()
    assert len(report["triggers"]) == 2 and report["template"].count("[T]") == 2
    assert set(report["metrics"]) == {"dev", "untouched", "test"} == set(report["baseline"])
    config = json.loads((run / "config.json").read_text())
    assert config["seed"] == 0 and config["trigger"]["steps"] == 2 and config["model"] == str(tiny_causal_dir)
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2]
    assert json.loads((run / "result.json").read_text())["state"] == "finished"
    again = one_json(ok(invoke("optimize", task, "--resume", run, "--json")))  # nothing left to do
    assert again["triggers"] == report["triggers"] and again["run"] == str(run)


@pytest.mark.parametrize("flag, value", [("--time-budget", "soon"), ("--steps", "0"), ("--top-k", "-3"),
                                         ("--mode", "beam")])
def test_optimize_rejects_bad_flags(tiny_causal_dir: Path, tmp_path: Path, flag: str, value: str) -> None:
    task = write_full_task(tmp_path / "task", CAUSAL_TEMPLATE)
    result = invoke("optimize", task, "--method", "trigger", "--model", tiny_causal_dir, "--runs-dir", tmp_path / "runs",
                    flag, value)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_time_budget_parses_durations() -> None:
    from autoprompt.cli.options import Duration as _Duration

    assert [_Duration().convert(v, None, None) for v in ("90", "90s", "10m", "1.5h")] == [90, 90, 600, 5400]


def test_labels_command(tiny_causal_dir: Path, tmp_path: Path) -> None:
    task = write_full_task(tmp_path / "task", CAUSAL_TEMPLATE)
    report = one_json(ok(invoke("labels", task, "--model", tiny_causal_dir, "--top-k", 3, "--json")))
    assert set(report["words"]) == {"negative", "positive"}
    assert all(len(words) == 3 for words in report["words"].values())
    assert report["verbalizer"] == {label: [words[0][0]] for label, words in report["words"].items()}


def test_dashboard_needs_a_study_and_says_how_to_install_it(tmp_path):
    import importlib.util
    import json as _json

    trigger_run = tmp_path / "trigger-run"
    trigger_run.mkdir()
    (trigger_run / "config.json").write_text(_json.dumps({"method": "trigger"}), encoding="utf-8")
    result = invoke("dashboard", trigger_run)
    assert result.exit_code == 2 and "has no Optuna study" in result.output
    if importlib.util.find_spec("optuna_dashboard") is not None:
        pytest.skip("optuna-dashboard is installed: the install hint is not shown")
    template_run = tmp_path / "template-run"
    template_run.mkdir()
    (template_run / "config.json").write_text(_json.dumps({"method": "template"}), encoding="utf-8")
    result = invoke("dashboard", template_run)
    assert result.exit_code == 2
    assert "pip install 'autoprompt[dashboard]'" in result.output
