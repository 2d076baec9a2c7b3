"""Never ship a prompt that is only lucky: the found prompt replaces the task's own only when its gain
on dev is above zero with the asked confidence (paired bootstrap: both prompts on the same resamples of
the dev examples). Dev chose the prompt, so its gain there is, if anything, optimistic.

Generated answers have a second, finer witness. Exact match on a small dev is a coarse count (on 49
countries a prompt that gets two codes right against one can never show a supported gain), while the
gold answers' log-likelihood moves on every example. There the found prompt is also kept when it is
ahead on the metric (however little) and its gain in the gold answers' mean log-likelihood is above
zero with the same confidence: a gain the data supports, in the quantity the trigger search minimises,
and not a loss on the metric. A tie on the metric keeps the baseline, so a prompt that only makes
the answers' form likelier (right format, wrong codes) is not shipped for it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoprompt.metrics import bootstrap, metric_value

DEFAULT_CONFIDENCE = 0.95


@dataclass
class Verdict:
    """Whether the found prompt's dev gain over the baseline is supported, and the numbers that say so."""

    keep_found: bool
    found: float  # the metric on dev
    baseline: float
    gain_low: float  # the lower end of the one-sided interval of the gain
    log_prob_gain: float | None = None  # generated answers: the gain in the gold answers' mean log-likelihood
    log_prob_gain_low: float | None = None  # (and the lower end of its one-sided interval)

    @property
    def by_likelihood(self) -> bool:
        """Kept for a supported likelihood gain (the metric's own gain was not supported)."""
        return self.keep_found and self.gain_low <= 0 and self.log_prob_gain_low is not None

    def reason(self, metric: str, confidence: float) -> str:
        gain = self.found - self.baseline
        if self.by_likelihood:
            return (f"dev {metric} {self.found:.3f} against {self.baseline:.3f} (a gain of {gain:+.3f}, too few examples "
                    f"to support alone) and the gold answers' mean log-likelihood {self.log_prob_gain:+.3f} nats, "
                    f"above {self.log_prob_gain_low:+.3f} with {confidence:.0%} confidence")
        if self.keep_found:
            return (f"dev {metric} {self.found:.3f} against {self.baseline:.3f}: a gain of {gain:+.3f}, above "
                    f"{self.gain_low:+.3f} with {confidence:.0%} confidence")
        likelihood = "" if self.log_prob_gain_low is None else (
            f"; the gold answers' log-likelihood {self.log_prob_gain:+.3f} nats (lower end {self.log_prob_gain_low:+.3f})")
        return (f"the found prompt's dev {metric} {self.found:.3f} against {self.baseline:.3f} (a gain of {gain:+.3f}) "
                f"is not above zero with {confidence:.0%} confidence (lower end {self.gain_low:+.3f}{likelihood}): "
                "the task's own prompt is kept")

    def as_dict(self) -> dict[str, Any]:
        out = {"keep_found": self.keep_found, "found_dev": self.found, "baseline_dev": self.baseline,
               "gain_low": self.gain_low}
        if self.log_prob_gain_low is not None:
            out |= {"log_prob_gain": self.log_prob_gain, "log_prob_gain_low": self.log_prob_gain_low,
                    "by_likelihood": self.by_likelihood}
        return out


def judge(metric: str, gold: list[str], found: dict[str, Any], baseline: dict[str, Any], *,
          labels: list[str] | None = None, confidence: float = DEFAULT_CONFIDENCE, seed: int = 0,
          log_probs: tuple[Sequence[float], Sequence[float]] | None = None) -> Verdict:
    """``found`` and ``baseline``: what each prompt answered on dev ({"predicted": [...], "ranks": [...]}).
    ``confidence`` 0 keeps any found prompt that is not worse on dev. ``log_probs``: generated answers, each
    prompt's log-likelihood of every gold answer (found, baseline), the second witness (module doc)."""
    values = [metric_value(metric, gold, predicted=side.get("predicted"), ranks=side.get("ranks"), labels=labels,
                           scores=side.get("scores")) for side in (found, baseline)]
    if confidence <= 0:
        return Verdict(values[0] >= values[1], values[0], values[1], values[0] - values[1])
    rng = np.random.default_rng(seed)
    resamples = bootstrap(metric, gold, [found, baseline], labels, seed=seed)  # [2, n_resamples]
    low = float(np.quantile(resamples[0] - resamples[1], 1 - confidence))
    if log_probs is None:
        return Verdict(low > 0, values[0], values[1], low)
    gains = np.asarray(log_probs[0], dtype=np.float64) - np.asarray(log_probs[1], dtype=np.float64)  # [n]
    idx = rng.integers(0, len(gains), size=(resamples.shape[1], len(gains)))  # (drawn with the same seed)
    ll_low = float(np.quantile(gains[idx].mean(axis=1), 1 - confidence))
    keep = low > 0 or (values[0] > values[1] and ll_low > 0)
    return Verdict(keep, values[0], values[1], low, float(gains.mean()), ll_low)
