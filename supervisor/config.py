"""Read a YAML config into frozen dataclasses, with every problem located at file:line: key.path.

No asyncio and no imports of runtime modules: this is the first step of config -> plan -> running tree.
Handlers are only checked for shape here (``module:attr``); importing them is the plan's job.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
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

_DURATION_RE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
# ``250ms`` is 250 / 1000 (not 250 * 0.001, which is off by one ulp for many values)
_DURATION_DIVISORS: Final = {"ms": 1000.0}
_DURATION_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_HANDLER_RE: Final = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


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
    max: float = 30.0
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
        elif isinstance(value, str) and (m := _DURATION_RE.match(value)):
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


def load_config(path: str | Path) -> Config:
    """Read and validate ``path``. Raises ConfigError listing every problem found."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config file: {exc.strerror or exc}; check the path"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: the config file is not UTF-8 text ({exc.reason})"]) from None
    return parse_config(text, path)


def parse_config(text: str, path: Path) -> Config:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise ConfigError([f"{path}:{line}: invalid YAML: {exc.problem or exc.context}; fix the syntax"]) from None
    except yaml.reader.ReaderError as exc:  # a control character: located by offset, not by a mark
        line = text.count("\n", 0, exc.position) + 1
        reason = str(exc).splitlines()[0]
        raise ConfigError([f"{path}:{line}: invalid YAML: {reason}; remove that character"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}:1: invalid YAML: {exc}"]) from None
    reader = _Reader(str(path))
    config = reader.config(root, path)
    if reader.problems or config is None:
        raise ConfigError(reader.problems or [f"{path}:1: the config is empty"])
    return config


T = TypeVar("T")


class _Unreadable:
    """Stands for a value YAML could compose but not construct (bad tag, impossible date, ...)."""

    def __init__(self, shown: str, reason: str) -> None:
        self.shown = shown
        self.reason = reason

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
        return [message for _, message in sorted(self._problems, key=lambda p: p[0])]

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
            kpath = f"{path}.{key}" if path else str(key)
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
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
            # the constructor keeps half-built state after an error: start a fresh one
            self._constructor = yaml.constructor.SafeConstructor()
            reason = exc.problem if isinstance(exc, yaml.MarkedYAMLError) and exc.problem else str(exc)
            if isinstance(node, ScalarNode):
                raw = f"{node.tag} {node.value}" if node.tag.startswith("!") else node.value
                return _Unreadable(repr(raw), reason)
            return _Unreadable(_show(node), reason)

    def data(self, node: Node, path: str) -> object:
        """Free-form data (options, after): duplicate keys anywhere inside are problems too."""
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
                if key is not None and key in keys:
                    self.fail(key_node, f"{path}.{key}", "duplicate key; keep only one")
                elif key is not None:
                    keys.add(key)
                self.duplicates(value_node, f"{path}.{key}", seen)
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
            value = self.data(opt_node, f"{p}.options")
            if isinstance(value, dict) and all(isinstance(k, str) for k in value):
                options = value
            else:
                expected = "expected a mapping of option names to values"
                self.fail(f.at("options", opt_node), f"{p}.options", f"{expected}, got {_show(value)}")
        after: tuple[str, ...] = ()
        if (after_node := f.get("after")) is not None:
            value = self.data(after_node, f"{p}.after")
            if isinstance(value, str):
                value = [value]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
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


# -- value checkers: return the value or raise ValueError("expected ...") -------------------------------------------


def _keys(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.name != "locations")


def _show(value: object) -> str:
    """A value as the user wrote it in YAML terms (``null``, ``true``, ``'http'``, a list)."""
    if isinstance(value, SequenceNode):
        return "a list"
    if isinstance(value, MappingNode):
        return "a mapping"
    if isinstance(value, ScalarNode):
        return repr(value.value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


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


_SIZE_RE: Final = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
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
    if isinstance(value, str) and (m := _SIZE_RE.match(value)):
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
    if isinstance(value, str) and value.strip() and " " not in value:
        return value
    raise ValueError("expected a host name or IP address such as 127.0.0.1")


def _name(value: object) -> str:
    if isinstance(value, str) and _NAME_RE.match(value):
        return value
    raise ValueError("expected a name of letters, digits, '_', '.', '-' (at most 63)")


def _handler(value: object) -> str:
    if isinstance(value, str) and _HANDLER_RE.match(value):
        return value
    raise ValueError("expected 'module:attribute', e.g. supervisor.handlers.echo:handle")
