"""Bounded YAML: a loader that refuses files nested too deep or too big before anything is built, a fast path
through libyaml for a file the bounds admit, and the measure of a value as it would be built (aliases expanded).

PyYAML composes and constructs recursively (about 500 levels overflow Python's stack) and expands aliases
when it builds ("billion laughs": 9 x 9 x ... values from a few lines), so both are bounded here.
"""

from __future__ import annotations

from typing import Final

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from supervisor.values import clip

MAX_DEPTH: Final = 64
MAX_NODES: Final = 50_000  # in the whole file, as written
MAX_VALUES: Final = 10_000  # in one options/after value, with its aliases expanded


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
