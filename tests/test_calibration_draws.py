"""Batch calibration (a label bias measured on train inputs) and demonstration draws in the template search."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from autoprompt.optimizer import optimize
from autoprompt.predict import load_prompt
from autoprompt.prompt import Prompt
from autoprompt.prompt_file import read_prompt_file
from autoprompt.scoring import BATCH_INPUTS, batch_calibration, calibrate, evaluate, log_normalize, score_labels
from autoprompt.searches.template import WINNER_FILE, TemplateSearchConfig, build_prompt, with_manual_choices
from autoprompt.space import Choice, SpaceError, load_space, pick_demonstrations, prompt_for, space_from_dict
from autoprompt.task import Example, Task
from tests.test_template_search import VERBALIZER, word_task


def big_word_task(n_train: int = 100) -> Task:
    return word_task(n_train=n_train, n_dev=40)


# --- batch calibration ------------------------------------------------------------------------

def test_batch_calibration_is_the_mean_label_distribution_of_train_inputs_without_the_demonstrations(causal_lm):
    task = big_word_task()
    train = task.examples("train")
    demos = tuple(train[:3])
    prompt = Prompt(template=task.template, verbalizer=VERBALIZER, fields=("text",), demonstrations=demos)
    cal = batch_calibration(causal_lm, prompt, train, seed=0)
    assert len(cal) == 2 and np.isclose(np.exp(cal).sum(), 1.0)
    # the same number from the inputs it says it used: BATCH_INPUTS of train, none of them a demonstration
    import random
    pool = [e for e in train if e not in demos]
    sample = random.Random("0-batch-calibration").sample(pool, BATCH_INPUTS)
    probs = np.exp(log_normalize(score_labels(causal_lm, prompt, sample))).mean(axis=0)
    assert np.allclose(cal, np.log(probs))
    # the labels are never read: the same inputs with every label flipped give the same calibration
    flipped = [replace(e, answer="negative" if e.answer == "positive" else "positive") for e in train]
    assert np.allclose(batch_calibration(causal_lm, replace(prompt, demonstrations=()), flipped, seed=0),
                       batch_calibration(causal_lm, replace(prompt, demonstrations=()), train, seed=0))
    # deterministic for a seed, another sample for another seed
    assert batch_calibration(causal_lm, prompt, train, seed=0) == cal
    assert batch_calibration(causal_lm, prompt, train, seed=1) != cal


def test_batch_calibration_evens_out_a_prompt_biased_toward_one_label(causal_lm):
    """On the inputs it was measured on, the calibrated prompt's mean label distribution is closer to even
    than the raw prompt's (the point of dividing the bias out)."""
    task = big_word_task(n_train=BATCH_INPUTS)  # every train input is in the sample
    prompt = Prompt(template=task.template, verbalizer=VERBALIZER, fields=("text",))
    train = task.examples("train")
    raw = np.exp(log_normalize(score_labels(causal_lm, prompt, train))).mean(axis=0)
    cal = batch_calibration(causal_lm, prompt, train, seed=0)
    calibrated = np.exp(calibrate(score_labels(causal_lm, prompt, train), cal)).mean(axis=0)
    assert abs(raw[0] - 0.5) > 0.01  # the random tiny model is biased (else this test says nothing)
    assert abs(calibrated[0] - 0.5) < abs(raw[0] - 0.5) / 2


# --- the space ----------------------------------------------------------------------------------

def test_the_space_reads_draws_and_batch_calibration_and_rejects_bad_ones(tmp_path):
    task = word_task()
    space = space_from_dict({"demonstrations": {"k": [0, 2], "draws": 3}, "calibration": ["none", "batch"]})
    filled = space.for_task(task)
    assert filled.draws == 3 and filled.calibration == ["none", "batch"]
    assert filled.size() == 2 * 2 * 3  # draws count only where k > 0 is a choice
    assert space_from_dict({"demonstrations": {"k": [0]}}).draws == 1
    for bad in (0, -1, "4", True, 1.5):
        with pytest.raises(SpaceError, match="draws must be an integer >= 1"):
            space_from_dict({"demonstrations": {"draws": bad}}).for_task(task)
    with pytest.raises(SpaceError, match="'platt' is not one of: none, contextual, batch"):
        space_from_dict({"calibration": ["platt"]}).for_task(task)
    free_form = Task(name="free", template="{text} =>[P]", splits={"train": [Example({"text": "a"}, "b")]})
    with pytest.raises(SpaceError, match="batch calibration needs a classification task"):
        space_from_dict({"calibration": ["batch"]}).for_task(free_form)
    # a built-in space serves free-form tasks too: its calibrations are dropped there
    assert load_space("default").for_task(free_form).calibration == ["none"]
    assert load_space("default").draws > 1


def test_draw_zero_is_the_seeds_own_demonstrations_and_other_draws_are_other_samples():
    task = big_word_task()
    space = space_from_dict({"demonstrations": {"k": [4], "selection": ["random"], "draws": 3}}).for_task(task)
    train, labels = task.examples("train"), list(VERBALIZER)
    before = pick_demonstrations(train, 4, "random", "shuffled", labels=labels, seed=7)  # what runs always had
    draws = [prompt_for(Choice(k=4, selection="random", draw=d), space, task, seed=7).demonstrations for d in range(3)]
    assert list(draws[0]) == before
    assert len({tuple(e.source for e in d) for d in draws}) == 3
    assert prompt_for(Choice(k=4, selection="random", draw=2), space, task, seed=7).demonstrations == draws[2]


def test_a_batch_calibrated_choice_builds_its_calibration_from_train(causal_lm):
    task = big_word_task()
    space = space_from_dict({"demonstrations": {"k": [2]}, "calibration": ["batch"]}).for_task(task)
    choice = Choice(k=2, calibration="batch")
    prompt = build_prompt(causal_lm, task, space, choice, seed=3)
    expected = batch_calibration(causal_lm, replace(prompt, calibration=()), task.examples("train"), seed=3)
    assert prompt.calibration == expected
    assert build_prompt(causal_lm, task, space, replace(choice, calibration="none"), seed=3).calibration == ()


# --- the search ---------------------------------------------------------------------------------

def against_the_manual_prompt(model) -> Task:
    """Dev labelled against the manual prompt's every answer: any prompt that answers otherwise even once beats it."""
    task = big_word_task()
    manual = evaluate(model, Prompt.from_task(task), task.examples("dev")).predictions
    other = {"negative": "positive", "positive": "negative"}
    dev = [replace(e, answer=other[p]) for e, p in zip(task.examples("dev"), manual, strict=True)]
    return Task(name="against", template=task.template, verbalizer=VERBALIZER,
                splits={"train": task.examples("train"), "dev": dev, "test": dev[:10]})


def draws_search(model, tmp_path: Path, **changes):
    tmp_path.mkdir(parents=True, exist_ok=True)
    space = tmp_path / "space.yaml"
    space.write_text("demonstrations: {k: [2], selection: [random], draws: 3}\ncalibration: [batch]\n", encoding="utf-8")
    cfg = TemplateSearchConfig(**{**dict(space=str(space), trials=6, pruner="none", trial_dev=0, chunk=10,
                                         rescore_top=2, trial_dtype="fp32"), **changes})
    task = against_the_manual_prompt(model)
    result = optimize(task, model, seed=0, runs_dir=tmp_path / "runs", method="template", confidence=0,
                      holdout=0, config=cfg, progress=False)
    return task, space, result


def test_the_search_tries_draws_and_its_batch_calibrated_winner_predicts_as_it_was_scored(causal_lm, tmp_path: Path):
    task, space, result = draws_search(causal_lm, tmp_path)
    events = [e for e in result.history if e.get("stage") == "template"]
    assert len({e["params"]["draw"] for e in events}) > 1  # the study chose between draws
    saved = read_prompt_file(result.prompt_file).prompt
    won = Choice(**json.loads((result.run_dir / WINNER_FILE).read_text())["choice"])
    assert (won.k, won.calibration) == (2, "batch")  # (the manual prompt, k 0 uncalibrated, is always wrong)
    rebuilt = build_prompt(causal_lm, task, with_manual_choices(load_space(str(space)).for_task(task), task), won, seed=0)
    assert [(d.fields, d.answer) for d in saved.demonstrations] == [(d.fields, d.answer) for d in rebuilt.demonstrations]
    assert saved.calibration == pytest.approx(rebuilt.calibration)
    assert len(saved.calibration) == 2
    dev = task.examples("dev")
    scored = evaluate(causal_lm, saved, dev)
    assert result.metrics["dev"]["accuracy"] == pytest.approx(scored.metrics["accuracy"], abs=1e-12)
    loaded = load_prompt(result.prompt_file, model=causal_lm)
    assert loaded.predict([e.fields for e in dev]) == scored.predictions


def test_an_ensemble_search_scores_the_best_trials_other_draws_as_candidates(causal_lm, tmp_path: Path):
    """With ensembles, the best trial's choice with each other draw of demonstrations is scored on all of dev and
    ranked with the trials: an ensemble may average one prompt over several samples of demonstrations."""
    task, _, single = draws_search(causal_lm, tmp_path / "single", ensemble_max=1)
    assert not [e for e in single.history if e.get("stage") == "rescore" and "draw" in e]  # only for ensembles
    task, space, result = draws_search(causal_lm, tmp_path / "ensemble", ensemble_max=4)
    rescored = [e for e in result.history if e.get("stage") == "rescore"]
    best_trial = max((e for e in rescored if "draw" not in e), key=lambda e: e["dev"])["trial"]
    drawn = [e for e in rescored if "draw" in e]
    best_draw = next(e for e in result.history if e.get("trial") == best_trial and "params" in e)["params"]["draw"]
    assert {e["draw"] for e in drawn} == set(range(3)) - {best_draw} and {e["trial"] for e in drawn} == {best_trial}
    ensemble = next(e for e in result.history if e.get("stage") == "ensemble")
    ranked = [(r["dev"], r.get("draw")) for r in ensemble["ranked"]]
    assert any(draw is not None for _, draw in ranked)  # they are ensemble candidates
    assert [d for d, _ in ranked] == sorted((d for d, _ in ranked), reverse=True)
    # each other draw scored as its own prompt: the dev it logged is that prompt's on dev
    filled = with_manual_choices(load_space(str(space)).for_task(task), task)
    parent = Choice(**{**{"k": 2, "selection": "random", "calibration": "batch"},
                       **next(e for e in result.history if e.get("trial") == best_trial and "params" in e)["params"]})
    for event in drawn:
        prompt = build_prompt(causal_lm, task, filled, replace(parent, draw=event["draw"]), seed=0)
        assert evaluate(causal_lm, prompt, task.examples("dev")).metrics["accuracy"] == pytest.approx(event["dev"])


def test_batch_calibration_of_small_train_splits_and_similar_demonstration_pools(causal_lm):
    """A "similar" prompt's pool may be all of a small train split: its inputs are still the sample (a pool prompt
    never shows an input itself); a split of demonstrations only is used whole; no train split: content-free."""
    from autoprompt.scoring import content_free_calibration

    task = word_task(n_train=20)
    train = task.examples("train")
    pool = Prompt(template=task.template, verbalizer=VERBALIZER, fields=("text",), demonstrations=tuple(train), demo_k=2)
    expected = np.log(np.exp(log_normalize(score_labels(causal_lm, pool, train))).mean(axis=0))
    assert np.allclose(batch_calibration(causal_lm, pool, train, seed=0), expected)
    shown = replace(pool, demo_k=0, demonstrations=tuple(train[:4]))
    assert np.allclose(batch_calibration(causal_lm, shown, train[:4], seed=0),
                       np.log(np.exp(log_normalize(score_labels(causal_lm, shown, train[:4]))).mean(axis=0)))
    assert batch_calibration(causal_lm, shown, [], seed=0) == content_free_calibration(causal_lm, shown)


def test_a_hybrid_whose_template_stage_wins_with_an_ensemble_runs_and_ships_the_better_on_dev(causal_lm, tmp_path,
                                                                                            monkeypatch):
    """Ensembles are on by default, so the hybrid's template stage may end with one: the trigger stage then runs
    inside its best member, and the run ships whichever of the two is better on dev, a prompt file that loads."""
    from autoprompt.ensemble import Ensemble
    from autoprompt.scoring import combine_evaluations
    from autoprompt.searches import ensembles
    from autoprompt.searches.hybrid import HybridConfig
    from autoprompt.searches.trigger import TriggerSearchConfig

    real = ensembles.choose_ensemble

    def two_together(ranked, dev, metric, ensemble_max, **settings):  # the ensemble of the best two wins, better or not
        chosen = real(ranked, dev, metric, ensemble_max, **settings)
        chosen.prompt = ensembles.ensemble_of([c.prompt for c in ranked[:2]])
        chosen.dev = combine_evaluations(chosen.prompt, [c.dev for c in ranked[:2]], dev, metric)
        chosen.info["ensemble"]["k"], chosen.members = 2, ranked[:2]
        return chosen

    monkeypatch.setattr(ensembles, "choose_ensemble", two_together)

    task = against_the_manual_prompt(causal_lm)
    space = tmp_path / "space.yaml"
    space.write_text("layout: ['{text} [T] =>[P]']\ndemonstrations: {k: [2], selection: [random], draws: 3}\n"
                     "calibration: [batch]\ntriggers: [2]\n", encoding="utf-8")
    template = TemplateSearchConfig(space=str(space), trials=6, pruner="none", trial_dev=0, chunk=10, rescore_top=2,
                                    trial_dtype="fp32", ensemble_max=4)
    trigger = TriggerSearchConfig(steps=2, dev_every=1, grad_batch=4, eval_batch=4, confirm_batch=0, top_k=4)
    result = optimize(task, causal_lm, seed=0, runs_dir=tmp_path / "runs", method="hybrid", confidence=0, holdout=0,
                      config=HybridConfig(template, trigger), progress=False)
    ensemble = next(e for e in result.history if e.get("stage") == "ensemble")
    choice = next(e for e in result.history if e.get("stage") == "choice")
    assert ensemble["k"] == 2
    assert choice["template_dev"] == pytest.approx(next(c["dev"] for c in ensemble["candidates"] if c["k"] == 2))
    shipped = load_prompt(result.prompt_file, model=causal_lm)
    dev = task.examples("dev")
    expected = max(choice["template_dev"], choice["hybrid_dev"])
    assert result.metrics["dev"]["accuracy"] == pytest.approx(expected)
    assert isinstance(result.prompt, Ensemble) == (choice["hybrid_dev"] <= choice["template_dev"])
    assert shipped.predict([e.fields for e in dev]) == evaluate(causal_lm, result.prompt, dev).predictions
