"""A study that survives SIGKILL: real processes of the real command line (workers: test_concurrency.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import pytest
from words_task import words_task_file

from autoprompt.storage import open_storage

TASK_FILE = words_task_file(train=40, dev=300, test=20, test_from_dev=True)

SPACE = (
    "instruction: ['', 'Say if it is positive or negative.', 'Label the text.']\n"
    "layout: ['Text: {text}\\nLabel:[P]', '{text} =>[P]', 'Input: {text}\\nOutput:[P]']\n"
    "verbalizer: [{negative: [negative], positive: [positive]}, {negative: [bad], positive: [good]}]\n"
    "demonstrations: {k: [0, 1, 2, 4], selection: [balanced, random]}\n"
    "calibration: [none, contextual]\n"
)


@pytest.fixture
def study_setup(tmp_path, tiny_causal_dir):
    (tmp_path / "task.py").write_text(TASK_FILE, encoding="utf-8")
    (tmp_path / "space.yaml").write_text(SPACE, encoding="utf-8")
    return tmp_path


def command(setup: Path, model_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "autoprompt.cli", "optimize", str(setup / "task.py"), "--method", "template",
            "--model", str(model_dir), "--device", "cpu", "--space", str(setup / "space.yaml"), "--pruner", "none",
            "--trial-dev", "0", "--chunk", "100", "--rescore-top", "1", "--runs-dir", str(setup / "runs"), *extra]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def template_events(run_dir: Path) -> list[dict]:
    lines = (run_dir / "log.jsonl").read_text(encoding="utf-8").splitlines() if (run_dir / "log.jsonl").exists() else []
    return [e for e in map(json.loads, lines) if e.get("stage") == "template"]


@pytest.mark.slow
def test_sigkill_then_resume_keeps_finished_trials_and_completes_the_budget(study_setup, tiny_causal_dir):
    trials = 30
    proc = subprocess.Popen(command(study_setup, tiny_causal_dir, "--trials", str(trials), "--seed", "0"),
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    run_dir = None
    while time.time() < deadline:
        runs = list((study_setup / "runs").glob("*")) if (study_setup / "runs").exists() else []
        if runs and len(template_events(runs[0])) >= 3:
            run_dir = runs[0]
            break
        if proc.poll() is not None:
            pytest.fail(f"the search ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    assert run_dir is not None, "no trial finished in time"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    storage = optuna.storages.RDBStorage(f"sqlite:///{run_dir / 'study.db'}")
    S = optuna.trial.TrialState
    before = {t.number: (t.params, t.value) for t in optuna.load_study(study_name=run_dir.name, storage=storage).trials
              if t.state == S.COMPLETE}
    assert 3 <= len(before) < trials
    done = subprocess.run([sys.executable, "-m", "autoprompt.cli", "optimize", str(study_setup / "task.py"),
                           "--resume", str(run_dir), "--model", str(tiny_causal_dir), "--device", "cpu", "--json"],
                          env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["run"] == str(run_dir)
    after = optuna.load_study(study_name=run_dir.name, storage=storage).trials
    assert len([t for t in after if t.state in (S.COMPLETE, S.PRUNED)]) == trials
    assert {t.number: (t.params, t.value) for t in after if t.number in before} == before
    assert json.loads((run_dir / "result.json").read_text())["state"] == "finished"


def test_storage_urls_are_checked():
    from autoprompt.errors import AutoPromptError

    with pytest.raises(AutoPromptError, match="expected a URL"):
        open_storage("not-a-url")


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_trial_that_never_sent_a_heartbeat_is_failed_once_the_grace_has_passed(kind, tmp_path, monkeypatch):
    """A worker killed between ask() and its first heartbeat: Optuna would keep that trial RUNNING
    forever, and the other workers, waiting for the last running trials, would wait forever too."""
    from autoprompt import storage as storage_module
    from autoprompt.storage import fail_stale_trials

    S = optuna.trial.TrialState

    url = str(tmp_path / "study.log") if kind == "journal" else f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=open_storage(url, heartbeat=1), study_name="s")
    with warnings.catch_warnings():  # (heartbeats outside study.optimize: as the template search does)
        warnings.simplefilter("ignore", UserWarning)
        silent, beating = study.ask(), study.ask()
    silent.suggest_int("x", 0, 9)  # ... and its worker died, before a first heartbeat
    study._storage.record_heartbeat(beating._trial_id)
    state = {t.number: t.state for t in study.trials}
    monkeypatch.setattr(storage_module, "NO_HEARTBEAT_GRACE", 30)
    fail_stale_trials(study)  # too early: it may just be slow to send its first one
    assert [t.state for t in study.trials] == [S.RUNNING, S.RUNNING] == list(state.values())
    monkeypatch.setattr(storage_module, "NO_HEARTBEAT_GRACE", 0)
    time.sleep(0.01)
    fail_stale_trials(study)
    trials = study.trials
    assert trials[silent.number].state == S.FAIL
    assert trials[beating.number].state == S.RUNNING  # its heartbeat is fresh
    rerun = [t for t in trials if t.user_attrs.get("rerun_of") == silent.number]
    assert len(rerun) == 1 and rerun[0].state == S.WAITING
    assert rerun[0].system_attrs["fixed_params"] == trials[silent.number].params == {"x": silent.params["x"]}
