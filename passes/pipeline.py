"""Pipeline text: ``fold-batchnorm,prune{sparsity=0.5 structured=true},fuse``.

Passes are separated by commas; options sit in braces as ``key=value`` separated by spaces
(or commas). Values are bare words or double-quoted strings. ``str(pipeline)`` prints the
canonical form of what was parsed, which parses back to the same pipeline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .registry import PassRegistryError, get_pass

_TOKEN = re.compile(r"""\s*(?:(?P<punct>[,{}=])|"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<word>[^\s,{}="]+))""")


class PipelineError(ValueError):
    """A pipeline string is malformed or names an unknown pass or option; shows a caret."""

    def __init__(self, message: str, text: str, column: int):
        super().__init__(f"{message}\n  {text}\n  {' ' * column}^")
        self.column = column
        self.detail = message


@dataclass(frozen=True)
class PassInvocation:
    name: str
    options: dict[str, Any] = field(default_factory=dict)  # only those written in the text

    def __str__(self) -> str:
        if not self.options:
            return self.name
        info = get_pass(self.name)
        written = [f"{key}={_quote(info.options[key].format(value))}"
                   for key, value in self.options.items()]
        return f"{self.name}{{{' '.join(written)}}}"


def _quote(value: str) -> str:
    if value and re.fullmatch(r'[^\s,{}="]+', value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class Pipeline:
    passes: tuple[PassInvocation, ...]

    def __str__(self) -> str:
        return ",".join(str(p) for p in self.passes)

    def names(self) -> list[str]:
        return [p.name for p in self.passes]


def _tokens(text: str):
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            return
        match = _TOKEN.match(text, position)
        if match is None:
            raise PipelineError("unexpected character", text, position)
        start = match.start(match.lastgroup)
        if match.lastgroup == "quoted":
            start -= 1
            value = re.sub(r"\\(.)", r"\1", match.group("quoted"))
            yield "value", value, start
        else:
            yield match.lastgroup, match.group(match.lastgroup), start
        position = match.end()


def parse_pipeline(text: str | Pipeline) -> Pipeline:
    """Parse pipeline text, checking every pass name and option against the registry."""
    if isinstance(text, Pipeline):
        return text
    tokens = list(_tokens(text))
    invocations = []
    i = 0

    def expect_name():
        nonlocal i
        if i >= len(tokens) or tokens[i][0] != "word":
            column = tokens[i][2] if i < len(tokens) else len(text)
            raise PipelineError("expected a pass name", text, column)
        i += 1
        return tokens[i - 1]

    if not tokens:
        return Pipeline(())
    while True:
        _, name, column = expect_name()
        try:
            info = get_pass(name)
        except PassRegistryError as err:
            raise PipelineError(str(err), text, column) from None
        options: dict[str, Any] = {}
        if i < len(tokens) and tokens[i][1] == "{" and tokens[i][0] == "punct":
            i += 1
            while i < len(tokens) and not (tokens[i][0] == "punct" and tokens[i][1] == "}"):
                if tokens[i][0] == "punct" and tokens[i][1] == ",":
                    i += 1
                    continue
                _, key, key_column = expect_name()
                try:
                    option = info.option(key)
                except PassRegistryError as err:
                    raise PipelineError(str(err), text, key_column) from None
                if i >= len(tokens) or tokens[i][1] != "=":
                    raise PipelineError(f"expected '=' after option '{key}'", text,
                                        tokens[i][2] if i < len(tokens) else len(text))
                i += 1
                if i >= len(tokens) or tokens[i][0] not in ("word", "value"):
                    raise PipelineError(f"expected a value for option '{key}'", text,
                                        tokens[i][2] if i < len(tokens) else len(text))
                _, raw, value_column = tokens[i]
                i += 1
                if key in options:
                    raise PipelineError(f"option '{key}' is given twice", text, key_column)
                try:
                    options[key] = option.convert(raw, name)
                except PassRegistryError as err:
                    raise PipelineError(str(err), text, value_column) from None
            if i >= len(tokens):
                raise PipelineError(f"missing '}}' after the options of '{name}'", text, len(text))
            i += 1
        invocations.append(PassInvocation(name, options))
        if i >= len(tokens):
            return Pipeline(tuple(invocations))
        kind, value, column = tokens[i]
        if value != ",":
            raise PipelineError("expected ',' between passes", text, column)
        i += 1
