"""Exports: each format renders what autoprompt's own predictor renders, for the same input."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from autoprompt import Prompt, PromptFile, read_prompt_file, save_prompt_file
from autoprompt.cli import main
from autoprompt.export import export_prompt, langchain_config, render_langchain, trigger_problems
from autoprompt.predict import Predictor
from autoprompt.task import Example
from autoprompt.template import fill_template

VERBALIZER = {"negative": ["terrible", "bad"], "positive": ["great"]}
DEMOS = (Example({"text": "a {curly} delight"}, "positive", "demonstration"),
         Example({"text": "dull and long"}, "negative", "demonstration"))
INPUTS = [{"text": "a great movie"}, {"text": "odd {braces} and }{ here"}]


def _prompt(model, **changes) -> Prompt:
    base = Prompt(template="Review: {text} [T] [T]\nSentiment:[P]", verbalizer=VERBALIZER,
                  trigger_ids=tuple(model.tokenizer.convert_tokens_to_ids(["the", "Ġmovie"])),
                  trigger_tokens=("the", " movie"), instruction="Label it {positive} or {negative}.",
                  fields=("text",), model=model.ref)
    return replace(base, **changes)


def _file(tmp_path: Path, prompt: Prompt, name: str = "p.prompt.json") -> Path:
    return save_prompt_file(PromptFile(prompt, task_name="toy"), tmp_path / name)


PROMPTS = {
    "triggers-and-instruction": {},
    "demonstrations": {"demonstrations": DEMOS},
    "demos-in-the-layout": {"template": "{instruction}\n\n{demos}\n\nReview: {text} [T] [T]\nSentiment:[P]",
                            "demonstrations": DEMOS},
    "chat": {"chat": True, "demonstrations": DEMOS},
    "braces-in-the-template": {"template": "Review {{quoted}}: {text} [T] [T]\nSentiment:[P]", "demonstrations": DEMOS},
    "no-triggers": {"template": "Review: {text}\nSentiment:[P]", "trigger_ids": (), "trigger_tokens": ()},
}


@pytest.mark.parametrize("name", PROMPTS)
def test_text_export_round_trips(name: str, causal_lm, tmp_path: Path) -> None:
    prompt = _prompt(causal_lm, **PROMPTS[name])
    text = export_prompt(_file(tmp_path, prompt), "text")
    predictor = Predictor(prompt, causal_lm)
    for values in INPUTS:
        assert text.format(**values) == predictor.render(values)
        # read back as an autoprompt template (the answer slot appended), it renders the same text
        assert fill_template(text + "[P]", values) == predictor.render(values)


def test_text_export_of_a_masked_prompt_has_the_mask(masked_lm, tmp_path: Path) -> None:
    prompt = Prompt(template="{text} It was [P] .", verbalizer={"a": ["good"], "b": ["bad"]}, fields=("text",),
                    model=masked_lm.ref)
    text = export_prompt(_file(tmp_path, prompt), "text")
    assert text == "{text} It was [MASK] ."
    assert text.format(text="fine") == Predictor(prompt, masked_lm).render("fine")


@pytest.mark.parametrize("name", PROMPTS)
@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_langchain_export_loads_and_renders_identically(name: str, suffix: str, causal_lm, tmp_path: Path) -> None:
    prompts = pytest.importorskip("langchain_core.prompts")
    prompt = _prompt(causal_lm, **PROMPTS[name])
    out = tmp_path / f"lc{suffix}"
    result = CliRunner().invoke(main, ["export", str(_file(tmp_path, prompt)), "--format", "langchain", "-o", str(out)])
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(out.read_text(encoding="utf-8"))  # JSON is YAML
    assert config["_type"] == ("few_shot" if prompt.demonstrations else "prompt")
    if prompt.demonstrations:
        assert len(config["examples"]) == len(DEMOS)
        assert config["examples"][1] == {"text": "dull and long", "answer": " terrible"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # load_prompt is deprecated in langchain-core 1.x, but reads these files
        loaded = prompts.load_prompt(out)
    predictor = Predictor(prompt, causal_lm)
    for values in INPUTS:
        assert loaded.format(**values) == predictor.render(values)
        assert render_langchain(config, values) == predictor.render(values)


def test_few_shot_falls_back_to_one_template_when_the_layout_does_not_fit(causal_lm) -> None:
    # demonstrations glued to the input with no separator: not LangChain's prefix/examples/suffix shape
    prompt = _prompt(causal_lm, template="{demos} Review: {text}\nSentiment:[P]", demonstrations=DEMOS,
                     trigger_ids=(), trigger_tokens=())
    config = langchain_config(prompt)
    assert config["_type"] == "prompt"
    assert config["template"].format(text="x") == Predictor(prompt, causal_lm).render("x")


def test_promptfoo_export(causal_lm, tmp_path: Path) -> None:
    jinja2 = pytest.importorskip("jinja2")  # promptfoo's Nunjucks reads {{ var }} and {% raw %} like Jinja
    rows = [{"text": "a {fine} film", "label": "positive"}, {"text": "awful", "label": "negative"}]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    task = tmp_path / "toy.py"
    task.write_text("from pathlib import Path\nfrom autoprompt.task import Task, read_examples\n"
                    f"task = Task(name='toy', template='Review: {{text}}\\nSentiment:[P]', verbalizer={VERBALIZER!r},\n"
                    "            splits={'test': read_examples(Path(__file__).parent / 'test.jsonl')})\n")
    prompt = _prompt(causal_lm, demonstrations=DEMOS)
    out = tmp_path / "promptfooconfig.yaml"
    result = CliRunner().invoke(main, ["export", str(_file(tmp_path, prompt)), "--format", "promptfoo",
                                       "--task", str(task), "-o", str(out)])
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(out.read_text(encoding="utf-8"))
    raw = config["prompts"][0]["raw"]
    assert [t["vars"] for t in config["tests"]] == [{"text": r["text"]} for r in rows]
    assert [t["assert"] for t in config["tests"]] == [[{"type": "icontains", "value": "great"}],
                                                      [{"type": "icontains-any", "value": ["terrible", "bad"]}]]
    predictor = Predictor(prompt, causal_lm)
    for test in config["tests"]:
        assert jinja2.Template(raw, keep_trailing_newline=True).render(**test["vars"]) == predictor.render(test["vars"])


def test_json_export_is_the_prompt_file(causal_lm, tmp_path: Path) -> None:
    prompt = _prompt(causal_lm, demonstrations=DEMOS)
    out = tmp_path / "again.prompt.json"
    result = CliRunner().invoke(main, ["export", str(_file(tmp_path, prompt)), "--format", "json", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert read_prompt_file(out).prompt == prompt  # trigger ids included


def test_a_trigger_that_does_not_tokenize_back_gives_a_warning(causal_lm, tmp_path: Path) -> None:
    tokenizer = causal_lm.tokenizer
    # a token whose text tokenizes differently ("Ġ" glued to nothing, byte pieces...), found in this vocabulary
    odd = next(i for i in range(tokenizer.vocab_size)
               if tokenizer(tokenizer.decode([i]), add_special_tokens=False)["input_ids"] != [i]
               and i not in tokenizer.all_special_ids)
    good = tokenizer.convert_tokens_to_ids("the")
    prompt = _prompt(causal_lm, trigger_ids=(good, odd), trigger_tokens=("the", tokenizer.decode([odd])))
    assert [p.startswith("trigger 2") for p in trigger_problems(prompt, tokenizer)] == [True]
    assert trigger_problems(_prompt(causal_lm), tokenizer) == []
    result = CliRunner().invoke(main, ["export", str(_file(tmp_path, prompt)), "--format", "text"])
    assert result.exit_code == 0, result.output
    assert "trigger 2" in result.stderr and "only the json format keeps ids" in result.stderr
    assert result.stdout.startswith("Label it {{positive}}")
    quiet = CliRunner().invoke(main, ["export", str(_file(tmp_path, prompt)), "--format", "json"])
    assert quiet.exit_code == 0 and "trigger 2" not in quiet.stderr  # the json file keeps the ids
