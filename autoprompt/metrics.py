"""Task metrics, pure numpy: every metric, its bootstrap and the confusion matrix.

A metric is one function over resamples of the examples: given a ``Sample`` (gold and predicted
label ids, or the target ranks, as [r, n] arrays: r resamples of n examples each) it returns the
metric of each resample, [r]. Its value on the examples themselves is the one resample that is
the identity. Adding a metric is that function plus its line in ``METRICS``.

``accuracy``, ``macro_f1``, ``precision_at_1`` and ``mrr`` are the plain forms scoring calls; each
agrees with its row form on the identity resample (tests/test_metrics.py: to 1e-12, and in fact
bit for bit, since both sum in numpy's same order).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoprompt.errors import AutoPromptError

N_RESAMPLES = 1000
LEVEL = 0.95


@dataclass(frozen=True)
class Sample:
    """The examples of r resamples: label ids of gold and predicted answers, or target ranks, [r, n]."""

    gold: np.ndarray | None = None
    predicted: np.ndarray | None = None  # an answer that is not a label has an id of its own
    ranks: np.ndarray | None = None
    label_ids: tuple[int, ...] = ()  # the labels a macro average runs over
    scores: np.ndarray | None = None  # each example's own value (generated answers: exact match, F1, ...)


def _accuracy_rows(s: Sample) -> np.ndarray:
    return (s.gold == s.predicted).mean(axis=1)


def _macro_f1_rows(s: Sample) -> np.ndarray:
    f1 = np.zeros((len(s.gold), len(s.label_ids)))  # [r, n_labels]
    for j, k in enumerate(s.label_ids):
        gold, predicted = s.gold == k, s.predicted == k
        tp, fp, fn = ((gold & predicted).sum(axis=1), (~gold & predicted).sum(axis=1),
                      (gold & ~predicted).sum(axis=1))
        f1[:, j] = np.where(tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    return f1.mean(axis=1) if s.label_ids else np.zeros(len(s.gold))


def _precision_at_1_rows(s: Sample) -> np.ndarray:
    return (s.ranks == 0).mean(axis=1)


def _mrr_rows(s: Sample) -> np.ndarray:
    return (1.0 / (s.ranks + 1)).mean(axis=1)


# name -> (the metric on each resample, what it reads: "predicted" answers or target "ranks")
METRICS: dict[str, tuple[Callable[[Sample], np.ndarray], str]] = {
    "accuracy": (_accuracy_rows, "predicted"),
    "macro_f1": (_macro_f1_rows, "predicted"),
    "precision@1": (_precision_at_1_rows, "ranks"),
    "mrr": (_mrr_rows, "ranks"),
}
# a metric that is a mean over examples of each example's own value (every generation metric, and a
# user's own): its rows are the mean of those values; sides carry them as "scores"
SCORED = ("exact_match", "token_f1", "contains")


def resampled(metric: str, gold: Sequence[str], idx: np.ndarray, *, predicted: Sequence[str] | None = None,
              ranks: Sequence[int] | np.ndarray | None = None, labels: Sequence[str] | None = None,
              scores: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """The metric on each row of example indices ``idx`` [r, n]; returns [r]. ``labels``: those a
    macro average runs over (default: the gold answers'). ``scores``: each example's own value, for a
    metric that is their mean (generated answers)."""
    if scores is not None and metric not in METRICS:
        return np.asarray(scores, dtype=float)[idx].mean(axis=1)
    if metric not in METRICS:
        raise AutoPromptError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    rows, reads = METRICS[metric]
    if reads == "ranks":
        if ranks is None:
            raise AutoPromptError(f"metric {metric} needs the target ranks (a free-form task's)")
        return rows(Sample(ranks=np.asarray(ranks)[idx]))
    if predicted is None:
        raise AutoPromptError(f"metric {metric} needs the predicted answers")
    labels = list(labels) if labels else sorted(set(gold))
    ids: dict[str, int] = {}
    for answer in [*labels, *gold, *predicted]:  # the labels first: ids 0..
        ids.setdefault(answer, len(ids))
    gold_ids = np.asarray([ids[a] for a in gold], dtype=np.int64)
    predicted_ids = np.asarray([ids[a] for a in predicted], dtype=np.int64)
    return rows(Sample(gold=gold_ids[idx], predicted=predicted_ids[idx], label_ids=tuple(ids[x] for x in labels)))


def metric_value(metric: str, gold: Sequence[str], *, predicted: Sequence[str] | None = None,
                 ranks: Sequence[int] | np.ndarray | None = None, labels: Sequence[str] | None = None,
                 scores: Sequence[float] | np.ndarray | None = None) -> float:
    """The metric on all the examples (none: 0.0)."""
    if not len(gold):
        return 0.0
    identity = np.arange(len(gold))[None, :]  # [1, n]
    return float(resampled(metric, gold, identity, predicted=predicted, ranks=ranks, labels=labels,
                           scores=scores)[0])


def bootstrap(metric: str, gold: Sequence[str], sides: list[dict[str, Any]], labels: Sequence[str] | None = None, *,
              n_resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """The metric of each side (``{"predicted": [...], "ranks": [...]}``, what one prompt answered) on
    the same ``n_resamples`` resamples of the examples; returns [n_sides, n_resamples]."""
    rng = np.random.default_rng(seed)
    n = len(gold)
    out = np.empty((len(sides), n_resamples))
    rows = max(1, 2_000_000 // max(n, 1))  # resamples drawn at once: bounds the index matrix
    for start in range(0, n_resamples, rows):
        idx = rng.integers(0, n, size=(min(rows, n_resamples - start), n))  # [rows, n]
        for k, side in enumerate(sides):
            out[k, start : start + len(idx)] = resampled(metric, gold, idx, predicted=side.get("predicted"),
                                                         ranks=side.get("ranks"), labels=labels,
                                                         scores=side.get("scores"))
    return out


def interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of bootstrap values."""
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def confusion_matrix(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Counts [gold label, predicted label]."""
    index = {label: k for k, label in enumerate(labels)}
    g = np.asarray([index[x] for x in gold], dtype=np.int64)
    p = np.asarray([index[x] for x in predicted], dtype=np.int64)
    return np.bincount(g * len(labels) + p, minlength=len(labels) ** 2).reshape(len(labels), len(labels))


# --- the plain forms: the same values, as scoring computes them ------------------------------

def accuracy(predicted: list[str], gold: list[str]) -> float:
    return float(np.mean([p == g for p, g in zip(predicted, gold, strict=True)])) if gold else 0.0


def macro_f1(predicted: list[str], gold: list[str], labels: list[str]) -> float:
    f1s = []
    for label in labels:
        tp = sum(p == label and g == label for p, g in zip(predicted, gold, strict=False))
        fp = sum(p == label and g != label for p, g in zip(predicted, gold, strict=False))
        fn = sum(p != label and g == label for p, g in zip(predicted, gold, strict=False))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(f1s)) if f1s else 0.0


def precision_at_1(ranks: np.ndarray) -> float:
    return float(np.mean(np.asarray(ranks) == 0)) if len(ranks) else 0.0


def mrr(ranks: np.ndarray) -> float:
    return float(np.mean(1.0 / (np.asarray(ranks) + 1))) if len(ranks) else 0.0
