"""What scoring keeps between calls: an explicit object, owned by whoever scores many times
(a search, a predictor), never attributes on the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Caches:
    """The KV cache of the last shared head (the instruction and demonstrations every input starts
    with), so a search that keeps its demonstrations encodes them once; and the model's embeddings
    of the last demonstration pool ("similar" demonstrations). One of each: a search moves on."""

    head: tuple[Any, Any] | None = None  # (key, per-layer (keys, values))
    pool: tuple[Any, Any] | None = None  # (key, [pool, hidden] embeddings)

    def get(self, slot: str, key: Any) -> Any | None:
        kept = getattr(self, slot)
        return kept[1] if kept is not None and kept[0] == key else None

    def keep(self, slot: str, key: Any, value: Any) -> Any:
        setattr(self, slot, (key, value))
        return value
