"""Errors the torch frontend raises: what the user can fix, and what is a frontend bug."""

from __future__ import annotations

from ..ir import Location


class UnsupportedOpsError(ValueError):
    """The model uses ops the frontend cannot convert; ``ops`` lists (op name, Location) for every
    one of them, once per source line, so a user sees everything to change in one go."""

    def __init__(self, ops: list[tuple[str, Location, str]]):
        described = []
        for name, loc, code in ops:
            text = f"{name} at {_where(loc)}"
            if code:
                text += f" ({code})"
            described.append(text)
        super().__init__("unsupported ops: " + "; ".join(described))
        self.ops = [(name, loc) for name, loc, _ in ops]


class ConversionError(RuntimeError):
    """A converter produced something torch disagrees with, or failed: a bug in the frontend."""

    def __init__(self, op: str, loc: Location, message: str):
        super().__init__(f"converting {op} at {_where(loc)}: {message}")
        self.op = op
        self.loc = loc


def _where(loc: Location) -> str:
    if loc.file is None:
        return loc.scope or "<unknown source>"
    return f"{loc.file}:{loc.line}"
