"""Pass registration: a pass is a function with typed keyword-only options and a docstring.

    @register_pass("fold-batchnorm")
    def fold_batchnorm(graph: Graph, ctx: PassContext) -> bool:
        '''Fold inference batch norms into the convolution or linear layer before them.'''

The options are the function's keyword-only parameters: the annotation (int, float, bool or
str) is the type and the default is the default. The docstring's first paragraph describes the
pass; an ``Options:`` section documents each option as ``name: text``. The function returns
whether it changed the graph and records statistics in ``ctx``. Other packages add passes
through the entry-point group ``nimbus.passes``: each entry point names a module (or callable)
whose import registers its passes.
"""

from __future__ import annotations

import difflib
import inspect
import re
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable

ENTRY_POINT_GROUP = "nimbus.passes"
OPTION_TYPES = (bool, int, float, str)
KEBAB_CASE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class PassRegistryError(ValueError):
    """A pass was declared wrongly, or a name or option does not exist."""


@dataclass(frozen=True)
class PassOption:
    name: str
    type: type
    default: Any
    doc: str = ""

    def convert(self, text: str, pass_name: str):
        """Parse an option value written in a pipeline."""
        try:
            if self.type is bool:
                if text not in ("true", "false"):
                    raise ValueError
                return text == "true"
            return self.type(text)
        except ValueError:
            raise PassRegistryError(f"option '{self.name}' of pass '{pass_name}' takes "
                                    f"{self.type.__name__}, got '{text}'") from None

    def format(self, value) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)


@dataclass(frozen=True)
class PassInfo:
    name: str
    run: Callable[..., bool]
    summary: str
    description: str
    options: dict[str, PassOption] = field(default_factory=dict)

    def option(self, key: str) -> PassOption:
        try:
            return self.options[key]
        except KeyError:
            raise PassRegistryError(
                f"pass '{self.name}' has no option '{key}'{_suggestion(key, self.options)} "
                f"(options: {', '.join(self.options) or 'none'})") from None

    def resolve_options(self, given: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments for the pass function: given options over defaults."""
        for key in given:
            self.option(key)
        return {name.replace("-", "_"): given.get(name, option.default)
                for name, option in self.options.items()}


PASSES: dict[str, PassInfo] = {}


def register_pass(name: str):
    """Decorator registering ``fn`` as the pass ``name`` (kebab-case, unique)."""

    def decorate(fn):
        if not KEBAB_CASE.match(name):
            raise PassRegistryError(f"pass name '{name}' must be kebab-case")
        if name in PASSES and PASSES[name].run is not fn:
            raise PassRegistryError(f"pass '{name}' is registered twice")
        summary, description, option_docs = _parse_docstring(fn)
        PASSES[name] = PassInfo(name, fn, summary, description, _options_of(name, fn, option_docs))
        return fn

    return decorate


def _options_of(name: str, fn, option_docs: dict[str, str]) -> dict[str, PassOption]:
    options = {}
    hints = inspect.get_annotations(fn, eval_str=True)
    for param in inspect.signature(fn).parameters.values():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        kind = hints.get(param.name)
        if kind not in OPTION_TYPES or param.default is inspect.Parameter.empty:
            raise PassRegistryError(f"option '{param.name}' of pass '{name}' needs a bool, int, "
                                    f"float or str annotation and a default")
        option_name = param.name.replace("_", "-")
        options[option_name] = PassOption(option_name, kind, param.default,
                                          option_docs.get(option_name, ""))
    return options


def _parse_docstring(fn) -> tuple[str, str, dict[str, str]]:
    text = inspect.getdoc(fn) or ""
    body, _, options_text = text.partition("\nOptions:\n")
    description = " ".join(body.split())
    summary = description.split(". ")[0].rstrip(".") + "." if description else ""
    docs = {}
    for line in options_text.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep:
            docs[key.strip().replace("_", "-")] = value.strip()
    return summary, description, docs


def _suggestion(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


_entry_points_loaded = False


def load_plugin_passes() -> None:
    """Import every pass package registered under the ``nimbus.passes`` entry-point group."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        loaded = entry_point.load()
        if callable(loaded) and not inspect.ismodule(loaded):
            loaded()


def get_pass(name: str) -> PassInfo:
    load_plugin_passes()
    try:
        return PASSES[name]
    except KeyError:
        raise PassRegistryError(f"unknown pass '{name}'{_suggestion(name, PASSES)} "
                                f"(passes: {', '.join(sorted(PASSES))})") from None


def all_passes() -> list[PassInfo]:
    load_plugin_passes()
    return sorted(PASSES.values(), key=lambda p: p.name)
