"""Search spaces: YAML loading, validation with one clear error each, choices -> prompts, demos."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoprompt.prompt import Prompt
from autoprompt.searches.template import manual_params, with_manual_choices
from autoprompt.space import (
    SPACES_DIR,
    Choice,
    SearchSpace,
    SpaceError,
    load_space,
    pick_demonstrations,
    prompt_for,
    space_from_dict,
)
from autoprompt.task import Example, Task, load_task

VERBALIZER = {"negative": ["negative"], "positive": ["positive"]}


def small_task() -> Task:
    train = [Example({"text": f"t{i}"}, "positive" if i % 3 else "negative", f"train:{i}") for i in range(12)]
    dev = [Example({"text": f"d{i}"}, "positive" if i % 2 else "negative", f"dev:{i}") for i in range(6)]
    return Task(name="small", template="Review: {text}\nSentiment:[P]", verbalizer=VERBALIZER,
                splits={"train": train, "dev": dev, "test": dev})


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["default", "sentiment", "facts"])
def test_shipped_spaces_load_by_name(name):
    space = load_space(name)
    assert space.source == str(SPACES_DIR / f"{name}.yaml")


def test_sentiment_space_fits_sst2():
    task = load_task("sst2")
    space = with_manual_choices(load_space("search/sentiment.yaml").for_task(task), task)
    assert space.layout[0].replace(" [T]", "") == task.template  # the manual layout leads, not duplicated
    assert len({layout.replace(" [T]", "") for layout in space.layout}) == len(space.layout)
    assert space.size() > 1000


@pytest.mark.parametrize("text, message", [
    ("colour: [red]\n", "unknown key(s) colour"),
    ("layout: []\n", "layout is an empty list"),
    ("layout: ['Review: {text}']\n", "has no [P] answer slot"),
    ("layout: ['Review: {text} and {title}[P]']\n", "uses title, which task small lacks"),
    ("layout: ['Just answer:[P]']\n", "leaves out the task's field(s) text"),
    ("layout: ['{text} [T] [T][P]']\n", "several [T]"),
    ("layout: ['{text[P]']\n", "layout '{text[P]'"),
    ("verbalizer: [{negative: [bad], good: [good]}]\n", "verbalizer 1 has labels ['good', 'negative']"),
    ("verbalizer: [{negative: [bad]}]\n", "at least two labels"),
    ("verbalizer: [{negative: [''], positive: [good]}]\n", "non-empty words"),
    ("verbalizer: [{negative: [good], positive: [good]}]\n", "gives the word 'good' to both 'negative' and 'positive'"),
    ("demonstrations: {k: [-1]}\n", "integers >= 0"),
    ("demonstrations: {k: [2], how: [x]}\n", "unknown demonstrations key(s) how"),
    ("demonstrations: {selection: [nearest]}\n", "'nearest' is not one of: random, balanced"),
    ("demonstrations: [1, 2]\n", "demonstrations must be a mapping"),
    ("calibration: [platt]\n", "calibration 'platt' is not one of"),
    ("chat: [maybe]\n", "chat must be a list of true/false"),
    ("triggers: [two]\n", "triggers must be integers"),
    ("instruction: [3]\n", "each instruction must be a string"),
    ("- a\n- b\n", "a search space is a mapping"),
    ("layout: [\n", "not valid YAML"),
])
def test_bad_spaces_are_refused_with_a_clear_message(tmp_path, text, message):
    with pytest.raises(SpaceError) as err:
        load_space(write(tmp_path, text)).for_task(small_task())
    assert message in str(err.value)
    assert "space.yaml" in str(err.value)


def test_missing_space_file_names_the_shipped_ones(tmp_path):
    with pytest.raises(SpaceError, match="built-in spaces: default, demo, facts, sentiment"):
        load_space(tmp_path / "nope.yaml")


def test_an_empty_file_is_the_task_alone(tmp_path):
    space = load_space(write(tmp_path, "")).for_task(small_task())
    assert space.layout == [small_task().template]
    assert space.size() == 1


def test_manual_choices_come_first_and_trial_zero_is_the_manual_prompt():
    task = small_task()
    space = space_from_dict({"instruction": ["Be brief."], "layout": ["{text} =>[P]"],
                             "verbalizer": [{"negative": ["bad"], "positive": ["good"]}],
                             "demonstrations": {"k": [2, 4]}, "chat": [True], "calibration": ["contextual"]})
    space = with_manual_choices(space.for_task(task), task)
    assert space.instruction == ["", "Be brief."]
    assert space.layout == [task.template, "{text} =>[P]"]
    assert space.k == [0, 2, 4] and space.chat == [False, True] and space.calibration == ["none", "contextual"]
    choice = Choice.from_params(manual_params(space), space)
    prompt = prompt_for(choice, space, task, seed=0)
    manual = Prompt.from_task(task)
    assert (prompt.template, prompt.verbalizer, prompt.instruction, prompt.demonstrations, prompt.chat) == (
        manual.template, manual.verbalizer, "", (), False)


def test_a_choice_builds_its_prompt_with_triggers_where_the_layout_says():
    task = small_task()
    space = space_from_dict({"layout": ["Review: {text} [T]\nSentiment:[P]"]}).for_task(task)
    assert prompt_for(Choice(), space, task, seed=0).template == "Review: {text}\nSentiment:[P]"
    hybrid = prompt_for(Choice(), space, task, seed=0, n_triggers=3)
    assert hybrid.template == "Review: {text} [T] [T] [T]\nSentiment:[P]"
    plain = space_from_dict({}).for_task(task)
    assert prompt_for(Choice(), plain, task, seed=0, n_triggers=2).template == "Review: {text} [T] [T]\nSentiment:[P]"


def test_demonstrations_come_from_train_balanced_and_reproducible():
    task = small_task()
    train = task.examples("train")
    labels = task.labels
    demos = pick_demonstrations(train, 4, "balanced", "shuffled", labels=labels, seed=3)
    assert len(demos) == 4 and all(d in train for d in demos)
    assert sorted(d.answer for d in demos) == ["negative", "negative", "positive", "positive"]
    assert demos == pick_demonstrations(train, 4, "balanced", "shuffled", labels=labels, seed=3)
    assert demos != pick_demonstrations(train, 4, "balanced", "shuffled", labels=labels, seed=4)
    grouped = pick_demonstrations(train, 4, "balanced", "by_label", labels=labels, seed=3)
    assert [d.answer for d in grouped] == ["negative", "negative", "positive", "positive"]
    assert len(pick_demonstrations(train, 50, "random", "shuffled", labels=labels, seed=0)) == len(train)


def test_space_size_counts_the_choices():
    space = SearchSpace(instruction=["", "a"], layout=["{text}[P]"], verbalizer=[VERBALIZER], k=[0, 2, 4])
    assert space.size() == 6
