"""Label-balanced similar demonstrations ("balanced_similar") and ``autoprompt demos``, the study of which
demonstrations and how many."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner
from words_task import words_task_file

from autoprompt.cli import main
from autoprompt.demo_study import DemoStudyConfig, study_demonstrations
from autoprompt.errors import AutoPromptError, PromptFileError, TemplateError
from autoprompt.predict import Predictor
from autoprompt.prompt import Prompt
from autoprompt.prompt_file import PromptFile, read_prompt_file, save_prompt_file
from autoprompt.scoring import demos as demos_module
from autoprompt.scoring.demos import nearest_demonstrations, nearest_per_label
from autoprompt.space import SIMILAR_POOL, Choice, SearchSpace, prompt_for
from autoprompt.task import Example, Task, load_task

VERBALIZER = {"negative": ["negative"], "positive": ["positive"]}
WORDS = ["good", "bad", "film", "plot", "the", "a", "is", "was", "slow", "fun", "long", "cast"]


def word_task(n_train: int = 120, n_dev: int = 12, positive_every: int = 3) -> Task:
    """Two thirds positive in train: a plain sample of it is not balanced."""
    def examples(n: int, split: str) -> list[Example]:
        return [Example({"text": " ".join(WORDS[(i * 5 + j * 7) % len(WORDS)] for j in range(4 + i % 3))},
                        "negative" if i % positive_every == 0 else "positive", f"{split}:{i}") for i in range(n)]

    return Task(name="words", template="{text} =>[P]", verbalizer=VERBALIZER,
                splits={"train": examples(n_train, "train"), "dev": examples(n_dev, "dev"), "test": examples(6, "test")})


def prompt_of(task: Task, selection: str, k: int, seed: int = 0) -> Prompt:
    return prompt_for(Choice(k=k, selection=selection), SearchSpace().for_task(task), task, seed=seed)


# --- choosing the demonstrations ---------------------------------------------------------------

def test_per_label_nearest_takes_the_labels_in_turn_the_nearest_last() -> None:
    similarity = torch.tensor([[0.9, 0.8, 0.7, 0.1, 0.2, 0.3],  # [2 inputs, 6 pool examples]
                               [0.1, 0.2, -float("inf"), 0.9, 0.5, 0.4]])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    # two of each label, ascending: label 1's two nearest (4, 5), then label 0's (1, 0)
    assert nearest_per_label(similarity, labels, 4).tolist() == [[4, 5, 1, 0], [0, 1, 4, 3]]
    # an odd k: the extra turn goes to the nearer of the second round (1 at 0.8 before 4 at 0.2)
    assert nearest_per_label(similarity, labels, 3).tolist() == [[5, 1, 0], [1, 4, 3]]
    # a label that runs out (the input itself is never before a real example) leaves its turns to the others
    assert nearest_per_label(similarity, torch.tensor([0, 1, 1, 1, 1, 1]), 4).tolist() == [[5, 2, 1, 0], [0, 5, 4, 3]]
    assert nearest_per_label(similarity, labels, 6)[1, 0].item() == 2


def test_balanced_similar_picks_each_labels_nearest_where_similar_picks_the_nearest(causal_lm, monkeypatch) -> None:
    pool = tuple(Example({"text": t}, a, t) for t, a in
                 [("n1", "negative"), ("n2", "negative"), ("n3", "negative"), ("p1", "positive"), ("p2", "positive")])
    vectors = {"n1": [1.0, 0.0], "n2": [0.9, 0.1], "n3": [0.8, 0.2], "p1": [0.0, 1.0], "p2": [0.3, 0.7],
               "query": [1.0, 0.05]}  # the query is nearest to every negative, then p2, then p1
    monkeypatch.setattr(demos_module, "embed_texts", lambda model, texts: torch.nn.functional.normalize(
        torch.tensor([vectors[t] for t in texts]), dim=1))
    similar = Prompt(template="{text} =>[P]", verbalizer=VERBALIZER, fields=("text",), demonstrations=pool, demo_k=4)
    per_label = replace(similar, demo_per_label=True)
    query = [Example({"text": "query"}, None, "q")]
    texts = lambda prompt: [d.fields["text"] for d in nearest_demonstrations(causal_lm, prompt, query)[0]]  # noqa: E731
    assert texts(similar) == ["p2", "n3", "n2", "n1"]
    assert texts(per_label) == ["p1", "p2", "n2", "n1"]
    assert texts(replace(per_label, demo_k=3)) == ["p2", "n2", "n1"]


def test_balanced_similar_keeps_a_pool_balanced_over_the_labels() -> None:
    task = word_task()
    prompt = prompt_of(task, "balanced_similar", 4)
    answers = [d.answer for d in prompt.demonstrations]
    assert prompt.demo_per_label and prompt.demo_k == 4 and len(answers) == SIMILAR_POOL
    assert answers.count("negative") == answers.count("positive") == SIMILAR_POOL // 2
    assert prompt.demonstrations != prompt_of(task, "similar", 4).demonstrations
    assert not prompt_of(task, "balanced_similar", 0).demonstrations


def test_balanced_similar_is_similar_on_a_task_without_labels() -> None:
    task = load_task("country_codes")
    for k in (0, 2, 8):
        assert prompt_of(task, "balanced_similar", k, seed=1) == prompt_of(task, "similar", k, seed=1)
    assert not prompt_of(task, "balanced_similar", 2).demo_per_label


def test_a_per_label_prompt_needs_labels_and_a_pool() -> None:
    pool = (Example({"text": "a"}, "negative", "a"), Example({"text": "b"}, "maybe", "b"))
    with pytest.raises(TemplateError, match="not labels"):
        Prompt(template="{text} =>[P]", verbalizer=VERBALIZER, demonstrations=pool, demo_k=1, demo_per_label=True)
    with pytest.raises(TemplateError, match="demo_k > 0"):
        Prompt(template="{text} =>[P]", verbalizer=VERBALIZER, demonstrations=pool[:1], demo_per_label=True)


def test_balanced_similar_round_trips_through_a_prompt_file_and_predicts_the_same(causal_lm, tmp_path) -> None:
    task = word_task()
    prompt = replace(prompt_of(task, "balanced_similar", 2), model=causal_lm.ref)
    path = save_prompt_file(PromptFile(prompt, task_name=task.name), tmp_path / "p.prompt.json")
    loaded = read_prompt_file(path).prompt
    assert loaded.demo_per_label and loaded.demo_k == 2
    inputs = [e.fields["text"] for e in task.examples("dev")]
    assert Predictor(loaded, causal_lm).predict_proba(inputs) == Predictor(prompt, causal_lm).predict_proba(inputs)
    shown = Predictor(loaded, causal_lm).render(inputs[0])
    assert shown.count("negative") == shown.count("positive") == 1  # one of each label, then the input
    data = json.loads(path.read_text())
    for change, message in [({"demo_per_label": "yes"}, "demo_per_label must be bool"),
                            ({"demo_k": 0}, "demo_per_label needs"),
                            ({"verbalizer": None}, "demo_per_label needs")]:
        path.write_text(json.dumps(data | change))
        with pytest.raises(PromptFileError, match=message):
            read_prompt_file(path)


def test_a_similar_prompt_file_says_nothing_of_labels(causal_lm, tmp_path) -> None:
    prompt = replace(prompt_of(word_task(), "similar", 2), model=causal_lm.ref)
    path = save_prompt_file(PromptFile(prompt, task_name="words"), tmp_path / "p.prompt.json")
    assert "demo_per_label" not in json.loads(path.read_text())  # (files of the earlier kinds, as they were)


# --- the study -----------------------------------------------------------------------------------

def test_the_study_scores_each_cell_once_per_distinct_prompt(causal_lm) -> None:
    task = word_task()
    config = DemoStudyConfig(k=[0, 2], selections=["random", "balanced_similar"], seeds=[0, 1])
    study = study_demonstrations(causal_lm, task, config)
    assert [(c.selection, c.k, c.seed) for c in study.cells] == [
        (s, k, seed) for s in ("random", "balanced_similar") for k in (0, 2) for seed in (0, 1)]
    zero = [c for c in study.cells if c.k == 0]
    assert len({c.value for c in zero}) == 1 and [bool(c.same_as) for c in zero] == [False, True, True, True]
    assert not any(c.same_as for c in study.cells if c.k == 2)
    expected = prompt_of(task, "balanced_similar", 2, seed=1)
    from autoprompt.scoring import evaluate

    cell = next(c for c in study.cells if (c.selection, c.k, c.seed) == ("balanced_similar", 2, 1))
    assert cell.value == evaluate(causal_lm, expected, task.examples("dev"), metric="accuracy").metrics["accuracy"]


def test_the_study_skips_a_k_that_does_not_fit_the_context(causal_lm) -> None:
    task = word_task()
    long_train = [replace(e, fields={"text": " ".join([e.fields["text"]] * 12)}) for e in task.examples("train")]
    task = replace(task, splits={**task.splits, "train": long_train})
    study = study_demonstrations(causal_lm, task, DemoStudyConfig(k=[1, 16], selections=["random"], seeds=[0]))
    one, sixteen = study.cells
    assert one.value is not None and not one.note
    assert sixteen.value is None and "does not fit the model's context" in sixteen.note
    assert any("k=16: does not fit" in line for line in study.table())


@pytest.mark.parametrize("changes, message", [({"selections": "random,nearest"}, "unknown selection 'nearest'"),
                                              ({"k": "0,-1"}, "'-1' is not a number"), ({"k": ""}, "at least one"),
                                              ({"seeds": "0,0"}, "given twice"), ({"split": "train"}, "--split")])
def test_a_bad_config_says_what_is_wrong(changes, message) -> None:
    with pytest.raises(AutoPromptError, match=message):
        DemoStudyConfig(**changes)


# --- the command ---------------------------------------------------------------------------------

@pytest.fixture
def words_file(tmp_path):
    path = tmp_path / "words.py"
    path.write_text(words_task_file(train=40, dev=16, test=8), encoding="utf-8")
    return str(path)


def test_the_demos_command_prints_a_row_per_selection_and_a_cell_per_k(words_file, tiny_causal_dir) -> None:
    args = ["demos", words_file, "--model", str(tiny_causal_dir), "--k", "0,1,4", "--seeds", "0,1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("words [dev, 16 examples] on ") and "accuracy" in lines[0]
    assert lines[1].split()[:4] == ["selection", "k=0", "k=1", "k=4"]
    for selection, line in zip(("random", "balanced", "similar", "balanced_similar"), lines[2:6], strict=True):
        assert line.split()[0] == selection and line.count("±") == 3
    first = json.loads(CliRunner().invoke(main, [*args, "--json"]).stdout)
    again = json.loads(CliRunner().invoke(main, [*args, "--json"]).stdout)
    assert len(first["cells"]) == 4 * 3 * 2
    values = lambda out: [(c["selection"], c["k"], c["seed"], c["value"]) for c in out["cells"]]  # noqa: E731
    assert values(first) == values(again)
    assert first["summary"]["random"]["0"]["mean"] == first["summary"]["similar"]["0"]["mean"]


@pytest.mark.parametrize("flags, message", [(["--selections", "random,nearest"], "unknown selection 'nearest'"),
                                            (["--k", "-1"], "'-1' is not a number"), (["--k", ","], "at least one"),
                                            (["--seeds", "x"], "'x' is not a seed")])
def test_the_demos_command_refuses_bad_input_in_one_line(words_file, tiny_causal_dir, flags, message) -> None:
    result = CliRunner().invoke(main, ["demos", words_file, "--model", str(tiny_causal_dir), *flags])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_the_demos_command_names_an_unknown_task(tiny_causal_dir) -> None:
    result = CliRunner().invoke(main, ["demos", "no_such_task", "--model", str(tiny_causal_dir)])
    assert result.exit_code == 2 and result.output.startswith("error: unknown task 'no_such_task'")
