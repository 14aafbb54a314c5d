"""Config -> Plan: resolve handlers, order servers by ``after``, reject clashes. No event loop."""

from __future__ import annotations

import difflib
import importlib
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from supervisor.address import Address
from supervisor.config import BackoffSpec, Config, ConsoleSpec, MetricsSpec, ServerSpec, SupervisorSpec
from supervisor.errors import ConfigError
from supervisor.handler import is_direct_handler, looks_like_sync_handler

_WILDCARDS = ("0.0.0.0", "::", "")
_LINE = re.compile(r"^.*?:(\d+): ")


@dataclass(frozen=True, slots=True)
class ServerPlan:
    name: str
    target: object  # the resolved handler or factory
    direct: bool  # True: ``target`` is the per-connection handler itself
    handler_path: str
    host: str
    port: int
    backlog: int
    max_connections: int
    idle_timeout: float
    read_limit: int
    max_write_buffer: int
    start_timeout: float
    start_retries: int
    restart: str
    on_handler_error: str
    backoff: BackoffSpec
    shutdown_timeout: float
    after: tuple[str, ...]
    options: Mapping[str, Any]
    rank: int  # position in start order


@dataclass(frozen=True, slots=True)
class Plan:
    source: str
    supervisor: SupervisorSpec
    metrics: MetricsSpec
    console: ConsoleSpec
    servers: tuple[ServerPlan, ...]  # in start order

    def table(self) -> list[str]:
        """What ``supervisor check`` prints: one row per server in start order."""
        s = self.supervisor
        head = ("#", "server", "address", "restart", "on_error", "backoff", "drain", "after", "handler")
        rows = [
            (
                str(p.rank + 1),
                p.name,
                str(Address(p.host, p.port)),
                p.restart,
                p.on_handler_error,
                f"{p.backoff.initial:g}s x{p.backoff.factor:g} <= {p.backoff.max:g}s",
                f"{p.shutdown_timeout:g}s",
                ",".join(p.after) or "-",
                p.handler_path,
            )
            for p in self.servers
        ]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines = [fmt.format(*head).rstrip(), *(fmt.format(*r).rstrip() for r in rows)]
        lines.append(
            f"strategy {s.strategy}, at most {s.max_restarts} restarts in {s.restart_window:g}s, "
            f"shutdown within {s.shutdown_timeout:g}s, loop {s.loop}"
        )
        m, c = self.metrics, self.console
        lines.append(f"metrics {f'http://{m.host}:{m.port}/metrics' if m.enabled else 'off'}")
        lines.append(f"console {f'telnet {c.host} {c.port}' if c.enabled else 'off'}")
        return lines


def make_plan(config: Config) -> Plan:
    """Raises ConfigError with every problem (file:line: key: what is expected)."""
    problems: list[str] = []
    _check_names(config.servers, problems)
    _check_binds(config, problems)
    order = _start_order(config.servers, problems)
    config_dir = str(config.path.resolve().parent)
    if config_dir not in sys.path:
        # handlers next to the config import like the user's own modules would
        sys.path.append(config_dir)
    resolved = {s.name: _resolve(s, problems) for s in config.servers}
    if problems:
        raise ConfigError(sorted(problems, key=_line_of))
    servers = tuple(_server_plan(spec, rank, *resolved[spec.name]) for rank, spec in enumerate(order))  # type: ignore[misc]
    return Plan(str(config.path), config.supervisor, config.metrics, config.console, servers)


def _server_plan(spec: ServerSpec, rank: int, target: object, direct: bool) -> ServerPlan:
    return ServerPlan(
        name=spec.name,
        target=target,
        direct=direct,
        handler_path=spec.handler,
        host=spec.host,
        port=spec.port,
        backlog=spec.backlog,
        max_connections=spec.max_connections,
        idle_timeout=spec.idle_timeout,
        read_limit=spec.read_limit,
        max_write_buffer=spec.max_write_buffer,
        start_timeout=spec.start_timeout,
        start_retries=spec.start_retries,
        restart=spec.restart,
        on_handler_error=spec.on_handler_error,
        backoff=spec.backoff,
        shutdown_timeout=spec.shutdown_timeout,
        after=spec.after,
        options=spec.options,
        rank=rank,
    )


def _check_names(servers: tuple[ServerSpec, ...], problems: list[str]) -> None:
    seen: dict[str, ServerSpec] = {}
    for s in servers:
        if s.name in seen:
            first = seen[s.name].where("name")
            problems.append(f"{s.where('name')}: duplicate server name '{s.name}' (first at line {first.line})")
        else:
            seen[s.name] = s


def _check_binds(config: Config, problems: list[str]) -> None:
    taken: list[tuple[str, int, str]] = []  # host, port, who

    def claim(host: str, port: int, who: str, where: str) -> None:
        if port == 0:
            return
        for h, p, other in taken:
            if p == port and (h == host or h in _WILDCARDS or host in _WILDCARDS):
                problems.append(f"{where}: {host}:{port} is already used by {other}; pick another port")
                return
        taken.append((host, port, who))

    m, c = config.metrics, config.console
    if m.enabled:
        claim(m.host, m.port, "metrics", str(config.where("metrics.port")))
    if c.enabled:
        where = str(config.where("console.port"))
        claim(c.host, c.port, "the console", where)
        claim(c.host, c.port + 1, "the console's web UI (console.port + 1)", where)
        if c.repl:
            claim(c.host, c.port + 2, "the console's Python REPL (console.port + 2)", where)
    for s in config.servers:
        claim(s.host, s.port, f"server '{s.name}'", str(s.where("port")))


def _start_order(servers: tuple[ServerSpec, ...], problems: list[str]) -> list[ServerSpec]:
    """Dependencies first, otherwise file order. Reports unknown names and cycles."""
    by_name = {s.name: s for s in servers}
    for s in servers:
        for dep in s.after:
            if dep == s.name:
                problems.append(f"{s.where('after')}: server '{s.name}' cannot wait for itself")
            elif dep not in by_name:
                close = difflib.get_close_matches(dep, list(by_name), n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"known servers: {', '.join(by_name)}"
                problems.append(f"{s.where('after')}: unknown server '{dep}'; {hint}")
    order: list[ServerSpec] = []
    done: set[str] = set()  # started, or given up on (part of a reported cycle)

    def blocking(s: ServerSpec) -> list[str]:
        return [d for d in s.after if d not in done and d in by_name and d != s.name]

    pending = list(servers)
    while pending:
        ready = next((s for s in pending if not blocking(s)), None)
        if ready is None:
            # every pending server waits for another pending one, so following the waits finds a cycle
            waiting = {s.name: s for s in pending}
            path = [pending[0].name]
            while (nxt := blocking(waiting[path[-1]])[0]) not in path:
                path.append(nxt)
            cycle = [*path[path.index(nxt) :], nxt]
            first = waiting[cycle[0]]
            problems.append(f"{first.where('after')}: dependency cycle {' -> '.join(cycle)}; remove one 'after' entry")
            done.update(cycle)  # go on, to report any other cycle too
            continue
        order.append(ready)
        done.add(ready.name)
        pending.remove(ready)
    return order


def _resolve(spec: ServerSpec, problems: list[str]) -> tuple[object, bool] | None:
    where = spec.where("handler")
    module_name, _, attr = spec.handler.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(f"{missing}.")):
            problems.append(
                f"{where}: cannot import module '{module_name}' ({exc}); "
                "check the name, and that it is on PYTHONPATH or next to the config file"
            )
        else:  # the module exists but one of its own imports is missing
            problems.append(f"{where}: importing '{module_name}' raised ModuleNotFoundError: {exc}")
        return None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's module raised while importing: report
        problems.append(f"{where}: importing '{module_name}' raised {type(exc).__name__}: {exc}")
        return None
    target: object = module
    owner = f"module '{module_name}'"
    walked: list[str] = []
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            problems.append(f"{where}: {owner} has no attribute '{part}'{_attr_hint(target, part)}")
            return None
        except Exception as exc:  # noqa: BLE001 - a property or __getattr__ of the user's code raised
            problems.append(f"{where}: getting '{part}' from {owner} raised {type(exc).__name__}: {exc}")
            return None
        walked.append(part)
        owner = f"'{module_name}:{'.'.join(walked)}'"
    if not callable(target):
        problems.append(
            f"{where}: '{spec.handler}' is not callable (it is of type {type(target).__name__}); "
            "name an async def handle(reader, writer) or a factory taking options"
        )
        return None
    if looks_like_sync_handler(target):
        problems.append(
            f"{where}: '{spec.handler}' takes (reader, writer) but is not a coroutine function; "
            "declare it with async def"
        )
        return None
    direct = is_direct_handler(target)
    if direct and spec.options:
        problems.append(
            f"{spec.where('options')}: '{spec.handler}' is a plain handler and takes no options; "
            "remove 'options' or point 'handler' at a factory"
        )
    return target, direct


def _line_of(problem: str) -> int:
    """Problems start with a Location (``file:line: key``): report them top of the file first."""
    found = _LINE.match(problem)
    return int(found.group(1)) if found else 0


def _attr_hint(owner: object, attr: str) -> str:
    close = difflib.get_close_matches(attr, [n for n in dir(owner) if not n.startswith("_")], n=1)
    return f"; did you mean '{close[0]}'?" if close else ""
