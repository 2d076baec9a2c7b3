"""Instructions a model proposes (APE): deterministic for a seed, one batched generation per round, the
cleaning rules, and the template search that adds them to its study's instruction dimension."""

from __future__ import annotations

import json

import optuna
import pytest

from autoprompt import proposals as proposals_module
from autoprompt.errors import AutoPromptError, ModelError
from autoprompt.optimizer import optimize
from autoprompt.proposals import Proposal, clean_instruction, meta_prompt, propose_instructions
from autoprompt.runs import Run
from autoprompt.searches import proposed as proposed_module
from autoprompt.searches import trials as trials_module
from autoprompt.searches.base import Context
from autoprompt.searches.template import PROPOSALS_FILE, TemplateSearchConfig, run_space, task_space
from autoprompt.task import Example, Task
from tests.test_template_search import config, word_task


@pytest.fixture
def always_propose(monkeypatch):
    """A random tiny model writes noise that cleaning may drop: keep every proposal, numbered."""
    texts = iter(f"Say whether text number {i} is positive or negative." for i in range(1000))
    monkeypatch.setattr(proposals_module, "clean_instruction", lambda text, answers=(): next(texts))


def test_same_seed_same_proposals(causal_lm, always_propose):
    task = word_task()
    first = propose_instructions(causal_lm, task, n=4, seed=0)
    again = propose_instructions(causal_lm, task, n=4, seed=0)
    other = propose_instructions(causal_lm, task, n=4, seed=1)
    assert [p.shown for p in first] == [p.shown for p in again]
    assert [p.shown for p in first] != [p.shown for p in other]  # each seed shows other examples
    assert {p.origin for p in first} == {"train-examples"} and len(first) == 4


def test_same_seed_same_text_from_the_model(causal_lm):
    task = word_task()
    assert propose_instructions(causal_lm, task, n=3, seed=2) == propose_instructions(causal_lm, task, n=3, seed=2)


def test_a_round_is_one_batched_generation(causal_lm, monkeypatch):
    calls = []
    real = proposals_module.greedy_tokens

    def spy(model, inputs, *args, **kwargs):
        calls.append(len(inputs))
        return real(model, inputs, *args, **kwargs)

    monkeypatch.setattr(proposals_module, "greedy_tokens", spy)
    propose_instructions(causal_lm, word_task(), n=5, seed=0)
    assert calls == [5]  # five meta-prompts, one generation loop


def test_each_proposal_sees_its_own_sample_of_train(causal_lm, always_propose):
    task = word_task()
    found = propose_instructions(causal_lm, task, n=3, seed=0, shots=4)
    train = {e.source for e in task.examples("train")}
    assert all(len(p.shown) == 4 and set(p.shown) <= train for p in found)
    assert len({p.shown for p in found}) == 3


def test_the_meta_prompt_is_ape_s_with_label_words():
    task = word_task()
    sample = [(e, None) for e in task.examples("train")[:2]]
    text = meta_prompt(task, sample)
    assert text.startswith("I gave a friend an instruction.") and text.endswith("The instruction was:")
    assert f"Input: {sample[0][0].fields['text']}\nOutput: negative" in text
    revision = meta_prompt(task, [(task.examples("dev")[1], "negative")], current="Classify it.")
    assert '"Classify it."' in revision and "Output: negative (right: positive)" in revision


def test_revisions_come_from_the_mistakes(causal_lm, always_propose):
    task = word_task()
    mistakes = [(e, "negative") for e in task.examples("dev") if e.answer == "positive"][:3]
    found = propose_instructions(causal_lm, task, n=2, seed=0, current="Classify it.", mistakes=mistakes)
    assert {p.origin for p in found} == {"revision"}
    assert all(set(p.shown) <= {e.source for e, _ in mistakes} for p in found)
    assert propose_instructions(causal_lm, task, n=2, seed=0, current="Classify it.", mistakes=[]) == []


@pytest.mark.parametrize("text, cleaned", [
    ('  "Classify the review as positive or negative."\nInput: x', "Classify the review as positive or negative."),
    ("to decide if the sentence is positive. Then say it", "Decide if the sentence is positive."),
    ("Instruction: name the capital city", "Name the capital city."),
    ('A better instruction is: "Write a sentence with a negative tone.', "Write a sentence with a negative tone."),
    ("A revised instruction: say the label.", "Say the label."),  # (what revisions of the 135M model began with)
    ("\n\n  **Write the country's capital**  ", "Write the country's capital."),
    ("", None), ("\n\n''\n", None), ("Yes.", None), ("word " * 60, None),
])
def test_cleaning(text, cleaned):
    assert clean_instruction(text) == cleaned


def test_an_instruction_caught_in_a_loop_is_dropped():
    # what the embedded 135M model wrote for SST-2 (seed 0)
    assert clean_instruction('The instruction was: "The instruction was: "The instruction was: "The instruction was.') is None
    kept = "Say whether the review is positive or whether the review is negative."
    assert clean_instruction(kept) == kept  # a phrase said twice is not a loop


def test_an_instruction_naming_a_shown_answer_is_dropped():
    assert clean_instruction("Answer with the capital, like Paris.", ["Paris"]) is None
    assert clean_instruction("Answer with the capital city.", ["Paris"]) == "Answer with the capital city."
    assert clean_instruction("Answer the question in parts.", ["Paris", "art"]) is not None  # whole words only


def test_repeats_are_dropped(causal_lm, monkeypatch):
    texts = iter(["Say if it is good.", "say if it is good.", "Say if it is bad."])
    monkeypatch.setattr(proposals_module, "clean_instruction", lambda text, answers=(): next(texts))
    found = propose_instructions(causal_lm, word_task(), n=3, seed=0)
    assert [p.instruction for p in found] == ["Say if it is good.", "Say if it is bad."]


def test_a_generation_task_s_shown_answers_are_checked(causal_lm, monkeypatch):
    seen = []
    monkeypatch.setattr(proposals_module, "clean_instruction", lambda text, answers=(): seen.append(answers))
    task = Task(name="caps", template="{country} capital:[P]", verbalizer=None,
                splits={"train": [Example({"country": c}, a, f"t{i}") for i, (c, a) in
                                  enumerate([("France", "Paris"), ("Peru", "Lima"), ("Chad", "N'Djamena")])],
                        "dev": [Example({"country": "Mali"}, "Bamako", "d0")]})
    assert propose_instructions(causal_lm, task, n=2, seed=0, shots=2) == []
    assert all(len(a) == 2 and set(a) <= {"Paris", "Lima", "N'Djamena"} for a in seen)


def test_a_masked_lm_cannot_propose(masked_lm):
    with pytest.raises(ModelError, match="masked LM"):
        propose_instructions(masked_lm, word_task(), n=2, seed=0)


# --- in the template search -----------------------------------------------------------------

def test_the_template_search_adds_the_proposals_to_its_study(causal_lm, tmp_path, always_propose):
    task = word_task()
    result = optimize(task, causal_lm, seed=0, runs_dir=tmp_path / "runs", method="template", confidence=0,
                      config=config(tmp_path, propose=3), progress=False)
    saved = json.loads((result.run_dir / PROPOSALS_FILE).read_text())
    assert [p["origin"] for p in saved] == ["train-examples"] * 3
    own = task_space(config(tmp_path), task).instruction
    logged = [e for e in result.history if e.get("stage") == "propose"]
    assert [e["index"] for e in logged] == [len(own) + i for i in range(3)]  # its place in the space
    assert [e["instruction"] for e in logged] == [p["instruction"] for p in saved]
    assert [e["shown"] for e in logged] == [p["shown"] for p in saved]
    study = optuna.load_study(study_name=result.run_dir.name,
                              storage=optuna.storages.RDBStorage(f"sqlite:///{result.run_dir / 'study.db'}"))
    choices = {t.distributions["instruction"].choices for t in study.trials if "instruction" in t.distributions}
    assert choices == {tuple(range(len(own) + 3))}  # the proposals are in the study's categorical dimension
    info = json.loads((result.run_dir / "result.json").read_text())
    assert json.dumps(saved) in json.dumps(info)  # the run info says where each came from


def test_a_resumed_run_reads_its_proposals_back(causal_lm, tmp_path, always_propose, monkeypatch):
    task = word_task()
    calls = {"n": 0}
    real = trials_module.evaluate

    def dies_in_the_third_trial(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3 * 4:  # 4 chunks of 10 per trial
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trials_module, "evaluate", dies_in_the_third_trial)
    with pytest.raises(KeyboardInterrupt):
        optimize(task, causal_lm, seed=0, runs_dir=tmp_path / "runs", method="template",
                 config=config(tmp_path, propose=2), progress=False)
    monkeypatch.setattr(trials_module, "evaluate", real)
    run_dir = next((tmp_path / "runs").iterdir())
    saved = json.loads((run_dir / PROPOSALS_FILE).read_text())
    monkeypatch.setattr(proposed_module, "propose_instructions", lambda *a, **k: pytest.fail("proposed again"))
    result = optimize(task, causal_lm, resume=run_dir, progress=False)
    space = run_space(Context(task, causal_lm, Run.open(run_dir)), config(tmp_path, propose=2))
    assert space.instruction[-2:] == [p["instruction"] for p in saved]
    assert len([e for e in result.history if e.get("stage") == "propose"]) == 2  # logged once
    study = optuna.load_study(study_name=run_dir.name, storage=optuna.storages.RDBStorage(f"sqlite:///{run_dir / 'study.db'}"))
    S = optuna.trial.TrialState
    assert len(study.get_trials(states=(S.COMPLETE, S.PRUNED))) == 8


def test_propose_zero_leaves_the_space_and_the_run_unchanged(causal_lm, tmp_path, monkeypatch):
    monkeypatch.setattr(proposed_module, "propose_instructions", lambda *a, **k: pytest.fail("proposed with propose=0"))
    task = word_task()
    result = optimize(task, causal_lm, seed=0, runs_dir=tmp_path / "runs", method="template", confidence=0,
                      config=config(tmp_path, trials=3), progress=False)
    assert not (result.run_dir / PROPOSALS_FILE).exists()
    assert not [e for e in result.history if e.get("stage") == "propose"]
    assert "proposals" not in json.loads((result.run_dir / "result.json").read_text()).get("search", {})
    assert TemplateSearchConfig().propose == 0 and TemplateSearchConfig().proposer is None


def test_propose_with_a_masked_scoring_model_needs_a_proposer(masked_lm, tmp_path):
    task = word_task()
    with pytest.raises(AutoPromptError, match="--proposer"):
        optimize(task, masked_lm, seed=0, runs_dir=tmp_path / "runs", method="template",
                 config=config(tmp_path, propose=2, space="default"), progress=False)


def test_proposal_is_plain_data():
    assert Proposal("Say it.", "train-examples", ("t1",)).shown == ("t1",)


def test_examples_are_dropped_until_the_meta_prompt_fits_the_context(causal_lm, monkeypatch):
    lengths = []
    real = proposals_module.greedy_tokens

    def spy(model, inputs, *args, **kwargs):
        lengths.extend(len(ids) for ids in inputs)
        return real(model, inputs, *args, **kwargs)

    monkeypatch.setattr(proposals_module, "greedy_tokens", spy)
    propose_instructions(causal_lm, word_task(), n=2, seed=0)
    context = max(lengths) + proposals_module.MAX_NEW_TOKENS - 20  # 20 tokens short of the longest
    monkeypatch.setattr(type(causal_lm), "max_length", property(lambda self: context))
    lengths.clear()
    propose_instructions(causal_lm, word_task(), n=2, seed=0)
    assert lengths and max(lengths) + proposals_module.MAX_NEW_TOKENS <= context
