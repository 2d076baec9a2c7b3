"""The metrics: each written once over resamples; its value on the examples is the identity resample,
and agrees with the plain form scoring computes."""

from __future__ import annotations

import random

import numpy as np
import pytest

from autoprompt.errors import AutoPromptError
from autoprompt.metrics import (
    METRICS,
    accuracy,
    bootstrap,
    macro_f1,
    metric_value,
    mrr,
    precision_at_1,
    resampled,
)


def _random_answers(seed: int) -> tuple[list[str], list[str], list[str], np.ndarray]:
    rng = random.Random(seed)
    labels = [f"label{k}" for k in range(rng.randint(2, 20))]
    n = rng.randint(1, 300)
    gold = [rng.choice(labels) for _ in range(n)]
    predicted = [g if rng.random() < 0.5 else rng.choice(labels) for g in gold]
    ranks = np.asarray([rng.choice([0, 0, 1, 2, rng.randint(0, 5000)]) for _ in range(n)])
    return labels, gold, predicted, ranks


@pytest.mark.parametrize("seed", range(40))
def test_the_identity_resample_is_the_plain_metric(seed: int) -> None:
    labels, gold, predicted, ranks = _random_answers(seed)
    identity = np.arange(len(gold))[None, :]
    plain = {"accuracy": accuracy(predicted, gold), "macro_f1": macro_f1(predicted, gold, labels),
             "precision@1": precision_at_1(ranks), "mrr": mrr(ranks)}
    assert set(plain) == set(METRICS)
    for metric, value in plain.items():
        row = resampled(metric, gold, identity, predicted=predicted, ranks=ranks, labels=labels)
        assert row.shape == (1,)
        assert row[0] == pytest.approx(value, rel=0, abs=1e-12), metric
        assert metric_value(metric, gold, predicted=predicted, ranks=ranks, labels=labels) == pytest.approx(
            value, rel=0, abs=1e-12), metric


def test_each_resample_is_the_metric_of_its_examples() -> None:
    labels, gold, predicted, ranks = _random_answers(1)
    idx = np.random.default_rng(3).integers(0, len(gold), size=(50, len(gold)))
    for metric in METRICS:
        rows = resampled(metric, gold, idx, predicted=predicted, ranks=ranks, labels=labels)
        expected = [metric_value(metric, [gold[i] for i in row], predicted=[predicted[i] for i in row],
                                 ranks=ranks[row], labels=labels) for row in idx]
        assert rows == pytest.approx(expected, rel=0, abs=1e-12), metric


def test_answers_outside_the_labels() -> None:
    """A prediction that is no label is wrong; it still counts against the labels' F1."""
    gold, predicted = ["a", "b", "b", "c"], ["a", "zzz", "b", "zzz"]
    assert metric_value("accuracy", gold, predicted=predicted, labels=["a", "b"]) == accuracy(predicted, gold) == 0.5
    assert metric_value("macro_f1", gold, predicted=predicted, labels=["a", "b"]) == pytest.approx(
        macro_f1(predicted, gold, ["a", "b"]))
    # free-form answers have no labels: the gold answers are the classes
    assert metric_value("accuracy", ["x", "y"], predicted=["x", "x"]) == 0.5


def test_no_examples_and_unknown_metrics() -> None:
    assert metric_value("accuracy", [], predicted=[]) == 0.0
    assert metric_value("mrr", [], ranks=[]) == 0.0
    with pytest.raises(AutoPromptError, match="unknown metric 'bleu'"):
        metric_value("bleu", ["a"], predicted=["a"])
    with pytest.raises(AutoPromptError, match="needs the target ranks"):
        metric_value("mrr", ["a"], predicted=["a"])
    with pytest.raises(AutoPromptError, match="needs the predicted answers"):
        metric_value("accuracy", ["a"], ranks=[0])


def test_bootstrap_pairs_the_sides_on_the_same_resamples() -> None:
    labels, gold, predicted, ranks = _random_answers(2)
    same = {"predicted": predicted, "ranks": list(ranks)}
    values = bootstrap("mrr", gold, [same, dict(same)], labels, n_resamples=300, seed=5)
    assert values.shape == (2, 300)
    assert np.array_equal(values[0], values[1])
    idx = np.random.default_rng(5).integers(0, len(gold), size=(300, len(gold)))
    assert np.array_equal(values[0], resampled("mrr", gold, idx, ranks=ranks))
