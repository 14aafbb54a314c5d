"""Bounded YAML: a loader that refuses files nested too deep or too big before anything is built, the measure
of a value as it would be built (aliases expanded), and the node walker's basics the config reader builds on.

PyYAML composes and constructs recursively (about 500 levels overflow Python's stack) and expands aliases
when it builds ("billion laughs": 9 x 9 x ... values from a few lines), so both are bounded here.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Final, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from supervisor.spec import Location
from supervisor.values import Unreadable, capped, clip, show

MAX_DEPTH: Final = 64
MAX_NODES: Final = 50_000  # in the whole file, as written
MAX_VALUES: Final = 10_000  # in one options/after value, with its aliases expanded

T = TypeVar("T")


class Refused(yaml.YAMLError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, bounded before it builds anything: it composes one Python stack frame pair per
    level of nesting (500 levels overflow the stack), and a file may hold at most MAX_NODES values."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._within: list[tuple[Node | None, object]] = []  # (parent, index or key node) of each open level
        self._nodes = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        self._nodes += 1
        if len(self._within) >= MAX_DEPTH or self._nodes > MAX_NODES:
            line = self.peek_event().start_mark.line + 1  # type: ignore[no-untyped-call]
            if self._nodes > MAX_NODES:
                raise Refused(line, f"the config holds more than {MAX_NODES} values; it cannot be meant as one")
            raise Refused(line, f"{self._path()}: nested more than {MAX_DEPTH} levels deep; flatten this value")
        self._within.append((parent, index))
        try:
            return super().compose_node(parent, index)
        finally:
            self._within.pop()

    def _path(self) -> str:
        """The key path of the open levels, e.g. ``servers[0].options.x`` (at most 4 steps, then ``…``)."""
        steps = []
        for parent, at in self._within[1:]:
            if isinstance(at, int):
                steps.append(f"[{at}]")
            elif isinstance(at, ScalarNode):
                steps.append(f".{clip(at.value, 40)}")
            else:
                steps.append(".(a key)" if isinstance(parent, MappingNode) else "")
        path = "".join(steps[:4]).lstrip(".") or "(top level)"
        return path + "…" if len(steps) > 4 else path


def compose_fast(text: str) -> Node | None:
    """libyaml's composer, ~10x faster than PyYAML's (a reload parses on a thread, but the pure-Python one holds
    the GIL and stalls every server): used only for a file the bounds admit, after a flat scan of its events.
    ``None`` when the file is not plainly fine; the caller then composes with BoundedLoader for the exact error."""
    if not yaml.__with_libyaml__ or yaml.reader.Reader.NON_PRINTABLE.search(text) or "\ufeff" in text[1:]:
        return None  # libyaml skips a BOM at any line start where PyYAML refuses it: let PyYAML say so
    if "\t" in text:
        return None  # the two differ on some tabs (after a document end marker): rare in a config, so PyYAML's
    depth = nodes = 0
    try:
        scan = yaml.CSafeLoader(text)
        try:
            while (event := scan.get_event()) is not None:
                # as BoundedLoader counts: every node opens a level, the document's root included
                if isinstance(event, yaml.CollectionStartEvent):
                    depth += 1
                    nodes += 1
                    if depth >= MAX_DEPTH or nodes > MAX_NODES:
                        return None
                elif isinstance(event, yaml.CollectionEndEvent):
                    depth -= 1
                elif isinstance(event, yaml.ScalarEvent | yaml.AliasEvent):
                    nodes += 1
                    if depth + 1 >= MAX_DEPTH or nodes > MAX_NODES:
                        return None
        finally:
            scan.dispose()
        loader = yaml.CSafeLoader(text)
        try:
            return loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.YAMLError:
        return None


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


def measure(root: Node) -> tuple[int, int] | None:
    """(values, depth) of ``root`` as it would be built, aliases expanded, in time linear in the nodes as
    written (each is measured once); None if it contains itself. Values are counted up to MAX_VALUES + 1."""
    measured: dict[int, tuple[int, int]] = {}
    open_: set[int] = set()  # being measured: met again below itself, it is recursive
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        inside: list[Node] = []
        if isinstance(node, MappingNode):
            inside = [n for pair in node.value for n in pair]
        elif isinstance(node, SequenceNode):
            inside = list(node.value)
        if leaving:
            open_.discard(id(node))
            values = 1 + sum(measured[id(n)][0] for n in inside)
            depth = 1 + max((measured[id(n)][1] for n in inside), default=0)
            measured[id(node)] = (min(values, MAX_VALUES + 1), depth)
        elif id(node) in open_:
            return None
        elif id(node) not in measured:
            open_.add(id(node))
            stack.append((node, True))
            stack.extend((n, False) for n in inside)
    return measured[id(root)]
