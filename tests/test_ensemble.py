"""Prompt ensembles: the combining rules, the v3 prompt file, the predictor, the choice of k on dev,
and the template search with ensembles through optimize() and the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_template_search import space_file, word_task
from words_task import words_task_file

from autoprompt import load_prompt
from autoprompt.answers import Generation
from autoprompt.cli import main
from autoprompt.data import Example
from autoprompt.ensemble import Ensemble, mean_probs, vote
from autoprompt.errors import PromptFileError, TemplateError
from autoprompt.optimizer import optimize
from autoprompt.predict import Predictor
from autoprompt.prompt import Prompt
from autoprompt.prompt_file import PromptFile, read_prompt_file, save_prompt_file
from autoprompt.scoring import Evaluation, content_free_calibration, evaluate
from autoprompt.searches.ensembles import Candidate, choose_ensemble
from autoprompt.searches.template import TemplateSearchConfig

VERBALIZER = {"negative": ["negative"], "positive": ["positive"]}
TEXTS = ["a good film", "the plot was slow", "fun cast", "long and bad", "is it good", "a film"]


def label_members(lm) -> list[Prompt]:
    """Three label prompts that differ in layout, label words, instruction and calibration."""
    base = Prompt(template="{text} =>[P]", verbalizer=VERBALIZER, model=lm.ref, fields=("text",))
    words = replace(base, template="Text: {text}\nLabel:[P]", verbalizer={"negative": ["bad"], "positive": ["good"]})
    told = replace(base, instruction="Say if it is positive or negative.",
                   demonstrations=(Example({"text": "fun film"}, "positive", "demonstration"),))
    return [base, words, replace(told, calibration=content_free_calibration(lm, told))]


def generation_members(lm) -> list[Prompt]:
    gen = Generation(4)
    return [Prompt(template=t, model=lm.ref, fields=("country",), generation=gen)
            for t in ("Country: {country}\nCode:[P]", "{country} =>[P]", "The code of {country} is[P]")]


# --- combining ---------------------------------------------------------------------------------------------

def test_the_ensemble_probabilities_are_the_mean_of_its_members_calibrated_ones(causal_lm) -> None:
    members = label_members(causal_lm)
    assert members[2].calibration  # one member is calibrated: its calibrated probabilities are averaged
    alone = [np.array([list(p.values()) for p in Predictor(m, causal_lm).predict_proba(TEXTS)]) for m in members]
    together = Predictor(Ensemble.of(members), causal_lm)
    probs = np.array([list(p.values()) for p in together.predict_proba(TEXTS)])
    np.testing.assert_allclose(probs, np.mean(alone, axis=0), atol=1e-9)
    assert together.predict(TEXTS) == [["negative", "positive"][k] for k in probs.argmax(axis=1)]
    examples = [Example({"text": t}, "positive", f"x{i}") for i, t in enumerate(TEXTS)]
    scored = evaluate(causal_lm, Ensemble.of(members), examples)  # (evaluate agrees with the predictor)
    np.testing.assert_allclose(np.exp(scored.label_log_probs), probs, atol=1e-9)


def test_mean_probs_follows_each_members_label_order() -> None:
    a = np.log(np.array([[0.9, 0.1], [0.2, 0.8]]))
    b = np.log(np.array([[0.3, 0.7], [0.6, 0.4]]))
    np.testing.assert_allclose(np.exp(mean_probs([a, b])), [[0.6, 0.4], [0.4, 0.6]])


def test_vote_takes_the_most_given_normalised_answer_and_ties_go_to_the_best_member() -> None:
    answers = [["FRA", "deu", "x", "a"],  # the best member first
               ["fra ", "DEU", "y", "b"],
               ["ITA", "DEU ", "y", "c"]]
    assert vote(answers) == ["FRA", "deu", "y", "a"]  # 2 of 3 (case, spaces); "y" beats the best's "x"; all differ
    assert vote([["b", "a"], ["a", "b"]]) == ["b", "a"]  # one each: the best member's


def test_a_generation_ensemble_votes(causal_lm) -> None:
    members = generation_members(causal_lm)
    ensemble = Ensemble.of(members)
    assert ensemble.combine == "vote"
    countries = ["France", "Germany", "Italy", "Spain", "Norway"]
    examples = [Example({"country": c}, "XXX", f"c{i}") for i, c in enumerate(countries)]
    each = [evaluate(causal_lm, m, examples, metric="exact_match").predictions for m in members]
    expected = vote(each)
    assert Predictor(ensemble, causal_lm).predict(countries) == expected
    assert evaluate(causal_lm, ensemble, examples, metric="exact_match").predictions == expected


def test_what_is_no_ensemble_is_refused(causal_lm) -> None:
    labels, gens = label_members(causal_lm), generation_members(causal_lm)
    with pytest.raises(TemplateError, match="at least two"):
        Ensemble.of(labels[:1])
    with pytest.raises(TemplateError, match="combine must be"):
        Ensemble(tuple(labels), "median")
    with pytest.raises(TemplateError, match="same labels"):
        Ensemble.of([labels[0], replace(labels[0], verbalizer={"bad": ["bad"], "good": ["good"]})])
    with pytest.raises(TemplateError, match="vote needs"):
        Ensemble(tuple(gens[:1] + labels[:1]), "vote")
    first_token = Prompt(template="{text} is a[P]", model=causal_lm.ref, fields=("text",))
    with pytest.raises(TemplateError, match="mean_answer_probs needs"):
        Ensemble((first_token, labels[0]), "mean_answer_probs")
    with pytest.raises(TemplateError, match="mean_probs needs"):
        Ensemble((labels[0], first_token), "mean_probs")


# --- the prompt file ---------------------------------------------------------------------------------------

def test_an_ensemble_file_round_trips_and_predicts_identically(causal_lm, tmp_path: Path) -> None:
    ensemble = Ensemble.of(label_members(causal_lm))
    in_memory = Predictor(ensemble, causal_lm)
    path = save_prompt_file(PromptFile(ensemble, task_name="words", metrics={"dev": {"accuracy": 0.5}},
                                       search={"method": "template"}), tmp_path / "e.prompt.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == "autoprompt.prompt/v3" and data["combine"] == "mean_probs"
    assert [m["format"] for m in data["members"]] == ["autoprompt.prompt/v1"] * 3
    assert read_prompt_file(path).prompt == ensemble
    loaded = load_prompt(path, model=causal_lm)
    assert loaded.predict(TEXTS) == in_memory.predict(TEXTS)
    for got, want in zip(loaded.predict_proba(TEXTS), in_memory.predict_proba(TEXTS), strict=True):
        assert got.keys() == want.keys() and all(abs(got[k] - want[k]) < 1e-6 for k in got)
    again = loaded.save(tmp_path / "again.prompt.json")  # the predictor writes it back as it was
    assert read_prompt_file(again).prompt == ensemble
    single = save_prompt_file(PromptFile(ensemble.best), tmp_path / "one.prompt.json")  # a prompt stays v1
    assert json.loads(single.read_text())["format"] == "autoprompt.prompt/v1"


def _broken(data: dict, case: str) -> None:
    if case == "no members":
        data["members"] = []
    elif case == "one member":
        data["members"] = data["members"][:1]
    elif case == "members not a list":
        data["members"] = {"0": data["members"][0]}
    elif case == "a member without [P]":
        data["members"][1]["template"] = "{text} =>"
    elif case == "a member of another format":
        data["members"][1]["format"] = "autoprompt.prompt/v2"
    elif case == "a member with an unknown key":
        data["members"][0]["weights"] = 1
    elif case == "a member for another model":
        data["members"][2]["model"]["tokenizer_fingerprint"] = "sha256:other"
    elif case == "wrong combine":
        data["combine"] = "median"
    elif case == "vote over labels":
        data["combine"] = "vote"
    elif case == "no combine":
        del data["combine"]
    elif case == "a prompt key at the top":
        data["template"] = "{text}[P]"


@pytest.mark.parametrize("case", ["no members", "one member", "members not a list", "a member without [P]",
                                  "a member of another format", "a member with an unknown key",
                                  "a member for another model", "wrong combine", "vote over labels", "no combine",
                                  "a prompt key at the top"])
def test_a_malformed_ensemble_file_is_refused(causal_lm, tmp_path: Path, case: str) -> None:
    path = save_prompt_file(PromptFile(Ensemble.of(label_members(causal_lm))), tmp_path / "e.prompt.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    _broken(data, case)
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(PromptFileError):
        read_prompt_file(path)


# --- the choice of k on dev --------------------------------------------------------------------------------

GOLD = ["a", "a", "b", "b"]


def _candidate(p_a: list[float], trial: int) -> Candidate:
    """A label prompt's dev evaluation from its probability of label "a" on each example."""
    probs = np.array([[p, 1 - p] for p in p_a])
    predicted = ["a" if p > 0.5 else "b" for p in p_a]
    accuracy = float(np.mean([p == g for p, g in zip(predicted, GOLD, strict=True)]))
    prompt = Prompt(template=f"{trial} {{text}}[P]", verbalizer={"a": ["yes"], "b": ["no"]}, fields=("text",))
    return Candidate(prompt, Evaluation({"accuracy": accuracy}, predicted, label_log_probs=np.log(probs), labels=["a", "b"]),
                     {"trial": trial})


DEV = [Example({"text": str(i)}, g, f"dev:{i}") for i, g in enumerate(GOLD)]


def test_an_ensemble_that_beats_the_best_prompt_on_dev_is_chosen() -> None:
    best = _candidate([0.9, 0.8, 0.2, 0.6], 3)  # wrong on the last example, barely
    other = _candidate([0.45, 0.9, 0.3, 0.1], 7)  # wrong on the first, barely
    chosen = choose_ensemble([best, other], DEV, "accuracy", 3)
    assert isinstance(chosen.prompt, Ensemble) and chosen.prompt.members == (best.prompt, other.prompt)
    assert chosen.dev.metrics["accuracy"] == 1.0 and chosen.dev.predictions == GOLD
    info = chosen.info["ensemble"]
    assert info["k"] == 2 and info["candidates"] == [{"k": 1, "dev": 0.75}, {"k": 2, "dev": 1.0}]
    assert [m["trial"] for m in info["ranked"]] == [3, 7] and "same dev examples" in info["note"]


def test_the_best_prompt_alone_is_chosen_when_no_ensemble_beats_it() -> None:
    best = _candidate([0.9, 0.8, 0.2, 0.6], 3)
    other = _candidate([0.05, 0.9, 0.3, 0.1], 7)  # the pair: 0.75 again (a tie keeps k = 1)
    worse = _candidate([0.1, 0.1, 0.9, 0.9], 8)  # the three: worse
    chosen = choose_ensemble([best, other, worse], DEV, "accuracy", 3)
    assert chosen.prompt is best.prompt and chosen.dev is best.dev
    assert chosen.info["ensemble"]["k"] == 1
    assert [r["dev"] for r in chosen.info["ensemble"]["candidates"]] == [0.75, 0.75, 0.5]
    assert choose_ensemble([best, other], DEV, "accuracy", 1).info["ensemble"]["candidates"] == [{"k": 1, "dev": 0.75}]


def _on(gold: list[str], right: set[int], trial: int) -> Candidate:
    """A label prompt on ``gold`` ("a"/"b") that is right exactly on the examples in ``right`` (surely, p = 0.9)."""
    p_a = [(0.9 if g == "a" else 0.1) if i in right else (0.1 if g == "a" else 0.9) for i, g in enumerate(gold)]
    predicted = ["a" if p > 0.5 else "b" for p in p_a]
    accuracy = float(np.mean([p == g for p, g in zip(predicted, gold, strict=True)]))
    prompt = Prompt(template=f"{trial} {{text}}[P]", verbalizer={"a": ["yes"], "b": ["no"]}, fields=("text",))
    probs = np.array([[p, 1 - p] for p in p_a])
    return Candidate(prompt, Evaluation({"accuracy": accuracy}, predicted, label_log_probs=np.log(probs), labels=["a", "b"]),
                     {"trial": trial})


@pytest.mark.parametrize("gain", [1, 12])
def test_an_ensemble_needs_a_dev_gain_over_the_best_prompt_that_dev_supports(gain: int) -> None:
    """60 dev examples; the best prompt is right on 40, and the three best together (each example goes the way two
    of them go) on 40 + ``gain``: one example more is no gain the data supports, so the best prompt stays alone
    (one pass per input, not three); twelve more are."""
    gold = ["a" if i % 2 else "b" for i in range(60)]
    dev = [Example({"text": str(i)}, g, f"dev:{i}") for i, g in enumerate(gold)]
    base, extra = set(range(40)), set(range(40, 40 + gain))
    best = _on(gold, base, 1)
    second = _on(gold, (base - {0, 1, 2, 3}) | extra, 2)  # right on the 40 but 0-3, and on the extra ones
    third = _on(gold, base | extra, 3)
    assert best.dev.metrics["accuracy"] == pytest.approx(40 / 60)
    chosen = choose_ensemble([best, second, third], dev, "accuracy", 3, confidence=0.95, seed=0)
    rows = chosen.info["ensemble"]["candidates"]
    assert rows[2]["dev"] == pytest.approx((40 + gain) / 60) and chosen.info["ensemble"]["confidence"] == 0.95
    if gain == 1:
        assert chosen.prompt is best.prompt and chosen.info["ensemble"]["k"] == 1
        assert rows[2]["supported"] is False and rows[2]["gain_low"] <= 0
    else:
        assert isinstance(chosen.prompt, Ensemble) and chosen.info["ensemble"]["k"] == 3
        assert rows[2]["supported"] is True and rows[2]["gain_low"] > 0
    # confidence 0: any gain, as before (the one example more wins too)
    assert choose_ensemble([best, second, third], dev, "accuracy", 3).info["ensemble"]["k"] == 3


# --- the template search with ensembles, end to end --------------------------------------------------------

def _config(tmp_path: Path, **changes) -> TemplateSearchConfig:
    settings = dict(space=str(space_file(tmp_path)), trials=8, pruner="none", trial_dev=20, chunk=10, rescore_top=3,
                    trial_dtype="fp32", ensemble_max=3, channel=False)  # (the channel partner: test_channel)
    return TemplateSearchConfig(**(settings | changes))


def test_the_template_search_chooses_k_on_dev_and_saves_the_ensemble(causal_lm, tmp_path: Path) -> None:
    task = word_task()
    result = optimize(task, causal_lm, seed=0, runs_dir=tmp_path / "runs", method="template", confidence=0,
                      config=_config(tmp_path), progress=False)
    info = json.loads((result.run_dir / "result.json").read_text())["ensemble"]
    values = [row["dev"] for row in info["candidates"]]
    assert [row["k"] for row in info["candidates"]] == [1, 2, 3] and len(info["ranked"]) == 3
    assert info["k"] == 1 + values.index(max(values))  # the best on dev, ties to the smaller k
    assert result.metrics["dev"]["accuracy"] == pytest.approx(max(values))
    rescored = {e["trial"]: e["dev"] for e in result.history if e.get("stage") == "rescore"}
    assert [m["dev"] for m in info["ranked"]] == [rescored[m["trial"]] for m in info["ranked"]]
    saved = read_prompt_file(result.prompt_file)
    assert saved.search["ensemble"]["k"] == info["k"]
    assert isinstance(result.prompt, Ensemble) == (info["k"] > 1) == isinstance(saved.prompt, Ensemble)
    texts = [e.fields["text"] for e in task.examples("test")]
    assert load_prompt(result.prompt_file, model=causal_lm).predict(texts) == result.predict(texts)
    report = (result.run_dir / "report.md").read_text(encoding="utf-8")
    assert "## Ensemble" in report and "same dev examples" in report


def test_ensemble_confidence_makes_the_search_ask_an_ensemble_for_a_supported_gain(causal_lm, tmp_path: Path) -> None:
    """--ensemble-confidence reaches the choice: every ensemble better on dev than the best prompt alone is judged
    (its lower end recorded), only a supported one can win, and the run and its report say with what confidence."""
    result = optimize(word_task(), causal_lm, seed=0, runs_dir=tmp_path / "runs", method="template", confidence=0,
                      config=_config(tmp_path, ensemble_confidence=0.99), progress=False)
    info = json.loads((result.run_dir / "result.json").read_text())["ensemble"]
    assert info["confidence"] == 0.99
    first, rows = info["candidates"][0], info["candidates"][1:]
    assert all(("supported" in row) == (row["dev"] > first["dev"]) for row in rows)
    assert info["k"] == 1 or info["candidates"][info["k"] - 1]["supported"] is True
    assert "99% confidence" in (result.run_dir / "report.md").read_text(encoding="utf-8")
    assert json.loads((result.run_dir / "config.json").read_text())["template_search"]["ensemble_confidence"] == 0.99


def test_an_ensemble_won_by_the_search_is_the_runs_prompt(causal_lm, tmp_path: Path, monkeypatch) -> None:
    """When the ensemble is better on dev (here: made so, the combined dev accuracy raised), the run's prompt,
    its prompt file, its final scores and its predictor are the ensemble's; the verdict judges it."""
    from autoprompt.searches import ensembles

    real = ensembles.combine_evaluations

    def better(ensemble, members, dev, metric):
        evaluation = real(ensemble, members, dev, metric)
        return replace(evaluation, metrics={**evaluation.metrics, metric: 1.0})

    monkeypatch.setattr(ensembles, "combine_evaluations", better)
    task = word_task()
    result = optimize(task, causal_lm, seed=0, runs_dir=tmp_path / "runs", method="template", confidence=0,
                      config=_config(tmp_path, ensemble_max=2), progress=False)
    assert isinstance(result.prompt, Ensemble) and len(result.prompt.members) == 2
    dev = evaluate(causal_lm, result.prompt, task.examples("dev")).metrics["accuracy"]  # the verdict: its real answers
    assert json.loads((result.run_dir / "result.json").read_text())["verdict"]["found_dev"] == pytest.approx(dev)
    loaded = load_prompt(result.prompt_file, model=causal_lm)
    assert isinstance(loaded.prompt, Ensemble)
    assert [(m.expanded_template(), m.verbalizer, m.calibration) for m in loaded.prompt.members] == \
        [(m.expanded_template(), m.verbalizer, m.calibration) for m in result.prompt.members]
    from autoprompt.runs import Run
    from autoprompt.searches.base import Context
    from autoprompt.searches.template import template_stage

    again = template_stage(Context(task, causal_lm, Run.open(result.run_dir), resume=True), _config(tmp_path))
    assert again.prompt == result.prompt and again.info["ensemble"]["k"] == 2  # a resumed hybrid's template stage
    test = task.examples("test")
    scored = evaluate(causal_lm, result.prompt, test)
    assert result.metrics["test"]["accuracy"] == pytest.approx(scored.metrics["accuracy"])
    assert loaded.predict([e.fields["text"] for e in test]) == scored.predictions


def test_ensembles_through_the_cli(tiny_causal_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from autoprompt.searches import ensembles

    real = ensembles.combine_evaluations
    monkeypatch.setattr(ensembles, "combine_evaluations", lambda e, m, d, metric: replace(
        real(e, m, d, metric), metrics={metric: 1.0}))  # the ensemble wins on dev
    task = tmp_path / "words.py"
    task.write_text(words_task_file(train=24, dev=40, test=10), encoding="utf-8")
    runner = CliRunner()
    shown = runner.invoke(main, ["optimize", str(task), "--model", str(tiny_causal_dir), "--space",
                                 str(space_file(tmp_path)), "--trials", "6", "--trial-dev", "20", "--pruner", "none",
                                 "--trial-dtype", "fp32", "--ensemble-max", "2", "--confidence", "0", "--runs-dir",
                                 str(tmp_path / "runs"), "--json"])
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.stdout)
    assert report["ensemble"] == {"k": 2, "combine": "mean_probs"}
    predicted = runner.invoke(main, ["predict", "--prompt", report["prompt_file"], "-"], input="a good film\nslow\n")
    assert predicted.exit_code == 0, predicted.output
    lines = [json.loads(line) for line in predicted.stdout.splitlines()]
    loaded = load_prompt(report["prompt_file"])
    assert [line["prediction"] for line in lines] == loaded.predict(["a good film", "slow"])
    assert lines[0]["probabilities"] == pytest.approx(loaded.predict_proba("a good film"), abs=1e-6)
    refused = runner.invoke(main, ["export", report["run"], "--format", "text"])
    assert refused.exit_code == 2 and "ensemble" in refused.output and len(refused.output.strip().splitlines()) == 1
    exported = runner.invoke(main, ["export", report["run"], "--format", "json"])
    assert exported.exit_code == 0 and json.loads(exported.stdout)["format"] == "autoprompt.prompt/v3"
    scored = runner.invoke(main, ["evaluate", str(task), "--prompt", report["prompt_file"], "--split", "test", "--json"])
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["metrics"]["accuracy"] == pytest.approx(report["metrics"]["test"]["accuracy"])
