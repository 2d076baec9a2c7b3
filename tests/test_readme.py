"""Every command the README (and docs/*.md) shows is run here, so a documented command that breaks fails CI.

- Concrete commands (``$ ...`` lines of console blocks, and inline code such as ``autoprompt optimize sst2``)
  run through the real CLI in one scratch folder, in the order a reader would run them: first what makes
  prompt files and runs, then what reads them. They run on the tiny test models with small budgets
  (``adapt``); run names of this project's own runs stand for a run of the same task and method made here.
- CLI reference lines with placeholders (``autoprompt evaluate TASK [--split ...]``) are checked against
  ``--help``: the command and every flag they name exist.
- ``make`` targets exist; ``make demo``'s own commands run on the tiny model.
- Python blocks that use autoprompt run, with the embedded model swapped for the tiny one.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from autoprompt import task as task_module
from autoprompt.cli import main
from autoprompt.optimizer import DEFAULT_METHOD

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*```(\S*)\s*$")
PLACEHOLDER = re.compile(r"\[|\||\.\.\.|\$|\b[A-Z][A-Z_]{1,}\b")
COMMAND = re.compile(r"^(?:\.venv/bin/)?autoprompt [a-z]|^make [a-z]")
RUN_ID = re.compile(r"^\d{8}-\d{6}-(?P<task>.+)-(?P<method>trigger|template|hybrid|manual|soft|lora)(-\d+)?$")
BUILTIN_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class Doc:
    """One command or code block, and where it is."""

    where: str
    kind: str  # "run" | "reference" | "make" | "python"
    text: str


def documented() -> list[Doc]:
    out: list[Doc] = []
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        block: str | None = None
        body: list[str] = []
        for n, line in enumerate(lines, 1):
            where = f"{path.relative_to(ROOT)}:{n}"
            fence = FENCE.match(line)
            if fence:
                if block is None:
                    block, body, start = fence.group(1) or "text", [], where
                    continue
                if block == "python" and any("autoprompt" in b for b in body):
                    out.append(Doc(start, "python", "\n".join(body)))
                block = None
                continue
            if block is not None:
                body.append(line)
                if block in ("console", "shell", "sh", "bash") and line.lstrip().startswith("$ "):
                    text = line.lstrip()[2:]
                    if not COMMAND.match(text.split("|")[-1].strip().removeprefix(".venv/bin/")):
                        continue  # pip install ...: the install is CI's own check (.ci/run)
                    k = n
                    while text.endswith("\\"):  # a command continued on the next lines
                        text = text[:-1] + " " + lines[k].strip()
                        k += 1
                    out.append(_command(where, text))
                continue
            if line.startswith("    ") and COMMAND.match(line.strip()):
                out.append(_command(where, line.strip().split("  #")[0].strip()))
            for code in re.findall(r"`([^`]+)`", line):
                if COMMAND.match(code):  # `autoprompt runs` in a sentence names a command: a reference
                    doc = _command(where, code)
                    out.append(Doc(where, "reference", code) if len(code.split()) == 2 and doc.kind == "run" else doc)
    return out


def _command(where: str, text: str) -> Doc:
    text = text.split(" #")[0].strip().rstrip("&").strip()
    if text.startswith("make "):
        return Doc(where, "make", text)
    command = text.split("|")[-1].strip() if "|" in text and not text.startswith("autoprompt") else text
    return Doc(where, "reference" if PLACEHOLDER.search(command.replace("[T]", "").replace("[P]", "")) else "run", text)


DOCUMENTED = documented()


def test_the_docs_show_commands() -> None:
    kinds = {d.kind for d in DOCUMENTED}
    assert {"run", "reference", "make", "python"} <= kinds, kinds


# --- reference lines: the command and its flags exist -----------------------------------------

def _options(words: list[str]) -> set[str]:
    command = main
    for word in words:
        if isinstance(command, __import__("click").Group) and word in command.commands:
            command = command.commands[word]
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}


@pytest.mark.parametrize("doc", [d for d in DOCUMENTED if d.kind == "reference"], ids=lambda d: d.where)
def test_reference_lines_name_real_commands_and_flags(doc: Doc) -> None:
    words = doc.text.split()
    assert words[0] == "autoprompt" and words[1] in main.commands, doc
    names = [w for w in words[1:3] if re.fullmatch(r"[a-z]+(-[a-z]+)*", w)]  # (compare-methods)
    options = _options(names)
    for flag in re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", doc.text):
        assert flag in options, f"{doc.where}: {flag} is not an option of autoprompt {' '.join(names)}"


# --- make targets ------------------------------------------------------------------------------

@pytest.mark.parametrize("doc", [d for d in DOCUMENTED if d.kind == "make"], ids=lambda d: d.where)
def test_make_targets_exist(doc: Doc) -> None:
    target = doc.text.split()[1]
    assert re.search(rf"^{re.escape(target)}:", (ROOT / "Makefile").read_text(), re.M), doc


# --- concrete commands, run -------------------------------------------------------------------

class Workspace:
    """The scratch folder the commands run in, the tiny models, and the runs made so far."""

    def __init__(self, folder: Path, causal: Path) -> None:
        self.folder, self.causal = folder, causal

    def runs(self) -> list[Path]:
        return sorted({p.parent for p in (self.folder / "runs").rglob("config.json")})

    def run_like(self, name: str) -> str:
        """A run made here of the task and method a documented run name says."""
        import json

        m = RUN_ID.match(name)
        for run in self.runs():
            config = json.loads((run / "config.json").read_text())
            if config.get("task") == m["task"] and config.get("method") == m["method"]:
                return str(run)
        raise AssertionError(f"no {m['method']} run of {m['task']} was made before it is used: {name}")


SMALL = {  # small budgets for the tiny model: (flag, value, the methods that take it)
    "--steps": ("2", ("trigger", "hybrid")), "--dev-limit": ("30", ("trigger", "hybrid")),
    "--trials": ("3", ("template", "hybrid")), "--trial-dev": ("20", ("template", "hybrid")),
    "--epochs": ("1", ("soft", "lora")),
}


def adapt(words: list[str], ws: Workspace) -> list[str]:
    """A documented command as it runs here: tiny model, small budgets, runs made here."""
    words = [w.removeprefix(".venv/bin/") for w in words]
    assert words[0] == "autoprompt"
    args = [ws.run_like(w) if RUN_ID.match(w) else w for w in words[1:]]
    sub = args[0]
    if sub in ("evaluate", "optimize", "labels", "bench", "compare-methods", "demos") and "--model" not in args \
            and "--resume" not in args:
        args += ["--model", str(ws.causal)]
    if sub == "optimize":
        method = args[args.index("--method") + 1] if "--method" in args else DEFAULT_METHOD
        for flag, (value, methods) in SMALL.items():
            if method in methods:
                args = _set(args, flag, value)
        args = [re.sub(r"^postgresql\S*", f"sqlite:///{ws.folder / 'shared.db'}", a) for a in args]
        if "--seeds" in args:
            args = _set(args, "--seeds", "0,1")
    if sub == "compare-methods":  # (the small sst2's dev has 14 negative reviews; 3 s a run, whatever the budget)
        if "--total-budget" in args:
            at = args.index("--total-budget")
            args = args[:at] + args[at + 2:]
        args = _set(_set(args, "--shots", "4"), "--time-budget", "3")
    if sub == "demos":  # (one seed on a few examples: the study's cells, not its numbers)
        args = _set(_set(args, "--seeds", "0"), "--limit", "8")
    if sub == "bench":
        args += ["--rounds", "1", "--examples", "4", "--candidates", "3"]
    return args


def _set(args: list[str], flag: str, value: str) -> list[str]:
    if flag in args:
        args = list(args)
        args[args.index(flag) + 1] = value
        return args
    return [*args, flag, value]


def _order(doc: Doc) -> int:
    """Commands that make prompt files and runs come before those that read them."""
    sub = doc.text.removeprefix(".venv/bin/").split("|")[-1].split()
    first = sub[1] if sub and sub[0] in ("autoprompt", ".venv/bin/autoprompt") else ""
    if first == "tasks":  # (copies the example data the others read)
        return -1
    return 0 if first in ("evaluate", "optimize", "labels", "models", "bench", "compare-methods") else 1


def run_documented(doc: Doc, ws: Workspace) -> str | None:
    """Run one documented command in the workspace; what went wrong, or None."""
    stdin = None
    text = doc.text
    if "|" in text and not text.startswith("autoprompt"):
        feed, text = (part.strip() for part in text.rsplit("|", 1))
        stdin = subprocess.run(feed, shell=True, capture_output=True, text=True, check=True, cwd=ws.folder).stdout
    args = adapt(shlex.split(text), ws)
    result = CliRunner().invoke(main, args, input=stdin)
    if result.exit_code != 0:
        return f"{doc.where}: {doc.text}\n  ran: autoprompt {shlex.join(args)}\n{result.output[-3000:]}"
    return None


RUNNABLE = sorted([d for d in DOCUMENTED if d.kind == "run"], key=_order)


SMALL_ROWS = {"train": 60, "dev": 40, "test": 40}


def small_builtin_tasks(folder: Path) -> Path:
    """(Into ``folder``, made.) The built-in tasks with the first rows of their data only (the same files, so the same commands;
    a tiny model scores 40 rows as well as 900, and much sooner), and the example data files."""
    source = ROOT / "tasks"
    folder.mkdir(parents=True, exist_ok=True)
    for task_file in source.glob("*.py"):
        (folder / task_file.name).write_text(task_file.read_text(encoding="utf-8"), encoding="utf-8")
    for data in (source / "data").rglob("*"):
        target = folder / data.relative_to(source)
        if data.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        lines = data.read_text(encoding="utf-8").splitlines(keepends=True)
        split = next((s for s in SMALL_ROWS if data.name.startswith(s) or f".{s}." in data.name), None)
        keep = SMALL_ROWS[split] if split else 1 + 90 if data.suffix == ".csv" else len(lines)
        target.write_text("".join(lines[:keep]), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_causal_dir: Path) -> Workspace:
    """The scratch folder after every documented command ran in it, in order (later ones read what earlier
    ones made); ``failures`` says which did not work."""
    ws = Workspace(tmp_path_factory.mktemp("readme"), tiny_causal_dir)
    small = small_builtin_tasks(tmp_path_factory.mktemp("tasks"))
    (ws.folder / "search").symlink_to(ROOT / "search")  # the README's commands run in a checkout
    (ws.folder / "tasks").symlink_to(small)
    ws.failures, ws.ran, ws.seconds = [], [], {}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ws.folder)
        patch.setattr(task_module, "BUILTIN_TASKS_DIR", small)
        for doc in RUNNABLE:
            if doc.text not in ws.ran:
                ws.ran.append(doc.text)
                started = time.perf_counter()
                failure = run_documented(doc, ws)
                ws.seconds[doc.text] = time.perf_counter() - started
                if failure:
                    ws.failures.append(failure)
    return ws


def test_every_documented_command_runs(workspace: Workspace) -> None:
    for text, seconds in sorted(workspace.seconds.items(), key=lambda kv: -kv[1])[:8]:
        print(f"{seconds:6.1f} s  {text}")  # (pytest -s: where the time goes)
    assert len(workspace.ran) >= 3
    assert not workspace.failures, "\n\n".join(workspace.failures)


def test_the_demo_runs(tmp_path: Path, tiny_causal_dir: Path) -> None:
    """make demo's own commands, on the tiny model and the small built-in tasks (the Makefile is run with an
    autoprompt that adds --model)."""
    small = small_builtin_tasks(tmp_path / "tasks")
    wrapper = tmp_path / "bin" / "autoprompt"
    wrapper.parent.mkdir()
    wrapper.write_text(f"#!{sys.executable}\nimport sys\nfrom pathlib import Path\nfrom autoprompt.cli import main\n"
                       f"import autoprompt.task\nautoprompt.task.BUILTIN_TASKS_DIR = Path({str(small)!r})\n"
                       "args = sys.argv[1:]\n"
                       f"if args and args[0] == 'optimize': args += ['--model', {str(tiny_causal_dir)!r}]\n"
                       "sys.exit(main(args))\n", encoding="utf-8")
    wrapper.chmod(0o755)
    done = subprocess.run(["make", "-f", str(ROOT / "Makefile"), "-o", "install", "demo", f"BIN={wrapper.parent}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "prompt file:" in done.stdout


@pytest.mark.parametrize("doc", [d for d in DOCUMENTED if d.kind == "python"], ids=lambda d: d.where)
def test_python_blocks_run(doc: Doc, workspace: Workspace, monkeypatch) -> None:
    monkeypatch.chdir(workspace.folder)  # where the commands above wrote the files the blocks read
    code = doc.text.replace(repr(BUILTIN_MODEL), repr(str(workspace.causal))).replace(
        f'"{BUILTIN_MODEL}"', repr(str(workspace.causal)))
    shown = re.match(r"# (\S+\.py)\n", code)  # a block that shows a file of the project (a task file)
    namespace = {"__name__": "__readme__", "__file__": str(ROOT / shown.group(1)) if shown else "<readme>"}
    exec(compile(code, doc.where, "exec"), namespace)
    if shown and "task" in namespace:  # it builds the same task as the file it names
        from autoprompt.task import load_task

        real, task = load_task(ROOT / shown.group(1)), namespace["task"]
        assert (task.name, task.template, task.verbalizer, task.metric) == (real.name, real.template, real.verbalizer,
                                                                            real.metric)
        assert {s: len(e) for s, e in task.splits.items()} == {s: len(e) for s, e in real.splits.items()}
