"""Your own data without writing Python: a CSV/TSV/JSONL file becomes a task (split by seed, stratified by
label), through the Python API and the command line, from an empty folder."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from autoprompt import load_prompt
from autoprompt.cli import main
from autoprompt.data_task import DataTaskSpec, parse_verbalizer, task_from_data
from autoprompt.errors import AutoPromptError, TaskError

WORDS = ["good", "bad", "film", "plot", "slow", "fun", "cast", "long"]


def write_csv(path: Path, n: int = 50, labels=("negative", "positive")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["review", "sentiment", "id"])
        for i in range(n):
            writer.writerow([f"{WORDS[i % 8]} {WORDS[(i * 3) % 8]} {WORDS[(i * 5 + 1) % 8]}", labels[i % len(labels)], i])
    return path


def test_one_file_is_split_by_seed_and_stratified(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "reviews.csv", n=50)
    task = task_from_data(str(path), DataTaskSpec(inputs=("review",), label="sentiment"))
    sizes = {split: len(examples) for split, examples in task.splits.items()}
    assert sizes == {"train": 30, "dev": 10, "test": 10}
    for examples in task.splits.values():
        assert Counter(e.answer for e in examples) == {"negative": len(examples) // 2, "positive": len(examples) // 2}
    texts = [e.fields["review"] for examples in task.splits.values() for e in examples]
    assert sorted(texts) == sorted(row["review"] for row in csv.DictReader(open(path, encoding="utf-8")))  # each once
    assert task.template == "Review: {review}\nSentiment:[P]" and task.fields == ["review"]
    assert task.verbalizer == {"negative": ["negative"], "positive": ["positive"]} and task.metric == "accuracy"
    again = task_from_data(str(path), DataTaskSpec(inputs=("review",), label="sentiment"))
    assert again.splits == task.splits  # same seed, same split
    other = task_from_data(str(path), DataTaskSpec(inputs=("review",), label="sentiment", seed=1))
    assert other.splits != task.splits


def test_numeric_labels_must_be_named(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "reviews.csv", labels=("0", "1"))
    with pytest.raises(TaskError, match=r"the labels are numbers \(0, 1\).*--verbalizer 0=word1,1=word2"):
        task_from_data(str(path), DataTaskSpec(inputs=("review",), label="sentiment"))
    named = task_from_data(str(path), DataTaskSpec(inputs=("review",), label="sentiment",
                                                   verbalizer=parse_verbalizer("0=negative,1=positive|good")))
    assert named.verbalizer == {"0": ["negative"], "1": ["positive", "good"]}


def test_separate_dev_and_test_files_are_used_as_they_are(tmp_path: Path) -> None:
    train, dev, test = (write_csv(tmp_path / f"{s}.csv", n=n) for s, n in (("train", 20), ("dev", 8), ("test", 6)))
    task = task_from_data(str(train), DataTaskSpec(label="sentiment", dev=str(dev), test=str(test)))
    assert {s: len(e) for s, e in task.splits.items()} == {"train": 20, "dev": 8, "test": 6}
    assert task.fields == ["review", "id"]  # every column but the label


def test_bad_data_flags_are_one_line_errors(tmp_path: Path, tiny_causal_dir: Path) -> None:
    path = write_csv(tmp_path / "reviews.csv", n=4)
    cases = [
        (["optimize", str(path), "--label", "sentiment"], "too few to split"),
        (["optimize", str(path), "--label", "stars"], "missing field 'stars'"),
        (["optimize", "sst2", "--label", "label"], "--label read a data file"),
        (["optimize", str(path), "--label", "sentiment", "--fractions", "0.5,0.5"], "three fractions"),
        (["optimize", str(path), "--label", "sentiment", "--verbalizer", "negative"], "LABEL=WORD pairs"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(main, [*args, "--model", str(tiny_causal_dir), "--runs-dir", str(tmp_path / "r")])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "r").exists()


def test_own_csv_end_to_end_from_an_empty_folder(tmp_path: Path, tiny_causal_dir: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    copied = CliRunner().invoke(main, ["tasks", "--copy", "reviews.csv"])
    assert copied.exit_code == 0 and (tmp_path / "reviews.csv").exists()
    result = CliRunner().invoke(main, ["optimize", "reviews.csv", "--input", "text", "--label", "label", "--model",
                                       str(tiny_causal_dir), "--trials", "3", "--trial-dev", "20", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["task"] == "reviews" and set(report["metrics"]) == {"dev", "untouched", "test"}
    predictor = load_prompt(report["prompt_file"])
    assert predictor.predict("a gripping , beautifully acted film") in ("negative", "positive")
    config = json.loads((Path(report["run"]) / "config.json").read_text())
    assert config["task_source"] == "reviews.csv"
    with pytest.raises(AutoPromptError):
        predictor.predict({"title": "no text field"})
