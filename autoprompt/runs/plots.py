"""The pictures of a run report (matplotlib, Agg; no display): metrics, confusion matrix, history.

Figures are built with matplotlib's object API (``Figure``), never pyplot, so drawing a
report changes no global state; only Optuna's own plots go through pyplot, on Agg.

history.png has a panel per kind of logged event, whatever search logged it: steps (events with
a "step": the loss and the dev metric per step) and trials (events with a "trial" and its
"state": the dev metric per trial and the best so far).
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autoprompt.storage import open_storage, study_name, study_storage

if TYPE_CHECKING:
    from autoprompt.runs.folder import Run
    from autoprompt.runs.predictions import SplitResult

log = logging.getLogger(__name__)


def metrics_png(rows: list[SplitResult], metric: str, path: Path) -> bool:
    """Bars per split, found prompt next to the baseline, with their intervals."""
    from matplotlib.figure import Figure

    rows = [r for r in rows if r.value is not None]
    if not rows:
        return False
    fig = Figure(figsize=(1.8 + 1.6 * len(rows), 3.2))
    ax = fig.subplots()
    x = np.arange(len(rows))
    for offset, name, values, bounds in (
        (-0.2, "found prompt", [r.value for r in rows], [r.interval for r in rows]),
        (0.2, "baseline", [r.baseline for r in rows], [r.baseline_interval for r in rows]),
    ):
        heights = [np.nan if v is None else v for v in values]
        errors = None
        if all(b is not None for b in bounds):
            errors = np.array([[h - b[0], b[1] - h] for h, b in zip(heights, bounds, strict=True)]).T
        ax.bar(x + offset, heights, width=0.4, yerr=errors, capsize=3, label=name)
    ax.set_xticks(x, [r.split for r in rows])
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1.2)
    ax.legend(loc="upper center", ncol=2, fontsize=8)
    ax.set_title(f"{metric} with 95% bootstrap intervals", fontsize=10)
    save_figure(fig, path)
    return True


def confusion_png(counts: np.ndarray, labels: list[str], split: str, path: Path) -> None:
    """A confusion matrix, gold labels down, predicted across."""
    from matplotlib.figure import Figure

    size = 1.6 + 0.7 * len(labels)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.subplots()
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    high = counts.max() if counts.size else 0
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, str(int(n)), ha="center", va="center", color="white" if n > high / 2 else "black")
    ax.set_title(f"confusion matrix ({split})", fontsize=10)
    save_figure(fig, path)


def history_pngs(run: Run, events: list[dict[str, Any]], folder: Path) -> list[str]:
    """history.png from the log (a panel per kind of event), and Optuna's own plots of the run's
    study if it has one; returns the names written."""
    written = ["history.png"] if _history_png(events, folder / "history.png", run.config().get("method")) else []
    return written + _optuna_pngs(run, folder)


def _history_png(events: list[dict[str, Any]], path: Path, method: str | None) -> bool:
    from matplotlib.figure import Figure

    trials = [e for e in events if "trial" in e and "state" in e]  # a trial's outcome (not its re-scoring)
    steps: dict[str | None, list[dict[str, Any]]] = {}  # a hybrid's trigger steps, then its LoRA stage's
    for e in events:
        if "step" in e:
            steps.setdefault(e.get("stage"), []).append(e)
    panels = [(_trials_panel, trials)] if trials else []
    panels += [(_steps_panel, data) for data in steps.values()]
    if not panels:
        return False
    fig = Figure(figsize=(7, 3.2 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (draw, data) in zip(axes, panels, strict=True):
        draw(ax, data, data[0].get("stage") or method)  # a hybrid's log names the stage of each event
    save_figure(fig, path)
    return True


def _trials_panel(ax, trials: list[dict[str, Any]], search: str | None) -> None:
    """Each trial's dev value by state, and the best so far."""
    for state, marker, color in (("complete", "o", "tab:blue"), ("duplicate", "s", "tab:gray"),
                                 ("pruned", "x", "tab:red")):
        shown = [t for t in trials if t.get("state") == state]
        key = "dev_so_far" if state == "pruned" else "dev"
        shown = [t for t in shown if t.get(key) is not None]
        if shown:
            ax.scatter([t["trial"] for t in shown], [t[key] for t in shown], marker=marker, color=color, s=18,
                       label=state + (" (value when pruned)" if state == "pruned" else ""))
    done = sorted((t["trial"], t["dev"]) for t in trials if t.get("state") == "complete" and t.get("dev") is not None)
    if done:
        numbers, values = zip(*done, strict=True)
        ax.step(numbers, np.maximum.accumulate(values), where="post", color="tab:green", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("dev metric (trial examples)")
    ax.set_title(f"{search} search: dev metric per trial", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")


def _steps_panel(ax, steps: list[dict[str, Any]], search: str | None) -> None:
    """The current prompt's loss per step, and its dev metric where it was checked."""
    lossy = [e for e in steps if e.get("loss") is not None]
    if lossy:
        ax.plot([e["step"] for e in lossy], [e["loss"] for e in lossy], color="tab:blue", marker=".", label="loss")
        ranked = [e for e in lossy if "best_candidate_loss" in e]  # a trigger search's (training has no candidates)
        if ranked:
            ax.plot([e["step"] for e in ranked], [e["best_candidate_loss"] for e in ranked], color="tab:blue",
                    alpha=0.35, linestyle="--", label="best candidate's loss")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (minibatch)", color="tab:blue")
    checked = [e for e in steps if e.get("dev") is not None]
    if checked:
        dev_ax = ax.twinx()
        dev_ax.plot([e["step"] for e in checked], [e["dev"] for e in checked], color="tab:orange", marker="o",
                    label="dev metric")
        dev_ax.set_ylabel("dev metric", color="tab:orange")
    ax.set_title(f"{search} search: loss and dev metric per step", fontsize=10)
    if lossy:
        ax.legend(fontsize=7, loc="upper right")


def _optuna_pngs(run: Run, folder: Path) -> list[str]:
    """Optuna's matplotlib plots of the run's study, if it has one. They are extras: a study that
    cannot be opened, or a plot Optuna refuses (importances need two complete trials that
    differ), is skipped with a log line."""
    try:
        study = _study(run)
        if study is None:
            return []
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import optuna
        from optuna.visualization import matplotlib as optuna_plots
    except Exception as exc:  # the report stands without these plots
        log.info("%s: no Optuna plots (%s)", run.name, exc)
        return []
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    written = []
    for name, plot, needed in (("optuna_history.png", optuna_plots.plot_optimization_history, 1),
                               ("optuna_importances.png", optuna_plots.plot_param_importances, 2)):
        if len(complete) < needed:
            log.info("%s: %s needs %d complete trials", run.name, name, needed)
            continue
        try:
            # rc_context: Optuna sets a pyplot style, which must not leak into later figures
            with warnings.catch_warnings(), matplotlib.rc_context():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                ax = plot(study)
            fig = np.ravel(ax)[0].figure
            try:
                save_figure(fig, folder / name)
            finally:
                plt.close(fig)
            written.append(name)
        except Exception as exc:  # e.g. importances of parameters that never varied
            log.info("%s: skipped %s (%s)", run.name, name, exc)
    return written


def _study(run: Run):
    """The run's Optuna study; None when it has none (no shared storage and no study.db of its own:
    opening that would create an empty one)."""
    url = study_storage(run)
    own = run.path / "study.db"
    if url == f"sqlite:///{own.resolve()}" and not own.exists():
        return None
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=study_name(run), storage=open_storage(url))


def save_figure(fig, path: Path) -> None:
    """Save a matplotlib figure as PNG atomically: a temp name in the same folder, then a rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tight_layout's notes about crowded axes
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
