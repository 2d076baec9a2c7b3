"""autoprompt compare-methods (autoprompt.compare_methods): the per-(size, seed) samples, a comparison's files and
its table, resuming after an interruption, what soft and lora cells report, and bad input on the command line."""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

import autoprompt
from autoprompt import compare
from autoprompt.cli import main
from autoprompt.compare import compare_methods, read_cells, sample_task
from autoprompt.errors import AutoPromptError
from autoprompt.prompt import Prompt
from autoprompt.scoring import evaluate
from autoprompt.task import Example, Task

VERBALIZER = {"negative": ["negative"], "positive": ["positive"]}
WORDS = ["fine", "thin", "slow", "bright", "dull", "warm", "cold", "sharp", "flat", "rich", "odd", "kind", "grim",
         "loud", "soft", "wild", "calm", "lush", "bare", "keen"]
TEMPLATE = "Review: {text}\nSentiment:[P]"


def texts(prefix: str, n: int) -> list[str]:
    return [f"{prefix} a {WORDS[i % len(WORDS)]} film {i}" for i in range(n)]


def labelled(split: str, rows: list[tuple[str, str]]) -> list[Example]:
    return [Example({"text": text}, label, f"{split}:{i}") for i, (text, label) in enumerate(rows)]


def toy_task(n_test: int = 6) -> Task:
    """Unbalanced train (9 positive, 6 negative); dev (6 and 6) repeats two train examples; a small test."""
    train = labelled("train", [(t, "positive") for t in texts("yes", 9)] + [(t, "negative") for t in texts("no", 6)])
    dev = labelled("dev", [(train[0].fields["text"], "positive"), (train[9].fields["text"], "negative")]
                   + [(t, "positive") for t in texts("dev yes", 5)] + [(t, "negative") for t in texts("dev no", 5)])
    test = labelled("test", [(t, ("positive", "negative")[i % 2]) for i, t in enumerate(texts("test", n_test))])
    return Task(name="toy", template=TEMPLATE, verbalizer=VERBALIZER, splits={"train": train, "dev": dev, "test": test})


def key(example: Example) -> tuple:
    return example.fields["text"], example.answer


# --- the samples ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 3, 5])
def test_a_label_task_sample_is_k_per_class_with_a_dev_as_large(k: int) -> None:
    task = toy_task()
    sub = sample_task(task, k, seed=0)
    for split in ("train", "dev"):
        labels = [e.answer for e in sub.splits[split]]
        assert labels.count("positive") == labels.count("negative") == k, split
        assert set(map(key, sub.splits[split])) <= set(map(key, task.splits[split]))
        assert len(set(map(key, sub.splits[split]))) == 2 * k  # no example twice
    assert not set(map(key, sub.splits["train"])) & set(map(key, sub.splits["dev"]))  # dev repeats none of train
    assert sub.splits["test"] is task.splits["test"]
    assert (sub.name, sub.template, sub.verbalizer, sub.metric) == (task.name, task.template, task.verbalizer, task.metric)


def test_samples_depend_on_size_and_seed_only() -> None:
    task = toy_task()
    sources = {seed: [[e.source for e in sample_task(task, 3, seed).splits[s]] for s in ("train", "dev")]
               for seed in range(4)}
    assert sources[0] == [[e.source for e in sample_task(toy_task(), 3, 0).splits[s]] for s in ("train", "dev")]
    assert len({json.dumps(v) for v in sources.values()}) == 4  # every seed draws another sample
    assert sample_task(task, "all", 0) is task


def test_the_dev_sample_never_holds_a_train_example() -> None:
    task = toy_task()
    repeated = {key(task.splits["dev"][0]), key(task.splits["dev"][1])}  # (both are also in train)
    for seed in range(10):
        sub = sample_task(task, 5, seed)
        train, dev = set(map(key, sub.splits["train"])), set(map(key, sub.splits["dev"]))
        assert not train & dev and not dev & repeated, seed
    compare.check_sizes(task, [5])
    compare.check_sizes(task, [6])  # dev has 6 of each label, but one of them is in train: dev holds 5 of each
    sub = sample_task(task, 6, 0)
    assert Counter(e.answer for e in sub.splits["dev"]) == {label: 5 for label in task.labels}
    assert Counter(e.answer for e in sub.splits["train"]) == {label: 6 for label in task.labels}
    assert not set(map(key, sub.splits["train"])) & set(map(key, sub.splits["dev"]))


def test_a_generation_task_samples_examples_in_all() -> None:
    rows = [Example({"country": f"land {i}"}, f"L{i:02d}", f"c:{i}") for i in range(30)]
    task = Task(name="codes", template="Country: {country}\nCode:[P]", metric="exact_match",
                splits={"train": rows[:12], "dev": rows[12:24], "test": rows[24:]})
    sub = sample_task(task, 5, 1)
    assert len(sub.splits["train"]) == len(sub.splits["dev"]) == 5
    assert sub.generation.max_new_tokens == task.generation.max_new_tokens  # (read from the whole task)
    compare.check_sizes(task, [12])
    with pytest.raises(AutoPromptError, match="examples in all"):
        compare.check_sizes(task, [13])


# --- a comparison ----------------------------------------------------------------------------------------------

def spy(monkeypatch) -> list[tuple]:
    """Every optimize() call compare_methods makes: (method, size of train, seed, train and dev sources)."""
    calls, real = [], compare.optimize

    def recorded(task, model, *, method, seed, **kwargs):
        calls.append((method, len(task.splits["train"]), seed, [e.source for e in task.splits["train"]],
                      [e.source for e in task.splits["dev"]]))
        return real(task, model, method=method, seed=seed, **kwargs)

    monkeypatch.setattr(compare, "optimize", recorded)
    return calls


TABLE_ENTRY = re.compile(r"(\d\.\d{3}) ± (\d\.\d{3})<br>")


def table(markdown: str) -> dict[str, list[tuple[str, str]]]:
    """comparison.md's table: method -> its entries' (mean, std) as written."""
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and "<br>" in line]
    return {row.split(" | ")[0].strip("| "): TABLE_ENTRY.findall(row) for row in rows}


@pytest.fixture(scope="module")
def two_by_two(causal_lm, tmp_path_factory):
    """manual and template at 2 and 3 shots with seeds 0 and 1; the optimize() calls it made."""
    with pytest.MonkeyPatch.context() as patch:
        calls = spy(patch)
        result = compare_methods(toy_task(), causal_lm, methods="manual,template", shots=[3, 2], seeds="0,1",
                                 total_budget=600, runs_dir=tmp_path_factory.mktemp("runs"), progress=False,
                                 settings={"template": {"trials": 2, "rescore_top": 1}})
    return result, calls


def test_a_comparison_writes_every_cell_and_its_report(two_by_two) -> None:
    result, calls = two_by_two
    folder = result.folder
    assert folder.name.endswith("-toy-compare") and folder.parent.name.startswith("runs")
    assert {p.name for p in folder.iterdir()} == {"cells.jsonl", "comparison.json", "comparison.md", "comparison.png",
                                                  "runs"}
    cells = read_cells(folder)
    assert len(cells) == 8 == len(calls) == len(result.cells)
    assert {(c["method"], c["size"], c["seed"]) for c in cells} == {
        (m, s, seed) for m in ("manual", "template") for s in (2, 3) for seed in (0, 1)}
    assert [c["size"] for c in cells] == [2] * 4 + [3] * 4  # smallest size first
    saved = json.loads((folder / "comparison.json").read_text())
    assert saved["state"] == "finished" and saved["cells"] == cells
    assert saved["config"]["sizes"] == [2, 3] and saved["config"]["seeds"] == [0, 1]
    assert saved["config"]["time_budget"] is None and saved["config"]["total_budget"] == 600  # shared as it goes
    assert [c["time_budget"] is None for c in cells] == [m == "manual" for m in (c["method"] for c in cells)]
    for cell in cells:
        run = folder / cell["run"]
        assert (run / "result.json").exists() and run.parent == folder / "runs"
        assert cell["examples"] == {"train": 2 * cell["size"], "dev": 2 * cell["size"], "test": 6}
        assert cell["trainable_parameters"] == 0 and cell["adapter"] is None
        assert cell["artifact_bytes"] == (run / "best.prompt.json").stat().st_size
        low, high = cell["test_interval"]
        assert low <= cell["test"] <= high
    assert (folder / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_method_sees_the_same_samples(two_by_two) -> None:
    _, calls = two_by_two
    by_cell = {}
    for method, size, seed, train, dev in calls:
        by_cell.setdefault((size, seed), {})[method] = (train, dev)
    for (size, seed), methods in by_cell.items():
        assert methods["manual"] == methods["template"], (size, seed)
    assert by_cell[4, 0] != by_cell[4, 1]  # (4 train examples: 2 shots of two classes)


def test_the_table_is_the_mean_and_std_of_the_cells(two_by_two) -> None:
    result, _ = two_by_two
    written = table((result.folder / "comparison.md").read_text())
    assert set(written) == {"manual", "template"}
    for method, entries in written.items():
        expected = []
        for size in (2, 3):
            tests = [c["test"] for c in result.cells if c["method"] == method and c["size"] == size]
            assert len(tests) == 2
            expected.append((f"{statistics.fmean(tests):.3f}", f"{statistics.stdev(tests):.3f}"))
        assert entries == expected, method
    md = (result.folder / "comparison.md").read_text()
    assert "| method | 2 shots | 3 shots |" in md and "![test metric against train size](comparison.png)" in md
    assert md.count("\n- 2 shots: ") == 1 and md.count("\n- 3 shots: ") == 1  # a sentence per size
    assert result.summary["rows"]["manual"]["2"]["n"] == 2


# --- resume ------------------------------------------------------------------------------------------------------

def test_resume_runs_only_the_missing_cells(causal_lm, tmp_path: Path, monkeypatch) -> None:
    real, started = compare.optimize, []

    def third_interrupted(task, model, *, method, seed, **kwargs):
        started.append((method, len(task.splits["train"]) // 2, seed))
        if len(started) == 3:
            raise KeyboardInterrupt
        return real(task, model, method=method, seed=seed, **kwargs)

    monkeypatch.setattr(compare, "optimize", third_interrupted)
    args = {"methods": "manual", "shots": "1,2", "seeds": "0,1", "progress": False}
    with pytest.raises(KeyboardInterrupt):
        compare_methods(toy_task(), causal_lm, runs_dir=tmp_path, **args)
    folder = next(tmp_path.iterdir())
    kept = read_cells(folder)
    assert [(c["method"], c["size"], c["seed"]) for c in kept] == started[:2] == [("manual", 1, 0), ("manual", 1, 1)]
    assert json.loads((folder / "comparison.json").read_text())["state"] == "interrupted"
    assert not (folder / "comparison.md").exists()
    monkeypatch.setattr(compare, "optimize", real)
    calls = spy(monkeypatch)
    with pytest.raises(AutoPromptError, match="cannot change"):
        compare_methods(toy_task(), causal_lm, resume=folder, seeds="0", progress=False)
    result = compare_methods(toy_task(), causal_lm, resume=folder, progress=False)
    assert [(m, size // 2, seed) for m, size, seed, _, _ in calls] == [("manual", 2, 0), ("manual", 2, 1)]
    assert [c for c in result.cells[:2]] == kept  # the finished cells, untouched
    assert len(result.cells) == 4 and len(read_cells(folder)) == 4
    assert json.loads((folder / "comparison.json").read_text())["state"] == "finished"


# --- what soft and lora report -----------------------------------------------------------------------------------

def wrong_task(model) -> Task:
    """Labels the task's own prompt gets all wrong on the tiny model (any gain the training finds is kept):
    40 sentences labelled against its predictions, 4 of each label per split."""
    task = toy_task()
    pool = labelled("pool", [(t, "positive") for t in texts("any", 40)])
    predicted = evaluate(model, replace(Prompt.from_task(task), model=model.ref), pool).predictions
    flip = {"positive": "negative", "negative": "positive"}
    by_label = {label: [replace(e, answer=label) for e, p in zip(pool, predicted, strict=True) if flip[p] == label]
                for label in VERBALIZER}
    assert min(map(len, by_label.values())) >= 12, {label: len(e) for label, e in by_label.items()}
    splits = {split: [e for examples in by_label.values() for e in examples[4 * n: 4 * n + 4]]
              for n, split in enumerate(("train", "dev", "test"))}
    return replace(task, splits=splits)


def test_soft_and_lora_cells_count_their_parameters_and_adapter(causal_lm, tmp_path: Path) -> None:
    task = wrong_task(causal_lm)
    settings = {"soft": {"n_tokens": 3, "prompt_lr": 0.05, "epochs": 10, "batch_size": 2},
                "lora": {"lora_r": 2, "lora_lr": 0.05, "lora_dropout": 0.0, "epochs": 10, "batch_size": 2}}
    result = compare_methods(task, causal_lm, methods="manual,soft,lora", shots="2", seeds="0", confidence=0,
                             time_budget=120, runs_dir=tmp_path, settings=settings, progress=False)
    cells = {c["method"]: c for c in result.cells}
    hidden = causal_lm.hf_model.config.hidden_size
    assert cells["soft"]["trainable_parameters"] == 3 * hidden
    assert cells["lora"]["trainable_parameters"] > 0
    assert cells["manual"]["trainable_parameters"] == 0
    for method in ("soft", "lora"):
        cell, run = cells[method], result.folder / cells[method]["run"]
        assert cell["adapter"] == method and not cell["kept_baseline"], cell
        prompt_file = run / "best.prompt.json"
        adapter = run / json.loads(prompt_file.read_text())["adapter"]["file"]
        assert cell["artifact_bytes"] == prompt_file.stat().st_size + adapter.stat().st_size
        assert cell["artifact_bytes"] > prompt_file.stat().st_size
    loaded = autoprompt.read_prompt_file(result.folder / cells["lora"]["run"] / "best.prompt.json")
    assert loaded.prompt.adapter.n_parameters == cells["lora"]["trainable_parameters"]
    md = (result.folder / "comparison.md").read_text()
    assert f"{3 * hidden} params" in md


# --- the command line --------------------------------------------------------------------------------------------

def write_task_file(folder: Path) -> Path:
    task = toy_task(n_test=4)
    rows = {split: [{"text": e.fields["text"], "label": e.answer} for e in examples]
            for split, examples in task.splits.items()}
    for split, data in rows.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
    path = folder / "toy.py"
    path.write_text("from pathlib import Path\nfrom autoprompt.task import Task, read_examples\n"
                    "here = Path(__file__).parent\n"
                    f"task = Task(name='toy', template={TEMPLATE!r}, verbalizer={VERBALIZER!r},\n"
                    "            splits={s: read_examples(here / f'{s}.jsonl') for s in ('train', 'dev', 'test')})\n",
                    encoding="utf-8")
    return path


def test_the_command_prints_progress_and_one_json_object(tiny_causal_dir: Path, tmp_path: Path) -> None:
    task = write_task_file(tmp_path)
    result = CliRunner().invoke(main, ["compare-methods", str(task), "--methods", "manual", "--shots", "1,all",
                                       "--seeds", "0", "--model", str(tiny_causal_dir), "--runs-dir",
                                       str(tmp_path / "runs"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert len(report["cells"]) == 2 and report["config"]["sizes"] == [1, "all"]
    assert report["cells"][1]["examples"] == {"train": 15, "dev": 12, "test": 4}  # all: the task's own splits
    assert "cell 1/2: manual, 1 shot, seed 0" in result.stderr
    assert "cell 2/2: manual, all of train (15 examples), seed 0" in result.stderr
    assert report["config"]["confidence"] == 0  # each method's own result, unless --confidence is given
    assert "only when the found one is worse on dev" in Path(report["files"]["markdown"]).read_text()
    again = CliRunner().invoke(main, ["compare-methods", str(task), "--resume", report["folder"]])
    assert again.exit_code == 0, again.output  # every cell is done: only the report is written again
    assert "cell 1/2" not in again.stderr and "2 cells" in again.stdout
    changed = CliRunner().invoke(main, ["compare-methods", str(task), "--resume", report["folder"], "--seeds", "1"])
    assert changed.exit_code == 2 and changed.stderr.startswith("error: --resume") and "give no --methods" in changed.stderr


@pytest.mark.parametrize("flags, message", [
    (["--methods", "manual,finetune"], "unknown method 'finetune'"),
    (["--methods", ""], "give at least one"),
    (["--shots", "0"], "is not a train size"),
    (["--shots", "4,x"], "is not a train size"),
    (["--shots", "-2"], "is not a train size"),
    (["--shots", "7"], "smallest class, 'negative', has 6"),
    (["--shots", "2,2"], "given twice"),
    (["--seeds", ""], "give at least one"),
    (["--seeds", ","], "give at least one"),
    (["--seeds", "0,a"], "is not a seed"),
    (["--shots", "1", "--time-budget", "10", "--total-budget", "100"], "not both"),
])
def test_bad_input_is_one_error_line_and_nothing_written(tiny_causal_dir: Path, tmp_path: Path, flags: list[str],
                                                         message: str) -> None:
    task = write_task_file(tmp_path)
    runs = tmp_path / "runs"
    result = CliRunner().invoke(main, ["compare-methods", str(task), "--model", str(tiny_causal_dir),
                                       "--runs-dir", str(runs), *flags])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not runs.exists()


def test_the_tasks_own_prompt_is_scored_on_test_once_for_all_cells(causal_lm, tmp_path: Path, monkeypatch) -> None:
    """Every cell's run scores the task's own prompt on the same test split: within a comparison it is
    scored once (and a run outside one still scores it itself), with the same numbers."""
    from autoprompt import shared_scoring

    task = toy_task(n_test=7)
    test_key = [key(e) for e in task.splits["test"]]
    scored: list[str] = []
    real = shared_scoring.evaluate

    def counted(model, prompt, examples, **kwargs):
        if [key(e) for e in examples] == test_key:
            scored.append(repr(prompt))
        return real(model, prompt, examples, **kwargs)

    monkeypatch.setattr(shared_scoring, "evaluate", counted)
    result = compare_methods(task, causal_lm, methods="manual", shots=[2, 3], seeds="0,1", runs_dir=tmp_path,
                             progress=False)
    assert len(result.cells) == 4 and len(scored) == len(set(scored)) == 1  # 4 runs x 2 prompts: one scoring
    assert len({json.dumps(c["test"], sort_keys=True) for c in result.cells}) == 1
    scored.clear()
    autoprompt.optimize(task, causal_lm, method="manual", runs_dir=tmp_path / "alone", progress=False)
    assert len(scored) == 2  # outside a comparison: the found prompt and the baseline, each scored


def test_a_cells_budget_is_for_its_search_and_its_choice_on_dev(causal_lm, tmp_path: Path, monkeypatch) -> None:
    """Within a comparison a run's budget keeps time back only for choosing on dev (less the task's prompt on dev
    when an earlier cell of the same sample scored it): test is the comparison's cost, and no train sample is
    scored. A run outside a comparison keeps time for all of its final scoring, the train sample included."""
    from autoprompt.budget import Budget
    from autoprompt.searches.base import final_split_examples

    kept: list[int] = []
    real = Budget.keep_for
    monkeypatch.setattr(Budget, "keep_for", lambda self, n: kept.append(n) or real(self, n))
    task = toy_task(n_test=7)
    result = compare_methods(task, causal_lm, methods="manual,lora", shots=[2], seeds="0", runs_dir=tmp_path,
                             settings={"lora": {"max_steps": 1, "lora_r": 2}}, progress=False)
    dev = len(sample_task(task, 2, 0).splits["dev"])
    assert kept == [2 * dev, 2 * dev - dev]  # manual: both prompts on dev; lora: the task's prompt is known
    for cell in result.cells:
        splits = json.loads((result.folder / cell["run"] / "predictions.json").read_text())["splits"]
        assert set(splits) == {"dev", "test"}, cell["method"]
    kept.clear()
    alone = autoprompt.optimize(task, causal_lm, method="manual", time_budget=60, runs_dir=tmp_path / "alone",
                                progress=False)
    assert kept == [2 * final_split_examples(task)]
    assert set(json.loads((alone.run_dir / "predictions.json").read_text())["splits"]) == {"train", "dev", "untouched", "test"}
