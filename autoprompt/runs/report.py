"""A run's report: report.md with its PNGs next to the run's files. It states the final metrics
with bootstrap intervals, the found prompt, a confusion matrix and the search's history.

A report is built from the run folder's files alone (config.json, result.json, log.jsonl,
predictions.json, the Optuna study), so ``autoprompt runs report RUN`` rebuilds it without
the model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from autoprompt.files import write_atomic
from autoprompt.metrics import N_RESAMPLES, confusion_matrix
from autoprompt.prompt_file import read_prompt_file
from autoprompt.runs.folder import Run
from autoprompt.runs.listing import format_interval, format_seconds, format_value, summary
from autoprompt.runs.plots import confusion_png, history_pngs, metrics_png
from autoprompt.runs.predictions import SplitResult, optimism_note, overfit_warning, read_predictions, split_results

log = logging.getLogger(__name__)


def write_report(run: Run, *, seed: int = 0) -> Path:
    """Write report.md and its PNGs into the run folder (atomically); returns report.md's path.
    ``seed``: the bootstrap's (the same for every run, so reports of runs compare)."""
    info = summary(run)
    predictions = read_predictions(run)
    rows = split_results(run, seed=seed)
    metric = info["metric"] or "metric"
    lines = [f"# Run {run.name}", "",
             f"task **{info['task']}** · method **{info['method']}** · model `{info['model']}` · "
             f"state **{info['state']}** · {info['work']} · {format_seconds(info['seconds'])} · seed {info['seed']}", ""]
    lines += prompt_section(run, predictions)
    result = run.result()
    lines += ensemble_section(result.get("ensemble"))
    lines += stages_section(result.get("stages"), metric)
    lines += [f"## Metrics: {metric}", ""]
    if predictions is None:
        lines += ["This run has no predictions.json (it was made before runs saved them, or did not finish): "
                  "the values of result.json, without intervals or a confusion matrix.", ""]
    else:
        lines += [f"95% percentile bootstrap intervals ({N_RESAMPLES} resamples of the examples, seed {seed}; the "
                  "gain's interval pairs the two prompts on the same resamples). Train is a seeded sample; "
                  "untouched is the slice of dev the search never saw. Baseline: the task's manual template. Test was never used to choose.", ""]
    lines += metrics_table(rows)
    warning, optimism = overfit_warning(rows), optimism_note(rows)
    if warning:
        log.warning("%s: %s", run.name, warning)
        lines += ["", f"> **Warning:** {warning}."]
    if optimism:
        lines += ["", f"Selection on dev: {optimism}."]
    verdict = result.get("verdict") or {}
    if verdict.get("reason"):  # (runs made before it: no line)
        lines += ["", f"Against the baseline on dev: {verdict['reason']}."]
    if metrics_png(rows, metric, run.path / "metrics.png"):
        lines += ["", "![metrics](metrics.png)"]
    lines += ["", *_confusion_section(run, predictions)]
    lines += ["## Optimization history", ""]
    pictures = history_pngs(run, run.events(), run.path)
    lines += [f"![{name}]({name})" for name in pictures] or ["(nothing logged)"]
    lines += ["", "## Files", ""]
    lines += [f"- `{p.name}`" for p in sorted(run.path.iterdir())
              if not p.name.startswith(".") and p.name != "report.md"] + ["- `report.md`"]
    target = run.path / "report.md"
    write_atomic(target, "\n".join(lines) + "\n")
    return target


def metrics_table(rows: list[SplitResult]) -> list[str]:
    """Markdown: per split, the found prompt and the baseline with intervals, and the gain."""
    out = ["| split | examples | found prompt | baseline | gain |", "|---|---|---|---|---|"]
    for r in rows:
        scored = "" if r.examples is None else f"{r.examples}" + (f" of {r.of}" if r.of != r.examples else "")
        gain = "" if r.value is None or r.baseline is None else f"{r.value - r.baseline:+.3f}" + format_interval(r.gain_interval)
        out.append(f"| {r.split} | {scored} | {format_value(r.value)}{format_interval(r.interval)} | {format_value(r.baseline)}"
                   f"{format_interval(r.baseline_interval)} | {gain} |")
    return out


def prompt_section(run: Run, predictions: dict[str, Any] | None = None) -> list[str]:
    """Markdown: the found prompt, its verbalizer and triggers, the prompt on one example, the baseline."""
    predictions = predictions if predictions is not None else read_predictions(run)
    result = run.result()
    prompt_file = run.read_json(run.best_prompt_path.name) if run.best_prompt_path.exists() else {}
    text = (predictions or {}).get("prompt_text") or _prompt_file_text(run) or result.get("template")
    lines = ["## The found prompt", ""]
    if not text:
        return lines + ["(no prompt saved)", ""]
    lines += ["```text", text, "```", ""]
    verbalizer = prompt_file.get("verbalizer")
    if verbalizer:
        shown = {label: " / ".join(f"`{w}`" for w in words) for label, words in verbalizer.items()}
        lines.append("verbalizer: " + "; ".join(f"{label} → {words}" for label, words in shown.items()))
    triggers = [t["text"] for t in prompt_file.get("triggers", [])]
    if triggers:
        lines.append("triggers: " + ", ".join(f"`{t!r}`" for t in triggers))
    demos = prompt_file.get("demonstrations") or []
    if demos:
        shown = f" (each input is shown the {prompt_file['demo_k']} nearest" if prompt_file.get("demo_k") else ""
        shown += (", per label)" if prompt_file.get("demo_per_label") else ")") if shown else ""
        lines.append(f"demonstrations: {len(demos)}{shown}")
    if prompt_file.get("chat"):
        lines.append("chat: wrapped in the model's chat template")
    if prompt_file.get("calibration"):
        lines.append("calibration: a label bias divided out (contextual or batch)")
    example = (predictions or {}).get("example")
    if example:
        lines += ["", f"On one {example['split']} example (gold: `{example['answer']}`), the model reads:", "",
                  "```text", example["rendered"], "```"]
    if predictions and predictions.get("baseline_text"):
        lines += ["", "Baseline (the task's manual template):", "", "```text", predictions["baseline_text"], "```"]
    return lines + [""]


def ensemble_section(info: dict[str, Any] | None) -> list[str]:
    """Markdown: the ensembles the search tried (the best k prompts, k = 1..), each member's dev value and each
    ensemble's, and which one won."""
    if not info or "candidates" not in info:
        return []
    k, metric = info["k"], info.get("metric", "metric")
    lines = ["## Ensemble", "",
             f"The best {len(info['ranked'])} prompts of the search on dev, and their ensembles of the best k "
             f"({info.get('combine') or '-'}"
             + ("; + channel: the best k - 1 with the best prompt scored the noisy-channel way" if info.get("partner")
                else "") + "); the best k on dev won (ties to the smaller"
             + (f"; an ensemble only for a gain over the best prompt alone that dev supports with "
                f"{info['confidence']:.0%} confidence" if info.get("confidence") else "") + f"): **k = {k}**"
             + (" (the best prompt alone)." if k == 1 else "."), "",
             "| rank k | trial | its dev " + metric + " alone | the best k together: dev " + metric + " |", "|---|---|---|---|"]
    channel = bool(info.get("channel"))  # the members: the best k - 1 and the channel partner
    rows = [r for r in info["candidates"] if not r.get("channel")]
    partnered = [r for r in info["candidates"] if r.get("channel")]
    members = [*zip(info["ranked"], rows, strict=False)] + [(info["partner"], r) for r in partnered]
    for n, (member, row) in enumerate(members, 1):
        mark = " ✓" if row["k"] == k and bool(row.get("channel")) == channel else ""
        unsupported = " (gain not supported)" if row.get("supported") is False else ""
        trial = (f"{member.get('trial', '')}" + (f" (draw {member['draw']})" if "draw" in member else "")  # another draw
                 + (" (channel)" if member.get("channel") else ""))
        rank = f"{n}{' (member)' if n <= k - channel else ''}" if not row.get("channel") else \
            f"+ channel, k = {row['k']}{' (member)' if mark else ''}"
        lines.append(f"| {rank} | {trial} | {format_value(member['dev'])} | {format_value(row['dev'])}{unsupported}{mark} |")
    return lines + ["", f"Note: {info['note']}.", ""]


def stages_section(stages: dict[str, Any] | None, metric: str) -> list[str]:
    """Markdown: a hybrid's stages (with --lora-stage), each one's best prompt on dev and test, and the one shipped."""
    if not stages:
        return []
    lines = ["## Stages", "", "Each stage's best prompt: dev as the stage measured it, test scored once at the end "
             "(never used to choose). ✓: the stage whose prompt the hybrid chose.", "",
             f"| stage | dev {metric} | test {metric} |", "|---|---|---|"]
    for name, row in stages.items():
        lines.append(f"| {name}{' ✓' if row.get('chosen') else ''} | {format_value(row.get('dev'))} "
                     f"| {format_value(row.get('test'))} |")
    return lines + [""]


def _prompt_file_text(run: Run) -> str | None:
    """The template of the run's prompt file with instruction and demonstrations written in
    (chat wrapping needs the tokenizer: the prompt line below says it is wrapped); an ensemble's best member's."""
    if not run.best_prompt_path.exists():
        return None
    prompt = read_prompt_file(run.best_prompt_path).prompt
    return getattr(prompt, "best", prompt).expanded_template()


def _confusion_section(run: Run, predictions: dict[str, Any] | None) -> list[str]:
    labels = (predictions or {}).get("labels")
    split = next((s for s in ("test", "dev") if s in (predictions or {}).get("splits", {})), None)
    if not labels or split is None:
        return []
    record = predictions["splits"][split]
    counts = confusion_matrix(record["gold"], record["prompt"]["predicted"], labels)
    lines = [f"## Confusion matrix ({split}, found prompt)", "",
             "| gold \\ predicted | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    lines += [f"| **{label}** | " + " | ".join(str(int(c)) for c in row) + " |" for label, row in zip(labels, counts, strict=True)]
    name = f"confusion_{split}.png"
    confusion_png(counts, labels, split, run.path / name)
    return [*lines, "", f"![confusion matrix]({name})", ""]
