"""Metrics: pure functions of predictions and gold answers (a placeholder until the runs branch lands)."""

from __future__ import annotations

import numpy as np


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


def metric_value(metric: str, gold, *, predicted=None, ranks=None, labels=None) -> float:
    if metric == "accuracy":
        return accuracy(list(predicted), list(gold))
    if metric == "macro_f1":
        return macro_f1(list(predicted), list(gold), list(labels))
    if metric == "precision@1":
        return precision_at_1(np.asarray(ranks))
    return mrr(np.asarray(ranks))
