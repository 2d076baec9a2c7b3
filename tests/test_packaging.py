"""What a wheel holds: every package of autoprompt, and the built-in tasks, their data and the search spaces as
package data (found through importlib.resources, so an install outside this checkout has them). CI also builds
the wheel, installs it in a fresh venv and runs it from an empty folder (.ci/run)."""

from __future__ import annotations

import fnmatch
from importlib.resources import files
from pathlib import Path

import tomllib

from autoprompt.space import SPACES_DIR, load_space
from autoprompt.task import BUILTIN_TASKS, BUILTIN_TASKS_DIR

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def test_every_package_is_in_the_wheel() -> None:
    packages = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "autoprompt").rglob("__init__.py")}
    assert packages <= set(SETUPTOOLS["packages"]), sorted(packages - set(SETUPTOOLS["packages"]))


def _packaged(package: str, folder: Path) -> set[Path]:
    patterns = SETUPTOOLS["package-data"][package]
    return {p for p in folder.rglob("*") if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts
            and any(fnmatch.fnmatch(str(p.relative_to(folder)), pattern) for pattern in patterns)}


def test_the_built_in_tasks_data_and_spaces_are_package_data() -> None:
    assert SETUPTOOLS["package-dir"] == {"autoprompt.builtin_tasks": "tasks", "autoprompt.builtin_spaces": "search"}
    tasks, spaces = ROOT / "tasks", ROOT / "search"
    data = {p for p in (tasks / "data").rglob("*") if p.is_file()}
    assert data and data == _packaged("autoprompt.builtin_tasks", tasks)
    assert {p for p in spaces.glob("*.yaml")} == _packaged("autoprompt.builtin_spaces", spaces)


def test_built_ins_are_found_through_the_package() -> None:
    assert BUILTIN_TASKS_DIR == Path(str(files("autoprompt.builtin_tasks")))
    assert SPACES_DIR == Path(str(files("autoprompt.builtin_spaces")))
    assert set(BUILTIN_TASKS) == {"sst2", "lama_p19", "lama_p103", "native_language", "country_codes"}
    assert load_space("sentiment").builtin and load_space("default").builtin
