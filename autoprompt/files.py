"""Files every layer writes and reads: atomic text writes (a reader sees the old file or the new
one, never half of one) and JSON read with errors a user can act on."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from autoprompt.errors import AutoPromptError
from autoprompt.signals import signals_held


def cache_dir() -> Path:
    """Where autoprompt keeps what it computed once (dequantized models, the CPU probe):
    $AUTOPROMPT_CACHE, else $XDG_CACHE_HOME/autoprompt."""
    if os.environ.get("AUTOPROMPT_CACHE"):
        return Path(os.environ["AUTOPROMPT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "autoprompt"


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write text (or bytes: an adapter's tensors) so that readers see the old file or the new one,
    never half of one. Ctrl-C or SIGTERM during the write takes effect once it is done (a signal just
    after the temporary file was made left it behind)."""
    with signals_held():
        _write_atomic(path, text)


def _write_atomic(path: Path, text: str | bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise AutoPromptError(f"{path}: cannot write ({exc.strerror or exc})") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        binary = isinstance(text, bytes)
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)  # the rename itself survives a power cut
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise AutoPromptError(f"{path}: cannot write ({exc.strerror or exc})") from None
        raise


def read_json(path: Path) -> Any:
    """A JSON file's data; a missing file or bad JSON is an AutoPromptError naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AutoPromptError(f"{path}: missing") from None
    except json.JSONDecodeError as exc:
        raise AutoPromptError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None


def read_jsonl(path: Path) -> list[Any]:
    """The objects of a JSON-lines file, one per line, up to a torn line (a killed writer's); none if absent."""
    if not path.exists():
        return []
    objects = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            objects.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return objects


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform that cannot open folders (Windows): nothing to sync
        return
    try:
        os.fsync(fd)
    except OSError:  # a file system that does not sync folders
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
