"""The template search beyond accuracy on labels: free-form answers (LAMA-style facts, spaces without a
verbalizer) and the pruner fed the task's own metric (macro-F1)."""

from __future__ import annotations

import random
from pathlib import Path

import optuna
import pytest

from autoprompt.metrics import macro_f1
from autoprompt.optimizer import optimize
from autoprompt.prompt import Prompt
from autoprompt.prompt_file import read_prompt_file
from autoprompt.scoring import evaluate
from autoprompt.searches.template import TemplateSearchConfig
from autoprompt.space import SpaceError, load_space, space_from_dict
from autoprompt.task import Example, Task

FACTS = [("Paris", "France"), ("Rome", "Italy"), ("Berlin", "Germany"), ("Madrid", "Spain"), ("Lisbon", "Portugal"),
         ("Vienna", "Austria"), ("Athens", "Greece"), ("Oslo", "Norway"), ("Dublin", "Ireland"), ("Warsaw", "Poland")]


def facts_task() -> Task:
    examples = [Example({"subject": s}, o, f"facts:{i}") for i, (s, o) in enumerate(FACTS)]
    return Task(name="facts", template="{subject} is in[P]", metric="precision@1",
                splits={"train": examples[:6], "dev": examples[4:], "test": examples[6:]})


def test_a_space_without_verbalizer_fits_a_free_form_task() -> None:
    space = load_space("facts").for_task(facts_task())  # the README's space for LAMA tasks
    assert space.verbalizer == [None] and space.layout == ["{subject} is in[P]"]
    with pytest.raises(SpaceError, match="free-form"):  # a verbalizer the task cannot use is still refused
        space_from_dict({"verbalizer": [{"a": ["x"], "b": ["y"]}]}).for_task(facts_task())


def test_template_search_on_free_form_answers(causal_lm, tmp_path: Path) -> None:
    task = facts_task()
    space = tmp_path / "space.yaml"
    space.write_text("instruction: ['', 'Answer with one word.']\n"
                     "layout: ['{subject} is in[P]', 'Where is {subject}? It is in[P]']\n"
                     "demonstrations: {k: [0, 2], selection: [random, similar]}\n", encoding="utf-8")
    cfg = TemplateSearchConfig(space=str(space), trials=6, pruner="none", trial_dev=0, chunk=3, rescore_top=2)
    result = optimize(task, causal_lm, seed=0, runs_dir=tmp_path / "runs", method="template",
                      config=cfg, progress=False)
    study = optuna.load_study(study_name=result.run_dir.name, storage=f"sqlite:///{result.run_dir / 'study.db'}")
    S = optuna.trial.TrialState
    assert len(study.get_trials(states=(S.COMPLETE, S.PRUNED))) == 6
    events = [e for e in result.history if e.get("stage") == "template"]
    manual = Prompt.from_task(task)
    manual_dev = evaluate(causal_lm, manual, task.examples("dev"), metric="precision@1").metrics["precision@1"]
    assert events[0]["prompt"] == manual.template and events[0]["dev"] == pytest.approx(manual_dev)
    assert result.prompt.verbalizer is None and result.metrics["dev"]["precision@1"] >= manual_dev
    assert {"precision@1", "mrr"} <= set(result.metrics["test"])
    saved = read_prompt_file(result.prompt_file)
    assert saved.prompt.verbalizer is None and saved.search["method"] == "template"
    # the winner's dev metric is what scoring it again gives
    again = evaluate(causal_lm, result.prompt, task.examples("dev"), metric="precision@1").metrics["precision@1"]
    assert result.metrics["dev"]["precision@1"] == pytest.approx(again)


def test_the_pruner_sees_the_metric_being_optimized(causal_lm, tmp_path: Path) -> None:
    """A macro-F1 task: each chunk's report is macro-F1 over the dev examples scored so far, not accuracy."""
    words = ["good", "bad", "film", "plot", "the", "slow", "fun", "cast"]
    examples = [Example({"text": f"{words[i % 8]} {words[(3 * i) % 8]} {words[(5 * i + 1) % 8]}"},
                        ["negative", "positive", "positive"][i % 3], f"x:{i}") for i in range(30)]
    task = Task(name="words", template="{text} =>[P]", metric="macro_f1",
                verbalizer={"negative": ["negative"], "positive": ["positive"]},
                splits={"train": examples[:12], "dev": examples, "test": examples[:6]})
    space = tmp_path / "space.yaml"
    space.write_text("instruction: ['', 'Is it positive or negative?']\n", encoding="utf-8")
    cfg = TemplateSearchConfig(space=str(space), trials=2, pruner="median", trial_dev=0, chunk=10, rescore_top=1)
    result = optimize(task, causal_lm, seed=0, runs_dir=tmp_path / "runs", method="template",
                      config=cfg, holdout=0, progress=False)
    study = optuna.load_study(study_name=result.run_dir.name, storage=f"sqlite:///{result.run_dir / 'study.db'}")
    manual = study.trials[0]
    order = list(range(len(examples)))
    random.Random(0).shuffle(order)  # trials read dev in one seeded order (their chunks are random samples)
    shuffled = [examples[i] for i in order]
    predicted = evaluate(causal_lm, Prompt.from_task(task), shuffled).predictions
    gold = [e.answer for e in shuffled]
    expected = {n: macro_f1(predicted[:n], gold[:n], task.labels) for n in (10, 20, 30)}
    accuracy = {n: sum(p == g for p, g in zip(predicted[:n], gold[:n], strict=True)) / n for n in (10, 20, 30)}
    assert expected != accuracy  # the test tells the two apart
    assert manual.intermediate_values == pytest.approx(expected)
    assert manual.value == pytest.approx(expected[30])


@pytest.mark.parametrize("calibration", ["none", "contextual"])
def test_a_prompt_too_long_for_the_model_is_a_dead_end_not_a_crash(causal_lm, tmp_path: Path, calibration) -> None:
    """Demonstrations that push inputs past the model's context (512 tokens here) prune that trial; the search goes on.
    With contextual calibration the first input too long is the content-free one, scored while building the prompt."""
    long_text = " ".join(["the film was long and the plot was slow"] * 12)  # ~100 tokens a demonstration
    examples = [Example({"text": f"{long_text} {i}"}, ["negative", "positive"][i % 2], f"x:{i}") for i in range(12)]
    task = Task(name="long", template="{text} =>[P]", verbalizer={"negative": ["negative"], "positive": ["positive"]},
                splits={"train": examples, "dev": examples[:6], "test": examples[6:]})
    space = tmp_path / "space.yaml"
    space.write_text("demonstrations: {k: [0, 8], selection: [random]}\n"
                     "instruction: ['', 'Positive or negative?', 'Say the sentiment.']\n"
                     f"calibration: [{calibration}]\n", encoding="utf-8")
    cfg = TemplateSearchConfig(space=str(space), trials=6, pruner="none", trial_dev=0, chunk=3, rescore_top=2)
    result = optimize(task, causal_lm, seed=0, runs_dir=tmp_path / "runs", method="template",
                      config=cfg, progress=False)
    events = [e for e in result.history if e.get("stage") == "template"]
    too_long = [e for e in events if e["state"] == "too long"]
    assert too_long and all(e["params"]["k"] == 8 and "the model reads at most 512" in e["error"] for e in too_long)
    assert all(e["params"].get("k", 0) == 0 for e in events if e["state"] == "complete")
    assert not result.prompt.demonstrations


def test_the_built_in_spaces_serve_free_form_tasks(tmp_path: Path) -> None:
    """The default space (the template search is the default method) leaves calibration out for free-form
    answers; a user's space that asks for it on such a task is still refused."""
    space = load_space("default").for_task(facts_task())
    assert space.calibration == ["none"] and space.verbalizer == [None]
    mine = tmp_path / "mine.yaml"
    mine.write_text("calibration: [none, contextual]\n", encoding="utf-8")
    with pytest.raises(SpaceError, match="contextual calibration needs a classification task"):
        load_space(str(mine)).for_task(facts_task())
