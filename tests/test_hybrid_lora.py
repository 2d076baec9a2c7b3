"""The hybrid's LoRA stage (--method hybrid --lora-stage): LoRA trained through the winner of the template
and trigger stages, shipped only when strictly better on dev, its prompt file loading like a --method lora
run's, each stage's dev and test in result.json, a resume inside the stage, and the stage off as before."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_adapters import VERBALIZER, interrupt_training_at, label_task

import autoprompt
from autoprompt.budget import Budget
from autoprompt.errors import AutoPromptError
from autoprompt.gradient import training_loss
from autoprompt.models.adapters import bind
from autoprompt.objective import objective_for
from autoprompt.optimizer import optimize
from autoprompt.prompt import Prompt
from autoprompt.prompt_file import read_prompt_file
from autoprompt.runs import Run
from autoprompt.scoring import evaluate
from autoprompt.searches import lora
from autoprompt.searches.checkpoint import read_checkpoint
from autoprompt.searches.hybrid import HybridConfig
from autoprompt.searches.hybrid_stages import LoraStageConfig
from autoprompt.searches.template import TemplateSearchConfig
from autoprompt.searches.trigger import TriggerSearchConfig
from autoprompt.task import Task

LAYOUT = "Review: {text} [T]\\nSentiment:[P]"


def hybrid(tmp_path: Path, stage: bool = True, **lora_settings) -> HybridConfig:
    """One template trial and two trigger steps (fast), then LoRA with ``lora_settings`` (off: the defaults)."""
    space = tmp_path / "space.yaml"
    space.write_text(f"layout: ['{LAYOUT}']\ntriggers: [2]\n", encoding="utf-8")
    template = TemplateSearchConfig(space=str(space), trials=1, pruner="none", trial_dev=0, chunk=8, rescore_top=1,
                                    trial_dtype="fp32", ensemble_max=1)
    trigger = TriggerSearchConfig(steps=2, dev_every=1, grad_batch=4, eval_batch=4, confirm_batch=0, top_k=4)
    settings = {"lora_stage": True, "batch_size": 4, "lora_lr": 0.02, "lora_dropout": 0.0} if stage else {}
    return HybridConfig(template, trigger, LoraStageConfig(**(settings | lora_settings)))


def run_hybrid(model, folder: Path, config: HybridConfig, task: Task | None = None, **kwargs):
    return optimize(task or label_task(), model, method="hybrid", config=config, runs_dir=folder / "runs",
                    progress=False, confidence=0, **kwargs)


def trigger_task(model) -> Task:
    """The eight sentences labelled as the trigger stage's first prompt (two "!" slots) predicts, the last one
    flipped: that prompt is better on dev than the template winner, so the trigger stage wins and LoRA trains
    through a prompt with triggers."""
    task = label_task()
    bang = model.tokenizer("!", add_special_tokens=False)["input_ids"] * 2
    first = Prompt("Review: {text} [T] [T]\nSentiment:[P]", VERBALIZER, fields=("text",)).with_triggers(bang, ["!"] * 2)
    predicted = evaluate(model, first, task.examples("dev")).predictions
    predicted[-1] = {"positive": "negative", "negative": "positive"}[predicted[-1]]
    examples = [replace(e, answer=p) for e, p in zip(task.examples("dev"), predicted, strict=True)]
    return replace(task, splits={"train": examples, "dev": examples, "test": examples})


@pytest.fixture(scope="module")
def staged(causal_lm, tmp_path_factory):
    """The LoRA stage long enough for the tiny model to learn the eight sentences (as test_adapters' lora_run, whose
    rate it shares: 0.02 swings the loss too much for the dev-chosen step to be safely lower on every CPU)."""
    folder = tmp_path_factory.mktemp("staged")
    return run_hybrid(causal_lm, folder, hybrid(folder, epochs=20, early_stop=0, lora_lr=0.01), holdout=0)  # (dev: all 8)


def test_the_lora_stage_trains_through_the_winner_and_ships_when_better(causal_lm, staged) -> None:
    prompt, run = staged.prompt, staged.run_dir
    choice = json.loads((run / "hybrid_choice.json").read_text())
    assert prompt.adapter is not None and prompt.adapter.kind == "lora" and not staged.kept_baseline
    saved = read_prompt_file(staged.prompt_file)
    assert saved.search["winner"] == "lora" and saved.search["lora"]["best_step"] > 0
    # trained through the stages' winner: its template (and triggers, when the trigger stage won), not the task's
    assert prompt.template == ("Review: {text} [T] [T]\nSentiment:[P]" if choice["winner"] == "hybrid"
                               else "Review: {text}\nSentiment:[P]")
    assert list(prompt.trigger_ids) == (choice["trigger_ids"] if choice["winner"] == "hybrid" else [])
    train = label_task().examples("train")
    objective = objective_for(prompt)
    with torch.no_grad():
        before = training_loss(causal_lm, replace(prompt, adapter=None), train, objective).item()
        after = training_loss(*bind(causal_lm, prompt), train, objective).item()
    assert after < before - 0.1, (before, after)
    lora_steps = [e for e in staged.history if e.get("stage") == "lora"]
    assert lora_steps[0]["step"] == 0 and lora_steps[-1]["step"] == 40
    # its checkpoint in lora/, the trigger stage's where it was: neither overwrote the other
    assert json.loads((run / "lora" / "checkpoint.json").read_text())["step"] == 40
    assert read_checkpoint(Run(run)).step == 2


def test_each_stage_dev_and_test_side_by_side(causal_lm, staged) -> None:
    result = json.loads((staged.run_dir / "result.json").read_text())
    stages = result["stages"]
    assert list(stages) == ["template", "trigger", "lora"]
    assert [name for name, row in stages.items() if row["chosen"]] == ["lora"]
    assert stages["lora"]["dev"] == result["metrics"]["dev"]["accuracy"] > max(stages["template"]["dev"],
                                                                                 stages["trigger"]["dev"])
    assert stages["lora"]["test"] == pytest.approx(result["metrics"]["test"]["accuracy"])
    choice = next(e for e in staged.history if e.get("stage") == "choice")
    assert (stages["template"]["dev"], stages["trigger"]["dev"]) == (choice["template_dev"], choice["hybrid_dev"])
    assert result["work"]["LoRA steps"] == 40 and result["work"]["steps"] == 2
    report = (staged.run_dir / "report.md").read_text()
    assert "## Stages" in report and "| lora ✓ |" in report


def test_the_staged_prompt_file_round_trips_like_a_lora_runs(causal_lm, staged, tmp_path: Path) -> None:
    saved = json.loads(staged.prompt_file.read_text())
    assert saved["format"] == "autoprompt.prompt/v2" and saved["adapter"]["file"] == "best.adapter.safetensors"
    assert saved["adapter"]["base_model"] == causal_lm.weights_fingerprint and len(saved["adapter"]["sha256"]) == 64
    inputs = ["a fine film", "a mess", "something else entirely"]
    loaded = autoprompt.load_prompt(staged.prompt_file, model=causal_lm)
    assert loaded.predict_proba(inputs) == staged.predictor.predict_proba(inputs)
    copy = staged.predictor.save(tmp_path / "copy.prompt.json")
    assert autoprompt.load_prompt(copy, model=causal_lm).predict(inputs) == staged.predict(inputs)


def test_lora_no_better_on_dev_ships_the_winner_without_an_adapter(causal_lm, tmp_path: Path) -> None:
    result = run_hybrid(causal_lm, tmp_path, hybrid(tmp_path, epochs=1, lora_lr=1e-9))  # too small to change a label
    saved = read_prompt_file(result.prompt_file)
    assert result.prompt.adapter is None and saved.search["winner"] in ("template", "hybrid")
    stages = json.loads((result.run_dir / "result.json").read_text())["stages"]
    assert stages["lora"]["dev"] == max(stages["template"]["dev"], stages["trigger"]["dev"])
    assert not stages["lora"]["chosen"] and json.loads(result.prompt_file.read_text())["format"] != \
        "autoprompt.prompt/v2"


def test_the_stage_off_runs_the_hybrid_as_before(causal_lm, staged, tmp_path: Path) -> None:
    """Off, the hybrid's log is the staged run's up to its choice (the same template and trigger stages: no
    time budget here), it ships that choice, and nothing of the LoRA stage is made."""
    plain = run_hybrid(causal_lm, tmp_path, hybrid(tmp_path, stage=False), holdout=0)  # (as the staged run)

    def shown(events):
        return [{k: v for k, v in e.items() if k != "seconds"} for e in events if e.get("stage") != "lora"]

    assert shown(plain.history) == shown(staged.history)
    choice = json.loads((staged.run_dir / "hybrid_choice.json").read_text())
    assert read_prompt_file(plain.prompt_file).search["winner"] == choice["winner"] and plain.prompt.adapter is None
    result = json.loads((plain.run_dir / "result.json").read_text())
    assert "stages" not in result and "lora" not in result and set(result["work"]) == {"trials", "steps"}
    assert not (plain.run_dir / "lora").exists() and not (plain.run_dir / "hybrid_choice.json").exists()


def test_the_budget_splits_in_three_with_the_stage_in_two_without(causal_lm, tmp_path: Path, monkeypatch) -> None:
    shares, real_stage = [], Budget.stage
    monkeypatch.setattr(Budget, "stage", lambda self, share: shares.append(share) or real_stage(self, share))
    run_hybrid(causal_lm, tmp_path / "on", hybrid(tmp_path, epochs=1))
    assert shares == [1 / 3, 0.5]  # the template stage a third, the triggers half the rest, LoRA what is left
    shares.clear()
    run_hybrid(causal_lm, tmp_path / "off", hybrid(tmp_path, stage=False))
    assert shares == [0.5]


def test_a_stage_that_is_done_frees_the_time_kept_for_its_scoring(causal_lm, tmp_path: Path, monkeypatch) -> None:
    """The budget keeps time back for what is scored after a search; once the template stage has re-scored its
    best trials (and the trigger stage scored its prompt on dev) the later stages may spend that time."""
    from autoprompt.searches.base import final_split_examples
    from autoprompt.searches.template import rescored_examples
    from autoprompt.untouched import DEFAULT_HOLDOUT, hold_out

    kept, real_keep = [], Budget.keep_for
    monkeypatch.setattr(Budget, "keep_for", lambda self, n: kept.append(n) or real_keep(self, n))
    config = hybrid(tmp_path, epochs=1)
    run_hybrid(causal_lm, tmp_path / "on", config, time_budget=3600)
    task = hold_out(label_task(), DEFAULT_HOLDOUT)  # as the searches see it: dev less its untouched slice
    dev = len(task.examples("dev"))
    rescored = rescored_examples(task, config.template_search)
    assert rescored >= dev and kept[0] > kept[1] > kept[2] >= 2 * final_split_examples(task) - dev
    assert kept[1:] == [kept[0] - rescored, kept[0] - rescored - dev]


@pytest.mark.parametrize("winner", ["template", "hybrid"])
def test_interrupted_in_the_lora_stage_resumes_to_the_same_result(causal_lm, tmp_path: Path, monkeypatch,
                                                                   winner: str) -> None:
    config, task = hybrid(tmp_path, epochs=3, eval_every=2), label_task() if winner == "template" else trigger_task(causal_lm)
    straight = run_hybrid(causal_lm, tmp_path / "straight", config, task)
    assert json.loads((straight.run_dir / "hybrid_choice.json").read_text())["winner"] == winner
    interrupt_training_at(monkeypatch, 3)  # after the dev check (and checkpoint) of step 2
    with pytest.raises(KeyboardInterrupt):
        run_hybrid(causal_lm, tmp_path / "stopped", config, task)
    run = next((tmp_path / "stopped" / "runs").iterdir())
    assert json.loads((run / "result.json").read_text())["state"] == "interrupted"
    assert read_prompt_file(run / "best.prompt.json").search["interrupted"]  # the best so far
    assert json.loads((run / "lora" / "checkpoint.json").read_text())["step"] == 2
    assert read_checkpoint(Run(run)).step == 2  # the trigger stage's, untouched
    monkeypatch.undo()  # no more interrupts
    resumed = optimize(task, causal_lm, resume=run, progress=False)

    def shown(events):
        return [{k: v for k, v in e.items() if k != "seconds"} for e in events]

    assert shown(resumed.history) == shown(straight.history)
    assert (resumed.prompt.adapter is None) == (straight.prompt.adapter is None)
    for name, tensor in (straight.prompt.adapter.tensors.items() if straight.prompt.adapter else ()):
        assert torch.equal(resumed.prompt.adapter.tensors[name], tensor), name
    assert resumed.metrics == straight.metrics
    assert ("[T]" in resumed.prompt.template) == (winner == "hybrid")  # through the trigger stage's prompt, when it won


def test_plain_lora_still_trains_through_the_tasks_prompt(causal_lm) -> None:
    task, cfg = label_task(), lora.LoraTuningConfig(lora_r=2)
    default, explicit = lora.plan(causal_lm, task, cfg, 0), lora.plan(causal_lm, task, cfg, 0, Prompt.from_task(task))
    assert replace(default.prompt, adapter=None) == replace(explicit.prompt, adapter=None)
    assert default.prompt.adapter.tensors.keys() == explicit.prompt.adapter.tensors.keys()
    for name, tensor in default.prompt.adapter.tensors.items():
        assert torch.equal(explicit.prompt.adapter.tensors[name], tensor), name


def test_lora_settings_need_the_stage_and_one_prompt(causal_lm, tmp_path: Path) -> None:
    with pytest.raises(AutoPromptError, match="--lora-r only with --lora-stage"):
        run_hybrid(causal_lm, tmp_path, hybrid(tmp_path, stage=False, lora_r=2))
    config = hybrid(tmp_path)
    config = replace(config, template_search=replace(config.template_search, ensemble_max=2))
    assert config.template_search.ensemble_max == 1  # the LoRA stage trains through one prompt, not an ensemble
    unstaged = replace(hybrid(tmp_path, stage=False), template_search=replace(config.template_search, ensemble_max=2))
    assert unstaged.template_search.ensemble_max == 2
