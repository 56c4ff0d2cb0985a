"""Pattern rewriting: match a subgraph by ops, operand structure and predicates, replace it.

A rule is data: a pattern, a rewrite function and the one-line algebra it implements.

    # relu(conv2d(x, w, b)) -> fused_conv2d(x, w, b){activation=relu}
    Rule("relu(conv2d(x, w, b)) -> fused_conv2d{relu}",
         Pat("relu", Pat("conv2d", Var("x"), Var("w"), Var("b"), single_use=True, name="conv")),
         lambda m, rw: rw.op("fused_conv2d", m["x"], m["w"], m["b"], activation="relu",
                             **m.node("conv").attrs))

Rule sets combine by concatenation; ``apply_rules`` rewrites greedily to a fixed point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from nimbus.compiler.ir import Graph, Location, Node, Value


class Var:
    """Matches any value (or an absent operand when ``optional``), captured under ``name``."""

    def __init__(self, name: str, where: Callable[[Value], bool] | None = None,
                 constant: bool = False, optional: bool = False):
        self.name = name
        self.where = where
        self.constant = constant
        self.optional = optional

    def match(self, value: Value | None, state: "_MatchState") -> bool:
        if value is None:
            return self.optional and state.capture(self.name, None)
        if self.constant and not value.is_constant:
            return False
        if self.where is not None and not self.where(value):
            return False
        return state.capture(self.name, value)


def Absent() -> Var:
    """Matches only an absent optional operand."""
    return Var("_absent", where=lambda value: False, optional=True)


def Const(name: str, where: Callable[[Value], bool] | None = None) -> Var:
    """Matches a named constant (a weight)."""
    return Var(name, where, constant=True)


class Pat:
    """Matches a value produced by a node of ``op`` (one name or several) whose operands match.

    ``single_use``: the value has no other user, so it may be folded away. ``commutative``:
    a two-operand pattern also tries the swapped order. ``where(node)`` adds a predicate on the
    node (attributes, types). ``name`` captures the node for the rewrite.
    """

    def __init__(self, op: str | Sequence[str], *operands: "Pat | Var", name: str | None = None,
                 single_use: bool = False, commutative: bool = False,
                 where: Callable[[Node], bool] | None = None):
        self.ops = (op,) if isinstance(op, str) else tuple(op)
        self.operands = operands
        self.name = name
        self.single_use = single_use
        self.commutative = commutative
        self.where = where

    def match(self, value: Value | None, state: "_MatchState") -> bool:
        if value is None or value.producer is None:
            return False
        node = value.producer
        if node.op not in self.ops or len(node.results) != 1:
            return False
        if self.single_use and len(state.uses.get(value, ())) != 1:
            return False
        if self.where is not None and not self.where(node):
            return False
        orders = [list(node.operands)]
        if self.commutative and len(node.operands) == 2:
            orders.append(list(reversed(node.operands)))
        for operands in orders:
            trial = state.fork()
            if len(operands) < len(self.operands):
                continue
            if all(p.match(o, trial) for p, o in zip(self.operands, operands)):
                if self.name is None or trial.capture_node(self.name, node):
                    state.adopt(trial)
                    return True
        return False


class _MatchState:
    def __init__(self, uses: dict):
        self.uses = uses
        self.values: dict[str, Value | None] = {}
        self.nodes: dict[str, Node] = {}
        self.visited: list[Node] = []

    def fork(self) -> "_MatchState":
        other = _MatchState(self.uses)
        other.values = dict(self.values)
        other.nodes = dict(self.nodes)
        return other

    def adopt(self, other: "_MatchState") -> None:
        self.values, self.nodes = other.values, other.nodes

    def capture(self, name: str, value: Value | None) -> bool:
        # A name used twice in a pattern must bind the same value both times.
        if name in self.values:
            return self.values[name] is value
        self.values[name] = value
        return True

    def capture_node(self, name: str, node: Node) -> bool:
        if name in self.nodes:
            return self.nodes[name] is node
        self.nodes[name] = node
        return True


@dataclass
class Match:
    root: Node
    values: dict[str, Value | None]
    nodes: dict[str, Node]

    def __getitem__(self, name: str) -> Value | None:
        return self.values[name]

    def node(self, name: str) -> Node:
        return self.nodes[name]


def match(pattern: Pat, value: Value, uses: dict) -> Match | None:
    state = _MatchState(uses)
    if pattern.match(value, state):
        return Match(value.producer, state.values, state.nodes)
    return None


class Rewriter:
    """Builds replacement nodes just before the matched root, located where the match was."""

    def __init__(self, graph: Graph, root: Node, loc: Location):
        self.graph = graph
        self.root = root
        self.loc = loc
        self.created: list[Node] = []

    def op(self, op: str, *operands: Value | None, **attrs) -> Value | list[Value]:
        node = self.graph.add_node(op, operands, attrs, self.loc, before=self.root)
        self.created.append(node)
        return node.results[0] if len(node.results) == 1 else node.results

    def constant(self, stem: str, data) -> Value:
        return self.graph.add_constant(self.graph.unique_constant_name(stem), data)


RewriteFn = Callable[[Match, Rewriter], "Value | Sequence[Value] | None"]


@dataclass
class Rule:
    """``description`` is the algebra, e.g. ``relu(conv2d(x, w, b)) -> fused_conv2d``."""

    description: str
    pattern: Pat
    rewrite: RewriteFn


def apply_rules(graph: Graph, rules: Sequence[Rule], pass_name: str, stats=None,
                max_sweeps: int = 50) -> bool:
    """Rewrite greedily until no rule matches; returns whether anything changed.

    A rewrite returning None declines the match. Replaced nodes left without users are removed.
    ``stats`` (a Counter) counts applications per rule description.
    """
    changed = False
    for _ in range(max_sweeps):
        if not _sweep(graph, rules, pass_name, stats):
            return changed
        changed = True
    return changed


def _sweep(graph: Graph, rules: Sequence[Rule], pass_name: str, stats) -> bool:
    changed = False
    uses = graph.uses()
    for node in list(graph.nodes):
        if node not in graph.nodes or len(node.results) != 1:
            continue
        for rule in rules:
            found = match(rule.pattern, node.results[0], uses)
            if found is None:
                continue
            # The replacement is located where the first matched node (in program order) was.
            order = {n: i for i, n in enumerate(graph.nodes)}
            matched = sorted({found.root, *found.nodes.values()}, key=order.__getitem__)
            loc = Location.merge(n.loc for n in matched).touched_by(pass_name)
            rewriter = Rewriter(graph, found.root, loc)
            replacement = rule.rewrite(found, rewriter)
            if replacement is None:
                for created in rewriter.created:
                    graph.remove_node(created)
                continue
            replacements = [replacement] if isinstance(replacement, Value) else list(replacement)
            for old, new in zip(found.root.results, replacements):
                graph.replace_all_uses(old, new)
            remove_dead_nodes(graph)
            graph.remove_unused_constants()
            if stats is not None:
                stats[rule.description] += 1
            changed = True
            uses = graph.uses()
            break
    return changed


def remove_dead_nodes(graph: Graph) -> int:
    """Remove nodes that no output depends on (ops have no side effects); returns the count."""
    live: set[Node] = set()
    work = [v.producer for v in graph.outputs if v.producer is not None]
    while work:
        node = work.pop()
        if node in live:
            continue
        live.add(node)
        work.extend(o.producer for o in node.operands if o is not None and o.producer is not None)
    before = len(graph.nodes)
    graph.nodes = [n for n in graph.nodes if n in live]
    return before - len(graph.nodes)
