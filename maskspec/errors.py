"""Errors that point at the spec: file:line:col, the source line, a caret and a hint."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from maskspec.model import Pos


class MaskSpecError(Exception):
    """A spec that cannot be parsed, validated or lowered exactly.

    The message reads like a compiler's: ``file:line:col: error: ...`` then the
    offending line with a caret under the column, then an optional hint.
    """

    def __init__(
        self,
        message: str,
        pos: Pos | None = None,
        *,
        source: str = "",
        path: str = "<spec>",
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.pos = pos
        self.path = path
        self.hint = hint
        super().__init__(self._render(source))

    KIND = "error"

    def _render(self, source: str) -> str:
        if self.pos is None:
            head = f"{self.path}: {self.KIND}: {self.message}"
            return head + (f"\n  hint: {self.hint}" if self.hint else "")
        head = f"{self.path}:{self.pos.line}:{self.pos.column}: {self.KIND}: {self.message}"
        lines = source.splitlines()
        parts = [head]
        if 0 < self.pos.line <= len(lines):
            text = lines[self.pos.line - 1]
            width = max(1, self.pos.end_column - self.pos.column)
            if self.pos.end_line != self.pos.line:
                width = max(1, len(text) - self.pos.column + 1)
            parts += [f"  {text}", "  " + " " * (self.pos.column - 1) + "^" * width]
        if self.hint:
            parts.append(f"  hint: {self.hint}")
        return "\n".join(parts)


class SizesError(MaskSpecError, ValueError):
    """A spec that compiles but cannot be built at the sizes asked for (a divisor below 1,
    a lookup outside its input, arithmetic past ±2**62): located in the spec, and a
    ValueError, since the sizes are the caller's arguments."""


class MaskSpecWarning(MaskSpecError, UserWarning):
    """A spec that compiles but is almost surely not what was meant (a region that allows
    nothing): rendered like an error, issued with ``warnings.warn``."""

    KIND = "warning"


def did_you_mean(name: str, choices: Iterable[str]) -> str | None:
    """A 'did you mean `x`?' hint when a close name exists."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None
