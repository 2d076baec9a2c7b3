"""Four workers on one study (journal file, SQLite, PostgreSQL), one of them SIGKILLed mid-trial:
no trial lost or run twice, the budget met exactly, and the killed worker's trial failed (its
heartbeat stopped) and its params run again by the others. Real processes of the real command line.

PostgreSQL: set AUTOPROMPT_TEST_POSTGRES (.ci/run starts a server); under CI it is required."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from test_study_workers import command, env, study_setup, template_events  # noqa: F401  (study_setup: a fixture)

from autoprompt.storage import open_storage

S = optuna.trial.TrialState
WORKERS = 4


def storage_url(kind: str, folder: Path) -> str:
    if kind == "journal":
        return str(folder / "study.log")
    if kind == "sqlite":
        return f"sqlite:///{folder / 'study.db'}"
    url = os.environ.get("AUTOPROMPT_TEST_POSTGRES")
    if url is None:
        if os.environ.get("CI"):
            pytest.fail("CI must provide a PostgreSQL server (AUTOPROMPT_TEST_POSTGRES is unset)")
        pytest.skip("no PostgreSQL server: set AUTOPROMPT_TEST_POSTGRES=postgresql+psycopg://user@host/db "
                    "(.ci/run starts one)")
    return url


def start_workers(setup: Path, model: Path, url: str, name: str, trials: int) -> list[subprocess.Popen]:
    extra = ("--trials", str(trials), "--storage", url, "--study-name", name, "--heartbeat", "1")
    return [subprocess.Popen(command(setup, model, *extra, "--runs-dir", str(setup / f"w{i}")), env=env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(WORKERS)]


def logged_trials(setup: Path) -> list[list[int]]:
    """The trials each worker logged as its own, worker by worker."""
    out = []
    for i in range(WORKERS):
        runs = list((setup / f"w{i}").iterdir()) if (setup / f"w{i}").exists() else []
        out.append([e["trial"] for e in template_events(runs[0])] if runs else [])
    return out


def check_study(study: optuna.Study, setup: Path, trials: int) -> None:
    """The budget is met exactly; every finished trial was run and logged by exactly one worker."""
    finished = sorted(t.number for t in study.trials if t.state in (S.COMPLETE, S.PRUNED))
    assert len(finished) == trials
    assert not [t.number for t in study.trials if t.state in (S.RUNNING, S.WAITING)]
    by_worker = logged_trials(setup)
    assert sorted(n for numbers in by_worker for n in numbers) == finished
    assert sum(bool(t.user_attrs.get("manual")) for t in study.trials) == 1
    # more than one worker took trials (one alone may complete them all: on a loaded machine the
    # first worker to load the model can finish the budget before the others have started)
    assert len({t.user_attrs["worker"] for t in study.trials if "worker" in t.user_attrs}) > 1


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["journal", "sqlite", "postgresql"])
def test_four_workers_one_killed_mid_trial(kind: str, study_setup: Path, tiny_causal_dir: Path) -> None:  # noqa: F811
    trials = 36  # a window of several seconds to catch a worker mid-trial, even on a loaded machine
    name = f"kill-{os.getpid()}-{time.time_ns()}"
    url = storage_url(kind, study_setup)
    procs = start_workers(study_setup, tiny_causal_dir, url, name, trials)
    by_pid = {p.pid: p for p in procs}
    storage, victim, killed = None, None, None
    deadline = time.time() + 300
    while killed is None and time.time() < deadline:  # wait until some worker is scoring a trial (not the manual one)
        time.sleep(0.1)
        if storage is None:
            try:
                storage = open_storage(url)
                optuna.load_study(study_name=name, storage=storage)
            except KeyError:
                storage = None
                continue
        seen = optuna.load_study(study_name=name, storage=storage).trials
        if not seen:  # the study exists, its first trial not yet
            continue
        for t in seen:  # (prompt_key is set once every param is chosen: it is scoring)
            pid = int(t.user_attrs.get("worker", ":0").rsplit(":", 1)[1])
            if (t.state == S.RUNNING and not t.user_attrs.get("manual") and pid in by_pid
                    and "prompt_key" in t.user_attrs):
                victim, killed = by_pid[pid], t.number
                victim.send_signal(signal.SIGKILL)
                break
        assert any(p.poll() is None for p in procs), "the study finished before a worker could be killed"
    assert killed is not None, "no worker was seen running a trial"
    victim.wait()
    for p in procs:
        if p is victim:
            continue
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()[-3000:]
        assert b"Traceback" not in err
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    check_study(study, study_setup, trials)
    lost = study.trials[killed]
    assert lost.state == S.FAIL and not lost.user_attrs.get("over_budget")  # failed by heartbeat, not left running
    rerun = [t for t in study.trials if t.user_attrs.get("rerun_of") == killed]
    assert len(rerun) == 1 and rerun[0].params == lost.params and rerun[0].state in (S.COMPLETE, S.PRUNED)
    assert not rerun[0].user_attrs["worker"].endswith(f":{victim.pid}")
