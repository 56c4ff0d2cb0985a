"""A small FileCheck for pass tests: IR text in, pipeline, CHECK lines against the output.

Test files hold cases separated by a line ``# -----``. A case has a ``# RUN: <pipeline>`` line,
the input IR, and directives matched in order against the printed output:

    # CHECK: text          a later line contains text
    # CHECK-NEXT: text     the very next line contains text
    # CHECK-NOT: text      no line between the surrounding matches contains text
    # CHECK-COUNT-3: text  three more lines, in order, contain text

Inside text, ``[[NAME:regex]]`` captures and ``[[NAME]]`` reuses a capture, so SSA names need not
be hard-coded; everything else matches literally.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

SEPARATOR = re.compile(r"^# -----\s*$", re.MULTILINE)
DIRECTIVE = re.compile(r"^\s*#\s*(RUN|CHECK(?:-NEXT|-NOT|-COUNT-\d+)?):\s?(.*)$")


@dataclass
class Case:
    name: str
    pipeline: str
    source: str
    checks: list[tuple[str, str]] = field(default_factory=list)


def load_cases(path: Path) -> list[Case]:
    cases = []
    for index, chunk in enumerate(SEPARATOR.split(path.read_text())):
        pipeline, checks, source = None, [], []
        for line in chunk.splitlines():
            match = DIRECTIVE.match(line)
            if match is None:
                source.append(line)
            elif match.group(1) == "RUN":
                pipeline = match.group(2).strip()
            else:
                checks.append((match.group(1), match.group(2)))
        if pipeline is None:
            raise ValueError(f"{path.name} case {index}: no '# RUN:' line")
        cases.append(Case(f"{path.stem}[{index}]", pipeline, "\n".join(source), checks))
    return cases


def _pattern(text: str, captures: dict[str, str]) -> tuple[re.Pattern, list[str]]:
    parts, names, position = [], [], 0
    for match in re.finditer(r"\[\[(\w+)(?::(.*?))?\]\]", text):
        parts.append(re.escape(text[position:match.start()]))
        name, regex = match.group(1), match.group(2)
        if regex is not None:
            parts.append(f"(?P<{name}>{regex})")
            names.append(name)
        elif name in captures:
            parts.append(re.escape(captures[name]))
        else:
            raise AssertionError(f"[[{name}]] is used before it is captured")
        position = match.end()
    parts.append(re.escape(text[position:]))
    return re.compile("".join(parts)), names


def check_output(output: str, checks: list[tuple[str, str]], case: str = "") -> None:
    """Raise AssertionError naming the first directive that does not hold."""
    lines = output.splitlines()
    captures: dict[str, str] = {}
    cursor = 0  # index of the next line that may match
    pending_not: list[str] = []

    def fail(kind: str, text: str, why: str):
        raise AssertionError(f"{case}: '{kind}: {text}' {why}\n--- output ---\n{output}")

    def find(text: str, start: int) -> int | None:
        pattern, names = _pattern(text, captures)
        for index in range(start, len(lines)):
            match = pattern.search(lines[index])
            if match:
                captures.update({n: match.group(n) for n in names})
                return index
        return None

    def assert_absent(start: int, end: int):
        for text in pending_not:
            pattern, _ = _pattern(text, captures)
            for index in range(start, end):
                if pattern.search(lines[index]):
                    fail("CHECK-NOT", text, f"matched line {index + 1}: {lines[index]!r}")
        pending_not.clear()

    for kind, text in checks:
        if kind == "CHECK-NOT":
            pending_not.append(text)
        elif kind == "CHECK-NEXT":
            if cursor >= len(lines) or find(text, cursor) != cursor:
                fail(kind, text, f"does not match line {cursor + 1}")
            cursor += 1
        else:
            count = int(kind.rsplit("-", 1)[1]) if kind.startswith("CHECK-COUNT") else 1
            start = cursor
            for _ in range(count):
                found = find(text, cursor)
                if found is None:
                    fail(kind, text, f"found no match after line {cursor}")
                cursor = found + 1
            assert_absent(start, cursor - 1)
    assert_absent(cursor, len(lines))
