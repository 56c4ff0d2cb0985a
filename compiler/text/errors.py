"""Errors of the text form: where in the source, what is wrong, and an excerpt with a caret."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from lark import Token, Tree


class IRParseError(ValueError):
    """Text that is not a valid graph. ``line`` and ``column`` count from 1.

    The message reads ``file:line:column: what is wrong``, then the source line and a caret
    under the column, so it can be shown as is.
    """

    def __init__(self, detail: str, filename: str, line: int, column: int, source_line: str):
        # Tabs stay tabs in the caret's indent so the caret lines up under the source.
        indent = "".join(c if c == "\t" else " " for c in source_line[:column - 1])
        super().__init__(f"{filename}:{line}:{column}: {detail}\n{source_line}\n{indent}^")
        self.detail = detail
        self.filename = filename
        self.line = line
        self.column = column
        self.source_line = source_line

    def __reduce__(self):
        # Rebuild from the parts (not the formatted message), so the error crosses processes.
        return type(self), (self.detail, self.filename, self.line, self.column, self.source_line)


class TextError(Exception):
    """Raised while reading a syntax tree; ``at`` (a token or tree) says where. The parser
    turns it into an IRParseError with the source excerpt."""

    def __init__(self, detail: str, at: Token | Tree):
        super().__init__(detail)
        self.detail = detail
        self.at = at


def position(at: Token | Tree) -> tuple[int, int]:
    """(line, column) of the first character of a token or tree."""
    if isinstance(at, Token):
        return at.line, at.column
    return at.meta.line, at.meta.column


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
