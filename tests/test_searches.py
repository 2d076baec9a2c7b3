"""The registry of search methods: each is a config dataclass and a search function; optimize() runs any of
them the same way, and the CLI's flags come from their configs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from autoprompt.cli import main
from autoprompt.cli.options import setting_fields
from autoprompt.optimizer import optimize
from autoprompt.prompt import Prompt
from autoprompt.scoring import evaluate
from autoprompt.searches import METHODS, config_dict, config_from, fields_of
from autoprompt.searches.hybrid import HybridConfig
from autoprompt.searches.template import TemplateSearchConfig
from autoprompt.searches.trigger import TriggerSearchConfig
from autoprompt.task import Example, Task

WORDS = ["good", "bad", "film", "plot", "slow", "fun"]


def small_task() -> Task:
    examples = [Example({"text": f"{WORDS[i % 6]} {WORDS[(i * 5 + 1) % 6]}"}, ["negative", "positive"][i % 2], f"x:{i}")
                for i in range(12)]
    return Task(name="small", template="{text} =>[P]", verbalizer={"negative": ["negative"], "positive": ["positive"]},
                splits={"train": examples, "dev": examples[:8], "test": examples[8:]})


def test_every_method_is_a_config_and_functions() -> None:
    assert {"trigger", "template", "hybrid", "manual"} <= set(METHODS)
    for name, method in METHODS.items():
        assert method.name == name and dataclasses.is_dataclass(method.config) and method.help
        assert callable(method.search) and callable(method.best_so_far) and callable(method.final_examples)


def test_the_manual_method_writes_a_run_like_any_other(causal_lm, tmp_path: Path) -> None:
    task = small_task()
    result = optimize(task, causal_lm, method="manual", runs_dir=tmp_path, progress=False)
    manual = Prompt.from_task(task)
    assert result.prompt.template == manual.template and result.prompt.verbalizer == manual.verbalizer
    expected = evaluate(causal_lm, manual, task.examples("test")).metrics["accuracy"]
    assert result.metrics["test"]["accuracy"] == result.baseline["test"]["accuracy"] == pytest.approx(expected)
    assert {p.name for p in result.run_dir.iterdir()} >= {"config.json", "result.json", "best.prompt.json",
                                                           "predictions.json", "report.md"}
    assert json.loads((result.run_dir / "config.json").read_text())["method"] == "manual"
    listed = CliRunner().invoke(main, ["runs", "list", "--dir", str(tmp_path), "--json"])
    assert [r["method"] for r in json.loads(listed.stdout)["runs"]] == ["manual"]


def test_configs_round_trip_flat_and_nested() -> None:
    hybrid = HybridConfig(TemplateSearchConfig(trials=7), TriggerSearchConfig(steps=3))
    flat = config_dict(hybrid)
    assert flat["trials"] == 7 and flat["steps"] == 3 and "template_search" not in flat
    assert config_from(HybridConfig, flat) == hybrid
    assert config_from(TriggerSearchConfig, {"steps": 9, "from_a_newer_version": 1}) == TriggerSearchConfig(steps=9)


def test_cli_flags_come_from_the_configs() -> None:
    fields = setting_fields()
    for name, method in METHODS.items():
        for setting in fields_of(method.config):
            assert name in fields[setting][1]
    assert set(fields["seed"][1]) == set(METHODS)  # a run's own settings: every method's
    help_text = CliRunner().invoke(main, ["optimize", "--help"]).output
    assert "--rescore-top" in help_text and "--n-triggers" in help_text and "manual" in help_text
