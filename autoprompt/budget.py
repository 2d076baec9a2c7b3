"""A wall-clock budget for a whole command: the search stops early enough to leave time for the
scoring that follows it (the best trials re-scored, the found prompt and the baseline scored on
dev, test and a train sample), estimated from the scoring speed measured during the search."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

_now = time.perf_counter  # (tests replace it with a clock of their own)

# The search's own scoring speed, corrected to the final scoring's (SmolLM2-135M, SST-2, 2-core CPU):
# the trigger search's dev checks reuse cached prefixes the final scoring cannot (about 1.5x faster);
# the template search scores dev in chunks of 50, slower than one call over a whole split (21 against
# 30 examples/s measured in one process).
CACHED_FACTOR = 1.5
CHUNKED_FACTOR = 1 / 1.45


@dataclass
class Budget:
    """``seconds`` for everything from ``started`` on (None: no limit); ``already`` were spent by an
    earlier process of the same run (a resumed search)."""

    seconds: float | None
    started: float = field(default_factory=lambda: _now())
    already: float = 0.0
    kept_examples: int = 0  # examples the scoring after the search will score
    until: float | None = None  # a stage's own end (the hybrid's template search), in elapsed seconds
    # examples scored during the search and the seconds they took; shared with the budget's stages
    measured: list[float] = field(default_factory=lambda: [0, 0.0])

    def keep_for(self, n_examples: int) -> Budget:
        """Keep back the time ``n_examples`` more examples will take after the search."""
        self.kept_examples = n_examples
        return self

    def record(self, n_examples: int, seconds: float, *, cached: bool = False, chunked: bool = False) -> None:
        """``n_examples`` were scored in ``seconds`` (``cached``: with prefix caches the final scoring lacks;
        ``chunked``: in small calls): the throughput the reserve is estimated from."""
        self.measured[0] += n_examples
        self.measured[1] += seconds * (CACHED_FACTOR if cached else 1.0) * (CHUNKED_FACTOR if chunked else 1.0)

    def elapsed(self) -> float:
        return self.already + _now() - self.started

    def reserve(self) -> float:
        """Seconds kept back for the scoring after the search (0 until a throughput is measured)."""
        scored, seconds = self.measured
        if not scored or not self.kept_examples:
            return 0.0
        return self.kept_examples * seconds / scored

    def spent(self) -> bool:
        """Whether the search must stop now to leave time for what follows it."""
        if self.seconds is None:
            return False
        limit = self.seconds - self.reserve()
        if self.until is not None:
            limit = min(limit, self.until)
        return self.elapsed() >= limit

    def stage(self, share: float) -> Budget:
        """This budget, ending after ``share`` of the time it has left for searching (the hybrid's first stage)."""
        if self.seconds is None:
            return self
        left = max(0.0, self.seconds - self.elapsed() - self.reserve())
        return dataclasses.replace(self, until=self.elapsed() + share * left)

    def describe(self) -> str:
        if self.seconds is None:
            return "no time budget"
        return (f"{self.elapsed():.0f} s of {self.seconds:.0f} s spent; {self.reserve():.0f} s kept for scoring "
                f"{self.kept_examples} examples after the search")
