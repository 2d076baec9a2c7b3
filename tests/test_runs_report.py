"""Runs and reports: a trigger run and a template run on a tiny model, then runs list / show /
compare / report and report.md, checked against what the runs logged; the statistics alone."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from autoprompt.cli import main
from autoprompt.metrics import bootstrap, confusion_matrix, interval, macro_f1
from autoprompt.runs import Run, SplitResult, overfit_warning, split_results, summary, write_report
from autoprompt.runs.predictions import side_value as metric_value  # the metric of one side of a split record

WORDS = {"positive": ["great", "wonderful", "loved", "fine"], "negative": ["terrible", "dull", "awful", "boring"]}
TEMPLATE = "Review: {text}\nSentiment:[P]"


def invoke(*args: object) -> Result:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_causal_dir: Path) -> dict[str, Path]:
    """A trigger run and a template run of a small sentiment task, in one runs folder."""
    folder = tmp_path_factory.mktemp("runs-report")
    rng = random.Random(0)
    rows = [{"text": f"a {rng.choice(WORDS[label])} film, part {i}", "label": label}
            for i, label in enumerate(rng.choice(sorted(WORDS)) for _ in range(48))]
    for split, part in (("train", rows[:24]), ("dev", rows[24:36]), ("test", rows[36:])):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    task = folder / "toy.py"
    task.write_text("from pathlib import Path\nfrom autoprompt.task import Task, read_examples\n"
                    f"task = Task(name='toy', template={TEMPLATE!r}, verbalizer={{'negative': ['terrible'], "
                    "'positive': ['great']},\n  splits={s: read_examples(Path(__file__).parent / f'{s}.jsonl') "
                    "for s in ('train', 'dev', 'test')})\n", encoding="utf-8")
    common = ["--model", tiny_causal_dir, "--runs-dir", folder / "runs", "--json"]
    trigger = json.loads(invoke("optimize", task, "--method", "trigger", "--confidence", 0, "--steps", 2, "--n-triggers", 2, "--top-k", 4, "--dev-every", 1,
                                *common).stdout)
    template = json.loads(invoke("optimize", task, "--method", "template", "--confidence", 0, "--trials", 5, "--trial-dev", 0,
                                 "--chunk", 4, *common).stdout)
    return {"task": task, "runs": folder / "runs", "trigger": Path(trigger["run"]), "template": Path(template["run"])}


def _result(run: Path) -> dict:
    return json.loads((run / "result.json").read_text(encoding="utf-8"))


def _events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("method", ["trigger", "template"])
def test_report_says_what_the_log_says(runs: dict, method: str) -> None:
    run = runs[method]
    result, events = _result(run), _events(run)
    # the found prompt is the best on dev: its final dev score is the best the log saw on all of dev
    if method == "trigger":
        assert result["metrics"]["dev"]["accuracy"] == max(e["dev"] for e in events if "dev" in e)
        assert result["steps"] == max(e["step"] for e in events)
    else:
        tried = [e["dev"] for e in events if e["stage"] == "rescore"]  # each prompt alone, and their ensembles
        tried += [row["dev"] for e in events if e["stage"] == "ensemble" for row in e["candidates"]]
        assert result["metrics"]["dev"]["accuracy"] == max(tried)
        states = [e["state"] for e in events if e["stage"] == "template"]
        assert result["trials"] == {s: states.count(s) for s in ("complete", "duplicate", "pruned", "failed")}
    # predictions.json gives back the metrics result.json has, for both prompts
    rows = {r.split: r for r in split_results(Run(run))}
    assert set(rows) == {"train", "dev", "untouched", "test"}
    for split in ("dev", "untouched", "test"):
        assert rows[split].value == pytest.approx(result["metrics"][split]["accuracy"], abs=1e-12)
        assert rows[split].baseline == pytest.approx(result["baseline"][split]["accuracy"], abs=1e-12)
        assert rows[split].interval[0] <= rows[split].value <= rows[split].interval[1]
    assert rows["train"].value == pytest.approx(result["train_sample"]["metrics"]["accuracy"], abs=1e-12)
    assert rows["train"].examples == result["train_sample"]["examples"] == 24
    # and report.md prints those numbers, and its pictures exist
    report = (run / "report.md").read_text(encoding="utf-8")
    for split in ("train", "dev", "test"):
        r = rows[split]
        assert f"| {split} | {r.examples} | {r.value:.3f} [{r.interval[0]:.3f}, {r.interval[1]:.3f}] |" in report
    pictures = ["metrics.png", "confusion_test.png", "history.png"]
    pictures += ["optuna_history.png", "optuna_importances.png"] if method == "template" else []
    for name in pictures:
        assert f"]({name})" in report
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    predictions = json.loads((run / "predictions.json").read_text(encoding="utf-8"))
    gold, predicted = predictions["splits"]["test"]["gold"], predictions["splits"]["test"]["prompt"]["predicted"]
    counts = confusion_matrix(gold, predicted, ["negative", "positive"])
    assert f"| **negative** | {counts[0, 0]} | {counts[0, 1]} |" in report
    assert counts.trace() / counts.sum() == pytest.approx(result["metrics"]["test"]["accuracy"])


def test_runs_list(runs: dict) -> None:
    listed = json.loads(invoke("runs", "list", "--dir", runs["runs"], "--json").stdout)["runs"]
    by_method = {row["method"]: row for row in listed}
    assert set(by_method) == {"trigger", "template"}
    for method, row in by_method.items():
        result = _result(runs[method])
        assert row["state"] == "finished" and row["task"] == "toy" and row["metric"] == "accuracy"
        assert row["dev"] == result["metrics"]["dev"]["accuracy"] and row["test"] == result["metrics"]["test"]["accuracy"]
        assert row["seconds"] == result["seconds"]
    assert by_method["trigger"]["steps"] == 2
    assert by_method["template"]["trials"] == 5
    table = invoke("runs", "list", "--dir", runs["runs"]).stdout.splitlines()
    assert table[0].split() == ["id", "task", "method", "model", "metric", "dev", "test", "work", "time", "state"]
    assert len(table) == 3 and all(line.rstrip().endswith("finished") for line in table[1:])


def test_runs_list_shows_unfinished_runs(tmp_path: Path) -> None:
    for name, state in (("a-interrupted", "interrupted"), ("b-failed", "failed")):
        run = Run.create("toy", "trigger", {"method": "trigger", "task": "toy", "model": "m", "trigger": {"seed": 3}},
                         runs_dir=tmp_path / name)
        run.write_json("result.json", {"state": state})
    (tmp_path / "not-a-run").mkdir()
    listed = json.loads(invoke("runs", "list", "--dir", tmp_path, "--json").stdout)["runs"]
    assert [(r["state"], r["dev"], r["seed"]) for r in listed] == [("interrupted", None, 3), ("failed", None, 3)]


def test_runs_compare_markdown(runs: dict) -> None:
    text = invoke("runs", "compare", runs["trigger"], runs["template"].name, "--dir", runs["runs"], "--markdown").stdout
    lines = text.splitlines()
    assert lines[0].startswith("| task | method | run |") and len(lines) == 4
    for method in ("trigger", "template"):
        result = _result(runs[method])
        test = {r.split: r for r in split_results(Run(runs[method]))}["test"]
        line = next(line for line in lines if f"`{runs[method].name}`" in line)
        assert (f"| {result['metrics']['dev']['accuracy']:.3f} | {result['metrics']['test']['accuracy']:.3f} "
                f"[{test.interval[0]:.3f}, {test.interval[1]:.3f}] | {result['baseline']['dev']['accuracy']:.3f} / "
                f"{result['baseline']['test']['accuracy']:.3f} |") in line


def test_runs_show(runs: dict) -> None:
    run = runs["template"]
    text = invoke("runs", "show", run).stdout
    predictions = json.loads((run / "predictions.json").read_text(encoding="utf-8"))
    assert predictions["example"]["rendered"] in text  # the found prompt on one example
    assert "template_search" in text and str((run / "report.md").resolve()) in text
    shown = json.loads(invoke("runs", "show", run, "--json").stdout)
    assert {s["split"]: s["value"] for s in shown["splits"]}["test"] == _result(run)["metrics"]["test"]["accuracy"]


def test_runs_report_rebuilds_from_files_without_the_model(runs: dict, monkeypatch) -> None:
    import autoprompt.models

    def no_model(*args, **kwargs):
        raise AssertionError("a report must not load a model")

    monkeypatch.setattr(autoprompt.models, "load_model", no_model)
    run = runs["trigger"]
    before = (run / "report.md").read_text(encoding="utf-8")
    invoke("runs", "report", run)  # over an existing report
    assert (run / "report.md").read_text(encoding="utf-8") == before
    for name in ("report.md", "metrics.png", "history.png", "confusion_test.png"):
        (run / name).unlink()
    invoke("runs", "report", run)
    assert (run / "report.md").read_text(encoding="utf-8") == before
    assert (run / "history.png").exists() and (run / "metrics.png").exists()


def test_seeds_run_one_folder_each_and_summarize(runs: dict, tiny_causal_dir: Path, tmp_path: Path) -> None:
    out = json.loads(invoke("optimize", runs["task"], "--method", "trigger", "--seeds", "0,1", "--steps", 1, "--n-triggers", 1, "--top-k", 2,
                            "--model", tiny_causal_dir, "--runs-dir", tmp_path, "--json").stdout)
    folders = [Path(r["run"]) for r in out["runs"]]
    assert [json.loads((f / "config.json").read_text())["seed"] for f in folders] == [0, 1]
    summary = json.loads(Path(out["summary_file"]).read_text(encoding="utf-8"))
    for split in ("dev", "test"):
        values = [_result(f)["metrics"][split]["accuracy"] for f in folders]
        assert summary[split]["mean"] == pytest.approx(np.mean(values))
        assert summary[split]["std"] == pytest.approx(np.std(values, ddof=1))
    assert Path(out["summary_file"]).with_suffix(".md").exists()


# --- the statistics, without runs ----------------------------------------------------------

def test_bootstrap_is_the_loop_it_vectorizes() -> None:
    rng = random.Random(1)
    labels = ["a", "b", "c"]
    gold = [rng.choice(labels) for _ in range(40)]
    predicted = [g if rng.random() < 0.6 else rng.choice(labels) for g in gold]
    values = bootstrap("macro_f1", gold, [{"predicted": predicted}], labels, n_resamples=200, seed=7)[0]
    idx = np.random.default_rng(7).integers(0, 40, size=(200, 40))
    expected = [macro_f1([predicted[i] for i in row], [gold[i] for i in row], labels) for row in idx]
    assert np.allclose(values, expected)
    assert metric_value("macro_f1", gold, {"predicted": predicted}, labels) == pytest.approx(
        macro_f1(predicted, gold, labels))


def test_bootstrap_intervals_are_seeded_and_cover_the_value() -> None:
    gold = ["a"] * 50 + ["b"] * 50
    side = {"predicted": ["a"] * 80 + ["b"] * 20}  # 0.7 accuracy
    first = interval(bootstrap("accuracy", gold, [side], seed=0)[0])
    assert first == interval(bootstrap("accuracy", gold, [side], seed=0)[0])
    assert first != interval(bootstrap("accuracy", gold, [side], seed=1)[0])
    assert first[0] < 0.7 < first[1] and first[1] - first[0] < 0.25  # about ±1.96·sqrt(.21/100)
    ranks = {"ranks": [0, 0, 3, 1, 0, 9]}
    assert metric_value("precision@1", ["x"] * 6, ranks) == pytest.approx(0.5)
    assert metric_value("mrr", ["x"] * 6, ranks) == pytest.approx(np.mean([1, 1, 1 / 4, 1 / 2, 1, 1 / 10]))


def test_confusion_matrix_counts() -> None:
    counts = confusion_matrix(["a", "a", "b", "b", "b"], ["a", "b", "b", "b", "a"], ["a", "b"])
    assert counts.tolist() == [[1, 1], [1, 2]]


def test_overfit_warning() -> None:
    def rows(train: float, test: float, width: float) -> list[SplitResult]:
        return [SplitResult("train", 100, 1000, train, None, (train - width, train + width)),
                SplitResult("test", 100, 100, test, None, (test - width, test + width))]

    assert "overfits" in overfit_warning(rows(0.95, 0.70, 0.04))
    assert overfit_warning(rows(0.95, 0.70, 0.2)) is None  # the intervals overlap: not clear
    assert overfit_warning(rows(0.74, 0.70, 0.01)) is None  # a small gap


def test_the_command_line_is_recorded_only_for_the_cli(monkeypatch) -> None:
    from autoprompt.runs import invoked_command

    monkeypatch.setattr("sys.argv", ["/venv/bin/autoprompt", "optimize", "sst2", "--space", "my space.yaml"])
    assert invoked_command() == "autoprompt optimize sst2 --space 'my space.yaml'"
    monkeypatch.setattr("sys.argv", ["/src/autoprompt/cli.py", "optimize", "sst2"])
    assert invoked_command() == "autoprompt optimize sst2"
    monkeypatch.setattr("sys.argv", ["/venv/bin/pytest", "-q"])
    assert invoked_command() is None


def test_runs_list_of_a_folder_without_runs_is_not_an_error(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "not-a-run").mkdir()
    result = CliRunner().invoke(main, ["runs", "list", "--dir", str(tmp_path)])
    assert result.exit_code == 0 and result.output.strip() == f"no runs in {tmp_path}/ yet (autoprompt optimize writes them there)"
    assert json.loads(invoke("runs", "list", "--dir", tmp_path, "--json").stdout)["runs"] == []
    monkeypatch.chdir(tmp_path)  # the default runs/ does not exist yet: a new user's first look
    result = CliRunner().invoke(main, ["runs", "list"])
    assert result.exit_code == 0 and result.output.startswith("no runs in runs/ yet")


def test_a_new_method_lists_and_reports_by_the_shape_of_its_data(tmp_path: Path) -> None:
    """A search the runs code has never heard of: its work comes from result.json's "work", its history
    panels from the kinds of events it logged (steps with a loss, trials with a state)."""
    run = Run.create("toy", "beam", {"method": "beam", "task": "toy", "model": "m"}, runs_dir=tmp_path)
    run.write_json("result.json", {"state": "finished", "metric": "accuracy", "work": {"rounds": 3, "steps": 4},
                                   "metrics": {"dev": {"accuracy": 0.75}}, "baseline": {"dev": {"accuracy": 0.5}}})
    for step in range(5):
        run.log({"stage": "beam", "step": step, "loss": 1.0 / (step + 1), "best_candidate_loss": 0.5 / (step + 1),
                 **({"dev": 0.5 + step / 20} if step % 2 == 0 else {})})
    run.log({"stage": "beam", "trial": 0, "state": "complete", "dev": 0.7})
    info = summary(run)
    assert (info["work"], info["steps"], info["trials"]) == ("3 rounds + 4 steps", 4, None)
    report = write_report(run).read_text(encoding="utf-8")
    assert "· 3 rounds + 4 steps ·" in report and "![history.png](history.png)" in report
    assert (run.path / "history.png").stat().st_size > 0
    assert not (run.path / "study.db").exists()  # no study: none opened (nor created) for Optuna's plots


def test_older_runs_count_their_work_from_the_log(tmp_path: Path) -> None:
    """Runs made before result.json recorded "work": trials and steps counted by method, as before."""
    run = Run.create("toy", "hybrid", {"method": "hybrid", "task": "toy"}, runs_dir=tmp_path)
    run.write_json("result.json", {"state": "interrupted"})
    for trial in range(3):
        run.log({"stage": "template", "trial": trial, "state": "complete", "dev": 0.5})
    run.log({"stage": "rescore", "trial": 0, "trial_dev": 0.5, "dev": 0.6})
    for step in range(3):
        run.log({"stage": "trigger", "step": step, "dev": 0.6})
    info = summary(run)
    assert (info["work"], info["steps"], info["trials"]) == ("3 trials + 2 steps", 2, 3)


def test_the_ensemble_section_names_each_ranked_prompts_trial_and_draw() -> None:
    from autoprompt.runs.report import ensemble_section

    info = {"k": 2, "metric": "precision@1", "combine": "mean_answer_probs", "note": "chosen on dev",
            "ranked": [{"trial": 17, "dev": 0.3}, {"trial": 17, "draw": 3, "dev": 0.28}, {"trial": 2, "dev": 0.27}],
            "candidates": [{"k": 1, "dev": 0.3}, {"k": 2, "dev": 0.33}, {"k": 3, "dev": 0.32}]}
    lines = ensemble_section(info)
    assert "| 1 (member) | 17 | 0.300 | 0.300 |" in lines  # the trial's own draw: the trial alone
    assert "| 2 (member) | 17 (draw 3) | 0.280 | 0.330 ✓ |" in lines  # another draw of it: named
    assert "| 3 | 2 | 0.270 | 0.320 |" in lines and "(mean_answer_probs)" in lines[2] and "**k = 2**" in lines[2]
