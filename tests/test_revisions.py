"""The revision round (``--revise N``, GEPA-style): after the trials, the proposer revises the best trial's
instruction from dev examples that trial's prompt gets wrong; each revision is scored like a trial, saved,
and joins the re-scoring, where it wins only when it is best on dev."""

from __future__ import annotations

import json

import optuna
import pytest

from autoprompt import proposals as proposals_module
from autoprompt.optimizer import optimize
from autoprompt.prompt_file import read_prompt_file
from autoprompt.runs import Run
from autoprompt.scoring import evaluate
from autoprompt.searches import proposed as proposed_module
from autoprompt.searches.base import Context
from autoprompt.searches.proposed import REVISIONS_FILE, revise
from autoprompt.searches.template import build_prompt, run_space, task_space
from autoprompt.space import Choice
from tests.test_template_search import config, word_task


@pytest.fixture
def spied(monkeypatch):
    """Every revision kept (a random tiny model writes noise that cleaning may drop), and what the proposer
    was asked: the current instruction and the mistakes it was shown."""
    texts = iter(f"Say whether text number {i} is positive or negative." for i in range(1000))
    monkeypatch.setattr(proposals_module, "clean_instruction", lambda text, answers=(): next(texts))
    asked = []
    real = proposed_module.propose_instructions

    def spy(*args, **kwargs):
        asked.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(proposed_module, "propose_instructions", spy)
    return asked


def run(model, tmp_path, name: str):
    """A template search with a revision round of 3; trials see 20 of the 40 dev examples, and every
    trial and revision is re-scored on all 40."""
    cfg = config(tmp_path, revise=3, trial_dev=20, rescore_top=50)
    return optimize(word_task(), model, seed=0, runs_dir=tmp_path / name, method="template", confidence=0,
                    config=cfg, progress=False), cfg


def test_the_best_trial_is_revised_from_its_mistakes(causal_lm, tmp_path, spied) -> None:
    result, cfg = run(causal_lm, tmp_path, "runs")
    task, folder = word_task(), result.run_dir
    study = optuna.load_study(study_name=folder.name, storage=optuna.storages.RDBStorage(f"sqlite:///{folder / 'study.db'}"))
    best = max((t for t in study.trials if t.value is not None and "duplicate_of" not in t.user_attrs),
               key=lambda t: (t.value, -t.number))
    space = task_space(cfg, task)
    (asked,) = spied
    assert asked["current"] == space.instruction[best.params["instruction"]]
    # each mistake shown is one: the best trial's prompt answers that dev example wrongly, as shown
    prompt = build_prompt(causal_lm, task, space, Choice.from_params(best.params, space), seed=0)
    shown = [e for e, _ in asked["mistakes"]]
    predicted = evaluate(causal_lm, prompt, shown).predictions
    assert shown and all(p != e.answer for p, e in zip(predicted, shown, strict=True))
    assert [g for _, g in asked["mistakes"]] == [task.verbalizer[p][0] for p in predicted]
    saved = json.loads((folder / REVISIONS_FILE).read_text())
    assert len(saved) == 3 and {r["revises"] for r in saved} == {best.number}
    assert [r["params"]["instruction"] for r in saved] == [len(space.instruction) + i for i in range(3)]
    assert [r["number"] for r in saved] == [len(study.trials) + i for i in range(3)]  # after every trial
    logged = [e for e in result.history if e.get("stage") == "revision"]
    assert [(e["instruction"], e["dev"]) for e in logged] == [(r["instruction"], r["value"]) for r in saved]
    rescored = {e["trial"] for e in result.history if e.get("stage") == "rescore" and e.get("revision")}
    assert rescored == {r["number"] for r in saved}  # they joined the re-scoring on all of dev
    search = read_prompt_file(result.prompt_file).search
    assert [r["instruction"] for r in search["revisions"]] == [r["instruction"] for r in saved]
    # the study never saw them: its instruction dimension is the space's own
    assert {t.distributions["instruction"].choices for t in study.trials} == {tuple(range(len(space.instruction)))}


def test_the_winner_is_the_best_on_dev_revisions_included(causal_lm, tmp_path, spied, monkeypatch) -> None:
    """A revision scored best wins, and its prompt carries the revised instruction (the winner's space has it)."""
    real = evaluate

    def revisions_first(model, prompt, examples, **kwargs):  # every revised instruction right on everything
        out = real(model, prompt, examples, **kwargs)
        if "text number" in prompt.instruction:
            metric = kwargs.get("metric", "accuracy")
            out.metrics[metric] = 1.0
        return out

    monkeypatch.setattr(proposed_module, "evaluate", revisions_first)
    from autoprompt.searches import template as template_module
    monkeypatch.setattr(template_module, "evaluate", revisions_first)
    result, cfg = run(causal_lm, tmp_path, "runs")
    saved = json.loads((result.run_dir / REVISIONS_FILE).read_text())
    assert result.prompt.instruction == saved[0]["instruction"]  # the first of the tied best
    winner = json.loads((result.run_dir / "template_winner.json").read_text())
    space = run_space(Context(word_task(), causal_lm, Run.open(result.run_dir)), cfg, revised=True)
    assert space.instruction[winner["choice"]["instruction"]] == saved[0]["instruction"]


def test_same_seed_same_revisions_and_a_saved_round_is_not_redone(causal_lm, tmp_path, spied, monkeypatch) -> None:
    # what the model wrote decides the instruction (the fixture's numbering would differ between runs)
    monkeypatch.setattr(proposals_module, "clean_instruction", lambda text, answers=(): f"Say it ({text[:24]!r}).")
    first, cfg = run(causal_lm, tmp_path, "a")
    second, _ = run(causal_lm, tmp_path, "b")
    a, b = (json.loads((r.run_dir / REVISIONS_FILE).read_text()) for r in (first, second))
    assert a and len(spied) == 2
    assert [(r["instruction"], r["value"], r["shown"]) for r in a] == [(r["instruction"], r["value"], r["shown"]) for r in b]
    monkeypatch.setattr(proposed_module, "propose_instructions", lambda *a, **k: pytest.fail("revised again"))
    ctx = Context(word_task(), causal_lm, Run.open(first.run_dir))
    again = revise(ctx, 3, causal_lm, causal_lm, task_space(cfg, word_task()), None, [], None)
    assert [r.instruction for r in again] == [r["instruction"] for r in a]
