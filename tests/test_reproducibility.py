"""The same command with the same seed, on the same machine, gives the same run: the same
triggers, the same trial sequence, the same metrics. Two processes each (with different hash
seeds, so nothing may depend on the order of a set or dict of strings); timings ignored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from words_task import words_task_file

TASK_FILE = words_task_file(train=40, dev=60, test=20, positive_every=3)
SPACE = (
    "instruction: ['', 'Say if it is positive or negative.']\n"
    "layout: ['Text: {text}\\nLabel:[P]', '{text} =>[P]']\n"
    "verbalizer: [{negative: [negative], positive: [positive]}, {negative: [bad], positive: [good]}]\n"
    "demonstrations: {k: [0, 2, 4], selection: [balanced, random, similar], order: [shuffled, by_label]}\n"
    "calibration: [none, contextual]\n"
)
ARGS = {
    "trigger": ("--steps", "6", "--top-k", "8", "--grad-batch", "8", "--eval-batch", "8", "--dev-every", "2",
                "--mode", "gcg", "--n-candidates", "8"),
    "template": ("--trials", "8", "--trial-dev", "30", "--chunk", "10", "--rescore-top", "2", "--space", "space.yaml"),
}
TIMING = {"seconds", "search_seconds", "created"}


def _strip(value):
    """The value without timing fields or run folder names (which hold the time of day)."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in TIMING and k != "run"}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _run(setup: Path, model: Path, method: str, name: str, hash_seed: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "autoprompt.cli", "optimize", str(setup / "task.py"), "--method", method,
               "--model", str(model), "--device", "cpu", "--seed", "3", "--runs-dir", str(setup / name),
               *[str(setup / a) if a == "space.yaml" else a for a in ARGS[method]]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": hash_seed}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _outcome(folder: Path) -> dict:
    (run_dir,) = folder.iterdir()
    read = lambda name: json.loads((run_dir / name).read_text(encoding="utf-8"))  # noqa: E731
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    return _strip({"log": log, "result": read("result.json"), "prompt": read("best.prompt.json")})


@pytest.mark.slow
@pytest.mark.parametrize("method", ["trigger", "template"])
def test_same_command_same_seed_same_run(method: str, tmp_path: Path, tiny_causal_dir: Path) -> None:
    (tmp_path / "task.py").write_text(TASK_FILE, encoding="utf-8")
    (tmp_path / "space.yaml").write_text(SPACE, encoding="utf-8")
    procs = [_run(tmp_path, tiny_causal_dir, method, f"runs{i}", str(i + 1)) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-3000:]
    first, second = _outcome(tmp_path / "runs0"), _outcome(tmp_path / "runs1")
    assert first["log"] == second["log"]
    assert first == second
    if method == "trigger":
        assert len({tuple(e["triggers"]) for e in first["log"]}) > 1  # the search did move
    else:
        assert len([e for e in first["log"] if e.get("stage") == "template"]) == 8
