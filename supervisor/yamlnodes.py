"""The node walker the config reader builds on: a mapping's fields with their key lines, and problems collected
as ``file:line: key.path: ...`` instead of stopping at the first. Values are measured before they are built
(yamlbounds.py): an alias-expanded "billion laughs" value is refused, not built.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Final, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from supervisor.spec import Location
from supervisor.values import Unreadable, capped, clip, show
from supervisor.yamlbounds import MAX_DEPTH, MAX_VALUES, measure

T = TypeVar("T")


class Fields(dict[str, Node]):
    """A mapping's value nodes by key, remembering each key's own node: problems point at the key's line
    (a block list, or an alias to an anchor written elsewhere, starts on another line than its key)."""

    def __init__(self) -> None:
        super().__init__()
        self.key_nodes: dict[str, Node] = {}

    def at(self, key: str, default: Node) -> Node:
        return self.key_nodes.get(key, default)


class NodeReader:
    """Walks composed YAML nodes; collects problems (``file:line: key.path: ...``) instead of stopping at the first."""

    def __init__(self, file: str) -> None:
        self.file = file
        self._problems: list[tuple[int, str]] = []
        self._constructor = yaml.constructor.SafeConstructor()

    @property
    def problems(self) -> list[str]:
        """Every problem, top of the file first (the walk visits a server's keys in a fixed order)."""
        return capped([message for _, message in sorted(self._problems, key=lambda p: p[0])])

    def fail(self, node: Node | None, path: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        text = f"{self.file}:{line}: {path}: {message}" if path else f"{self.file}:{line}: {message}"
        self._problems.append((line, text))

    def loc(self, node: Node, path: str) -> Location:
        return Location(self.file, node.start_mark.line + 1, path)

    # -- structure -----------------------------------------------------------------------------------------------

    def mapping(self, node: Node, path: str, allowed: tuple[str, ...]) -> Fields | None:
        if not isinstance(node, MappingNode):
            got = show(self.scalar(node)) if isinstance(node, ScalarNode) else show(node)
            self.fail(node, path or "(top level)", f"expected a mapping with keys {', '.join(allowed)}, got {got}")
            return None
        out = Fields()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else None
            kpath = f"{path}.{clip(str(key), 40)}" if path else clip(str(key), 40)
            if not isinstance(key, str):
                self.fail(key_node, path or "(top level)", "keys must be plain strings")
            elif key in out:
                self.fail(key_node, kpath, "duplicate key; keep only one")
            elif key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"expected one of: {', '.join(allowed)}"
                self.fail(key_node, kpath, f"unknown key; {hint}")
            else:
                out[key] = value_node
                out.key_nodes[key] = key_node
        return out

    def scalar(self, node: Node) -> object:
        if isinstance(node, ScalarNode):
            return self.construct(node)
        return node  # a mapping or list where a scalar belongs: the checkers below reject it

    def construct(self, node: Node) -> object:
        """The Python value of ``node``, or an Unreadable (never raises: an odd tag is a config problem)."""
        try:
            return self._constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
            # the constructor keeps half-built state after an error: start a fresh one
            self._constructor = yaml.constructor.SafeConstructor()
            reason = exc.problem if isinstance(exc, yaml.MarkedYAMLError) and exc.problem else str(exc)
            if isinstance(node, ScalarNode):
                raw = f"{node.tag} {node.value}" if node.tag.startswith("!") else node.value
                return Unreadable(repr(raw), reason)
            return Unreadable(show(node), reason)

    def data(self, node: Node, at: Node, path: str) -> object:
        """Free-form data (options, after), bounded before it is built; duplicate keys inside are problems too.

        Returns REFUSED (after reporting why, at ``at``) for a value too big, too deep or containing itself.
        """
        measured = measure(node)
        if measured is None:
            self.fail(at, path, "contains itself through an alias (*name inside &name); remove that alias")
            return REFUSED
        values, depth = measured
        if depth > MAX_DEPTH:
            self.fail(at, path, f"nested more than {MAX_DEPTH} levels deep (aliases expanded); flatten this value")
            return REFUSED
        if values > MAX_VALUES:
            self.fail(at, path, f"holds more than {MAX_VALUES} values with its aliases expanded; make it smaller")
            return REFUSED
        self.duplicates(node, path, set())
        return self.construct(node)

    def duplicates(self, node: Node, path: str, seen: set[int]) -> None:
        if id(node) in seen:  # an alias to an enclosing node
            return
        seen.add(id(node))
        if isinstance(node, MappingNode):
            keys: set[str] = set()
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, ScalarNode) else None
                kpath = f"{path}.{clip(str(key), 40)}"
                if key is not None and key in keys:
                    self.fail(key_node, kpath, "duplicate key; keep only one")
                elif key is not None:
                    keys.add(key)
                self.duplicates(value_node, kpath, seen)
        elif isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                self.duplicates(item, f"{path}[{i}]", seen)

    def field(self, fields: Fields, key: str, path: str, check: Callable[[object], T], default: T) -> T:
        node = fields.get(key)
        if node is None:
            return default
        kpath = f"{path}.{key}" if path else key
        value = self.scalar(node)
        try:
            return check(value)
        except ValueError as exc:
            self.fail(fields.at(key, node), kpath, f"{exc}, got {show(value)}")
            return default


REFUSED: Final = object()  # data() reported the value as too big to build
