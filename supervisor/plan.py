"""Config -> Plan: resolve handlers, order servers by ``after``, reject clashes. No event loop."""

from __future__ import annotations

import difflib
import heapq
import importlib
import inspect
import ipaddress
import math
import re
import socket
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from supervisor.address import Address
from supervisor.config import (
    BackoffSpec,
    Config,
    ConsoleSpec,
    Location,
    MetricsSpec,
    ServerSpec,
    SupervisorSpec,
    capped,
    clip,
)
from supervisor.errors import ConfigError
from supervisor.handler import is_direct_handler, looks_like_sync_handler

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
RESOLVE_TIMEOUT = 5.0  # seconds for all host names together: a dead DNS server must not hang `check`
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
    # valid but probably not meant (file:line: key: what and what to do); ``check`` prints them, exit 0
    warnings: tuple[str, ...] = ()

    def table(self) -> list[str]:
        """What ``supervisor check`` prints: one row per server in start order, then any warnings."""
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
        if self.warnings:
            lines.append("warnings (the config is valid and runs as it is):")
            lines.extend(self.warnings)
        return lines


def make_plan(config: Config) -> Plan:
    """Raises ConfigError with every problem (file:line: key: what is expected)."""
    problems: list[str] = []
    _check_names(config.servers, problems)
    _check_binds(config, _addresses(config, problems), problems)
    order = _start_order(config.servers, problems)
    config_dir = str(config.path.resolve().parent)
    if config_dir not in sys.path:
        # handlers next to the config import like the user's own modules would
        sys.path.append(config_dir)
    resolved = {s.name: _resolve(s, problems) for s in config.servers}
    if problems:
        raise ConfigError(capped(sorted(problems, key=_line_of)))
    servers = tuple(_server_plan(spec, rank, *resolved[spec.name]) for rank, spec in enumerate(order))  # type: ignore[misc]
    warnings = tuple(capped([w for s in config.servers if (w := _never_gives_up(s, config.supervisor))]))
    return Plan(str(config.path), config.supervisor, config.metrics, config.console, servers, warnings)


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


def _addresses(config: Config, problems: list[str]) -> dict[str, list[IP]]:
    """Every host that will be listened on -> its addresses; a host that does not resolve is a problem."""
    wanted: list[tuple[str, Location]] = [(s.host, s.where("host")) for s in config.servers]
    for section, spec in (("metrics", config.metrics), ("console", config.console)):
        if spec.enabled:
            wanted.append((spec.host, config.where(f"{section}.host")))
    found = _lookup({host for host, _ in wanted})
    for host, where in wanted:
        if isinstance(reason := found[host], str):
            hint = "write an IPv6 address without brackets" if host.startswith("[") else "use an IP address"
            problems.append(
                f"{where}: cannot resolve host '{host}' ({reason}); {hint}, or a name this machine resolves"
            )
    return {host: addresses for host, addresses in found.items() if not isinstance(addresses, str)}


def _lookup(hosts: Iterable[str]) -> dict[str, list[IP] | str]:
    """Each host's addresses in getaddrinfo's order (the listeners bind the first), or why there are none.

    Names are looked up by up to 32 daemon threads, for RESOLVE_TIMEOUT in all: a slow resolver cannot hang us.
    """
    found: dict[str, list[IP] | str] = {}
    literals: list[str] = []
    names: list[str] = []
    for host in hosts:
        try:
            found[host] = [ipaddress.ip_address(host)]
            literals.append(host)
        except ValueError:
            names.append(host)
    todo = list(names)  # list.pop() is atomic: the workers share it

    def work() -> None:
        while todo:
            try:
                host = todo.pop()
            except IndexError:
                return
            try:
                infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
                addresses = [ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos]
                found[host] = addresses or "no address"
            except (OSError, UnicodeError, ValueError) as exc:  # UnicodeError: a label IDNA cannot encode
                found[host] = clip(str(exc.strerror if isinstance(exc, OSError) and exc.strerror else exc))

    threads = [threading.Thread(target=work, name="resolve", daemon=True) for _ in range(min(32, len(names)))]
    deadline = time.monotonic() + RESOLVE_TIMEOUT
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    # a worker still waiting on its resolver may write later: read each host once, from lists of our own
    return {host: found.get(host, f"no answer within {RESOLVE_TIMEOUT:g}s") for host in [*literals, *names]}


def _check_binds(config: Config, addresses: dict[str, list[IP]], problems: list[str]) -> None:
    """Two listeners on one address and port clash, whatever names they were written with; a wildcard
    (0.0.0.0, ::) clashes with every address on its port. Port 0 is never a clash (the OS picks a free one)."""
    taken: dict[int, list[tuple[str, set[IP], str]]] = {}  # port -> host, its addresses, who

    def claim(host: str, port: int, who: str, where: str, every: bool = False) -> None:
        if port == 0 or host not in addresses:  # not resolved: reported already
            return
        mine = set(addresses[host] if every else addresses[host][:1])  # aiomonitor binds every address
        for h, theirs, other in taken.get(port, ()):
            wild = any(a.is_unspecified for a in mine | theirs)
            if wild or mine & theirs:
                same = "" if wild or h == host else f" (as {h}:{port}; both are {min(mine & theirs)})"
                problems.append(f"{where}: {host}:{port} is already used by {other}{same}; pick another port")
                return
        taken.setdefault(port, []).append((host, mine, who))

    m, c = config.metrics, config.console
    if m.enabled:
        claim(m.host, m.port, "metrics", str(config.where("metrics.port")))
    if c.enabled:
        where = str(config.where("console.port"))
        claim(c.host, c.port, "the console", where, every=True)
        claim(c.host, c.port + 1, "the console's web UI (console.port + 1)", where, every=True)
        if c.repl:
            claim(c.host, c.port + 2, "the console's Python REPL (console.port + 2)", where, every=True)
    for s in config.servers:
        claim(s.host, s.port, f"server '{s.name}'", str(s.where("port")))


def _start_order(servers: tuple[ServerSpec, ...], problems: list[str]) -> list[ServerSpec]:
    """Dependencies first, otherwise file order. Reports unknown names and cycles.

    The first server in file order whose ``after`` servers have all started goes next (a heap of the ready
    ones: thousands of servers in a chain must not take a quadratic walk).
    """
    by_name = {s.name: s for s in servers}
    names = list(by_name)[:200]  # close matches and the list shown: a bounded search, a line of bounded length
    known = ", ".join(names) + (", …" if len(by_name) > len(names) else "")
    for s in servers:
        for dep in s.after:
            if dep == s.name:
                problems.append(f"{s.where('after')}: server '{s.name}' cannot wait for itself")
            elif dep not in by_name:
                close = difflib.get_close_matches(dep, names, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"known servers: {clip(known, 200)}"
                problems.append(f"{s.where('after')}: unknown server '{clip(dep)}'; {hint}")
    order: list[ServerSpec] = []
    done: set[str] = set()  # started, or given up on (part of a reported cycle)
    waits = [{d for d in s.after if d in by_name and d != s.name} for s in servers]
    waiting_for: dict[str, list[int]] = {}
    for i, deps in enumerate(waits):
        for dep in deps:
            waiting_for.setdefault(dep, []).append(i)
    ready = [i for i, deps in enumerate(waits) if not deps]
    placed = [False] * len(servers)
    first = 0  # the first server in file order not placed yet

    def finish(name: str) -> None:
        if name in done:
            return
        done.add(name)
        for i in waiting_for.get(name, ()):
            waits[i].discard(name)
            if not waits[i]:
                heapq.heappush(ready, i)

    def blocking(s: ServerSpec) -> list[str]:
        return [d for d in s.after if d not in done and d in by_name and d != s.name]

    while len(order) < len(servers):
        while placed[first]:
            first += 1
        if not ready:
            # every pending server waits for another pending one, so following the waits finds a cycle
            waiting = {s.name: s for i, s in enumerate(servers) if not placed[i]}
            path = [servers[first].name]
            while (nxt := blocking(waiting[path[-1]])[0]) not in path:
                path.append(nxt)
            cycle = [*path[path.index(nxt) :], nxt]
            problems.append(
                f"{waiting[cycle[0]].where('after')}: dependency cycle {' -> '.join(cycle)}; remove one 'after' entry"
            )
            for name in cycle:  # go on, to report any other cycle too
                finish(name)
            continue
        i = heapq.heappop(ready)
        placed[i] = True
        order.append(servers[i])
        finish(servers[i].name)
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
            problems.append(f"{where}: importing '{module_name}' raised ModuleNotFoundError: {clip(str(exc), 200)}")
        return None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's module raised while importing: report
        problems.append(f"{where}: importing '{module_name}' raised {type(exc).__name__}: {clip(str(exc), 200)}")
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
            problems.append(
                f"{where}: getting '{part}' from {owner} raised {type(exc).__name__}: {clip(str(exc), 200)}"
            )
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
    if (wrong := _misfit(target, direct)) is not None:
        problems.append(f"{where}: '{spec.handler}' {wrong}")
        return None
    if direct and spec.options:
        problems.append(
            f"{spec.where('options')}: '{spec.handler}' is a plain handler and takes no options; "
            "remove 'options' or point 'handler' at a factory"
        )
    return target, direct


def _misfit(target: object, direct: bool) -> str | None:
    """Why the server cannot call ``target`` the way it will (with (reader, writer), or as a factory with the
    options), by signature alone; None if it can, or if it cannot be told."""
    if direct:
        return None if _takes(target, 2) else f"cannot take (reader, writer){_signature(target)}; fix its parameters"
    if isinstance(target, type):
        lifespan = hasattr(target, "__aenter__") and hasattr(target, "__aexit__")
        call = target.__call__  # the class's own, else type.__call__ (not a coroutine function)
        if not (lifespan or (inspect.iscoroutinefunction(call) and _takes(call, 3))):
            return (
                "is a class, so it is used as a factory, but its instances are neither async context managers "
                "nor have an async def __call__(self, reader, writer); add one of those, or name a function"
            )
        if not _takes(target, 1):
            return (
                f"is a class, so it is called with the server's options, but it cannot take them{_signature(target)}; "
                "give its __init__ an options parameter"
            )
    elif not _takes(target, 1):
        return (
            f"is called with one argument, the server's options, but cannot take it{_signature(target)}; "
            "make it def make(options) (a factory) or async def handle(reader, writer)"
        )
    return None


def _takes(target: object, n: int) -> bool:
    """Whether ``target`` accepts ``n`` positional arguments (True if its signature cannot be read)."""
    try:
        signature = inspect.signature(target)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # a builtin without one
        return True
    try:
        signature.bind(*range(n))
    except TypeError:
        return False
    return True


def _signature(target: object) -> str:
    try:
        return f" (its signature is {clip(str(inspect.signature(target)), 120)})"  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""


def _never_gives_up(spec: ServerSpec, sup: SupervisorSpec) -> str | None:
    """A warning if ``spec``'s backoff spaces restarts so far apart that more than max_restarts never fit in
    restart_window: failing again and again after it has served, it would never make the supervisor give up."""
    span = _shortest_delays(spec.backoff, sup.max_restarts)  # from the first restart to the (max_restarts + 1)-th
    if spec.restart == "temporary" or span < sup.restart_window:  # temporary: never restarted
        return None
    lo, hi = 0, sup.max_restarts  # the most delays that fit: binary search (max_restarts may be 1,000,000)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if _shortest_delays(spec.backoff, mid) < sup.restart_window else (lo, mid - 1)
    at = spec.where("backoff")
    if not at.path.endswith(".backoff"):  # the default backoff: point at the server
        at = Location(at.file, at.line, f"{at.path}.backoff")
    return (
        f"{at}: with this backoff at most {lo + 1} restarts fit in restart_window ({sup.restart_window:g}s), so more "
        f"than max_restarts ({sup.max_restarts}) never happens and the supervisor would never give up on "
        f"'{spec.name}'; lower backoff.max or raise restart_window above {span:.4g}s"
    )


def _shortest_delays(b: BackoffSpec, k: int) -> float:
    """d1 + ... + dk for a server failing as soon as it starts, each delay at its shortest: initial * factor^(n-1),
    capped at max, times (1 - jitter). Restart k + 1 comes that long after the first; the intensity rule counts
    restarts less than restart_window apart."""
    low = 1.0 - b.jitter
    first, cap = b.initial * low, b.max * low
    factor = b.factor if b.reset_after > 0 else 1.0  # reset_after 0: every failure starts from initial again
    if first <= 0 or k <= 0:
        return 0.0
    if factor == 1.0:
        return first * k
    # delays grow while initial * factor^(n-1) < max, then stay at cap (in logs: max / initial may overflow a float)
    growing = min(k, max(0, math.ceil((math.log(b.max) - math.log(b.initial)) / math.log(factor))))
    last = math.exp(math.log(first) + (growing - 1) * math.log(factor))  # d_growing < cap
    grown = (last * factor - first) / (factor - 1) if growing else 0.0
    return grown + cap * (k - growing)


def _line_of(problem: str) -> int:
    """Problems start with a Location (``file:line: key``): report them top of the file first."""
    found = _LINE.match(problem)
    return int(found.group(1)) if found else 0


def _attr_hint(owner: object, attr: str) -> str:
    close = difflib.get_close_matches(attr, [n for n in dir(owner) if not n.startswith("_")], n=1)
    return f"; did you mean '{close[0]}'?" if close else ""
