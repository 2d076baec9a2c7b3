"""Ctrl-C, SIGTERM and SIGKILL during a search: real processes of the real command line.

SIGINT or SIGTERM: the process writes the best prompt so far, marks the run interrupted and
exits within seconds (130 / 143), no traceback; --resume then finishes the run. SIGKILL: the
files on disk are whole (each is written atomically) and --resume goes on from the last
checkpoint, losing at most the step that was running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from words_task import words_task_file

from autoprompt.prompt_file import read_prompt_file

TASK_FILE = words_task_file(train=40, dev=200, test=20)
SPACE = (
    "instruction: ['', 'Say if it is positive or negative.', 'Label the text.']\n"
    "layout: ['Text: {text}\\nLabel:[P]', '{text} [T] =>[P]', 'Input: {text}\\nOutput:[P]']\n"
    "demonstrations: {k: [0, 1, 2], selection: [balanced, random]}\n"
    "triggers: [2]\n"
)
TRIGGER = ("--steps", "30", "--top-k", "4", "--grad-batch", "8", "--eval-batch", "8", "--confirm-batch", "0",
           "--dev-every", "2", "--dev-limit", "40")
TEMPLATE = ("--trials", "14", "--pruner", "none", "--trial-dev", "0", "--chunk", "100", "--rescore-top", "1")


@pytest.fixture
def setup(tmp_path: Path) -> Path:
    (tmp_path / "task.py").write_text(TASK_FILE, encoding="utf-8")
    (tmp_path / "space.yaml").write_text(SPACE, encoding="utf-8")
    return tmp_path


# the command line, run so that SIGUSR1 prints every thread's stack: a search that does not stop
# when told says where it is
_MAIN = ("import faulthandler, runpy, signal, sys; faulthandler.register(signal.SIGUSR1, all_threads=True); "
         "sys.argv[0] = 'autoprompt'; runpy.run_module('autoprompt.cli', run_name='__main__')")


def cli(*args: object) -> list[str]:
    return [sys.executable, "-c", _MAIN, *map(str, args)]


def optimize(setup: Path, model: Path, method: str, *extra: str) -> list[str]:
    space = ("--space", setup / "space.yaml") if method != "trigger" else ()
    return cli("optimize", setup / "task.py", "--method", method, "--model", model, "--device", "cpu",
               "--runs-dir", setup / "runs", "--seed", "0", *space, *extra)


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def events(run_dir: Path) -> list[dict]:
    path = run_dir / "log.jsonl"
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def start_and_wait(command: list[str], runs: Path, ready) -> tuple[subprocess.Popen, Path]:
    """Start a search; return once ``ready(events)`` holds for its run folder."""
    proc = subprocess.Popen(command, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        folders = sorted(runs.iterdir()) if runs.exists() else []
        if folders and ready(events(folders[0])):
            return proc, folders[0]
        if proc.poll() is not None:
            pytest.fail(f"the search ended before it could be stopped:\n{proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the search did not get far enough in time")


def resume(setup: Path, model: Path, run_dir: Path) -> dict:
    done = subprocess.run(cli("optimize", setup / "task.py", "--resume", run_dir, "--model", model, "--device", "cpu",
                              "--json"), env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert json.loads((run_dir / "result.json").read_text())["state"] == "finished"
    return json.loads(done.stdout)


def trigger_steps(evs: list[dict]) -> list[int]:
    return [e["step"] for e in evs if e.get("stage", "trigger") == "trigger" and "step" in e]


CASES = {  # method, signal, when to send it
    "trigger-sigterm": ("trigger", signal.SIGTERM, lambda evs: len(trigger_steps(evs)) >= 3),
    "template-sigint": ("template", signal.SIGINT, lambda evs: sum(e.get("stage") == "template" for e in evs) >= 3),
    "hybrid-sigterm": ("hybrid", signal.SIGTERM,
                       lambda evs: sum(e.get("stage") == "trigger" and "step" in e for e in evs) >= 3),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_interrupt_saves_the_best_so_far_and_resume_finishes(case: str, setup: Path, tiny_causal_dir: Path) -> None:
    method, signum, ready = CASES[case]
    extra = {"trigger": TRIGGER, "template": TEMPLATE, "hybrid": TEMPLATE + TRIGGER}[method]
    proc, run_dir = start_and_wait(optimize(setup, tiny_causal_dir, method, *extra), setup / "runs", ready)
    proc.send_signal(signum)
    try:
        _, stderr = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)  # where it is stuck
        time.sleep(2)
        proc.kill()
        _, stderr = proc.communicate()
        pytest.fail(f"{signum.name} did not stop the search within 15 s; its threads:\n{stderr[-6000:]}")
    assert proc.returncode == 128 + signum, stderr[-3000:]
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1] == ("terminated" if signum == signal.SIGTERM else "interrupted")
    assert json.loads((run_dir / "result.json").read_text())["state"] == "interrupted"
    saved = read_prompt_file(run_dir / "best.prompt.json")
    assert saved.search["interrupted"] is True and saved.search["method"] == method
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]

    report = resume(setup, tiny_causal_dir, run_dir)
    assert report["run"] == str(run_dir)
    assert "interrupted" not in read_prompt_file(run_dir / "best.prompt.json").search
    if method != "template":  # every step once, in order: none lost, none repeated
        steps = trigger_steps(events(run_dir))
        assert steps == list(range(len(steps))) and steps[-1] == 30
    if method != "trigger":
        import optuna

        from autoprompt.storage import open_storage

        study = optuna.load_study(study_name=run_dir.name, storage=open_storage(f"sqlite:///{run_dir / 'study.db'}"))
        S = optuna.trial.TrialState
        assert sum(t.state in (S.COMPLETE, S.PRUNED) for t in study.trials) == 14
        assert not [t for t in study.trials if t.state == S.RUNNING]
        stopped = [t for t in study.trials if t.state == S.FAIL and t.params]  # Ctrl-C stopped it: run again
        assert all(any(r.user_attrs.get("rerun_of") == t.number for r in study.trials) for t in stopped)


@pytest.mark.slow
def test_sigkill_during_trigger_search_then_resume_loses_at_most_one_step(setup: Path, tiny_causal_dir: Path) -> None:
    proc, run_dir = start_and_wait(optimize(setup, tiny_causal_dir, "trigger", *TRIGGER), setup / "runs",
                                   lambda evs: len(trigger_steps(evs)) >= 4)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    logged = trigger_steps(events(run_dir))
    checkpoint = json.loads((run_dir / "checkpoint.json").read_text(encoding="utf-8"))  # whole, never torn
    assert checkpoint["step"] >= logged[-1] - 1
    assert json.loads((run_dir / "result.json").read_text())["state"] == "running"  # it had no time to say more
    kept = [e for e in events(run_dir) if e["step"] <= checkpoint["step"]]

    resume(setup, tiny_causal_dir, run_dir)
    assert trigger_steps(events(run_dir)) == list(range(31))
    assert events(run_dir)[: len(kept)] == kept  # the steps before the checkpoint stay as they were
