"""Generated answers: the batched greedy engine against Hugging Face's generate, the whole-target likelihood
against a plain forward, the gradient of the whole-target objective against autograd, the answer metrics,
and a generation task end to end (both searches, its prompt file, predict, the CLI, an export)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from autoprompt import load_prompt
from autoprompt.answers import Generation, answer_scores, contains, exact_match, normalize, token_f1
from autoprompt.cli import main
from autoprompt.data import Example
from autoprompt.errors import AutoPromptError, TaskError, TemplateError
from autoprompt.gradient import trigger_gradient
from autoprompt.objective import TargetObjective, objective_for
from autoprompt.optimizer import optimize
from autoprompt.prompt import Prompt
from autoprompt.scoring import encode_examples, evaluate, generate, greedy_tokens, score_targets, target_ids
from autoprompt.searches.template import TemplateSearchConfig
from autoprompt.searches.trigger import TriggerSearchConfig
from autoprompt.task import Task

CODES = [("France", "FRA"), ("Germany", "DEU"), ("Italy", "ITA"), ("Spain", "ESP"), ("Portugal", "PRT"),
         ("Austria", "AUT"), ("Greece", "GRC"), ("Norway", "NOR"), ("Ireland", "IRL"), ("Poland", "POL"),
         ("Sweden", "SWE"), ("Finland", "FIN"), ("Denmark", "DNK"), ("Belgium", "BEL"), ("Hungary", "HUN"),
         ("Romania", "ROU"), ("Bulgaria", "BGR"), ("Croatia", "HRV")]


def code_task(**changes) -> Task:
    examples = [Example({"country": c}, code, f"codes:{i}") for i, (c, code) in enumerate(CODES)]
    settings = dict(name="codes", template="Country: {country}\nCode:[P]", metric="exact_match",
                    splits={"train": examples[:8], "dev": examples[8:14], "test": examples[14:]})
    return Task(**(settings | changes))


# --- the engine -------------------------------------------------------------------------------

@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batched_greedy_equals_hugging_face_generate_one_by_one(causal_lm, padding_side, monkeypatch) -> None:
    monkeypatch.setattr(causal_lm.tokenizer, "padding_side", padding_side)  # (the engine pads itself)
    inputs = [causal_lm.tokenizer(t)["input_ids"] for t in ["Country: France\nCode:", "a much longer input, to pad "
                                                            "the others of the batch", "hi"]]
    batched = greedy_tokens(causal_lm, inputs, 6)
    for ids, got in zip(inputs, batched, strict=True):
        row = torch.tensor([ids], device=causal_lm.device)
        alone = causal_lm.hf_model.generate(row, attention_mask=torch.ones_like(row), max_new_tokens=6, do_sample=False,
                                            pad_token_id=causal_lm.pad_id)
        assert got == alone[0, len(ids):].tolist()


def test_generation_stops_at_a_newline_after_words_and_at_stop_strings(causal_lm) -> None:
    from autoprompt.scoring.generate import cut

    assert cut(" FRA\nCountry: Spain") == "FRA" and cut("\n\n FRA \n x") == "FRA"
    assert cut(" FRA; DEU", ("; ",)) == "FRA" and cut("") == ""
    prompt = Prompt.from_task(code_task(max_new_tokens=5))
    out = generate(causal_lm, prompt, code_task().examples("dev"))
    assert len(out) == 6 and all("\n" not in text for text in out)


@pytest.mark.parametrize("stop", [(".",), "said", (" ", ", ")])
def test_stopping_at_a_stop_string_token_gives_the_same_answers(causal_lm, stop) -> None:
    from autoprompt.scoring.endings import ending_tokens, stop_tokens
    from autoprompt.scoring.generate import cut

    examples = code_task().examples("train") + code_task().examples("dev")
    inputs = [e.input_ids for e in encode_examples(causal_lm, Prompt.from_task(code_task()), examples)]
    full = greedy_tokens(causal_lm, inputs, 12, ending_tokens(causal_lm))
    if stop == "said":  # a stop string the tiny model really says: its answers end early
        said = [t for t in causal_lm.tokenizer.batch_decode([[t] for row in full for t in row]) if t.strip()]
        stop = (max(said, key=said.count).strip()[-1:],)
    task = code_task(stop=stop, max_new_tokens=12)
    prompt = Prompt.from_task(task)
    expected = [cut(causal_lm.tokenizer.decode(tokens), stop) for tokens in full]
    assert generate(causal_lm, prompt, examples) == expected
    cut_at = stop_tokens(causal_lm, stop)
    if stop == (" ", ", "):
        assert cut_at is None  # a stop string that cut() may strip is cut in the text only
    elif stop != (".",):
        early = greedy_tokens(causal_lm, inputs, 12, ending_tokens(causal_lm), cut_at)
        assert sum(map(len, early)) < sum(map(len, full))


def test_whole_target_likelihood_equals_a_plain_forward(causal_lm) -> None:
    task = code_task()
    prompt = Prompt.from_task(task)
    examples = task.examples("dev")
    log_probs, _, _ = score_targets(causal_lm, prompt, examples)
    for example, enc, target, got in zip(examples, encode_examples(causal_lm, prompt, examples),
                                         target_ids(causal_lm, prompt, examples), log_probs, strict=True):
        ids = torch.tensor([list(enc.input_ids) + target], device=causal_lm.device)
        plain = torch.log_softmax(causal_lm.hf_model(ids).logits[0].float(), dim=-1)
        expected = sum(plain[enc.answer_position + k, t].item() for k, t in enumerate(target))
        assert len(target) > 1 and got == pytest.approx(expected, abs=1e-4), example.answer


def _plain_target_loss(model, enc, target, embeds=None, stop=()) -> torch.Tensor:
    """-log p(answer) - log p(any token that ends it) by one plain forward of the unsplit sequence."""
    from autoprompt.scoring.endings import END, end_tokens

    assert target[-1] == END  # the objective: the answer, then the end of the answer
    ids = torch.tensor(list(enc.input_ids) + target[:-1], device=model.device)
    logits = model.hf_model(inputs_embeds=embeds[None]).logits if embeds is not None else model.hf_model(ids[None]).logits
    log_probs = torch.log_softmax(logits[0].float(), dim=-1)
    answer = sum(log_probs[enc.answer_position + k, t] for k, t in enumerate(target[:-1]))
    ends = torch.logsumexp(log_probs[enc.answer_position + len(target) - 1][end_tokens(model, stop)], dim=0)
    return -(answer + ends)


@pytest.mark.parametrize("stop", [(), (".", " ")])
def test_the_gradient_of_the_whole_target_objective_equals_autograd(causal_lm, stop) -> None:
    task = code_task(stop=stop)
    base = Prompt.from_task(task)
    prompt = Prompt(base.template.replace("\nCode:", " [T] [T]\nCode:"), fields=base.fields,
                    generation=base.generation).with_triggers([30, 31], ["a", "b"])
    examples = task.examples("dev")
    objective = objective_for(prompt)
    assert isinstance(objective, TargetObjective)
    embedding = causal_lm.hf_model.get_input_embeddings().weight
    one_hot = torch.zeros(2, causal_lm.vocab_size, device=causal_lm.device)
    one_hot[torch.arange(2), torch.tensor([30, 31])] = 1
    one_hot.requires_grad_(True)
    total = 0
    for enc, target in zip(encode_examples(causal_lm, prompt, examples),
                           target_ids(causal_lm, prompt, examples, end=True), strict=True):
        embeds = embedding[torch.tensor(list(enc.input_ids) + target[:-1], device=causal_lm.device)].clone()
        for slot, position in enumerate(enc.trigger_positions):
            embeds[position] = one_hot[slot] @ embedding
        total = total + _plain_target_loss(causal_lm, enc, target, embeds, stop)
    (total / len(examples)).backward()
    got = trigger_gradient(causal_lm, prompt, examples, objective)
    torch.testing.assert_close(got, -one_hot.grad, rtol=0, atol=1e-4 * float(one_hot.grad.abs().max()))
    # the candidates' losses are the same objective: -log p(answer, end) by a plain forward
    candidates = np.array([[30, 31], [40, 41]])
    losses = objective.candidate_losses(causal_lm, prompt, examples, candidates)
    for row, ids in enumerate(candidates):
        swapped = prompt.with_triggers(list(ids), ["x", "y"])
        with torch.no_grad():
            plain = [_plain_target_loss(causal_lm, enc, target, stop=stop).item() for enc, target in
                     zip(encode_examples(causal_lm, swapped, examples),
                         target_ids(causal_lm, swapped, examples, end=True), strict=True)]
        assert losses[row] == pytest.approx(np.mean(plain), abs=1e-4)


def test_an_answer_ends_at_a_newline_a_stop_string_or_the_end_of_text(causal_lm) -> None:
    from autoprompt.scoring.endings import END, end_tokens

    texts = causal_lm.tokenizer.batch_decode([[i] for i in range(causal_lm.vocab_size)])
    plain, stopped = end_tokens(causal_lm), end_tokens(causal_lm, (".",))
    newline = causal_lm.tokenizer("\n", add_special_tokens=False)["input_ids"][-1]
    assert plain[newline] and stopped[newline] and plain[causal_lm.tokenizer.eos_token_id]
    for i, text in enumerate(texts):
        if i == causal_lm.tokenizer.eos_token_id:
            continue
        assert bool(plain[i]) == text.lstrip(" \t").startswith("\n"), text
        assert bool(stopped[i]) == (text.lstrip(" \t").startswith("\n") or text.startswith(".")), text
    assert stopped.sum() > plain.sum()  # the tiny tokenizer has tokens that start with "."
    examples = code_task().examples("dev")
    prompt = Prompt.from_task(code_task())
    bare, ended = target_ids(causal_lm, prompt, examples), target_ids(causal_lm, prompt, examples, end=True)
    assert bare and all(b == a + [END] for a, b in zip(bare, ended, strict=True))


# --- the metrics ----------------------------------------------------------------------------------

def test_answer_metrics() -> None:
    assert normalize("  The  Eiffel Tower. ", ("strip", "whitespace", "case", "punctuation", "articles")) == "eiffel tower"
    assert exact_match(" fra ", ["FRA"]) == 1.0 and exact_match("FRA.", ["FRA"]) == 0.0
    assert exact_match("FRA.", ["FRA"], ("strip", "case", "punctuation")) == 1.0
    assert exact_match("X", ["Y", "x"]) == 1.0  # any acceptable answer
    assert token_f1("new york city", ["New York"]) == pytest.approx(0.8) and token_f1("boston", ["New York"]) == 0.0
    assert contains("it is FRA, I think", ["fra"]) == 1.0 and contains("no", ["fra"]) == 0.0
    assert answer_scores(lambda p, a: float(len(p) == 3), ["FRA", "FR"], [["FRA"], ["FRA"]]).tolist() == [1.0, 0.0]


# --- a generation task end to end -------------------------------------------------------------------

def test_a_generation_task_is_evaluated_by_its_generated_answers(causal_lm) -> None:
    task = code_task(metric="token_f1")
    assert task.is_generation and task.generation == Generation(5, (), ("strip", "whitespace", "case"))
    prompt = Prompt.from_task(task)
    ev = evaluate(causal_lm, prompt, task.examples("dev"), metric="token_f1")
    assert list(ev.metrics)[0] == "token_f1" and {"exact_match", "contains", "mean_target_log_prob"} <= set(ev.metrics)
    golds = [e.golds for e in task.examples("dev")]
    assert ev.scores.tolist() == answer_scores("token_f1", ev.predictions, golds).tolist()
    assert ev.metrics["exact_match"] == pytest.approx(np.mean([exact_match(p, g) for p, g in zip(ev.predictions, golds,
                                                                                                  strict=True)]))

    def length_three(prediction: str, answers: list[str]) -> float:
        return float(len(prediction) == 3)

    mine = code_task(metric=length_three)
    assert mine.metric == "length_three" and mine.is_generation
    ev = evaluate(causal_lm, Prompt.from_task(mine), mine.examples("dev"), metric=mine.metric)
    assert list(ev.metrics)[0] == "length_three" and ev.scores.tolist() == [float(len(p) == 3) for p in ev.predictions]


@pytest.mark.parametrize("method", ["template", "trigger"])
def test_both_searches_on_a_generation_task_and_its_prompt_file(method: str, causal_lm, tmp_path: Path) -> None:
    task = code_task()
    space = tmp_path / "space.yaml"
    space.write_text("instruction: ['', 'Give the country code.']\ndemonstrations: {k: [0, 2, 4]}\n", encoding="utf-8")
    config = (TemplateSearchConfig(space=str(space), trials=4, pruner="none", trial_dev=0) if method == "template"
              else TriggerSearchConfig(steps=2, n_triggers=2, top_k=4, grad_batch=4, eval_batch=4, dev_every=1))
    result = optimize(task, causal_lm, config=config, confidence=0, runs_dir=tmp_path / "runs", progress=False)
    assert {"exact_match", "token_f1", "contains"} <= set(result.metrics["test"])
    loaded = load_prompt(result.prompt_file)
    assert loaded.prompt.generation == result.prompt.generation and loaded.prompt.generation is not None
    texts = [e.fields["country"] for e in task.examples("test")]
    assert loaded.predict(texts) == result.predictor.predict(texts) and all(isinstance(t, str) for t in loaded.predict(texts))
    with pytest.raises(TemplateError, match="generates its answers: use predict"):
        loaded.predict_proba("France")
    predictions = json.loads((result.run_dir / "predictions.json").read_text())["splits"]["test"]
    assert len(predictions["prompt"]["scores"]) == len(texts)
    shown = CliRunner().invoke(main, ["predict", "--prompt", str(result.prompt_file), "-"], input="France\nSpain\n")
    assert shown.exit_code == 0, shown.output
    assert [json.loads(line)["prediction"] for line in shown.stdout.splitlines()] == loaded.predict(["France", "Spain"])


def test_langchain_and_promptfoo_exports_of_a_generation_prompt(causal_lm, tmp_path: Path) -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.prompts import load_prompt as langchain_load

    from autoprompt.export import export_prompt
    from autoprompt.prompt_file import PromptFile, save_prompt_file

    task = code_task()
    prompt = Prompt.from_task(task).__class__(**{**Prompt.from_task(task).__dict__, "model": causal_lm.ref})
    path = save_prompt_file(PromptFile(prompt, task_name="codes", metric="exact_match"), tmp_path / "p.prompt.json")
    (tmp_path / "lc.json").write_text(export_prompt(str(path), "langchain"), encoding="utf-8")
    rendered = langchain_load(tmp_path / "lc.json").format(country="France")
    assert rendered == load_prompt(path, model=causal_lm).render("France")
    tests = __import__("yaml").safe_load(export_prompt(str(path), "promptfoo", task=_task_file(tmp_path, task)))["tests"]
    assert tests[0]["assert"] == [{"type": "equals", "value": task.examples("test")[0].answer}]


def _task_file(folder: Path, task: Task) -> str:
    rows = "".join(json.dumps({"country": e.fields["country"], "code": e.answer}) + "\n"
                   for e in task.examples("test"))
    (folder / "codes.jsonl").write_text(rows, encoding="utf-8")
    path = folder / "codes.py"
    path.write_text("from pathlib import Path\nfrom autoprompt.task import Task, read_examples\n"
                    "rows = read_examples(Path(__file__).parent / 'codes.jsonl', fields=['country'], answer='code')\n"
                    "task = Task(name='codes', template='Country: {country}\\nCode:[P]', metric='exact_match',\n"
                    "            splits={'train': rows, 'dev': rows, 'test': rows})\n", encoding="utf-8")
    return str(path)


# --- bad input ----------------------------------------------------------------------------------

def test_bad_generation_tasks_are_refused(causal_lm) -> None:
    with pytest.raises(TaskError, match="has no target text"):
        code_task(splits={"train": [Example({"country": "x"}, " ", "f:1")]}).validate()
    with pytest.raises(TaskError, match="a stop string is empty"):
        code_task(stop=("",)).validate()
    with pytest.raises(TaskError, match="unknown normalize step"):
        code_task(normalize=("stem",)).validate()
    long_answer = Example({"country": "x"}, "word " * 600, "f:1")
    with pytest.raises(AutoPromptError, match="the answer is .* tokens; the model reads at most 512"):
        score_targets(causal_lm, Prompt.from_task(code_task()), [long_answer])


def test_bench_of_a_generation_task(tiny_causal_dir: Path, tmp_path: Path) -> None:
    task = _task_file(tmp_path, code_task())
    result = CliRunner().invoke(main, ["bench", "--task", task, "--model", str(tiny_causal_dir), "--examples", "4",
                                       "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["workload"]["examples"] == 4 and report["scoring"]["tokens_per_s"] > 0
    assert report["generation"]["new_tokens"] > 0 and report["generation"]["new_tokens_per_s"] > 0
