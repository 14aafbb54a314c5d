"""Scale benchmark: many servers in one process, and many connections on one server, each a real ``supervisor run``
(this interpreter, ``--log-level INFO``, metrics on, console off) on 127.0.0.1.

1. N servers (``--servers 200,1000``), port 0 each, all ``tests.bench.apps:crashy`` (``ok <pid>.<generation>`` per
   line; ``crash`` raises), ``on_handler_error: restart``, ``backoff: {initial: 0}``. Per round: process start ->
   the ``supervisor ready:`` line; -> every port answered a line (8 client threads); RSS then; one
   server in the middle crashed 5 times: ``crash`` sent -> a fresh connection answered by the *next* generation
   (probing every ~0.2 ms); SIGTERM -> exit (``Popen.wait``, P16 of platform-facts).
2. 10,000 connections (``--connections N``) to one server (``backlog: 4096``): connect time (at most 500
   connects in flight; each connection answers a line, so "connected" means served), then
   ``supervisor_connections_active`` scraped from ``/metrics`` vs the number open, then SIGTERM -> exit with all
   of them still open and idle. The client raises its own RLIMIT_NOFILE to the hard limit.
Medians of ``--rounds`` (default 3; ``--quick``: 1 round, 200 servers, 2,000 connections). Every wait is bounded;
exit status 1 if a target is missed or something failed.

    .venv/bin/python -m tests.bench.bench_scale [--quick] [--rounds N] [--servers 200,1000] [--connections N]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import os
import re
import resource
import signal
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.proc import SupervisorProcess

HOST = "127.0.0.1"
TIMEOUT = 60.0  # any one wait: the ready line, a port answering, an exit
CRASHES = 5  # per round, of one server
IN_FLIGHT = 500  # connects at once in the 10,000-connection row (the backlog is 4,096)
ACTIVE = re.compile(r'^supervisor_connections_active\{server="big"\} (\S+)$', re.M)
TARGETS = {"ready": 1.0, "answered": 1.0, "exit": 0.5, "rss": 100.0, "restart": 2.0, "exit_conns": 1.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def config(path: Path, servers: list[str], metrics: int) -> Path:
    path.write_text(
        "supervisor: {max_restarts: 1000000, restart_window: 1s}\n"
        f"metrics: {{enabled: true, host: {HOST}, port: {metrics}}}\nconsole: {{enabled: false}}\nservers:\n"
        + "".join(f"  - {{{s}}}\n" for s in servers),
        encoding="utf-8",
    )
    return path


def many(n: int) -> list[str]:
    return [
        f'name: s{i:04d}, handler: "tests.bench.apps:crashy", host: {HOST}, port: 0, on_handler_error: restart, '
        "backoff: {initial: 0}"
        for i in range(n)
    ]


def ask(port: int, line: bytes = b"hi\n") -> bytes:
    with socket.create_connection((HOST, port), timeout=TIMEOUT) as s:
        s.sendall(line)
        return s.recv(64)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmRSS")) / 1024


def until(what: str, check: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench_scale: {what} not within {timeout:g}s")
        time.sleep(0.0002)


def restart_ms(port: int) -> float:
    """``crash`` -> a fresh connection answered by another generation, in ms."""
    before = ask(port)
    sent = time.monotonic()
    with contextlib.suppress(OSError):  # the crashing generation may reset it
        ask(port, b"crash\n")
    answers: list[bytes] = []

    def served_again() -> bool:
        try:
            answers.append(ask(port))
        except OSError:
            return False
        return answers[-1] not in (before, b"")

    until("served again after a crash", served_again)
    return (time.monotonic() - sent) * 1000


def servers_round(tmp: Path, n: int) -> dict[str, float]:
    metrics = free_port()
    cfg = config(tmp / f"many-{n}.yaml", many(n), metrics)
    began = time.monotonic()
    with SupervisorProcess(cfg, "--log-level", "INFO", "--pidfile", str(tmp / "pid")) as sp:
        ports = sp.ready(timeout=TIMEOUT)
        ready = time.monotonic() - began
        if len(ports) != n:
            raise SystemExit(f"bench_scale: {len(ports)} of {n} servers listening")
        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # 8 clients: the server's figure, not one client's
            if not all(a.startswith(b"ok ") for a in pool.map(ask, ports.values())):
                raise SystemExit("bench_scale: a port did not answer")
        answered = time.monotonic() - began
        assert sp.proc is not None
        rss = rss_mb(sp.proc.pid)
        middle = ports[f"s{n // 2:04d}"]
        restarts = [restart_ms(middle) for _ in range(CRASHES)]
        sent = time.monotonic()
        sp.signal(signal.SIGTERM)
        code = sp.wait(TIMEOUT)
        took = time.monotonic() - sent
    if code != 0:
        raise SystemExit(f"bench_scale: {n} servers: exit {code}\n{sp.output[-2000:]}")
    return {"ready": ready, "answered": answered, "rss": rss, "restart": statistics.median(restarts), "exit": took}


async def open_many(port: int, count: int) -> list[asyncio.StreamWriter]:
    gate, writers = asyncio.Semaphore(IN_FLIGHT), []

    async def one() -> None:
        async with gate:
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(b"hi\n")
            if not (await reader.readline()).startswith(b"ok "):
                raise SystemExit("bench_scale: a connection was not served")
            writers.append(writer)

    async with asyncio.timeout(TIMEOUT):
        await asyncio.gather(*(one() for _ in range(count)))
    return writers


def connections_round(tmp: Path, count: int) -> dict[str, float]:
    metrics = free_port()
    big = f'name: big, handler: "tests.bench.apps:crashy", host: {HOST}, port: 0, backlog: 4096'
    cfg = config(tmp / "big.yaml", [big], metrics)
    loop = asyncio.new_event_loop()
    try:
        with SupervisorProcess(cfg, "--log-level", "INFO", "--pidfile", str(tmp / "pid")) as sp:
            port = sp.ready(timeout=TIMEOUT)["big"]
            began = time.monotonic()
            writers = loop.run_until_complete(open_many(port, count))
            connect = time.monotonic() - began
            with urllib.request.urlopen(f"http://{HOST}:{metrics}/metrics", timeout=TIMEOUT) as r:
                body = r.read().decode()
            active = float(m[1]) if (m := ACTIVE.search(body)) else -1.0
            sent = time.monotonic()
            sp.signal(signal.SIGTERM)
            code = sp.wait(TIMEOUT)
            took = time.monotonic() - sent
            for w in writers:
                w.transport.abort()
            loop.run_until_complete(asyncio.sleep(0.01))  # the aborts' callbacks run before the loop closes
    finally:
        loop.close()
    if code != 0:
        raise SystemExit(f"bench_scale: {count} connections: exit {code}\n{sp.output[-2000:]}")
    return {"connect": connect, "active": active, "expected": float(len(writers)), "exit_conns": took}


def raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < need:
        raise SystemExit(f"bench_scale: {need} connections need RLIMIT_NOFILE >= {need}; the hard limit is {hard}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 200 servers, 2,000 connections")
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--servers", default="")
    parser.add_argument("--connections", type=int, default=0)
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    sizes = [int(x) for x in (args.servers or ("200" if args.quick else "200,1000")).split(",")]
    count = args.connections or (2000 if args.quick else 10_000)
    raise_nofile(count + 200)
    started, rows, good = time.monotonic(), [], True
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        runs = {n: [servers_round(Path(tmp), n) for _ in range(rounds)] for n in sizes}
        conns = [connections_round(Path(tmp), count) for _ in range(rounds)]

    def med(xs: list[dict[str, float]], key: str) -> float:
        return statistics.median(x[key] for x in xs)

    for n in sizes:
        for key, label, unit in (
            ("ready", "start -> `supervisor ready:` line", "s"),
            ("answered", "start -> every port answered", "s"),
            ("rss", "RSS when ready", "MB"),
            ("restart", f"crash one of {n} -> served again (median of {CRASHES})", "ms"),
            ("exit", "SIGTERM -> exit", "s"),
        ):
            value = med(runs[n], key)
            ok = n < 1000 or value <= TARGETS[key]  # the targets are for 1,000 servers
            good &= ok
            rows.append((f"{n:,} servers: {label}", f"{value:.3f} {unit}" if unit != "MB" else f"{value:.0f} MB",
                         f"<= {TARGETS[key]:g} {unit}" if n >= 1000 else "-", "ok" if ok else "MISSED"))  # fmt: skip
    exact = all(c["active"] == c["expected"] == count for c in conns)
    fast = med(conns, "exit_conns") <= TARGETS["exit_conns"]
    good &= exact and fast
    rows += [
        (f"{count:,} connections: connect + one answer each", f"{med(conns, 'connect'):.3f} s", "-", ""),
        ("   supervisor_connections_active (expected)",
         ", ".join(f"{c['active']:.0f} ({c['expected']:.0f})" for c in conns), "exact", "ok" if exact else "MISSED"),
        ("   SIGTERM -> exit, all open", f"{med(conns, 'exit_conns'):.3f} s", "<= 1 s", "ok" if fast else "MISSED"),
    ]  # fmt: skip
    print(
        f"bench_scale: Python {sys.version.split()[0]}, asyncio loop, {os.cpu_count()} CPUs, {rounds} round(s), "
        f"medians, {time.monotonic() - started:.0f} s"
    )
    print(f"{'measure':<62} {'value':>22} {'target':>9}  verdict")
    for name, shown, target, verdict in rows:
        print(f"{name:<62} {shown:>22} {target:>9}  {verdict}")
    return 0 if good else 1


if __name__ == "__main__":
    raise SystemExit(main())
