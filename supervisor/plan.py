"""Config -> Plan: resolve handlers, order servers by ``after``, reject clashes. No event loop."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.address import Address
from supervisor.errors import ConfigError
from supervisor.handler_checks import resolve_handler
from supervisor.plan_checks import addresses, check_binds, check_names, never_gives_up, start_order, unix_path
from supervisor.spec import BackoffSpec, Config, ConsoleSpec, LoggingSpec, MetricsSpec, ServerSpec, SupervisorSpec
from supervisor.tls import TlsPlan, tls_plan
from supervisor.values import capped

_LINE = re.compile(r"^.*?:(\d+): ")


@dataclass(frozen=True, slots=True)
class ServerPlan:
    name: str
    target: object  # the resolved handler or factory
    direct: bool  # True: ``target`` is the per-connection handler itself (kind protocol: the Protocol class)
    kind: str  # stream | protocol
    handler_path: str
    host: str
    port: int
    unix: str  # an absolute unix socket path instead of host/port ("" for TCP)
    mode: int | None
    tls: TlsPlan | None
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

    @property
    def address(self) -> Address:
        """Where it is configured to listen (port 0: the OS picks; the listener knows the bound one)."""
        return Address(self.host, self.port, self.unix)


@dataclass(frozen=True, slots=True)
class Plan:
    source: str
    supervisor: SupervisorSpec
    metrics: MetricsSpec
    console: ConsoleSpec
    servers: tuple[ServerPlan, ...]  # in start order
    # valid but probably not meant (file:line: key: what and what to do); ``check`` prints them, exit 0
    warnings: tuple[str, ...] = ()
    digest: str = field(default="", compare=False)  # the config file's sha256 (hex)
    logging: LoggingSpec = field(default_factory=LoggingSpec)  # applied once, at start (logs.setup)

    def table(self) -> list[str]:
        """What ``supervisor check`` prints: one row per server in start order, then any warnings."""
        s = self.supervisor
        head = ("#", "server", "address", "restart", "on_error", "backoff", "drain", "after", "handler")
        rows = [
            (
                str(p.rank + 1),
                p.name,
                str(p.address) + (" (tls)" if p.tls else ""),
                p.restart,
                p.on_handler_error,
                f"{p.backoff.initial:g}s x{p.backoff.factor:g} <= {p.backoff.max:g}s",
                f"{p.shutdown_timeout:g}s",
                ",".join(p.after) or "-",
                p.handler_path + (" (protocol)" if p.kind == "protocol" else ""),
            )
            for p in self.servers
        ]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines = [fmt.format(*head).rstrip(), *(fmt.format(*r).rstrip() for r in rows)]
        lines.append(
            f"strategy {s.strategy}, at most {s.max_restarts} restarts in {s.restart_window:g}s, "
            f"shutdown within {s.shutdown_timeout:g}s, loop {s.loop}"
            + (f", {s.workers} worker processes on the parent's sockets" if s.workers > 1 else "")
        )
        m, c = self.metrics, self.console
        lines.append(f"metrics {f'http://{m.host}:{m.port}/metrics' if m.enabled else 'off'}")
        lines.append(f"console {f'telnet {c.host} {c.port}' if c.enabled else 'off'}")
        lg = self.logging
        lines.append(f"logging {'dict_config' if lg.dict_config else f'{lg.format} to stderr, level {lg.level}'}")
        if self.warnings:
            lines.append("warnings (the config is valid and runs as it is):")
            lines.extend(self.warnings)
        return lines


def make_plan(config: Config, *, handlers: bool = True) -> Plan:
    """Raises ConfigError with every problem (file:line: key: what is expected). ``handlers=False``: leave the
    handlers unimported (a workers parent: its worker processes import them fresh, and report their problems)."""
    problems: list[str] = []
    check_names(config.servers, problems)
    check_binds(config, addresses(config, problems), problems)
    order = start_order(config.servers, problems)
    base = make_importable(config)
    resolved = {s.name: resolve_handler(s, problems) if handlers else (None, False) for s in config.servers}
    tls = {s.name: tls_plan(s, base, problems) for s in config.servers}
    if problems:
        raise ConfigError(capped(sorted(problems, key=line_of)))
    servers = tuple(
        _server_plan(spec, rank, resolved[spec.name], tls[spec.name], base) for rank, spec in enumerate(order)
    )
    warnings = tuple(capped([w for s in config.servers if (w := never_gives_up(s, config.supervisor))]))
    return Plan(
        str(config.path),
        config.supervisor,
        config.metrics,
        config.console,
        servers,
        warnings,
        config.digest,
        config.logging,
    )


def make_importable(config: Config) -> Path:
    """Handlers next to the config import like the user's own modules would; the config's folder."""
    base = config.path.resolve().parent
    if (config_dir := str(base)) not in sys.path:
        sys.path.append(config_dir)
    return base


def _server_plan(
    spec: ServerSpec, rank: int, handler: tuple[object, bool] | None, tls: TlsPlan | None, base: Path
) -> ServerPlan:
    assert handler is not None  # resolved, or reported as a problem
    target, direct = handler
    return ServerPlan(
        name=spec.name,
        target=target,
        direct=direct,
        kind=spec.kind,
        handler_path=spec.handler,
        host=spec.host,
        port=spec.port,
        unix=unix_path(spec, base),
        mode=spec.mode,
        tls=tls,
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


def line_of(problem: str) -> int:
    """Problems start with a Location (``file:line: key``): report them top of the file first."""
    found = _LINE.match(problem)
    return int(found.group(1)) if found else 0
