"""A storage URL's password is never written or printed: not in the run folder, the prompt file, the
recorded command, the report or any `runs` output; the study still opens with the real URL, given
again on the command line or in $AUTOPROMPT_STORAGE.

With AUTOPROMPT_TEST_POSTGRES (CI starts a server whose trust authentication accepts any password) the
run uses that real PostgreSQL server; elsewhere the URL is served by a SQLite file behind Optuna's
RDBStorage, so autoprompt's own handling of it is what is tested."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from words_task import words_task_file

from autoprompt import storage as storage_module
from autoprompt.cli import main
from autoprompt.redaction import redact_url

SECRET = "s3cr3t-Pw0rd"


@pytest.mark.parametrize("url, shown", [
    ("postgresql+psycopg://user:pa55@db.example:5432/ap", "postgresql+psycopg://user:***@db.example:5432/ap"),
    ("mysql://root:p%40ss@localhost/x?charset=utf8", "mysql://root:***@localhost/x?charset=utf8"),
    ("postgresql://u@host/db?password=pa55&sslmode=require", "postgresql://u@host/db?password=***&sslmode=require"),
    ("--storage=postgresql://a:b@h/d", "--storage=postgresql://a:***@h/d"),
    ("postgresql://user@host/db", "postgresql://user@host/db"),
    ("sqlite:///runs/x/study.db", "sqlite:///runs/x/study.db"),
    ("runs/shared.journal.log", "runs/shared.journal.log"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.fixture
def secret_url(tmp_path: Path, monkeypatch) -> str:
    """A storage URL with a password: the real PostgreSQL server under CI, else a SQLite file behind it."""
    real = os.environ.get("AUTOPROMPT_TEST_POSTGRES")
    if real:
        head, rest = real.split("://", 1)
        userinfo, host = rest.split("@", 1)
        study_db = f"{head}://{userinfo.split(':')[0]}:{SECRET}@{host}"
        return study_db
    url = f"postgresql+psycopg://autoprompt:{SECRET}@db.invalid:5432/autoprompt"
    sqlite = f"sqlite:///{tmp_path / 'shared.db'}"
    init = optuna.storages.RDBStorage.__init__

    def served_by_sqlite(self, given, *args, **kwargs):
        assert given == url, "the storage was opened with another URL than the one given"
        kwargs.pop("engine_kwargs", None)  # PostgreSQL's connect_timeout
        init(self, sqlite, *args, **kwargs)

    monkeypatch.setattr(optuna.storages.RDBStorage, "__init__", served_by_sqlite)
    return url


def _all_text(folder: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in sorted(folder.rglob("*")) if p.is_file())


def test_no_trace_of_a_storage_password(tmp_path: Path, tiny_causal_dir: Path, secret_url: str, monkeypatch) -> None:
    (tmp_path / "task.py").write_text(words_task_file(dev=30, test=10), encoding="utf-8")
    runs = tmp_path / "runs"
    study = f"secrets-{os.getpid()}-{tmp_path.name}"
    args = ["optimize", str(tmp_path / "task.py"), "--method", "template", "--model", str(tiny_causal_dir),
            "--trials", "3", "--trial-dev", "10", "--chunk", "10", "--study-name", study, "--runs-dir", str(runs)]
    monkeypatch.setattr(sys, "argv", ["autoprompt", *args, "--storage", secret_url])  # the command a run records
    result = CliRunner().invoke(main, [*args, "--storage", secret_url])
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    config = json.loads((run / "config.json").read_text())
    assert config["template_search"]["storage"] == redact_url(secret_url) and "--storage" in config["command"]
    for command in (["runs", "list"], ["runs", "show", run.name], ["runs", "compare", run.name, "--markdown"],
                    ["runs", "report", run.name], ["runs", "show", run.name, "--json"], ["export", run.name]):
        shown = CliRunner().invoke(main, [*command, "--dir", str(runs)])
        assert shown.exit_code == 0, shown.output
        assert SECRET not in shown.output, command
    text = _all_text(run)
    assert text.count(redact_url(secret_url)) >= 3  # config, command and prompt file name the redacted URL
    assert SECRET not in text

    # --resume: the password is not in the run folder, so the URL is given again (flag or environment)
    monkeypatch.setattr(storage_module, "_REAL_URLS", {})  # a new process knows only what the run folder says
    refused = CliRunner().invoke(main, ["optimize", str(tmp_path / "task.py"), "--resume", str(run)])
    assert refused.exit_code == 2 and SECRET not in refused.output, refused.output
    assert "never writes a storage password; give the URL again with --storage or in $AUTOPROMPT_STORAGE" in refused.output
    monkeypatch.setenv("AUTOPROMPT_STORAGE", secret_url)
    again = CliRunner().invoke(main, ["optimize", str(tmp_path / "task.py"), "--resume", str(run), "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["metrics"]["dev"] and SECRET not in again.output
    assert SECRET not in _all_text(run)


def test_a_storage_error_does_not_print_the_password(tmp_path: Path, tiny_causal_dir: Path) -> None:
    (tmp_path / "task.py").write_text(words_task_file(dev=30, test=10), encoding="utf-8")
    url = f"nosuchdriver://user:{SECRET}@db.invalid/x"
    result = CliRunner().invoke(main, ["optimize", str(tmp_path / "task.py"), "--method", "template", "--model",
                                       str(tiny_causal_dir), "--storage", url, "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and result.output.startswith("error: storage 'nosuchdriver://user:***@db.invalid/x'")
    assert not (tmp_path / "runs").exists()
    assert SECRET not in result.output
