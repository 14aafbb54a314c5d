"""The plan's checks of a whole config: server names, that every host resolves and no two listeners share an
address (however it is written), the start order by ``after`` (unknown names and cycles), and the warning
when a backoff makes the give-up rule unreachable. Each appends formatted ``file:line: key: ...`` problems."""

from __future__ import annotations

import difflib
import heapq
import ipaddress
import math
import os
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from supervisor.access import console_ports
from supervisor.spec import BackoffSpec, Config, Location, ServerSpec, SupervisorSpec
from supervisor.values import clip

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
RESOLVE_TIMEOUT = 5.0  # seconds for all host names together: a dead DNS server must not hang `check`


def check_names(servers: tuple[ServerSpec, ...], problems: list[str]) -> None:
    seen: dict[str, ServerSpec] = {}
    for s in servers:
        if s.name in seen:
            first = seen[s.name].where("name")
            problems.append(f"{s.where('name')}: duplicate server name '{s.name}' (first at line {first.line})")
        else:
            seen[s.name] = s


def addresses(config: Config, problems: list[str]) -> dict[str, list[IP]]:
    """Every host that will be listened on -> its addresses; a host that does not resolve is a problem."""
    wanted: list[tuple[str, Location]] = [(s.host, s.where("host")) for s in config.servers if not s.unix]
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


def check_binds(config: Config, addresses: dict[str, list[IP]], problems: list[str]) -> None:
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
        for port, role in console_ports(c):
            claim(c.host, port, f"the console ({role})", where, every=True)
    paths: dict[str, str] = {}
    for s in config.servers:
        if not s.unix:
            claim(s.host, s.port, f"server '{s.name}'", str(s.where("port")))
        elif (other := paths.setdefault(path := unix_path(s, config.path.resolve().parent), s.name)) != s.name:
            problems.append(f"{s.where('unix')}: {path} is already used by server '{other}'; pick another path")
        elif problem := _unix_problem(Path(path)):
            problems.append(f"{s.where('unix')}: {path}: {problem}")


def unix_path(spec: ServerSpec, base: Path) -> str:
    """A unix socket path, absolute (relative ones are next to the config file); "" for a TCP server."""
    return os.path.abspath(base / spec.unix) if spec.unix else ""


def _unix_problem(path: Path) -> str:
    if len(str(path).encode()) > 107:
        return "longer than the 107 bytes a unix socket address can hold; use a shorter path (e.g. under /run)"
    if not path.parent.is_dir():
        return f"the directory {path.parent} does not exist; create it (systemd: RuntimeDirectory=)"
    if path.exists() and not path.is_socket():
        return "exists and is not a socket; the supervisor replaces only a stale socket file, remove it yourself"
    return ""


def start_order(servers: tuple[ServerSpec, ...], problems: list[str]) -> list[ServerSpec]:
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


def never_gives_up(spec: ServerSpec, sup: SupervisorSpec) -> str | None:
    """A warning if ``spec``'s backoff spaces restarts so far apart that more than max_restarts never fit in
    restart_window: failing again and again after it has served, it would never make the supervisor give up."""
    span = shortest_delays(spec.backoff, sup.max_restarts)  # from the first restart to the (max_restarts + 1)-th
    if spec.restart == "temporary" or span < sup.restart_window:  # temporary: never restarted
        return None
    lo, hi = 0, sup.max_restarts  # the most delays that fit: binary search (max_restarts may be 1,000,000)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if shortest_delays(spec.backoff, mid) < sup.restart_window else (lo, mid - 1)
    at = spec.where("backoff")
    if not at.path.endswith(".backoff"):  # the default backoff: point at the server
        at = Location(at.file, at.line, f"{at.path}.backoff")
    return (
        f"{at}: with this backoff at most {lo + 1} restarts fit in restart_window ({sup.restart_window:g}s), so more "
        f"than max_restarts ({sup.max_restarts}) never happens and the supervisor would never give up on "
        f"'{spec.name}'; lower backoff.max or raise restart_window above {span:.4g}s"
    )


def shortest_delays(b: BackoffSpec, k: int) -> float:
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
