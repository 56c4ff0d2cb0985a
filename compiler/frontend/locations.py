"""Source locations of FX nodes: the user's line from the stack trace, the module path from the
module stack."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.fx

from ..ir import Location

_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in [^\n]*'
                    r'(?:\n(?!\s*File ")\s*(?P<code>[^\n]*))?')
# Frames in these folders are library code, never the line a user wants to see.
_INTERNAL_DIRS = (os.path.dirname(torch.__file__), os.path.dirname(__file__))


@dataclass(frozen=True)
class SourceLine:
    loc: Location
    code: str  # the text of the line, for error messages


def source_line(node: torch.fx.Node) -> SourceLine:
    """The deepest frame of the node's stack trace in user code (the outermost frame when every
    frame is library code, e.g. a torch module used directly), and its module path."""
    scope = _module_path(node)
    frames = list(_FRAME.finditer(node.meta.get("stack_trace") or ""))
    if not frames:
        return SourceLine(Location(scope=scope), "")
    user_frames = [f for f in frames if not _is_internal(f["file"])]
    frame = user_frames[-1] if user_frames else frames[0]
    loc = Location(_display_path(frame["file"]), int(frame["line"]), scope)
    return SourceLine(loc, (frame["code"] or "").strip())


def _module_path(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, _module_type = list(stack.values())[-1]
    return path


def _is_internal(path: str) -> bool:
    if path.startswith(("<", "torch" + os.sep)):
        return True
    absolute = os.path.abspath(path)
    return any(absolute.startswith(folder + os.sep) for folder in _INTERNAL_DIRS)


def _display_path(path: str) -> str:
    """The path relative to the current directory when the file is under it, else as given."""
    absolute = os.path.abspath(path)
    cwd = os.getcwd()
    if absolute.startswith(cwd + os.sep):
        return os.path.relpath(absolute, cwd)
    return path
