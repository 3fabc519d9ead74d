"""What a build works out once per compiled mask and key (sizes, a configuration) and then
looks up: one bounded table kind for every such cache, so each keeps its entries the same
way and none is keyed on a dead mask's reused ``id``."""

from __future__ import annotations

from typing import Any

MISSING: Any = object()  # ``PerMask.get``'s default: tells "not computed" from a stored None


class PerMask:
    """Values per (mask, key), at most ``limit`` of them: past that the table starts again
    (a run through many sizes keeps only recent ones). Each entry holds its mask, so a mask
    made after another was freed never finds the other's entries under the same id."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._entries: dict[tuple[int, Any], tuple[Any, Any]] = {}

    def get(self, mask: Any, key: Any, default: Any = None) -> Any:
        hit = self._entries.get((id(mask), key))
        return hit[1] if hit is not None and hit[0] is mask else default

    def put(self, mask: Any, key: Any, value: Any) -> Any:
        """Store ``value`` and return it."""
        if len(self._entries) >= self.limit:
            self._entries.clear()
        self._entries[(id(mask), key)] = (mask, value)
        return value
