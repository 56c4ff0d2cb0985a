"""A graph on disk: its text, and beside it the constants too large to print inline.

``model.nir`` holds the text; ``model.nir.safetensors`` holds every constant printed as
``external``, keyed by constant name. Nothing is pickled, so loading never runs code.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from ..ir import Graph
from .parser import parse_ir
from .printer import DEFAULT_INLINE_LIMIT, print_ir


def weights_path(path: str | os.PathLike) -> Path:
    """Where the external constants of the text at ``path`` are stored."""
    return Path(f"{os.fspath(path)}.safetensors")


def save_ir(graph: Graph, path: str | os.PathLike) -> None:
    """Write the text of ``graph`` to ``path`` and its large constants beside it."""
    external = {name: np.ascontiguousarray(value.data) for name, value in graph.constants.items()
                if value.data.size > DEFAULT_INLINE_LIMIT}
    Path(path).write_text(print_ir(graph, inline_limit=DEFAULT_INLINE_LIMIT), encoding="utf-8")
    if external:
        save_file(external, str(weights_path(path)))


def load_ir(path: str | os.PathLike) -> Graph:
    """The graph that ``save_ir`` wrote to ``path``."""
    text = Path(path).read_text(encoding="utf-8")
    weights = weights_path(path)
    constants = load_file(str(weights)) if weights.exists() else {}
    return parse_ir(text, constants, filename=os.fspath(path))
