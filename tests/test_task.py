"""Task API: reading example files, loading task files, validation, and the shipped tasks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoprompt.errors import TaskError, TemplateError
from autoprompt.prompt import Prompt
from autoprompt.task import (
    BUILTIN_TASKS_DIR,
    Example,
    Task,
    load_task,
    read_examples,
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, rows: list[dict]) -> Path:
    return write(path, "".join(json.dumps(row) + "\n" for row in rows))


# --- read_examples ----------------------------------------------------------------------------


def test_jsonl_fields_answer_and_sources(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.jsonl",
        '{"text": "good", "n": 3, "label": "pos"}\n\n{"text": "bad", "n": 1.5, "label": "neg"}\n',
    )
    examples = read_examples(path)
    assert examples == [
        Example({"text": "good", "n": "3"}, "pos", f"{path}:1"),
        Example(
            {"text": "bad", "n": "1.5"}, "neg", f"{path}:3"
        ),  # blank line 2 skipped
    ]


def test_fields_list_keeps_and_dict_renames(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", [{"sentence": "hi", "extra": "x", "y": "a"}])
    assert read_examples(path, fields=["sentence"], answer="y")[0].fields == {
        "sentence": "hi"
    }
    renamed = read_examples(path, fields={"sentence": "text"}, answer="y")[0]
    assert renamed.fields == {"text": "hi"} and renamed.answer == "a"


def test_unlabelled_and_limit(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", [{"text": str(i)} for i in range(5)])
    examples = read_examples(path, answer=None, limit=2)
    assert [(e.fields["text"], e.answer) for e in examples] == [
        ("0", None),
        ("1", None),
    ]


def test_csv_and_tsv(tmp_path: Path) -> None:
    csv_path = write(tmp_path / "d.csv", 'text,label\n"a, quoted",pos\n\nplain,neg\n')
    examples = read_examples(csv_path, fields={"text": "sentence"})
    assert [(e.fields, e.answer, e.source) for e in examples] == [
        ({"sentence": "a, quoted"}, "pos", f"{csv_path}:2"),
        ({"sentence": "plain"}, "neg", f"{csv_path}:4"),
    ]
    tsv_path = write(tmp_path / "d.tsv", "text\tlabel\none, two\tpos\n")
    assert read_examples(tsv_path)[0].fields == {"text": "one, two"}
    # An explicit format overrides the suffix.
    txt_path = write(tmp_path / "d.txt", "text\tlabel\nx\tpos\n")
    assert read_examples(txt_path, format="tsv")[0].answer == "pos"


def test_csv_wrong_column_count_names_line(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "text,label\nok,pos\nbad,pos,extra\n")
    with pytest.raises(TaskError, match=r"d\.csv:3: 3 columns, but the header has 2"):
        read_examples(path)


def test_malformed_json_names_line(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"text": "a", "label": "p"}\n{"text": oops}\n')
    with pytest.raises(TaskError, match=r"d\.jsonl:2: not valid JSON"):
        read_examples(path)


def test_non_object_and_nested_values_name_line(tmp_path: Path) -> None:
    with pytest.raises(
        TaskError, match=r"d\.jsonl:1: expected a JSON object, got list"
    ):
        read_examples(write(tmp_path / "d.jsonl", '["a", "b"]\n'))
    with pytest.raises(
        TaskError, match=r"e\.jsonl:2: field 'text' must be text or a number, got null"
    ):
        read_examples(
            write(
                tmp_path / "e.jsonl",
                '{"text": "a", "label": "p"}\n{"text": null, "label": "p"}\n',
            )
        )


def test_missing_field_names_line_and_columns(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path / "d.jsonl",
        [{"text": "a", "label": "p"}, {"sentence": "b", "label": "p"}],
    )
    with pytest.raises(
        TaskError, match=r"d\.jsonl:2: missing field 'text' \(has: sentence, label\)"
    ):
        read_examples(path, fields=["text"])
    with pytest.raises(TaskError, match=r"d\.jsonl:1: missing field 'y'"):
        read_examples(path, answer="y")


def test_missing_empty_unknown_suffix_and_bad_utf8(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"nope\.jsonl: no such file"):
        read_examples(tmp_path / "nope.jsonl")
    with pytest.raises(TaskError, match=r"empty\.jsonl: no examples"):
        read_examples(write(tmp_path / "empty.jsonl", "\n\n"))
    with pytest.raises(TaskError, match=r"header\.csv: no examples"):
        read_examples(write(tmp_path / "header.csv", "text,label\n"))
    with pytest.raises(
        TaskError, match=r"d\.parquet: .*supported: \.jsonl, \.csv, \.tsv"
    ):
        read_examples(write(tmp_path / "d.parquet", ""))
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "a", "label": "p"}\n{"text": "\xff", "label": "p"}\n')
    with pytest.raises(TaskError, match=r"bad\.jsonl:2: not valid UTF-8"):
        read_examples(bad)


# --- Task and validate --------------------------------------------------------------------------


def make_task(**changes: object) -> Task:
    settings: dict = {
        "name": "toy",
        "template": "Review: {text}\nSentiment:[P]",
        "splits": {
            "train": [Example({"text": "good"}, "positive", "train.jsonl:1"),
                      Example({"text": "awful"}, "negative", "train.jsonl:2")],
            "dev": [Example({"text": "bad"}, "negative", "dev.jsonl:1"), Example({"text": "fine"}, "positive", "dev.jsonl:2")],
        },
        "verbalizer": {"negative": ["bad"], "positive": ["good"]},
        "source": "tasks/toy.py",
    }
    return Task(**(settings | changes))


def test_task_properties() -> None:
    task = make_task()
    task.validate()
    assert task.is_classification and task.labels == ["negative", "positive"]
    assert task.fields == ["text"]
    assert task.examples("dev")[0].answer == "negative"
    with pytest.raises(
        TaskError, match=r"task 'toy' has no split 'test'; splits are: train, dev"
    ):
        task.examples("test")


@pytest.mark.parametrize("verbalizer", [{"negative": ["good"], "positive": ["good"]},
                                        {"negative": ["bad", " good"], "positive": ["good", "fine"]}])
def test_a_verbalizer_that_cannot_separate_its_labels_is_refused(verbalizer) -> None:
    with pytest.raises(TaskError, match=r"tasks/toy\.py: the verbalizer gives the word 'good' to both 'negative' and "
                                        r"'positive': no prompt can tell those labels apart"):
        make_task(verbalizer=verbalizer).validate()
    with pytest.raises(TemplateError, match="no prompt can tell those labels apart"):
        Prompt(template="{text}[P]", verbalizer=verbalizer)


def test_validate_unknown_label_names_example() -> None:
    task = make_task(
        splits={"train": [Example({"text": "meh"}, "neutral", "train.jsonl:7")]}
    )
    with pytest.raises(
        TaskError,
        match=r"train\.jsonl:7: label 'neutral' is not in the verbalizer; labels are: negative, positive",
    ):
        task.validate()


def test_validate_template_field_missing() -> None:
    task = make_task(template="Review: {sentence} {instruction} {demos}[P]")
    with pytest.raises(
        TaskError,
        match=r"tasks/toy\.py: template field \{sentence\} is not in the data \(train\.jsonl:1\); fields are: text",
    ):
        task.validate()
    make_task(
        template="{instruction}\n{demos}\nReview: {text}[P]"
    ).validate()  # reserved names are fine


def test_validate_empty_split_bad_verbalizer_and_free_form() -> None:
    with pytest.raises(TaskError, match=r"split 'dev' has no examples"):
        make_task(splits={"train": make_task().splits["train"], "dev": []}).validate()
    with pytest.raises(
        TaskError, match=r"label 'positive' needs a list of one or more words"
    ):
        make_task(verbalizer={"negative": ["bad"], "positive": []}).validate()
    with pytest.raises(TaskError, match=r"label 'negative' has an empty word"):
        make_task(verbalizer={"negative": [" "], "positive": ["good"]}).validate()
    with pytest.raises(TaskError, match=r"unknown split 'valid'"):
        make_task(splits={"valid": make_task().splits["train"]}).validate()
    free = make_task(
        verbalizer=None,
        metric="precision@1",
        splits={"test": [Example({"text": "x"}, "", "t.jsonl:4")]},
    )
    with pytest.raises(
        TaskError, match=r"t\.jsonl:4: free-form example has no target text"
    ):
        free.validate()


# --- load_task ----------------------------------------------------------------------------------


TASK_FILE = """\
from pathlib import Path
from autoprompt.task import Task, read_examples

task = Task(
    name="mine",
    template="Q: {question}\\nA:[P]",
    splits={"train": read_examples(Path(__file__).parent / "qa.csv", answer="answer")},
)
"""


def test_load_task_file_resolves_data_next_to_it(tmp_path: Path) -> None:
    write(tmp_path / "qa.csv", "question,answer\n2+2?,4\n")
    path = write(tmp_path / "mine.py", TASK_FILE)
    task = load_task(path)
    assert (
        task.name == "mine" and task.source == str(path) and not task.is_classification
    )
    assert task.examples("train") == [
        Example({"question": "2+2?"}, "4", f"{tmp_path / 'qa.csv'}:2")
    ]


def test_load_task_file_errors(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"none\.py: defines no `task` \(a Task\)"):
        load_task(write(tmp_path / "none.py", "x = 1\n"))
    with pytest.raises(TaskError, match=r"wrong\.py: `task` must be a Task, not dict"):
        load_task(write(tmp_path / "wrong.py", "task = {'name': 'x'}\n"))
    with pytest.raises(
        TaskError, match=r"boom\.py:3: ZeroDivisionError: division by zero"
    ):
        load_task(write(tmp_path / "boom.py", "x = 1\n\ny = x / 0\n"))
    with pytest.raises(TaskError, match=r"syntax\.py:2: SyntaxError"):
        load_task(write(tmp_path / "syntax.py", "x = 1\nx = = 2\n"))
    with pytest.raises(TaskError, match=r"missing\.py: no such file"):
        load_task(tmp_path / "missing.py")
    with pytest.raises(
        TaskError,
        match=r"unknown task 'foo': not a file, and built-in tasks are: country_codes, lama_p103, lama_p19, native_language, sst2",
    ):
        load_task("foo")


def test_load_task_keeps_data_errors_and_validates(tmp_path: Path) -> None:
    # A TaskError from read_examples reaches the user as is, naming the data file and line.
    write(tmp_path / "qa.csv", "question,answer\n2+2?\n")
    with pytest.raises(TaskError, match=r"qa\.csv:2: 1 columns, but the header has 2"):
        load_task(write(tmp_path / "mine.py", TASK_FILE))
    write(tmp_path / "qa.csv", "query,answer\n2+2?,4\n")
    with pytest.raises(
        TaskError, match=r"mine\.py: template field \{question\} is not in the data"
    ):
        load_task(tmp_path / "mine.py")


# --- the shipped tasks --------------------------------------------------------------------------


def test_sst2_shipped() -> None:
    task = load_task("sst2")
    assert {split: len(examples) for split, examples in task.splits.items()} == {
        "train": 3000,
        "dev": 500,
        "test": 872,
    }
    assert task.labels == ["negative", "positive"] and task.metric == "accuracy"
    texts = {}
    for split, examples in task.splits.items():
        assert {e.answer for e in examples} == {"negative", "positive"}
        texts[split] = {e.fields["text"] for e in examples}
        assert len(texts[split]) == len(examples)  # no duplicated text inside a split
    assert not texts["train"] & texts["dev"]
    assert not texts["train"] & texts["test"]
    assert not texts["dev"] & texts["test"]
    assert all(len(text.split()) >= 5 for text in texts["train"] | texts["dev"])


@pytest.mark.parametrize(
    ("name", "relation", "counts"),
    [
        ("lama_p19", "P19", {"train": 800, "dev": 200, "test": 704}),
        ("lama_p103", "P103", {"train": 732, "dev": 183, "test": 909}),
    ],
)
def test_lama_shipped(name: str, relation: str, counts: dict[str, int]) -> None:
    by_name = load_task(name)
    by_path = load_task(BUILTIN_TASKS_DIR / f"{name}.py")
    for task in (by_name, by_path):
        assert {
            split: len(examples) for split, examples in task.splits.items()
        } == counts
        assert not task.is_classification and task.metric == "precision@1"
        assert task.fields == ["subject"] and task.template.endswith("[P]")
    subjects = {
        split: {e.fields["subject"] for e in ex} for split, ex in by_name.splits.items()
    }
    assert not subjects["train"] & subjects["dev"]
    assert not subjects["train"] & subjects["test"]
    assert not subjects["dev"] & subjects["test"]
    assert all(e.answer for examples in by_name.splits.values() for e in examples)
    assert by_name.examples("test")[0].source.endswith(f"{relation}.test.jsonl:1")
