"""The bad-input corpus: every folder of tests/bad_inputs/ is one bad input to the command line.

A case folder holds the files of the case and a ``case.yaml``:

    # what is wrong (one line)
    args: [the CLI arguments]        @CASE@ the case's folder (a copy), @CAUSAL@/@MASKED@ the tiny
                                     models, @FINGERPRINT@ the causal one's tokenizer, @OUT@ an output
                                     file and @RUNS@ a runs folder, which must not exist afterwards
    expect: [words the error line must hold]
    stdin: text on standard input    (optional)
    make: [{path, parts: [[text, times], ...]}]   (optional) files too big to commit, built here

Each one must give exit code 2 and, as the last line on stderr (after any log lines), the one
line starting ``error:``, holding every expected word; no traceback, nothing on stdout, and leave no output file, run folder or temp file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from autoprompt.cli import main
from autoprompt.models import tokenizer_fingerprint

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "case.yaml").is_file())


def _substitute(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return text


def _prepare(name: str, tmp: Path, values: dict[str, str]) -> dict:
    """Copy the case into tmp/case with placeholders filled in (text files only); build its big files."""
    folder = tmp / "case"
    shutil.copytree(CORPUS / name, folder)
    for path in folder.rglob("*"):
        if path.is_file():
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue  # a deliberately undecodable file
            path.write_text(_substitute(text, values), encoding="utf-8")
    spec = yaml.safe_load((folder / "case.yaml").read_text(encoding="utf-8"))
    for made in spec.get("make", []):
        with open(folder / made["path"], "w", encoding="utf-8") as fh:
            for text, times in made["parts"]:
                fh.write(_substitute(text, values) * times)
    return spec


@pytest.fixture(scope="module")
def placeholders(tiny_causal_dir: Path, tiny_masked_dir: Path) -> dict[str, str]:
    from transformers import AutoTokenizer

    fingerprint = tokenizer_fingerprint(AutoTokenizer.from_pretrained(str(tiny_causal_dir)))
    return {"CAUSAL": str(tiny_causal_dir), "MASKED": str(tiny_masked_dir), "FINGERPRINT": fingerprint}


def test_the_corpus_is_big_enough() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", CASES)
def test_bad_input(name: str, tmp_path: Path, placeholders: dict[str, str]) -> None:
    out = tmp_path / "out"
    values = {**placeholders, "CASE": str(tmp_path / "case"), "OUT": str(out / "result.json"), "RUNS": str(out / "runs")}
    spec = _prepare(name, tmp_path, values)
    before = _files(tmp_path / "case")
    args = [_substitute(str(a), values) for a in spec["args"]]

    result = CliRunner().invoke(main, args, input=spec.get("stdin"))

    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.splitlines()[-1] == errors[0], result.stderr
    for word in spec["expect"]:
        assert word in errors[0], f"{word!r} not in {errors[0]!r}"
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))  # no output, no run folder
    assert _files(tmp_path / "case") == before  # nothing written next to the inputs (temp files included)


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
