"""A training run's checkpoint: checkpoint.json (the state) and the tensors it names,
checkpoint-<step>.safetensors (the current and best tensors, AdamW's moments). The tensors are
written first under a new name and the JSON then names them, so a crash between the two leaves the
previous checkpoint whole. Read back checked field by field: the files may not be ours."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from autoprompt.errors import AutoPromptError
from autoprompt.files import write_atomic

CHECKPOINT = "checkpoint.json"


@dataclass
class TuningState:
    """Everything a step changes but the tensors."""

    step: int = 0
    best_step: int = -1  # the step of the best tensors on dev (-1: not scored yet)
    best_dev: float = float("-inf")
    best_dev_log_prob: float = float("-inf")  # breaks ties of the dev metric
    best_dev_metrics: dict[str, float] = field(default_factory=dict)
    checks_without_gain: int = 0
    seconds: float = 0.0


def write_state(run, state: TuningState, tensors: dict[str, torch.Tensor]) -> None:
    """The checkpoint: tensors first (a new file), then the JSON that names them; older tensor files go."""
    from safetensors.torch import save

    data = save({name: t.contiguous() for name, t in tensors.items()}, metadata={"format": "pt"})
    name = f"checkpoint-{state.step}.safetensors"
    write_atomic(run.path / name, data)
    run.write_json(CHECKPOINT, {**dataclasses.asdict(state), "tensors": name,
                                "sha256": hashlib.sha256(data).hexdigest()})
    for old in run.path.glob("checkpoint-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def read_state(run, params: dict[str, torch.Tensor]) -> tuple[TuningState, dict[str, torch.Tensor]] | None:
    """The state and tensors of a run's checkpoint (None if it has none), checked against the
    parameters they go into (name -> tensor of the same shape)."""
    path = run.path / CHECKPOINT
    if not path.exists():
        return None
    data = run.read_json(CHECKPOINT)
    problem = _state_problem(data)
    tensors: dict[str, torch.Tensor] = {}
    if problem is None:
        tensors, problem = _read_tensors(run.path, data)
    if problem is None:
        problem = _tensors_problem(tensors, params, data["step"])
    if problem is not None:
        raise AutoPromptError(f"{path}: not a training checkpoint this version can resume ({problem})")
    state = TuningState(**{k: v for k, v in data.items() if k not in ("tensors", "sha256")})
    return state, tensors


def _state_problem(data: Any) -> str | None:
    names = {f.name for f in dataclasses.fields(TuningState)} | {"tensors", "sha256"}
    if not isinstance(data, dict):
        return "not a JSON object"
    if set(data) != names:
        return f"keys must be {', '.join(sorted(names))}"
    for key in ("step", "best_step", "checks_without_gain"):
        if not isinstance(data[key], int) or isinstance(data[key], bool) or data[key] < (-1 if key == "best_step" else 0):
            return f"{key} must be a whole number, not {data[key]!r}"
    for key in ("best_dev", "best_dev_log_prob", "seconds"):
        if not isinstance(data[key], (int, float)) or isinstance(data[key], bool):
            return f"{key} must be a number, not {data[key]!r}"
    if not isinstance(data["best_dev_metrics"], dict):
        return "best_dev_metrics must be an object"
    if not isinstance(data["tensors"], str) or Path(data["tensors"]).name != data["tensors"]:
        return "tensors must name a file in the run folder"
    return None


def _read_tensors(folder: Path, data: dict) -> tuple[dict[str, torch.Tensor], str | None]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        raw = (folder / data["tensors"]).read_bytes()
    except OSError:
        return {}, f"its tensors {data['tensors']} are missing"
    if hashlib.sha256(raw).hexdigest() != data["sha256"]:
        return {}, f"its tensors {data['tensors']} were altered (sha256)"
    try:
        return load(raw), None
    except (SafetensorError, ValueError) as exc:
        return {}, f"its tensors are not a safetensors file: {exc}"


def _tensors_problem(tensors: dict[str, torch.Tensor], params: dict[str, torch.Tensor], step: int) -> str | None:
    kinds = ("current", "best") + (("exp_avg", "exp_avg_sq") if step else ())
    for name, p in params.items():
        for kind in kinds:
            t = tensors.get(f"{kind}.{name}")
            if t is None or t.shape != p.shape:
                return f"{kind}.{name} is missing or of another shape than {tuple(p.shape)}"
    return None
