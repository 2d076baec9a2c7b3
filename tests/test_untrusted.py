"""Untrusted files and safe defaults: nothing is unpickled, no model code runs unless asked,
no task file is imported that the user did not name."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import click
import pytest
import torch

from autoprompt.cli import main
from autoprompt.errors import ModelError
from autoprompt.models import load_model
from autoprompt.task import BUILTIN_TASKS_DIR, load_task

PACKAGE = Path(__file__).resolve().parents[1] / "autoprompt"


class _Payload:
    """Unpickling this runs code: it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickled_checkpoint_is_not_unpickled(tiny_causal_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_causal_dir, folder)
    marker = tmp_path / "pwned"
    weights = {k: v for k, v in load_model(str(tiny_causal_dir), device="cpu").hf_model.state_dict().items()}
    (folder / "model.safetensors").unlink()
    torch.save({**weights, "payload": _Payload(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(ModelError, match="cannot load model"):
        load_model(str(folder), device="cpu")
    assert not marker.exists()


def test_model_code_does_not_run_without_trust_remote_code(tiny_causal_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_causal_dir, folder)
    marker = tmp_path / "pwned"
    (folder / "custom.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"
                                      "from transformers import LlamaConfig as CustomConfig\n", encoding="utf-8")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["model_type"], config["auto_map"] = "custom-llama", {"AutoConfig": "custom.CustomConfig"}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ModelError, match="only with --trust-remote-code"):
        load_model(str(folder), device="cpu")
    assert not marker.exists()


def test_every_command_that_loads_a_model_takes_trust_remote_code() -> None:
    for name, command in main.commands.items():
        options = {opt for p in command.params if isinstance(p, click.Option) for opt in p.opts}
        if "--model" in options:
            assert "--trust-remote-code" in options, name
            flag = next(p for p in command.params if "--trust-remote-code" in getattr(p, "opts", ()))
            assert flag.is_flag and flag.get_default(click.Context(command)) is False, name


def test_the_package_never_unpickles() -> None:
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] in ("pickle", "dill", "joblib", "marshal") for n in names), path
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                if isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                    assert any(k.arg == "weights_only" and getattr(k.value, "value", None) is True
                               for k in node.keywords), f"{path}:{node.lineno}: torch.load without weights_only=True"


def test_a_builtin_task_name_never_imports_a_file_of_the_working_folder(tmp_path: Path, monkeypatch) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "sst2.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    task = load_task("sst2")
    assert not marker.exists()
    assert Path(task.source).resolve() == (BUILTIN_TASKS_DIR / "sst2.py").resolve()
