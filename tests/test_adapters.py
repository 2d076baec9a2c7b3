"""Soft prompts and LoRA (--method soft, --method lora): their scores against a plain Hugging Face forward,
training that lowers the loss, adapters that round-trip through prompt files and are refused when missing,
altered or made for other weights, checkpoints that resume to the same result, and the CLI."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import autoprompt
from autoprompt.adapter import SOFT_TENSOR, Adapter
from autoprompt.cli import main
from autoprompt.errors import PromptFileError, TemplateError
from autoprompt.gradient import training_loss
from autoprompt.models.adapters import bind
from autoprompt.objective import objective_for
from autoprompt.optimizer import optimize
from autoprompt.prompt import Prompt
from autoprompt.prompt_file import from_json
from autoprompt.scoring import encode_examples, evaluate, label_word_ids, score_labels
from autoprompt.searches import tuning
from autoprompt.task import Example, Task

VERBALIZER = {"negative": ["negative"], "positive": ["positive"]}
TEXTS = ["a fine film", "the plot is thin", "it moves", "what a cast", "slow and long", "i laughed", "a mess",
         "worth it"]
CODES = [("France", "FRA"), ("Germany", "DEU"), ("Italy", "ITA"), ("Spain", "ESP"), ("Norway", "NOR"),
         ("Poland", "POL")]


def label_task(template: str = "Review: {text}\nSentiment:[P]") -> Task:
    """Eight labelled sentences, train = dev = test: what a model can learn is measured where it learned it."""
    examples = [Example({"text": t}, ("positive", "negative")[i % 2], f"toy:{i}") for i, t in enumerate(TEXTS)]
    return Task(name="toy", template=template, verbalizer=VERBALIZER,
                splits={"train": examples, "dev": examples, "test": examples})


def code_task() -> Task:
    examples = [Example({"country": c}, code, f"codes:{i}") for i, (c, code) in enumerate(CODES)]
    return Task(name="codes", template="Country: {country}\nCode:[P]", metric="exact_match",
                splits={"train": examples, "dev": examples[:3], "test": examples[3:]})


def soft_prompt(model, template: str, seed: int = 0) -> Prompt:
    """A prompt with a soft adapter of random vectors (of the embeddings' scale) in its [T] slots."""
    base = Prompt(template=template, verbalizer=VERBALIZER, fields=("text",), model=model.ref)
    n = base.n_trigger_slots
    scale = model.hf_model.get_input_embeddings().weight.std().item()
    vectors = torch.randn(n, model.hf_model.config.hidden_size, generator=torch.Generator().manual_seed(seed)) * scale
    adapter = Adapter("soft", {"n_tokens": n}, {SOFT_TENSOR: vectors}, model.weights_fingerprint)
    return replace(base.with_triggers([0] * n, ["!"] * n), adapter=adapter)


# --- scores --------------------------------------------------------------------------------------

@pytest.mark.parametrize("template", ["Review: {text} [T] [T] [T]\nSentiment:[P]",
                                      "[T] [T] [T] Please classify the sentiment of this short review. "
                                      "Review: {text}\nSentiment:[P]"],  # the vectors inside a shared prefix
                         ids=["after the field", "in the shared prefix"])
def test_soft_prompt_log_probs_equal_a_plain_forward_with_inputs_embeds(causal_lm, template: str) -> None:
    prompt = soft_prompt(causal_lm, template)
    examples = label_task().examples("dev")
    got = evaluate(causal_lm, prompt, examples).label_log_probs  # [n, labels], batched through the engine
    vectors = prompt.adapter.tensors[SOFT_TENSOR]
    embedding = causal_lm.hf_model.get_input_embeddings().weight
    words = [ids[0][0] for ids in label_word_ids(causal_lm, prompt)]
    for row, enc in enumerate(encode_examples(causal_lm, replace(prompt, adapter=None), examples)):
        embeds = embedding[torch.tensor(enc.input_ids, device=causal_lm.device)].clone()
        embeds[enc.trigger_positions] = vectors.to(causal_lm.device)
        with torch.no_grad():
            logits = causal_lm.hf_model(inputs_embeds=embeds[None]).logits[0, enc.answer_position]
        plain = torch.log_softmax(logits.float(), dim=-1)[words].cpu()
        torch.testing.assert_close(torch.as_tensor(got[row], dtype=torch.float32), plain, rtol=0, atol=1e-4)


def test_an_adapter_prompt_is_not_scored_without_its_adapter(causal_lm) -> None:
    prompt = soft_prompt(causal_lm, "Review: {text} [T] [T]\nSentiment:[P]")
    with pytest.raises(TemplateError, match="runs with its soft adapter"):
        score_labels(causal_lm, prompt, label_task().examples("dev"))
    model, bound = bind(causal_lm, prompt)
    assert model is not causal_lm and model.adapter is prompt.adapter and bind(causal_lm, prompt)[0] is model
    assert min(bound.trigger_ids) >= causal_lm.vocab_size  # the slots read the vectors
    assert causal_lm.hf_model.get_input_embeddings() is not model.hf_model.get_input_embeddings()  # base untouched


# --- LoRA: training, the prompt file, refusals --------------------------------------------------------

@pytest.fixture(scope="module")
def lora_run(causal_lm, tmp_path_factory):
    """A LoRA run on the labelled task: 40 steps, enough for the tiny model to learn eight sentences. All of dev
    (holdout 0: the same eight) and a rate that descends smoothly: at 0.02 the loss swung 0.45-0.90 from step to
    step and the dev-chosen step's loss hung on the CPU's kernels (0.51 on one machine, 0.66 on another)."""
    return optimize(label_task(), causal_lm, method="lora", runs_dir=tmp_path_factory.mktemp("runs"), progress=False,
                    confidence=0, holdout=0, epochs=20, batch_size=4, lora_lr=0.01, lora_dropout=0.0, early_stop=0)


def test_lora_lowers_the_train_loss(causal_lm, lora_run) -> None:
    task, prompt = label_task(), lora_run.prompt
    assert prompt.adapter is not None and prompt.adapter.kind == "lora" and not lora_run.kept_baseline
    train = task.examples("train")
    objective = objective_for(prompt)
    with torch.no_grad():
        before = training_loss(causal_lm, replace(prompt, adapter=None), train, objective).item()
        after = training_loss(*bind(causal_lm, prompt), train, objective).item()
    assert after < before - 0.1, (before, after)
    steps = [e for e in lora_run.history if "loss" in e]
    assert steps[-1]["step"] == 40 and lora_run.metrics["dev"]["accuracy"] > lora_run.baseline["dev"]["accuracy"]


def test_lora_adapter_round_trips_through_its_prompt_file(causal_lm, lora_run, tmp_path: Path) -> None:
    saved = json.loads(lora_run.prompt_file.read_text())
    adapter_file = lora_run.prompt_file.with_name(saved["adapter"]["file"])
    assert saved["format"] == "autoprompt.prompt/v2" and adapter_file.name == "best.adapter.safetensors"
    assert saved["adapter"]["base_model"] == causal_lm.weights_fingerprint
    assert saved["search"]["trainable_parameters"] == lora_run.prompt.adapter.n_parameters
    inputs = ["a fine film", "a mess", "something else entirely"]
    loaded = autoprompt.load_prompt(lora_run.prompt_file, model=causal_lm)
    assert loaded.predict_proba(inputs) == lora_run.predictor.predict_proba(inputs)
    copy = lora_run.predictor.save(tmp_path / "copy.prompt.json")  # Predictor.save writes the adapter too
    assert (tmp_path / "copy.adapter.safetensors").exists()
    assert autoprompt.load_prompt(copy, model=causal_lm).predict(inputs) == lora_run.predict(inputs)


def _copied(run, folder: Path) -> tuple[Path, Path]:
    """The run's prompt file and adapter, copied to ``folder``."""
    prompt_file = Path(shutil.copy(run.prompt_file, folder / "p.prompt.json"))
    adapter = Path(shutil.copy(run.prompt_file.with_name("best.adapter.safetensors"), folder))
    saved = json.loads(prompt_file.read_text())
    saved["adapter"]["file"] = adapter.name
    prompt_file.write_text(json.dumps(saved))
    return prompt_file, adapter


def test_a_tampered_adapter_is_refused(causal_lm, lora_run, tmp_path: Path) -> None:
    prompt_file, adapter = _copied(lora_run, tmp_path)
    autoprompt.load_prompt(prompt_file, model=causal_lm)  # (as copied, it loads)
    data = bytearray(adapter.read_bytes())
    data[-3] ^= 0x01  # one bit of one weight
    adapter.write_bytes(bytes(data))
    with pytest.raises(PromptFileError, match="was altered"):
        autoprompt.load_prompt(prompt_file, model=causal_lm)


def test_a_missing_adapter_is_refused(causal_lm, lora_run, tmp_path: Path) -> None:
    prompt_file, adapter = _copied(lora_run, tmp_path)
    adapter.unlink()
    with pytest.raises(PromptFileError, match="is missing"):
        autoprompt.load_prompt(prompt_file, model=causal_lm)
    with pytest.raises(PromptFileError, match="read it with read_prompt_file"):  # JSON alone cannot find it
        from_json(json.loads(prompt_file.read_text()))


def test_an_adapter_for_another_base_model_is_refused(lora_run, planted_model, tmp_path: Path) -> None:
    # the same tokenizer, other weights: the tokenizer check passes, the weights' fingerprint does not
    assert planted_model.tokenizer_fingerprint == lora_run.prompt.model.tokenizer_fingerprint
    with pytest.raises(PromptFileError, match="trained on another base model"):
        autoprompt.load_prompt(lora_run.prompt_file, model=planted_model)


def test_the_cli_refuses_an_altered_adapter_in_one_line(lora_run, tiny_causal_dir: Path, tmp_path: Path) -> None:
    prompt_file, adapter = _copied(lora_run, tmp_path)
    adapter.write_bytes(adapter.read_bytes()[:-8])
    result = CliRunner().invoke(main, ["predict", "--prompt", str(prompt_file), "--model", str(tiny_causal_dir)],
                                input="a fine film\n")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0 and result.output.startswith("error:") and "altered" in result.output


# --- soft prompts end to end ------------------------------------------------------------------------

def wrong_task(model) -> Task:
    """Labels the task's own prompt gets all wrong on the tiny model: whatever bias the vectors learn is a gain."""
    task = label_task()
    predicted = evaluate(model, Prompt.from_task(task), task.examples("dev")).predictions
    flip = {"positive": "negative", "negative": "positive"}
    examples = [replace(e, answer=flip[p]) for e, p in zip(task.examples("dev"), predicted, strict=True)]
    return replace(task, splits={"train": examples, "dev": examples, "test": examples})


def test_soft_prompt_run_and_its_prompt_file(causal_lm, tmp_path: Path) -> None:
    result = optimize(wrong_task(causal_lm), causal_lm, method="soft", runs_dir=tmp_path, progress=False,
                      confidence=0, epochs=5, batch_size=4, n_tokens=4, prompt_lr=0.05)
    assert result.baseline["dev"]["accuracy"] == 0
    assert result.prompt.adapter is not None and result.prompt.adapter.kind == "soft" and not result.kept_baseline
    saved = autoprompt.read_prompt_file(result.prompt_file)
    assert saved.prompt.template.count("[T]") == 4 and saved.prompt.trigger_ids == result.prompt.trigger_ids
    assert saved.search["nearest_tokens"] == list(result.prompt.trigger_tokens)  # what the vectors are near
    assert max(saved.prompt.trigger_ids) < causal_lm.vocab_size
    assert torch.equal(saved.prompt.adapter.tensors[SOFT_TENSOR], result.prompt.adapter.tensors[SOFT_TENSOR])
    inputs = ["a fine film", "a mess"]
    assert autoprompt.load_prompt(result.prompt_file, model=causal_lm).predict_proba(inputs) == \
        result.predictor.predict_proba(inputs)
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["sections"] == ["soft"] and config["soft"]["n_tokens"] == 4


@pytest.mark.parametrize("method, settings", [("soft", {"n_tokens": 3, "prompt_lr": 0.05}),
                                              ("lora", {"lora_lr": 0.02})])
def test_a_generation_task_end_to_end(causal_lm, tmp_path: Path, method: str, settings: dict) -> None:
    result = optimize(code_task(), causal_lm, method=method, runs_dir=tmp_path, progress=False, confidence=0,
                      epochs=2, batch_size=3, **settings)
    assert set(result.metrics) == {"dev", "untouched", "test"} and "exact_match" in result.metrics["dev"]
    first = [e for e in result.history if "loss" in e][0]["loss"]
    assert first > 0  # -log p(the whole code, then its end)
    loaded = autoprompt.load_prompt(result.prompt_file, model=causal_lm)
    assert loaded.predict(["France", "Spain"]) == result.predict(["France", "Spain"])
    assert all(isinstance(p, str) for p in loaded.predict(["France", "Spain"]))


# --- seeds, interruption, resume -------------------------------------------------------------------------

def _lora(causal_lm, folder: Path, seed: int = 0, **kwargs):
    settings = {"epochs": 3, "batch_size": 4, "eval_every": 2, "lora_lr": 0.02, **kwargs}
    return optimize(label_task(), causal_lm, method="lora", runs_dir=folder, progress=False, seed=seed, confidence=0,
                    **settings)


def test_same_seed_same_training_other_seed_other(causal_lm, tmp_path: Path) -> None:
    losses = [[e["loss"] for e in _lora(causal_lm, tmp_path / str(k), seed).history if "loss" in e]
              for k, seed in enumerate((0, 0, 1))]
    assert losses[0] == losses[1] and losses[0] != losses[2]


def interrupt_training_at(monkeypatch, step: int) -> None:
    """Ctrl-C when soft-prompt or LoRA training is about to take step ``step`` + 1."""
    real_step = tuning._Tuner._step

    def step_then_interrupt(self):
        if self.state.step == step:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(tuning._Tuner, "_step", step_then_interrupt)


def test_interrupted_training_resumes_to_the_same_result(causal_lm, tmp_path: Path, monkeypatch) -> None:
    straight = _lora(causal_lm, tmp_path / "straight")
    interrupt_training_at(monkeypatch, 3)  # after the dev check (and checkpoint) of step 2
    with pytest.raises(KeyboardInterrupt):
        _lora(causal_lm, tmp_path / "stopped")
    run = next((tmp_path / "stopped").iterdir())
    assert json.loads((run / "result.json").read_text())["state"] == "interrupted"
    interrupted = autoprompt.read_prompt_file(run / "best.prompt.json")  # the best so far (step 0: no adapter)
    checkpoint = json.loads((run / "checkpoint.json").read_text())
    assert interrupted.search["interrupted"] and checkpoint["step"] == 2
    assert interrupted.search["best_step"] == checkpoint["best_step"] >= 0
    assert (interrupted.prompt.adapter is None) == (checkpoint["best_step"] == 0)
    assert interrupted.prompt.adapter is None or interrupted.prompt.adapter.kind == "lora"
    monkeypatch.undo()  # no more interrupts
    resumed = optimize(label_task(), causal_lm, resume=run, progress=False)
    assert [e.get("loss") for e in resumed.history] == [e.get("loss") for e in straight.history]
    for name, tensor in straight.prompt.adapter.tensors.items():
        assert torch.equal(resumed.prompt.adapter.tensors[name], tensor), name


# --- the CLI ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, flags", [("soft", ["--n-tokens", "2"]), ("lora", ["--lora-r", "2"])])
def test_cli_optimize_then_predict(tiny_causal_dir: Path, tmp_path: Path, method: str, flags: list[str]) -> None:
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"text": t, "label": ("positive", "negative")[i % 2]}) + "\n"
                                                 for i, t in enumerate(TEXTS)), encoding="utf-8")
    task = tmp_path / "toy.py"
    task.write_text("from pathlib import Path\nfrom autoprompt.task import Task, read_examples\n"
                    "rows = read_examples(Path(__file__).parent / 'rows.jsonl')\n"
                    f"task = Task(name='toy', template='Review: {{text}}\\nSentiment:[P]', verbalizer={VERBALIZER!r},\n"
                    "            splits={'train': rows, 'dev': rows, 'test': rows})\n", encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(main, ["optimize", str(task), "--method", method, "--model", str(tiny_causal_dir),
                                  "--epochs", "2", "--batch-size", "4", "--confidence", "0", "--runs-dir",
                                  str(tmp_path / "runs"), "-o", str(tmp_path / "out.prompt.json"), "--json", *flags])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert Path(report["prompt_file"]) == tmp_path / "out.prompt.json"
    assert (tmp_path / "out.adapter.safetensors").exists()  # -o writes the adapter beside its copy
    predicted = runner.invoke(main, ["predict", "--prompt", report["prompt_file"], "--model", str(tiny_causal_dir)],
                              input="a fine film\na mess\n")
    assert predicted.exit_code == 0, predicted.output
    lines = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert len(lines) == 2 and all(line["prediction"] in VERBALIZER for line in lines)
    wrong = runner.invoke(main, ["optimize", str(task), "--method", method, "--model", str(tiny_causal_dir),
                                 "--steps", "3"])  # a trigger search's flag
    assert wrong.exit_code == 2 and "does not use --steps" in wrong.output


def test_training_stops_on_its_time_budget(causal_lm, tmp_path: Path, monkeypatch) -> None:
    from autoprompt.budget import Budget

    kept = []
    spent = iter([False, False, True])  # the budget runs out before the third step
    monkeypatch.setattr(Budget, "spent", lambda self: kept.append(self.kept_examples) or next(spent))
    result = _lora(causal_lm, tmp_path, time_budget=60.0)
    assert [e["step"] for e in result.history] == [0, 1, 2]
    assert set(kept) == {2 * (8 + 8 + 8)}  # both prompts on dev, test and train, kept back for after the training


def test_lora_that_never_beats_the_untouched_model_ships_the_prompt_alone(causal_lm, tmp_path: Path) -> None:
    """With a learning rate of 0 no step changes the model: the best step is 0, and the run delivers the task's
    prompt file without an adapter (B is zero: an adapter file would change nothing)."""
    result = _lora(causal_lm, tmp_path, lora_lr=0.0, max_steps=3, eval_every=1, lora_dropout=0.0)
    saved = json.loads(result.prompt_file.read_text())
    assert "adapter" not in saved and result.prompt.adapter is None
    assert saved["search"]["best_step"] == 0 and saved["search"]["adapter"].startswith("none")
    assert not list(result.run_dir.glob("*.safetensors")) or all(
        p.name.startswith("checkpoint") for p in result.run_dir.glob("*.safetensors"))
    assert result.metrics["test"] == result.baseline["test"]


def test_a_run_stopped_early_and_interrupted_in_its_final_scoring_resumes_without_another_step(
        causal_lm, tmp_path: Path, monkeypatch) -> None:
    """Early stopping ended training; Ctrl-C came while the result was being scored: the resumed run scores it
    and trains no step more than the run that was never stopped."""
    from autoprompt import optimizer

    settings = {"lora_lr": 0.0, "eval_every": 1, "early_stop": 2, "max_steps": 10, "lora_dropout": 0.0}
    straight = _lora(causal_lm, tmp_path / "straight", **settings)
    steps = [e["step"] for e in straight.history if "loss" in e]
    assert steps == [1, 2]  # two dev checks without a gain
    monkeypatch.setattr(optimizer, "_finish", lambda *args, **kwargs: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        _lora(causal_lm, tmp_path / "stopped", **settings)
    monkeypatch.undo()
    run = next((tmp_path / "stopped").iterdir())
    resumed = optimize(label_task(), causal_lm, resume=run, progress=False)
    assert [e["step"] for e in resumed.history if "loss" in e] == steps
