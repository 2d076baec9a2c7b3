"""A run folder: one per job in runs/, with its config, an events log, checkpoints and results.

    runs/<timestamp>-<task>-<method>/
        config.json        the full resolved config (seed included), written once
        log.jsonl          one JSON object per step or trial, appended and fsync'ed
        checkpoint.json    the search state after the last step (atomic)
        study.db           a template search's Optuna study (unless --storage names a shared one)
        best.prompt.json   the best prompt so far (atomic)
        result.json        final metrics and state (finished / interrupted / failed); the work
                           done where the search records it ("work": {"trials": 40})
        predictions.json   per split, gold answers and the found and baseline prompts' predictions
        report.md          the report, with its PNGs (autoprompt.runs.report)
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from autoprompt.errors import AutoPromptError
from autoprompt.files import read_json, read_jsonl, write_atomic
from autoprompt.redaction import redact_url

DEFAULT_RUNS_DIR = Path("runs")


def new_folder(runs_dir: Path, task_name: str, kind: str) -> Path:
    """A new folder ``<runs_dir>/<timestamp>-<task>-<kind>`` (``-2``, ``-3``, ... when that one exists)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", task_name).strip("-") or "task"
    base, n = runs_dir / f"{stamp}-{slug}-{kind}", 1
    while True:
        path = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            n += 1
        except OSError as exc:
            raise AutoPromptError(f"{path}: cannot make the folder ({exc.strerror or exc})") from None


class Run:
    """A run folder."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, task_name: str, method: str, config: dict[str, Any], *,
               runs_dir: str | os.PathLike = DEFAULT_RUNS_DIR) -> Run:
        run = cls(new_folder(Path(runs_dir), task_name, method))
        run.write_json("config.json", config)
        return run

    @classmethod
    def open(cls, path: str | os.PathLike) -> Run:
        run = cls(path)
        if not (run.path / "config.json").is_file():
            raise AutoPromptError(f"{path}: not a run folder (no config.json)")
        return run

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def best_prompt_path(self) -> Path:
        return self.path / "best.prompt.json"

    def settings(self) -> dict[str, Any]:
        """The search's settings, flat: config.json's sections (one per config of the method; runs made
        before "sections" was written: "trigger" and "template_search")."""
        config = self.config()
        names = config.get("sections") or ("trigger", "template_search")
        return {key: value for name in names for key, value in (config.get(name) or {}).items()}

    def seed(self) -> int | None:
        config = self.config()
        return config["seed"] if "seed" in config else (config.get("trigger") or {}).get("seed")

    def config(self) -> dict[str, Any]:
        return self.read_json("config.json")

    def result(self) -> dict[str, Any]:
        """result.json ({} before the run wrote one)."""
        return self.read_json("result.json") if (self.path / "result.json").exists() else {}

    def write_json(self, name: str, data: Any, *, compact: bool = False) -> Path:
        target = self.path / name
        write_atomic(target, json.dumps(data, indent=None if compact else 2, ensure_ascii=False) + "\n")
        return target

    def read_json(self, name: str) -> Any:
        return read_json(self.path / name)

    def log(self, event: dict[str, Any]) -> None:
        """Append one event to log.jsonl, durable before returning."""
        line = json.dumps(event, ensure_ascii=False) + "\n"
        with open(self.path / "log.jsonl", "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def events(self) -> list[dict[str, Any]]:
        """The logged events; a torn last line (a killed writer) is ignored."""
        return read_jsonl(self.path / "log.jsonl")

    def truncate_log(self, keep: int) -> None:
        """Keep the first ``keep`` events (a resume drops steps after its checkpoint)."""
        kept = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in self.events()[:keep])
        write_atomic(self.path / "log.jsonl", kept)


def invoked_command() -> str | None:
    """The autoprompt command line this process runs, if it is the CLI (None for the Python API)."""
    first = sys.argv[0] if sys.argv else ""
    if Path(first).name == "autoprompt" or first.endswith(("autoprompt/cli.py", "autoprompt/cli/__main__.py",
                                                         "autoprompt/__main__.py")):
        return shlex.join(["autoprompt", *map(redact_url, sys.argv[1:])])  # a --storage URL without its password
    return None
