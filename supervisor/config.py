"""Read a YAML config into frozen dataclasses, with every problem located at file:line: key.path.

No asyncio and no imports of runtime modules: this is the first step of config -> plan -> running tree.
Handlers are only checked for shape here (``module:attr``); importing them is the plan's job.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import reprlib
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from supervisor.errors import ConfigError

STRATEGIES: Final = ("one_for_one", "one_for_all", "rest_for_one")
RESTART_TYPES: Final = ("permanent", "transient", "temporary")
HANDLER_ERROR_POLICIES: Final = ("log", "restart")
LOOPS: Final = ("asyncio", "uvloop")

# Bounds on what a config may make us read or build, whoever wrote it: every check is then bounded in time and memory
MAX_FILE_BYTES: Final = 1 << 20
MAX_DEPTH: Final = 64  # PyYAML composes and constructs recursively: ~500 levels overflow Python's stack
MAX_NODES: Final = 50_000  # in the whole file, as written
MAX_VALUES: Final = 10_000  # in one options/after value, with its aliases expanded (9 x 9 x ... "billion laughs")
SHOWN: Final = 80  # characters of a user's value echoed in a message
MAX_PROBLEMS: Final = 100  # lines reported; the rest are counted

# every pattern is used with fullmatch: "$" would also accept a trailing newline
_DURATION_RE: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*")
# ``250ms`` is 250 / 1000 (not 250 * 0.001, which is off by one ulp for many values)
_DURATION_DIVISORS: Final = {"ms": 1000.0}
_DURATION_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_DOTTED: Final = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_HANDLER_RE: Final = re.compile(f"{_DOTTED}:{_DOTTED}")


@dataclass(frozen=True, slots=True)
class Location:
    """Where a value came from, so later stages (plan, reload) can still point at the YAML."""

    file: str
    line: int
    path: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.path}"


@dataclass(frozen=True, slots=True)
class SupervisorSpec:
    strategy: str = "one_for_one"
    max_restarts: int = 10
    restart_window: float = 60.0
    shutdown_timeout: float = 30.0
    loop: str = "asyncio"
    max_loop_lag: float = 5.0  # a loop blocked this long makes /healthz fail (LAG_WINDOW)


@dataclass(frozen=True, slots=True)
class MetricsSpec:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9100


@dataclass(frozen=True, slots=True)
class ConsoleSpec:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 20101
    allow_remote: bool = False
    repl: bool = False


@dataclass(frozen=True, slots=True)
class BackoffSpec:
    initial: float = 0.1
    factor: float = 2.0
    max: float = 5.0  # with max_restarts 10 and restart_window 60s, the give-up rule stays reachable
    jitter: float = 0.1
    reset_after: float = 10.0


@dataclass(frozen=True, slots=True)
class ServerSpec:
    name: str
    handler: str
    port: int
    host: str = "127.0.0.1"
    restart: str = "permanent"
    on_handler_error: str = "log"
    backoff: BackoffSpec = BackoffSpec()
    shutdown_timeout: float = 5.0
    backlog: int = 1024
    max_connections: int = 10_000  # concurrent handlers; 0: no limit
    idle_timeout: float = 0.0  # close a connection that sent nothing for this long; 0: never
    read_limit: int = 64 * 1024  # StreamReader limit: the longest line or message a client can send
    max_write_buffer: int = 8 * 1024 * 1024  # unsent bytes a connection may hold; 0: no limit
    start_timeout: float = 30.0  # entering the lifespan
    start_retries: int = 5  # failed starts, never having served, before the server is given up on
    after: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    # key -> where it was written; keys left at their default point at the server's own entry
    locations: Mapping[str, Location] = field(default_factory=dict, compare=False, repr=False)

    def where(self, key: str) -> Location:
        found = self.locations.get(key) or self.locations.get(".")
        # a spec built in code (not read from YAML) has no locations: still name the key
        return found or Location("<config>", 0, f"server '{self.name}'.{key}")


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    servers: tuple[ServerSpec, ...]
    supervisor: SupervisorSpec = SupervisorSpec()
    metrics: MetricsSpec = MetricsSpec()
    console: ConsoleSpec = ConsoleSpec()
    # "metrics", "metrics.port", "console.port", ... -> where it was written (sections and their keys)
    locations: Mapping[str, Location] = field(default_factory=dict, compare=False, repr=False)

    def where(self, key: str) -> Location:
        """Where ``key`` (e.g. ``metrics.port``) was written, else its section, else the top of the file."""
        section = key.partition(".")[0]
        return self.locations.get(key) or self.locations.get(section) or Location(str(self.path), 1, key)


def parse_duration(value: object) -> float:
    """``1.5`` / ``250ms`` / ``10s`` / ``2m`` / ``1h`` -> seconds. Raises ValueError with the reason."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 250ms, 10s, 2m or a number of seconds")
    try:
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str) and (m := _DURATION_RE.fullmatch(value)):
            unit = m.group(2)
            if unit in _DURATION_DIVISORS:
                seconds = float(m.group(1)) / _DURATION_DIVISORS[unit]
            else:
                seconds = float(m.group(1)) * _DURATION_UNITS[unit]
        else:
            raise ValueError("expected a duration like 250ms, 10s, 2m or a number of seconds")
    except OverflowError:  # an integer too large for a float
        raise ValueError("expected a finite duration") from None
    if seconds < 0:
        raise ValueError("expected a duration >= 0")
    if seconds != seconds or seconds == float("inf"):
        raise ValueError("expected a finite duration")
    return seconds


_KINDS: Final = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a named pipe", stat.S_IFCHR: "a character device"}


def load_config(path: str | Path) -> Config:
    """Read and validate ``path``. Raises ConfigError listing every problem found."""
    path = Path(path)
    try:
        # O_NONBLOCK: opening a named pipe must not wait for a writer (it is refused just below)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):  # /dev/zero never ends, a pipe may never be written
                kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
                raise ConfigError([f"{path}: cannot read the config file: it is {kind}; name a regular file"])
            data = b""
            while len(data) <= MAX_FILE_BYTES and (chunk := os.read(fd, MAX_FILE_BYTES + 1 - len(data))):
                data += chunk
        finally:
            os.close(fd)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config file: {exc.strerror or exc}; check the path"]) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError([f"{path}: the config file is larger than 1 MiB; check the path (a config is a few KiB)"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: the config file is not UTF-8 text ({exc.reason})"]) from None
    return parse_config(text.replace("\r\n", "\n").replace("\r", "\n"), path)


def parse_config(text: str, path: Path) -> Config:
    loader: _Loader | None = None
    try:
        loader = _Loader(text)  # checks every character first: may raise ReaderError
        root = loader.get_single_node()
    except _Refused as exc:
        raise ConfigError([f"{path}:{exc.line}: {exc.args[0]}"]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        reason = clip(str(exc.problem or exc.context), 200)
        raise ConfigError([f"{path}:{line}: invalid YAML: {reason}; fix the syntax"]) from None
    except yaml.reader.ReaderError as exc:  # a control character: located by offset, not by a mark
        line = text.count("\n", 0, exc.position) + 1
        reason = str(exc).splitlines()[0]
        raise ConfigError([f"{path}:{line}: invalid YAML: {reason}; remove that character"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}:1: invalid YAML: {clip(str(exc), 200)}"]) from None
    except RecursionError:  # MAX_DEPTH keeps PyYAML well inside the stack; this only if the caller's is nearly full
        line = loader.get_mark().line + 1 if loader else 1
        raise ConfigError([f"{path}:{line}: nested too deeply for the YAML reader; flatten this value"]) from None
    finally:
        if loader is not None:
            loader.dispose()
    reader = _Reader(str(path))
    config = reader.config(root, path)
    if reader.problems or config is None:
        raise ConfigError(reader.problems or [f"{path}:1: the config is empty"])
    return config


T = TypeVar("T")


class _Refused(yaml.YAMLError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


class _Loader(yaml.SafeLoader):
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
                raise _Refused(line, f"the config holds more than {MAX_NODES} values; it cannot be meant as one")
            raise _Refused(line, f"{self._path()}: nested more than {MAX_DEPTH} levels deep; flatten this value")
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


class _Unreadable:
    """Stands for a value YAML could compose but not construct (bad tag, impossible date, ...)."""

    def __init__(self, shown: str, reason: str) -> None:
        self.shown = clip(shown)
        self.reason = clip(reason)

    def __repr__(self) -> str:
        return f"{self.shown}, which YAML cannot read ({self.reason})"


class _Fields(dict[str, Node]):
    """A mapping's value nodes by key, remembering each key's own node: problems point at the key's line
    (a block list, or an alias to an anchor written elsewhere, starts on another line than its key)."""

    def __init__(self) -> None:
        super().__init__()
        self.key_nodes: dict[str, Node] = {}

    def at(self, key: str, default: Node) -> Node:
        return self.key_nodes.get(key, default)


class _Reader:
    """Walks the composed YAML nodes; collects problems instead of stopping at the first."""

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

    def mapping(self, node: Node, path: str, allowed: tuple[str, ...]) -> _Fields | None:
        if not isinstance(node, MappingNode):
            got = _show(self.scalar(node)) if isinstance(node, ScalarNode) else _show(node)
            self.fail(node, path or "(top level)", f"expected a mapping with keys {', '.join(allowed)}, got {got}")
            return None
        out = _Fields()
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
        """The Python value of ``node``, or an _Unreadable (never raises: an odd tag is a config problem)."""
        try:
            return self._constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
            # the constructor keeps half-built state after an error: start a fresh one
            self._constructor = yaml.constructor.SafeConstructor()
            reason = exc.problem if isinstance(exc, yaml.MarkedYAMLError) and exc.problem else str(exc)
            if isinstance(node, ScalarNode):
                raw = f"{node.tag} {node.value}" if node.tag.startswith("!") else node.value
                return _Unreadable(repr(raw), reason)
            return _Unreadable(_show(node), reason)

    def data(self, node: Node, at: Node, path: str) -> object:
        """Free-form data (options, after), bounded before it is built; duplicate keys inside are problems too.

        Returns _REFUSED (after reporting why, at ``at``) for a value too big, too deep or containing itself.
        """
        measured = _measure(node)
        if measured is None:
            self.fail(at, path, "contains itself through an alias (*name inside &name); remove that alias")
            return _REFUSED
        values, depth = measured
        if depth > MAX_DEPTH:
            self.fail(at, path, f"nested more than {MAX_DEPTH} levels deep (aliases expanded); flatten this value")
            return _REFUSED
        if values > MAX_VALUES:
            self.fail(at, path, f"holds more than {MAX_VALUES} values with its aliases expanded; make it smaller")
            return _REFUSED
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

    def field(self, fields: _Fields, key: str, path: str, check: Callable[[object], T], default: T) -> T:
        node = fields.get(key)
        if node is None:
            return default
        kpath = f"{path}.{key}" if path else key
        value = self.scalar(node)
        try:
            return check(value)
        except ValueError as exc:
            self.fail(fields.at(key, node), kpath, f"{exc}, got {_show(value)}")
            return default

    # -- sections -------------------------------------------------------------------------------------------------

    def config(self, root: Node | None, path: Path) -> Config | None:
        if root is None or (isinstance(root, ScalarNode) and root.tag == "tag:yaml.org,2002:null"):
            self.fail(None, "", "the config is empty; it needs at least a 'servers' list")
            return None
        top = self.mapping(root, "", ("supervisor", "metrics", "console", "servers"))
        if top is None:
            return None
        locations = {".": self.loc(root, "")}
        for section in ("supervisor", "metrics", "console"):
            node = top.get(section)
            if node is None:
                continue
            locations[section] = self.loc(top.at(section, node), section)
            if isinstance(node, MappingNode):
                for key_node, _ in node.value:
                    if isinstance(key_node, ScalarNode):
                        kpath = f"{section}.{key_node.value}"
                        locations.setdefault(kpath, self.loc(key_node, kpath))
        sup = self.supervisor(top.get("supervisor"))
        metrics = self.metrics(top.get("metrics"))
        console = self.console(top.get("console"))
        servers = self.servers(top.get("servers"), root)
        return Config(path=path, servers=servers, supervisor=sup, metrics=metrics, console=console, locations=locations)

    def supervisor(self, node: Node | None) -> SupervisorSpec:
        d = SupervisorSpec()
        if node is None or (f := self.mapping(node, "supervisor", _keys(SupervisorSpec))) is None:
            return d
        p = "supervisor"
        return SupervisorSpec(
            strategy=self.field(f, "strategy", p, _choice(STRATEGIES), d.strategy),
            max_restarts=self.field(f, "max_restarts", p, _int(0, 1_000_000), d.max_restarts),
            restart_window=self.field(f, "restart_window", p, _duration(positive=True), d.restart_window),
            shutdown_timeout=self.field(f, "shutdown_timeout", p, _duration(positive=True), d.shutdown_timeout),
            loop=self.field(f, "loop", p, _choice(LOOPS), d.loop),
            max_loop_lag=self.field(f, "max_loop_lag", p, _duration(positive=True), d.max_loop_lag),
        )

    def metrics(self, node: Node | None) -> MetricsSpec:
        d = MetricsSpec()
        if node is None or (f := self.mapping(node, "metrics", _keys(MetricsSpec))) is None:
            return d
        p = "metrics"
        return MetricsSpec(
            enabled=self.field(f, "enabled", p, _bool, d.enabled),
            host=self.field(f, "host", p, _host, d.host),
            port=self.field(f, "port", p, _int(0, 65535), d.port),
        )

    def console(self, node: Node | None) -> ConsoleSpec:
        d = ConsoleSpec()
        if node is None or (f := self.mapping(node, "console", _keys(ConsoleSpec))) is None:
            return d
        p = "console"
        return ConsoleSpec(
            enabled=self.field(f, "enabled", p, _bool, d.enabled),
            host=self.field(f, "host", p, _host, d.host),
            # the web UI takes port + 1, and aiomonitor cannot report a port chosen by the OS
            port=self.field(f, "port", p, _int(1, 65534), d.port),
            allow_remote=self.field(f, "allow_remote", p, _bool, d.allow_remote),
            repl=self.field(f, "repl", p, _bool, d.repl),
        )

    def servers(self, node: Node | None, root: Node) -> tuple[ServerSpec, ...]:
        if node is None:
            self.fail(root, "servers", "missing; declare at least one server (name, handler, port)")
            return ()
        if not isinstance(node, SequenceNode) or not node.value:
            got = "an empty list" if isinstance(node, SequenceNode) else _show(self.scalar(node))
            self.fail(node, "servers", f"expected a non-empty list of servers, got {got}")
            return ()
        specs = [s for i, item in enumerate(node.value) if (s := self.server(item, f"servers[{i}]")) is not None]
        return tuple(specs)

    def server(self, node: Node, p: str) -> ServerSpec | None:
        f = self.mapping(node, p, _keys(ServerSpec))
        if f is None:
            return None
        missing = [k for k in ("name", "handler", "port") if k not in f]
        for key in missing:
            self.fail(node, f"{p}.{key}", "missing; every server needs name, handler and port")
        locations = {".": self.loc(node, p)} | {k: self.loc(f.at(k, v), f"{p}.{k}") for k, v in f.items()}
        d = ServerSpec(name="", handler="", port=0)
        name = self.field(f, "name", p, _name, "")
        handler = self.field(f, "handler", p, _handler, "")
        port = self.field(f, "port", p, _int(0, 65535), 0)
        options: Mapping[str, Any] = {}
        if (opt_node := f.get("options")) is not None:
            value = self.data(opt_node, f.at("options", opt_node), f"{p}.options")
            if value is _REFUSED:
                pass
            elif isinstance(value, dict) and all(isinstance(k, str) for k in value):
                options = value
            else:
                expected = "expected a mapping of option names to values"
                self.fail(f.at("options", opt_node), f"{p}.options", f"{expected}, got {_show(value)}")
        after: tuple[str, ...] = ()
        if (after_node := f.get("after")) is not None:
            value = self.data(after_node, f.at("after", after_node), f"{p}.after")
            if isinstance(value, str):
                value = [value]
            if value is _REFUSED:
                pass
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                after = tuple(value)
            else:
                expected = "expected a list of server names"
                self.fail(f.at("after", after_node), f"{p}.after", f"{expected}, got {_show(value)}")
        spec = ServerSpec(
            name=name,
            handler=handler,
            port=port,
            host=self.field(f, "host", p, _host, d.host),
            restart=self.field(f, "restart", p, _choice(RESTART_TYPES), d.restart),
            on_handler_error=self.field(f, "on_handler_error", p, _choice(HANDLER_ERROR_POLICIES), d.on_handler_error),
            backoff=self.backoff(f.get("backoff"), f"{p}.backoff"),
            shutdown_timeout=self.field(f, "shutdown_timeout", p, _duration(positive=True), d.shutdown_timeout),
            backlog=self.field(f, "backlog", p, _int(1, 65535), d.backlog),
            max_connections=self.field(f, "max_connections", p, _int(0, 10_000_000), d.max_connections),
            idle_timeout=self.field(f, "idle_timeout", p, _duration(), d.idle_timeout),
            read_limit=self.field(f, "read_limit", p, _size(1024, 1 << 30), d.read_limit),
            max_write_buffer=self.field(f, "max_write_buffer", p, _size(0, 1 << 40), d.max_write_buffer),
            start_timeout=self.field(f, "start_timeout", p, _duration(positive=True), d.start_timeout),
            start_retries=self.field(f, "start_retries", p, _int(0, 1_000_000), d.start_retries),
            after=after,
            options=options,
            locations=locations,
        )
        return None if missing else spec

    def backoff(self, node: Node | None, p: str) -> BackoffSpec:
        d = BackoffSpec()
        if node is None or (f := self.mapping(node, p, _keys(BackoffSpec))) is None:
            return d
        spec = BackoffSpec(
            initial=self.field(f, "initial", p, _duration(), d.initial),
            factor=self.field(f, "factor", p, _float(1.0, 100.0), d.factor),
            max=self.field(f, "max", p, _duration(), d.max),
            jitter=self.field(f, "jitter", p, _float(0.0, 1.0), d.jitter),
            reset_after=self.field(f, "reset_after", p, _duration(), d.reset_after),
        )
        if spec.max < spec.initial:
            default = "" if "max" in f else " (the default)"
            self.fail(
                f.at("max", node),
                f"{p}.max",
                f"expected a duration >= backoff.initial ({spec.initial:g}s), got {spec.max:g}s{default}",
            )
        return spec


def capped(lines: list[str]) -> list[str]:
    """At most MAX_PROBLEMS lines (each ``file:line: ...``), the last one counting the lines left out."""
    if len(lines) <= MAX_PROBLEMS:
        return lines
    first_left_out = _LOCATED.match(lines[MAX_PROBLEMS - 1])
    where = first_left_out.group(1) if first_left_out else lines[0].partition(": ")[0]
    return [*lines[: MAX_PROBLEMS - 1], f"{where}: and {len(lines) - MAX_PROBLEMS + 1} more; fix these and check again"]


_LOCATED: Final = re.compile(r"(.*?:\d+): ")


# -- value checkers: return the value or raise ValueError("expected ...") -------------------------------------------


def _keys(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.name != "locations")


_REFUSED: Final = object()  # data() reported the value as too big to build


def _measure(root: Node) -> tuple[int, int] | None:
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


class _Brief(reprlib.Repr):
    """repr() bounded whatever it is given (10,000 aliases of one long string; an integer of 20,000 hex digits,
    which int's repr refuses)."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxlist, self.maxdict = 4, 12, 12
        self.maxstring = self.maxlong = self.maxother = SHOWN + 20

    def repr_str(self, x: str, level: int) -> str:
        return repr(x) if len(x) <= SHOWN else repr(x[:SHOWN]) + "…"

    def repr_int(self, x: int, level: int) -> str:
        return f"an integer of {x.bit_length()} bits" if x.bit_length() > 10_000 else repr(x)


_BRIEF: Final = _Brief()


def clip(text: str, limit: int = SHOWN) -> str:
    """User text safe to echo in a one-line message: control characters escaped, at most ``limit`` characters."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit + 1])
    return text if len(text) <= limit else text[:limit] + "…"


def _show(value: object) -> str:
    """A value as the user wrote it in YAML terms (``null``, ``true``, ``'http'``, a list), at most ~80 chars."""
    if isinstance(value, SequenceNode):
        return "a list"
    if isinstance(value, MappingNode):
        return "a mapping"
    if isinstance(value, _Unreadable):
        return repr(value)  # its parts are clipped already
    if isinstance(value, ScalarNode):
        value = value.value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return clip(_BRIEF.repr(value))


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError("expected true or false")


def _int(lo: int, hi: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi:
            return value
        raise ValueError(f"expected an integer {lo}-{hi}")

    return check


def _float(lo: float, hi: float) -> Callable[[object], float]:
    def check(value: object) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool) and lo <= value <= hi:
            return float(value)
        raise ValueError(f"expected a number from {lo:g} to {hi:g}")

    return check


def _duration(*, positive: bool = False) -> Callable[[object], float]:
    def check(value: object) -> float:
        seconds = parse_duration(value)
        if positive and seconds <= 0:
            raise ValueError("expected a duration > 0")
        return seconds

    return check


_SIZE_RE: Final = re.compile(r"\s*(\d{1,30})\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*")
_SIZE_UNITS: Final = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "KiB": 1024,
    "MB": 10**6,
    "MiB": 1 << 20,
    "GB": 10**9,
    "GiB": 1 << 30,
}


def parse_size(value: object) -> int:
    """``65536`` / ``64KiB`` / ``8MiB`` / ``1MB`` -> bytes. Raises ValueError with the reason."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and (m := _SIZE_RE.fullmatch(value)):
        return int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    raise ValueError("expected a size like 65536, 64KiB or 8MiB")


def _size(lo: int, hi: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        size = parse_size(value)
        if not lo <= size <= hi and not (size == 0 and lo == 0):
            raise ValueError(f"expected a size from {lo} to {hi} bytes")
        return size

    return check


def _choice(options: tuple[str, ...]) -> Callable[[object], str]:
    def check(value: object) -> str:
        if isinstance(value, str) and value in options:
            return value
        close = difflib.get_close_matches(str(value), options, n=1) if isinstance(value, str) else []
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"expected one of {' | '.join(options)}{hint}")

    return check


def _host(value: object) -> str:
    # resolving it is the plan's job; here: one printable word, at most a DNS name long
    if isinstance(value, str) and value and len(value) <= 253 and value.isprintable() and not _SPACE.search(value):
        return value
    raise ValueError("expected a host name or IP address such as 127.0.0.1")


_SPACE: Final = re.compile(r"\s")


def _name(value: object) -> str:
    if isinstance(value, str) and _NAME_RE.fullmatch(value):
        return value
    raise ValueError("expected a name of letters, digits, '_', '.', '-' (at most 63)")


def _handler(value: object) -> str:
    if isinstance(value, str) and len(value) <= 200 and _HANDLER_RE.fullmatch(value):
        return value
    raise ValueError("expected 'module:attribute', e.g. supervisor.handlers.echo:handle")
