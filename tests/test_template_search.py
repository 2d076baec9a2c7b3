"""Template search: the study, its budget, the manual trial, pruning, resume, the hybrid."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pytest

from autoprompt.optimizer import optimize
from autoprompt.prompt import Prompt, remove_triggers
from autoprompt.prompt_file import read_prompt_file
from autoprompt.scoring import calibrate, content_free_calibration, evaluate, score_labels
from autoprompt.searches import template as tsm
from autoprompt.searches import trials as trials_module
from autoprompt.searches.hybrid import HybridConfig
from autoprompt.searches.template import TemplateSearchConfig
from autoprompt.searches.trigger import TriggerSearchConfig
from autoprompt.space import Choice, load_space
from autoprompt.task import Example, Task

VERBALIZER = {"negative": ["negative"], "positive": ["positive"]}
WORDS = ["good", "bad", "film", "plot", "the", "a", "is", "was", "slow", "fun", "long", "cast"]


def word_task(n_train: int = 24, n_dev: int = 40) -> Task:
    rng = np.random.default_rng(0)

    def examples(n: int, split: str) -> list[Example]:
        return [Example({"text": " ".join(rng.choice(WORDS, size=4))}, "positive" if i % 2 else "negative",
                        f"{split}:{i}") for i in range(n)]

    dev = examples(n_dev, "dev")
    return Task(name="words", template="{text} =>[P]", verbalizer=VERBALIZER,
                splits={"train": examples(n_train, "train"), "dev": dev, "test": dev[:10]})


def space_file(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(
        "instruction: ['', 'Say if it is positive or negative.']\n"
        "layout: ['Text: {text} [T]\\nLabel:[P]', '{text} [T] =>[P]']\n"
        "verbalizer: [{negative: [negative], positive: [positive]}, {negative: [bad], positive: [good]}]\n"
        "demonstrations: {k: [0, 2], selection: [balanced]}\n"
        "calibration: [none, contextual]\n"
        "triggers: [0, 2]\n", encoding="utf-8")
    return path


def config(tmp_path: Path, **changes) -> TemplateSearchConfig:
    settings = dict(space=str(space_file(tmp_path)), trials=8, pruner="none", trial_dev=0, chunk=10, rescore_top=2,
                    trial_dtype="fp32")  # the same trials on every machine (bf16: its own test)
    return TemplateSearchConfig(**(settings | changes))


def test_template_search_runs_its_budget_with_the_manual_prompt_first(causal_lm, tmp_path):
    task = word_task()
    result = optimize(task, causal_lm, seed=0, runs_dir=tmp_path / "runs", method="template", confidence=0,
                      config=config(tmp_path), progress=False)
    storage = optuna.storages.RDBStorage(f"sqlite:///{result.run_dir / 'study.db'}")
    study = optuna.load_study(study_name=result.run_dir.name, storage=storage)
    S = optuna.trial.TrialState
    assert len(study.get_trials(states=(S.COMPLETE, S.PRUNED))) == 8
    first = study.trials[0]
    assert first.user_attrs.get("manual") and first.number == 0
    events = [e for e in result.history if e.get("stage") == "template"]
    assert [e["trial"] for e in events] == list(range(8))
    manual = Prompt.from_task(task)
    assert events[0]["prompt"] == manual.template  # trial 0 renders the task's own template
    assert abs(events[0]["dev"] - evaluate(causal_lm, manual, task.examples("dev")).metrics["accuracy"]) < 1e-9
    # the winner is the best trial, its prompt file loads and says how it was found
    best_dev = max(e["dev"] for e in events if e["state"] != "pruned")
    assert result.metrics["dev"]["accuracy"] == pytest.approx(best_dev)
    saved = read_prompt_file(result.prompt_file)
    assert saved.search["method"] == "template" and saved.search["trials"]["failed"] == 0
    assert json.loads((result.run_dir / "result.json").read_text())["state"] == "finished"


def test_bf16_trials_and_the_winner_in_the_model_dtype(causal_lm, tmp_path, monkeypatch):
    """trial_dtype=bf16: every trial is scored on a bf16 copy; the best trials are re-scored, and the
    run's metrics computed, on the fp32 model itself."""
    import torch

    seen = {"trial": set(), "rescore": set()}
    real = evaluate
    monkeypatch.setattr(trials_module, "evaluate", lambda m, *a, **k: seen["trial"].add(m.dtype) or real(m, *a, **k))
    monkeypatch.setattr(tsm, "evaluate", lambda m, *a, **k: seen["rescore"].add(m.dtype) or real(m, *a, **k))
    task = word_task()
    result = optimize(task, causal_lm, seed=0, runs_dir=tmp_path / "runs", method="template", confidence=0, holdout=0,
                      config=config(tmp_path, trial_dtype="bf16", trial_dev=20, rescore_top=2), progress=False)
    assert seen == {"trial": {torch.bfloat16}, "rescore": {torch.float32}}
    assert causal_lm.dtype == torch.float32
    winner = read_prompt_file(result.prompt_file).prompt
    dev = evaluate(causal_lm, winner, task.examples("dev")).metrics["accuracy"]
    assert result.metrics["dev"]["accuracy"] == pytest.approx(dev, abs=1e-12)  # reported in fp32
    assert tsm.fast_twin(causal_lm, "fp32") is causal_lm


def test_same_seed_same_study(causal_lm, tmp_path):
    task = word_task()
    runs = [optimize(task, causal_lm, seed=5, runs_dir=tmp_path / f"r{i}", method="template",
                     config=config(tmp_path), progress=False) for i in range(2)]
    params = [[e["params"] for e in r.history if e.get("stage") == "template"] for r in runs]
    assert params[0] == params[1]


def test_pruned_trials_stop_early(causal_lm, tmp_path, monkeypatch):
    """With the median pruner, a trial worse than the median after its first chunk stops there."""
    task = word_task(n_dev=40)
    result = optimize(task, causal_lm, seed=1, runs_dir=tmp_path / "runs", method="template", holdout=0,
                      config=config(tmp_path, pruner="median", trials=16), progress=False)
    events = [e for e in result.history if e.get("stage") == "template"]
    pruned = [e for e in events if e["state"] == "pruned"]
    assert pruned, "no trial was pruned"
    assert all(e["examples"] < 40 for e in pruned)
    assert all(e["examples"] == 40 for e in events if e["state"] == "complete")


def test_interrupted_trial_is_rerun_on_resume(causal_lm, tmp_path, monkeypatch):
    task = word_task()
    calls = {"n": 0}
    real = trials_module.evaluate

    def dies_on_the_fifth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5 * 4:  # in the 5th trial (4 chunks of 10 per trial)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trials_module, "evaluate", dies_on_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        optimize(task, causal_lm, seed=0, runs_dir=tmp_path / "runs", method="template",
                 config=config(tmp_path), progress=False)
    monkeypatch.setattr(trials_module, "evaluate", real)
    run_dir = next((tmp_path / "runs").iterdir())
    assert json.loads((run_dir / "result.json").read_text())["state"] == "interrupted"
    storage = optuna.storages.RDBStorage(f"sqlite:///{run_dir / 'study.db'}")
    before = optuna.load_study(study_name=run_dir.name, storage=storage).trials
    S = optuna.trial.TrialState
    states = [t.state for t in before]  # Ctrl-C gave the trial back: failed, and its params queued again
    assert states.count(S.RUNNING) == 0 and states.count(S.FAIL) == 1 and states.count(S.WAITING) == 1
    assert read_prompt_file(run_dir / "best.prompt.json").search["interrupted"]  # the best trial so far
    finished_before = {t.number: t.value for t in before if t.state == S.COMPLETE}
    result = optimize(task, causal_lm, resume=run_dir, progress=False)
    after = optuna.load_study(study_name=run_dir.name, storage=storage).trials
    assert len([t for t in after if t.state in (S.COMPLETE, S.PRUNED)]) == 8
    assert {t.number: t.value for t in after if t.number in finished_before} == finished_before
    interrupted = next(t for t in after if t.state == S.FAIL)
    rerun = [t for t in after if t.user_attrs.get("rerun_of") == interrupted.number]
    assert len(rerun) == 1 and rerun[0].params == interrupted.params and rerun[0].state == S.COMPLETE
    assert result.run_dir == run_dir


def test_hybrid_searches_triggers_inside_the_template_winner(causal_lm, tmp_path):
    task = word_task()
    trigger = TriggerSearchConfig(steps=2, dev_every=1, grad_batch=8, eval_batch=8, confirm_batch=0, top_k=8)
    result = optimize(task, causal_lm, seed=0, runs_dir=tmp_path / "runs", method="hybrid", holdout=0,
                      config=HybridConfig(config(tmp_path, trials=4), trigger), progress=False)
    stages = [e.get("stage") for e in result.history]
    assert stages.count("template") == 4 and "trigger" in stages and "choice" in stages
    choice = next(e for e in result.history if e.get("stage") == "choice")
    winner = json.loads((result.run_dir / "template_winner.json").read_text())
    assert result.metrics["dev"]["accuracy"] == pytest.approx(max(choice["template_dev"], choice["hybrid_dev"]))
    saved = read_prompt_file(result.prompt_file)
    assert winner["choice"] == saved.search["choice"]
    assert choice["template_dev"] == winner["dev"]["accuracy"]
    # the hybrid replaces the template winner only when strictly better on dev
    assert saved.search["winner"] == ("hybrid" if choice["hybrid_dev"] > choice["template_dev"] else "template")
    space = tsm.with_manual_choices(load_space(config(tmp_path).space).for_task(task), task)
    template_winner = tsm.build_prompt(causal_lm, task, space, Choice(**winner["choice"]), seed=0)
    assert_winner_is(saved, template_winner, choice, n_triggers=2)  # the space's largest trigger count
    assert saved.metrics["dev"] == pytest.approx(evaluate(causal_lm, saved.prompt, task.examples("dev")).metrics)


def assert_winner_is(saved, template_winner: Prompt, choice: dict, *, n_triggers: int) -> None:
    """What the prompt file holds when the template wins (its prompt, as is) and when the hybrid
    does (the same prompt with n trigger slots, searched), with that prompt's dev metric."""
    def shape(p: Prompt) -> tuple:
        return (remove_triggers(p.template), p.instruction, p.verbalizer, p.demo_k, p.chat,
                [(d.fields, d.answer) for d in p.demonstrations])

    assert shape(saved.prompt) == shape(template_winner)
    if saved.search["winner"] == "hybrid":
        assert saved.metrics["dev"]["accuracy"] == choice["hybrid_dev"] > choice["template_dev"]
        assert saved.prompt.template.count("[T]") == len(saved.prompt.trigger_ids) == n_triggers
        assert saved.search["steps"] >= 1
    else:
        assert saved.search["winner"] == "template"
        assert saved.metrics["dev"]["accuracy"] == choice["template_dev"] >= choice["hybrid_dev"]
        assert saved.prompt.template == template_winner.template and saved.prompt.trigger_ids == ()
        assert saved.prompt.calibration == pytest.approx(template_winner.calibration)


@pytest.mark.parametrize("labelled_by", ["template", "hybrid"])
def test_the_hybrid_wins_only_when_better_on_dev(causal_lm, tmp_path, labelled_by):
    """Both outcomes of the hybrid's choice, known in advance: every example is labelled with what
    the template winner (no triggers) or the hybrid's first prompt (its initial triggers) predicts,
    so that prompt scores 1.0 on dev. The template wins ties: the hybrid must be strictly better."""
    base = word_task()
    plain = "{text} =>[P]"
    with_triggers = "{text} [T] [T] =>[P]"
    bang = causal_lm.tokenizer("!", add_special_tokens=False)["input_ids"] * 2  # the default init_token, twice
    # label words whose predictions the triggers change (the random model prefers one word of most pairs)
    words = WORDS + ["no", "poor", "great", "fine", "dull", "yes"]
    every = {w: [w] for w in words}
    examples = [e for split in ("train", "dev") for e in base.examples(split)]
    a = score_labels(causal_lm, Prompt(plain, every, fields=("text",)), examples)
    b = score_labels(causal_lm, Prompt(with_triggers, every, fields=("text",)).with_triggers(bang, ["!", "!"]), examples)
    margin = np.minimum(np.abs(a[:, :, None] - a[:, None, :]), np.abs(b[:, :, None] - b[:, None, :])).min(axis=0)
    changed = ((a[:, :, None] > a[:, None, :]) != (b[:, :, None] > b[:, None, :])).sum(axis=0) * (margin > 1e-3)
    i, j = np.unravel_index(np.argmax(changed), changed.shape)
    assert changed[i, j] > 0, "no pair of label words whose predictions the triggers change"
    verbalizer = {"negative": [words[i]], "positive": [words[j]]}
    labeller = Prompt(plain, verbalizer, fields=("text",))
    if labelled_by == "hybrid":
        labeller = Prompt(with_triggers, verbalizer, fields=("text",)).with_triggers(bang, ["!", "!"])

    def relabelled(split: str) -> list[Example]:
        examples = base.examples(split)
        predicted = evaluate(causal_lm, labeller, [replace(e, answer="negative") for e in examples]).predictions
        return [replace(e, answer=label) for e, label in zip(examples, predicted, strict=True)]

    dev = relabelled("dev")
    task = Task(name="words", template=plain, verbalizer=verbalizer,
                splits={"train": relabelled("train"), "dev": dev, "test": dev[:10]})
    space = tmp_path / "space.yaml"
    space.write_text("layout: ['{text} [T] =>[P]']\ntriggers: [2]\n", encoding="utf-8")
    trigger = TriggerSearchConfig(steps=2, dev_every=1, grad_batch=8, eval_batch=8, confirm_batch=0, top_k=4)
    template = TemplateSearchConfig(space=str(space), trials=1, pruner="none", trial_dev=0, chunk=40, rescore_top=1)
    result = optimize(task, causal_lm, seed=0, runs_dir=tmp_path / "runs", method="hybrid", progress=False,
                      config=HybridConfig(template, trigger))
    choice = next(e for e in result.history if e.get("stage") == "choice")
    trigger_steps = [e for e in result.history if e.get("stage") == "trigger"]
    saved = read_prompt_file(result.prompt_file)
    assert saved.search["winner"] == labelled_by
    if labelled_by == "template":
        assert choice["template_dev"] == 1.0
    else:
        assert trigger_steps[0]["dev"] == 1.0 > choice["template_dev"]  # step 0: the initial triggers
    assert_winner_is(saved, Prompt(plain, verbalizer, fields=("text",)), choice, n_triggers=2)


# --- calibration -----------------------------------------------------------------------------

def test_calibrate_divides_out_the_content_free_distribution():
    content_free = np.log([[0.8, 0.2]])
    assert np.allclose(np.exp(calibrate(content_free, content_free[0])), [[0.5, 0.5]])
    # an input the raw prompt calls positive by less than its bias is negative once calibrated
    scores = np.log([[0.7, 0.3]])
    assert np.exp(calibrate(scores, content_free[0]))[0, 0] < 0.5
    assert np.allclose(np.exp(calibrate(scores, content_free[0])).sum(axis=1), 1.0)


def test_a_calibrated_prompt_scores_through_its_calibration(causal_lm):
    task = word_task()
    prompt = Prompt(template=task.template, verbalizer=VERBALIZER, fields=("text",))
    cal = content_free_calibration(causal_lm, prompt)
    assert len(cal) == 2 and np.isclose(np.exp(cal).sum(), 1.0)
    calibrated = Prompt(template=task.template, verbalizer=VERBALIZER, fields=("text",), calibration=cal)
    examples = task.examples("dev")[:6]
    raw = score_labels(causal_lm, prompt, examples)
    assert np.allclose(score_labels(causal_lm, calibrated, examples), calibrate(raw, cal))


# --- demonstrations chosen per input -------------------------------------------------------

def test_similar_demonstrations_are_the_nearest_pool_examples_never_the_input(causal_lm):
    from autoprompt.scoring import encode_examples, nearest_demonstrations

    pool = (Example({"text": "good film good film good"}, "positive", "p0"),
            Example({"text": "the plot the plot the"}, "negative", "p1"),
            Example({"text": "slow slow slow slow slow"}, "negative", "p2"),
            Example({"text": "good film good film"}, "positive", "p3"))
    prompt = Prompt(template="{text} =>[P]", verbalizer=VERBALIZER, fields=("text",), demonstrations=pool, demo_k=1)
    query = Example({"text": "good film good film"}, None, "q")  # identical to p3: p3 is never shown to it
    other = Example({"text": "slow slow slow slow"}, None, "r")
    chosen = nearest_demonstrations(causal_lm, prompt, [query, other])
    assert chosen[0] == (pool[0],)
    assert chosen[1] == (pool[2],)
    two = nearest_demonstrations(causal_lm, Prompt(template="{text} =>[P]", verbalizer=VERBALIZER, fields=("text",),
                                                   demonstrations=pool, demo_k=2), [query])[0]
    assert two[-1] == pool[0] and pool[3] not in two  # the nearest sits next to the input
    # each input is rendered with its own demonstrations
    encoded = encode_examples(causal_lm, prompt, [query, other])
    texts = [causal_lm.tokenizer.decode(e.input_ids) for e in encoded]
    assert "good film good film good" in texts[0] and "slow slow slow slow slow" in texts[1]


def test_similar_prompts_round_trip_and_predict(causal_lm, tmp_path):
    from autoprompt.predict import Predictor
    from autoprompt.prompt_file import PromptFile, save_prompt_file
    from autoprompt.space import Choice, prompt_for, space_from_dict

    task = word_task()
    space = space_from_dict({"demonstrations": {"k": [3], "selection": ["similar"]}}).for_task(task)
    prompt = prompt_for(Choice(k=3, selection="similar"), space, task, seed=0)
    assert prompt.demo_k == 3 and len(prompt.demonstrations) == len(task.examples("train"))
    prompt = Prompt(**{**prompt.__dict__, "model": causal_lm.ref})
    path = save_prompt_file(PromptFile(prompt, task_name=task.name), tmp_path / "p.prompt.json")
    loaded = read_prompt_file(path).prompt
    assert loaded.demo_k == 3
    assert [(d.fields, d.answer) for d in loaded.demonstrations] == [(d.fields, d.answer) for d in prompt.demonstrations]
    predictor = Predictor(loaded, causal_lm)
    assert set(predictor.predict(["good film", "slow plot"])) <= set(VERBALIZER)
    assert predictor.render("slow plot").count("=>") == 4  # its 3 demonstrations, then the input
    data = json.loads(path.read_text())
    data["demo_k"] = len(prompt.demonstrations) + 1
    path.write_text(json.dumps(data))
    from autoprompt.errors import PromptFileError

    with pytest.raises(PromptFileError, match="demo_k must be"):
        read_prompt_file(path)


def test_hybrid_resumes_in_its_trigger_stage(causal_lm, tmp_path, monkeypatch):
    from autoprompt.searches import trigger as trig

    task = word_task()
    cfg = TriggerSearchConfig(steps=4, dev_every=1, grad_batch=8, eval_batch=8, confirm_batch=0, top_k=8)
    real_step = trig._step
    calls = {"n": 0}

    def dies_in_step_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trig, "_step", dies_in_step_three)
    with pytest.raises(KeyboardInterrupt):
        optimize(task, causal_lm, seed=0, runs_dir=tmp_path / "runs", method="hybrid",
                 config=HybridConfig(config(tmp_path, trials=4), cfg), progress=False)
    monkeypatch.setattr(trig, "_step", real_step)
    run_dir = next((tmp_path / "runs").iterdir())
    winner = json.loads((run_dir / "template_winner.json").read_text())
    assert json.loads((run_dir / "checkpoint.json").read_text())["step"] == 2
    result = optimize(task, causal_lm, resume=run_dir, progress=False)
    stages = [e.get("stage") for e in result.history]
    assert stages.count("template") == 4  # the template stage was not run again
    assert [e["step"] for e in result.history if e.get("stage") == "trigger"] == [0, 1, 2, 3, 4]
    assert json.loads((run_dir / "template_winner.json").read_text()) == winner
    assert read_prompt_file(result.prompt_file).search["choice"] == winner["choice"]
