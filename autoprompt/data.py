"""Labelled data: an Example (named input fields and its answer), examples read from JSONL, CSV
and TSV files, and the check that a verbalizer can tell its labels apart."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from autoprompt.errors import TaskError

logger = logging.getLogger(__name__)

_FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv"}


@dataclass(frozen=True)
class Example:
    """One input (named text fields) and its gold label or target text (``answers``: every acceptable
    answer of a generation task, ``answer`` first; empty: ``answer`` alone)."""

    fields: dict[str, str]
    answer: str | None
    source: str = ""
    answers: tuple[str, ...] = ()

    @property
    def golds(self) -> tuple[str, ...]:
        """Every acceptable answer."""
        return self.answers or ((self.answer,) if self.answer is not None else ())


def verbalizer_overlap(verbalizer: dict[str, list[str]]) -> str | None:
    """Why a verbalizer cannot tell its labels apart (a word given to two labels), or None."""
    owner: dict[str, str] = {}
    for label, words in verbalizer.items():
        for word in words:
            key = word.strip() if isinstance(word, str) else word
            if key in owner and owner[key] != label:
                return (f"the verbalizer gives the word {key!r} to both '{owner[key]}' and '{label}': "
                        "no prompt can tell those labels apart")
            owner.setdefault(key, label)
    return None


def read_examples(
    path: str | os.PathLike,
    *,
    fields: list[str] | dict[str, str] | None = None,
    answer: str | None = "label",
    format: str | None = None,
    limit: int | None = None,
) -> list[Example]:
    """Examples from a JSONL, CSV or TSV file; `fields` picks (list) or renames (dict) columns."""
    name = str(path)
    kind = _format_of(name, format)
    if limit is not None and limit < 1:
        raise TaskError(f"{name}: limit must be at least 1, got {limit}")
    text = _read_text(Path(path), name)
    rows = _jsonl_rows(text, name) if kind == "jsonl" else _table_rows(text, name, kind)
    columns = _column_map(fields)
    examples = []
    for line, row in rows:
        examples.append(_example(row, columns, answer, f"{name}:{line}"))
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise TaskError(f"{name}: no examples")
    logger.debug("read %d examples from %s", len(examples), name)
    return examples


def _format_of(name: str, format: str | None) -> str:
    supported = ", ".join(_FORMATS)
    if format is not None:
        kind = format.lower().lstrip(".")
        if kind not in _FORMATS.values():
            raise TaskError(
                f"{name}: unknown format '{format}'; formats are: jsonl, csv, tsv"
            )
        return kind
    suffix = Path(name).suffix.lower()
    if suffix not in _FORMATS:
        raise TaskError(
            f"{name}: cannot read '{suffix or 'no suffix'}' files; supported: {supported}"
        )
    return _FORMATS[suffix]


def _read_text(path: Path, name: str) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TaskError(f"{name}: no such file") from None
    except OSError as error:
        raise TaskError(f"{name}: cannot read ({error.strerror or error})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise TaskError(f"{name}:{line}: not valid UTF-8 ({error.reason})") from None


def _jsonl_rows(text: str, name: str):
    """Yield (line number, object) for each non-blank line."""
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as error:
            raise TaskError(
                f"{name}:{line}: not valid JSON ({error.msg}, column {error.colno})"
            ) from None
        if not isinstance(row, dict):
            raise TaskError(
                f"{name}:{line}: expected a JSON object, got {type(row).__name__}"
            )
        yield line, row


def _table_rows(text: str, name: str, kind: str):
    """Yield (line number, {column: value}) for each non-blank CSV/TSV row after the header."""
    reader = csv.reader(
        io.StringIO(text, newline=""), delimiter="\t" if kind == "tsv" else ","
    )
    header: list[str] | None = None
    last_line = 0
    try:
        for cells in reader:
            line, last_line = last_line + 1, reader.line_num
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue
            if header is None:
                header = [cell.strip() for cell in cells]
                continue
            if len(cells) != len(header):
                raise TaskError(
                    f"{name}:{line}: {len(cells)} columns, but the header has {len(header)} "
                    f"({', '.join(header)})"
                )
            yield line, dict(zip(header, cells, strict=False))
    except csv.Error as error:
        raise TaskError(
            f"{name}:{reader.line_num}: not valid {kind.upper()} ({error})"
        ) from None


def _column_map(fields: list[str] | dict[str, str] | None) -> dict[str, str] | None:
    if fields is None:
        return None
    if isinstance(fields, str):
        raise TaskError(
            f"fields must be a list or a dict of column names, not the string '{fields}'"
        )
    return (
        dict(fields)
        if isinstance(fields, dict)
        else {column: column for column in fields}
    )


def _example(
    row: dict, columns: dict[str, str] | None, answer: str | None, source: str
) -> Example:
    if columns is None:
        columns = {column: column for column in row if column != answer}
    values = {name: _value(row, column, source) for column, name in columns.items()}
    if answer is not None and isinstance(row.get(answer), list):  # several acceptable answers (JSONL)
        answers = tuple(_value({answer: a}, answer, source) for a in row[answer])
        if not answers:
            raise TaskError(f"{source}: field '{answer}' is an empty list; give at least one answer")
        return Example(fields=values, answer=answers[0], source=source, answers=answers)
    target = _value(row, answer, source) if answer is not None else None
    return Example(fields=values, answer=target, source=source)


def _value(row: dict, column: str, source: str) -> str:
    if column not in row:
        raise TaskError(
            f"{source}: missing field '{column}' (has: {', '.join(row) or 'nothing'})"
        )
    value = row[column]
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise TaskError(
        f"{source}: field '{column}' must be text or a number, got {json.dumps(value)}"
    )
