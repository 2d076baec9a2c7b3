"""Never ship a prompt that is only lucky: the found prompt replaces the task's own only when its gain
on dev is above zero with the asked confidence (paired bootstrap: both prompts on the same resamples of
the dev examples). Dev chose the prompt, so its gain there is, if anything, optimistic."""

from __future__ import annotations

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

    def reason(self, metric: str, confidence: float) -> str:
        gain = self.found - self.baseline
        if self.keep_found:
            return (f"dev {metric} {self.found:.3f} against {self.baseline:.3f}: a gain of {gain:+.3f}, above "
                    f"{self.gain_low:+.3f} with {confidence:.0%} confidence")
        return (f"the found prompt's dev {metric} {self.found:.3f} against {self.baseline:.3f} (a gain of {gain:+.3f}) "
                f"is not above zero with {confidence:.0%} confidence (lower end {self.gain_low:+.3f}): the task's "
                "own prompt is kept")

    def as_dict(self) -> dict[str, Any]:
        return {"keep_found": self.keep_found, "found_dev": self.found, "baseline_dev": self.baseline,
                "gain_low": self.gain_low}


def judge(metric: str, gold: list[str], found: dict[str, Any], baseline: dict[str, Any], *,
          labels: list[str] | None = None, confidence: float = DEFAULT_CONFIDENCE, seed: int = 0) -> Verdict:
    """``found`` and ``baseline``: what each prompt answered on dev ({"predicted": [...], "ranks": [...]}).
    ``confidence`` 0 keeps any found prompt that is not worse on dev."""
    values = [metric_value(metric, gold, predicted=side.get("predicted"), ranks=side.get("ranks"), labels=labels,
                           scores=side.get("scores")) for side in (found, baseline)]
    if confidence <= 0:
        return Verdict(values[0] >= values[1], values[0], values[1], values[0] - values[1])
    resamples = bootstrap(metric, gold, [found, baseline], labels, seed=seed)  # [2, n_resamples]
    low = float(np.quantile(resamples[0] - resamples[1], 1 - confidence))
    return Verdict(low > 0, values[0], values[1], low)
