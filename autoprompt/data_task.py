"""A task from your own data file, without writing Python: a CSV, TSV or JSONL file with input
columns and a label (or answer) column; one file split into train/dev/test by seed (stratified by
label), or separate files per split.

    autoprompt optimize reviews.csv --input text --label label
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from autoprompt.data import Example, read_examples
from autoprompt.errors import TaskError
from autoprompt.task import Task

log = logging.getLogger(__name__)

DATA_SUFFIXES = (".csv", ".tsv", ".jsonl")
DEFAULT_SPLIT = (0.6, 0.2, 0.2)  # train, dev, test


@dataclass
class DataTaskSpec:
    """How to read a task from data files (the CLI's --input, --label, ... flags)."""

    inputs: tuple[str, ...] = ()  # input columns (default: every column but the label/answer)
    label: str | None = None  # the label column: a classification task
    answer: str | None = None  # or the answer column: answers the model generates
    template: str | None = None  # default: one "Column: {column}" line per input, then "Label:[P]"
    verbalizer: dict[str, list[str]] | None = None  # label -> words (default: the labels themselves)
    metric: str | None = None  # default: accuracy (labels), exact_match (answers)
    dev: str | None = None  # separate files for dev and test (else split from the one file)
    test: str | None = None
    split: tuple[float, float, float] = DEFAULT_SPLIT
    seed: int = 0


def is_data_file(spec: str) -> bool:
    return Path(spec).suffix.lower() in DATA_SUFFIXES


def task_from_data(path: str, spec: DataTaskSpec) -> Task:
    """The task of a data file: its examples split (or read per split), template, verbalizer and metric."""
    if spec.label and spec.answer:
        raise TaskError("give --label (a classification task) or --answer (free-form answers), not both")
    target = spec.label or spec.answer or "label"
    fields = list(spec.inputs) or None
    read = {name: read_examples(file, fields=fields, answer=target) for name, file in
            (("all", path), ("dev", spec.dev), ("test", spec.test)) if file}
    splits = _splits(read, spec, classification=spec.answer is None)
    columns = list(splits["train"][0].fields)
    labels = sorted({e.answer for examples in splits.values() for e in examples})
    verbalizer = None if spec.answer else (spec.verbalizer or _verbalizer(labels, path))
    template = spec.template or _default_template(columns, target)
    task = Task(name=Path(path).stem, template=template, splits=splits, verbalizer=verbalizer,
                metric=spec.metric or ("accuracy" if verbalizer else "exact_match"), source=str(path),
                description=f"{path}: {', '.join(columns)} -> {target}")
    task.validate()
    log.info("%s: %s", path, ", ".join(f"{name} {len(examples)}" for name, examples in splits.items()))
    return task


def _splits(read: dict[str, list[Example]], spec: DataTaskSpec, *, classification: bool) -> dict[str, list[Example]]:
    """train/dev/test: the given files, and what is missing split from the first file by seed."""
    missing = [name for name in ("dev", "test") if name not in read]
    if not missing:
        return {"train": read["all"], "dev": read["dev"], "test": read["test"]}
    fractions = dict(zip(("train", "dev", "test"), spec.split, strict=True))
    if any(f <= 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-6:
        raise TaskError(f"--fractions {','.join(map(str, spec.split))}: three fractions above 0 that add up to 1")
    wanted = {name: fractions[name] for name in ("train", *missing)}
    total = sum(wanted.values())
    parts = _split(read["all"], [f / total for f in wanted.values()], spec.seed, classification)
    return {**dict(zip(wanted, parts, strict=True)), **{k: v for k, v in read.items() if k != "all"}}


def split_examples(examples: list[Example], fractions: tuple[float, ...] = DEFAULT_SPLIT, *, seed: int = 0,
                   stratified: bool = True) -> list[list[Example]]:
    """Examples split in the given fractions (train, dev, test by default 0.6, 0.2, 0.2), seeded, by label
    when ``stratified`` (each split keeps the labels' proportions)."""
    return _split(examples, list(fractions), seed, stratified)


def _split(examples: list[Example], fractions: list[float], seed: int, stratified: bool) -> list[list[Example]]:
    """Seeded split in the given fractions; by label when ``stratified``, so every split has every label."""
    groups: dict[str | None, list[Example]] = defaultdict(list)
    for example in examples:
        groups[example.answer if stratified else None].append(example)
    parts: list[list[Example]] = [[] for _ in fractions]
    rng = random.Random(seed)
    for key in sorted(groups, key=str):
        group = groups[key][:]
        rng.shuffle(group)
        bounds = [round(len(group) * sum(fractions[: k + 1])) for k in range(len(fractions))]
        for k, (start, end) in enumerate(zip([0, *bounds[:-1]], bounds, strict=True)):
            parts[k] += group[start:end]
    for part in parts:
        rng.shuffle(part)
    if any(not part for part in parts):
        raise TaskError(f"{len(examples)} examples are too few to split into train, dev and test "
                        "(give more, or --dev and --test files)")
    return parts


def _verbalizer(labels: list[str], path: str) -> dict[str, list[str]]:
    """Each label read as itself; labels that are only numbers mean nothing to a model: name them."""
    if all(label.strip().lstrip("-").isdigit() for label in labels):
        example = ",".join(f"{label}=word{k + 1}" for k, label in enumerate(labels[:3]))
        raise TaskError(f"{path}: the labels are numbers ({', '.join(labels[:5])}); the model answers with words: "
                        f"name each label with --verbalizer, e.g. --verbalizer {example}")
    return {label: [label] for label in labels}


def _default_template(columns: list[str], target: str) -> str:
    lines = [f"{column.replace('_', ' ').capitalize()}: {{{column}}}" for column in columns]
    return "\n".join(lines) + f"\n{target.replace('_', ' ').capitalize()}:[P]"


def parse_verbalizer(text: str) -> dict[str, list[str]]:
    """``0=negative,1=positive|good``: each label's words (the CLI's --verbalizer)."""
    out: dict[str, list[str]] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        label, sep, words = part.partition("=")
        if not sep or not label.strip() or not words.strip():
            raise TaskError(f"--verbalizer {text!r}: expected LABEL=WORD pairs, e.g. 0=negative,1=positive")
        out[label.strip()] = [w.strip() for w in words.split("|") if w.strip()]
    return out
