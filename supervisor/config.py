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
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
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
    after: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    # key -> where it was written; keys left at their default point at the server's own entry
    locations: Mapping[str, Location] = field(default_factory=dict, compare=False, repr=False)

    def where(self, key: str) -> Location:
        return self.locations.get(key) or self.locations["."]


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    servers: tuple[ServerSpec, ...]
    supervisor: SupervisorSpec = SupervisorSpec()
    metrics: MetricsSpec = MetricsSpec()
    console: ConsoleSpec = ConsoleSpec()


def parse_duration(value: object) -> float:
    """``1.5`` / ``250ms`` / ``10s`` / ``2m`` / ``1h`` -> seconds. Raises ValueError with the reason."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 250ms, 10s, 2m or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError("expected a duration like 250ms, 10s, 2m or a number of seconds")
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError("expected a duration >= 0")
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
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: invalid YAML: {exc}"]) from None
    reader = _Reader(str(path))
    config = reader.config(root, path)
    if reader.problems or config is None:
        raise ConfigError(reader.problems or [f"{path}:1: the config is empty"])
    return config


T = TypeVar("T")


class _Reader:
    """Walks the composed YAML nodes; collects problems instead of stopping at the first."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[str] = []
        self._constructor = yaml.constructor.SafeConstructor()

    def fail(self, node: Node | None, path: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.problems.append(f"{self.file}:{line}: {path}: {message}" if path else f"{self.file}:{line}: {message}")

    def loc(self, node: Node, path: str) -> Location:
        return Location(self.file, node.start_mark.line + 1, path)

    # -- structure -----------------------------------------------------------------------------------------------

    def mapping(self, node: Node, path: str, allowed: tuple[str, ...]) -> dict[str, Node] | None:
        if not isinstance(node, MappingNode):
            self.fail(node, path or "(top level)", f"expected a mapping with keys {', '.join(allowed)}")
            return None
        out: dict[str, Node] = {}
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
        return out

    def scalar(self, node: Node) -> object:
        if isinstance(node, ScalarNode):
            return self._constructor.construct_object(node, deep=True)
        return node  # a mapping or list where a scalar belongs: the checkers below reject it

    def data(self, node: Node) -> object:
        return self._constructor.construct_object(node, deep=True)

    def field(self, fields: dict[str, Node], key: str, path: str, check: Callable[[object], T], default: T) -> T:
        node = fields.get(key)
        if node is None:
            return default
        kpath = f"{path}.{key}" if path else key
        value = self.scalar(node)
        try:
            return check(value)
        except ValueError as exc:
            self.fail(node, kpath, f"{exc}, got {_show(value)}")
            return default

    # -- sections -------------------------------------------------------------------------------------------------

    def config(self, root: Node | None, path: Path) -> Config | None:
        if root is None:
            self.fail(None, "", "the config is empty; it needs at least a 'servers' list")
            return None
        top = self.mapping(root, "", ("supervisor", "metrics", "console", "servers"))
        if top is None:
            return None
        sup = self.supervisor(top.get("supervisor"))
        metrics = self.metrics(top.get("metrics"))
        console = self.console(top.get("console"))
        servers = self.servers(top.get("servers"), root)
        return Config(path=path, servers=servers, supervisor=sup, metrics=metrics, console=console)

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
            self.fail(node, "servers", "expected a non-empty list of servers")
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
        locations = {".": self.loc(node, p)} | {k: self.loc(v, f"{p}.{k}") for k, v in f.items()}
        d = ServerSpec(name="", handler="", port=0)
        name = self.field(f, "name", p, _name, "")
        handler = self.field(f, "handler", p, _handler, "")
        port = self.field(f, "port", p, _int(0, 65535), 0)
        options: Mapping[str, Any] = {}
        if (opt_node := f.get("options")) is not None:
            value = self.data(opt_node)
            if isinstance(value, dict) and all(isinstance(k, str) for k in value):
                options = value
            else:
                self.fail(opt_node, f"{p}.options", f"expected a mapping of option names to values, got {_show(value)}")
        after: tuple[str, ...] = ()
        if (after_node := f.get("after")) is not None:
            value = self.data(after_node)
            if isinstance(value, str):
                value = [value]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                after = tuple(value)
            else:
                self.fail(after_node, f"{p}.after", f"expected a list of server names, got {_show(value)}")
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
            self.fail(f.get("max", node), f"{p}.max", f"must be >= backoff.initial ({spec.initial:g}s)")
        return spec


# -- value checkers: return the value or raise ValueError("expected ...") -------------------------------------------


def _keys(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.name != "locations")


def _show(value: object) -> str:
    if isinstance(value, Node):
        return "a list" if isinstance(value, SequenceNode) else "a mapping"
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
