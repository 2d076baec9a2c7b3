"""A comparison's report (autoprompt.compare): the summary of its cells (per method and train size, the test
metric's mean and std over seeds, wall time, trainable parameters, artifact size; per size the best method),
comparison.json, comparison.md (one table) and comparison.png (the test metric against train size, drawn with
matplotlib's object API as the run reports are)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from autoprompt.files import write_atomic
from autoprompt.runs.plots import save_figure


def summarize(config: dict[str, Any], cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method and size (sizes as text: "16", "all"): over its seeds, the test metric's mean and std (n-1;
    0 for one seed), dev's mean, the mean wall seconds, the parameters trained, the trigger tokens, the mean
    artifact bytes and how many runs kept the task's prompt; per size the best method."""
    rows: dict[str, dict[str, Any]] = {}
    for method in config["methods"]:
        rows[method] = {}
        for size in config["sizes"]:
            mine = [c for c in cells if c["method"] == method and c["size"] == size and c["seed"] in config["seeds"]]
            if mine:
                rows[method][str(size)] = _entry(mine)
    train = {str(c["size"]): c["examples"]["train"] for c in cells}
    best = {str(size): _best(config, rows, str(size)) for size in config["sizes"]}
    budgets = {str(size): [c["time_budget"] for c in cells if c["size"] == size and c.get("time_budget")]
               for size in config["sizes"]}
    budgets = {size: round(statistics.fmean(given)) for size, given in budgets.items() if given}
    return {"metric": config["metric"], "rows": rows, "train_examples": train, "best": best, "budgets": budgets}


def _entry(cells: list[dict[str, Any]]) -> dict[str, Any]:
    tests = [c["test"] for c in cells]
    triggers = [c["triggers"] for c in cells if c.get("triggers")]
    return {"n": len(cells), "seeds": [c["seed"] for c in cells], "test_mean": statistics.fmean(tests),
            "test_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
            "dev_mean": statistics.fmean(c["dev"] for c in cells),
            "seconds_mean": statistics.fmean(c["seconds"] for c in cells),
            "trainable_parameters": max(c["trainable_parameters"] for c in cells),
            "triggers": max(triggers) if triggers else 0,
            "artifact_bytes": round(statistics.fmean(c["artifact_bytes"] for c in cells)),
            "kept_baseline": sum(bool(c.get("kept_baseline")) for c in cells)}


def _best(config: dict[str, Any], rows: dict[str, dict[str, Any]], size: str) -> dict[str, Any] | None:
    """The method with the best mean test metric at a size, the runner-up, and whether the gap between them is
    larger than either one's std over seeds (a clear win) or not."""
    ranked = sorted(((rows[m][size]["test_mean"], m) for m in config["methods"] if size in rows[m]),
                    key=lambda vm: (-vm[0], config["methods"].index(vm[1])))
    if not ranked:
        return None
    (mean, method), runner = ranked[0], ranked[1] if len(ranked) > 1 else None
    out: dict[str, Any] = {"method": method, "tied": [m for v, m in ranked if v == mean], "test_mean": mean,
                           "runner_up": runner[1] if runner else None,
                           "gap": mean - runner[0] if runner else None, "clear": None}
    if runner:
        spread = max(rows[method][size]["test_std"], rows[runner[1]][size]["test_std"])
        out["clear"] = out["gap"] > spread if rows[method][size]["n"] > 1 else None
    return out


def write_comparison(folder: Path, config: dict[str, Any], cells: list[dict[str, Any]],
                     format: str) -> tuple[dict[str, Any], dict[str, Path]]:
    """comparison.png, comparison.md and comparison.json into ``folder``; the summary and the files written."""
    summary = summarize(config, cells)
    files = {"json": folder / "comparison.json", "markdown": folder / "comparison.md"}
    if comparison_png(config, summary, folder / "comparison.png"):
        files["png"] = folder / "comparison.png"
    write_atomic(files["markdown"], markdown(config, summary, picture="png" in files))
    write_atomic(files["json"], json.dumps({"format": format, "state": "finished", "config": config, "cells": cells,
                                            "summary": summary}, indent=2, ensure_ascii=False) + "\n")
    return summary, files


def size_name(size: int, unit: str) -> str:
    """``16 shots`` (per class), ``16 examples`` (in all)."""
    word = "shot" if unit == "examples per class" else "example"
    return f"{size} {word}{'' if size == 1 else 's'}"


def size_heading(config: dict[str, Any], summary: dict[str, Any], size: Any) -> str:
    if size == "all":
        n = summary["train_examples"].get("all", config["splits"]["train"])
        return f"all ({n})"
    return size_name(size, config["unit"])


def markdown(config: dict[str, Any], summary: dict[str, Any], *, picture: bool = True) -> str:
    """comparison.md: one table (rows: methods; columns: train sizes), the best method at each size, the rules."""
    metric, sizes = config["metric"], config["sizes"]
    seeds = ", ".join(map(str, config["seeds"]))
    lines = [f"# Prompt or fine-tune? {config['task']} on `{config['model']}`", "",
             f"Test {metric}, **mean ± std over seeds {seeds}** (std with n-1; one optimize() run per method, size and "
             "seed). Under it: the mean wall time of a run · the parameters the method trains (a trigger search: its "
             "trigger tokens) · the bytes of what the run delivers (the prompt file and its adapter file).", "",
             "| method | " + " | ".join(size_heading(config, summary, s) for s in sizes) + " |",
             "|---" * (len(sizes) + 1) + "|"]
    for method in config["methods"]:
        row = summary["rows"].get(method, {})
        lines.append(f"| {method} | " + " | ".join(_entry_text(row.get(str(s))) for s in sizes) + " |")
    lines += ["", "**Best at each size** (the highest mean test " + metric + "):", ""]
    lines += [f"- {best_text(config, summary, size)}" for size in sizes]
    if picture:
        lines += ["", "![test metric against train size](comparison.png)"]
    unit = "examples per class, a seeded class-balanced sample of train" if config["unit"] == "examples per class" \
        else "examples, a seeded sample of train"
    lines += ["", "## How it was run", "",
              f"- Sizes are {unit}; dev is a seeded sample of the task's dev as large as train (all: the task's own "
              f"train and dev, {config['splits']['train']} and {config['splits']['dev']} examples). Every method sees "
              f"the same samples for a size and seed. Test is the whole test split ({config['splits']['test']} "
              "examples) and never chooses anything.",
              f"- Time: {config['budget_rule']}" + _budgets_text(config, summary),
              f"- {_keep_rule(config['confidence'])} (then it delivers the task's prompt file alone); \"kept k/n\" "
              "counts such runs.",
              "- Method settings: " + (json.dumps(config["settings"]) if config["settings"] else "each method's defaults")
              + ". Each run's folder (its report, prompt file and adapter) is in `runs/`; every cell in `cells.jsonl`."]
    return "\n".join(lines) + "\n"


def _budgets_text(config: dict[str, Any], summary: dict[str, Any]) -> str:
    if config["time_budget"]:
        return f": {config['time_budget']:.0f} s per run."
    given = summary.get("budgets") or {}
    sizes = ", ".join(f"{size} {given[str(size)]} s" for size in config["sizes"] if str(size) in given)
    return f". {config['total_budget']:.0f} s in all" + (f"; a run's budget, the mean at each size: {sizes}." if sizes
                                                         else ".")


def _keep_rule(confidence: float) -> str:
    if confidence <= 0:
        return "Each method's own result: a run keeps the task's own prompt only when the found one is worse on dev"
    return (f"A run keeps the task's own prompt when the found prompt's dev gain is not above zero with confidence "
            f"{confidence}")


def _entry_text(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "—"
    trained = f"{format_count(entry['trainable_parameters'])} params" + \
        (f" (triggers: {entry['triggers']})" if entry["triggers"] else "")
    kept = f" · kept {entry['kept_baseline']}/{entry['n']}" if entry["kept_baseline"] else ""
    return (f"{entry['test_mean']:.3f} ± {entry['test_std']:.3f}<br>{entry['seconds_mean']:.0f} s · {trained} · "
            f"{format_bytes(entry['artifact_bytes'])}{kept}")


def best_text(config: dict[str, Any], summary: dict[str, Any], size: Any) -> str:
    heading, best = size_heading(config, summary, size), summary["best"].get(str(size))
    if best is None:
        return f"{heading}: no finished cells."
    entry = summary["rows"][best["method"]][str(size)]
    text = f"{heading}: **{best['method']}** ({entry['test_mean']:.3f} ± {entry['test_std']:.3f})"
    if best["runner_up"] is None:
        return text + "."
    runner = summary["rows"][best["runner_up"]][str(size)]
    if len(best["tied"]) > 1:
        return f"{heading}: a tie between {', '.join(best['tied'])} ({entry['test_mean']:.3f})."
    text += f", ahead of {best['runner_up']} ({runner['test_mean']:.3f} ± {runner['test_std']:.3f}) by {best['gap']:.3f}"
    if best["clear"] is None:
        return text + " (one seed: no spread to judge the gap by)."
    return text + ("; more than either one's std over seeds." if best["clear"]
                   else "; within the spread over seeds, so not a clear win.")


def format_count(n: int) -> str:
    return f"{n:,}" if n < 10_000 else f"{n / 1000:.0f}k" if n < 1_000_000 else f"{n / 1e6:.1f}M"


def format_bytes(n: int) -> str:
    for unit, scale in (("MB", 1024**2), ("KB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def comparison_png(config: dict[str, Any], summary: dict[str, Any], path: Path) -> bool:
    """The test metric against train size (log scale; ``all`` at the full train size), a line per method,
    error bars the std over seeds. False when no cell is finished."""
    from matplotlib.figure import Figure

    x_of = {str(s): summary["train_examples"][str(s)] for s in config["sizes"] if str(s) in summary["train_examples"]}
    if not x_of:
        return False
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    for method in config["methods"]:
        shown = [(x_of[s], e) for s, e in summary["rows"].get(method, {}).items() if s in x_of]
        if shown:
            shown.sort(key=lambda xe: xe[0])
            ax.errorbar([x for x, _ in shown], [e["test_mean"] for _, e in shown], yerr=[e["test_std"] for _, e in shown],
                        marker="o", capsize=3, label=method)
    ax.set_xscale("log")
    ticks = sorted(x_of.items(), key=lambda kv: kv[1])
    ax.set_xticks([x for _, x in ticks], [size_heading(config, summary, "all" if s == "all" else int(s))
                                         for s, _ in ticks], rotation=30, ha="right")
    ax.minorticks_off()
    ax.set_xlabel("train size (log scale: train examples)")
    ax.set_ylabel(f"test {config['metric']}")
    n = len(config["seeds"])
    ax.set_title(f"{config['task']}: test {config['metric']}, mean ± std over {n} seed{'s' * (n != 1)}", fontsize=10)
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return True
