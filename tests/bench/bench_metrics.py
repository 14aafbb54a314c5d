"""What do metrics cost? ``wrk`` against the HTTP demo handler with the metrics view on vs off.

Contenders (each one ``python -m supervisor run <generated yaml>``, console off, started once and kept running):

* ``off``: ``metrics: {enabled: false}``;
* ``on``: ``metrics: {port: 0}``, scraped like Prometheus would (OpenMetrics ``Accept``) every
  ``--scrape-interval`` seconds while wrk runs against it.

Modes: ``keep-alive`` (wrk's default: 50 connections, many requests each) and ``close`` (``Connection: close``:
one connection per request, so the per-connection path, where the counters are bumped, runs every request).

Rounds interleave the contenders (the order flips every round), and the table shows medians over rounds.
Loopback only; with two or more CPUs the server is pinned to CPU 0 and wrk to CPU 1 (``taskset``).

Run: ``.venv/bin/python -m tests.bench.bench_metrics [--rounds 5] [--duration 5] [--loop asyncio|uvloop]``
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
STARTUP_TIMEOUT = 30.0
WRK_GRACE = 15.0  # wrk must finish within its duration plus this
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
MODES = {"keep-alive": [], "close": ["-H", "Connection: close"]}
LISTENING_RE = re.compile(r"server web listening on \S+:(\d+)")
METRICS_RE = re.compile(r"metrics listening on http://\S+:(\d+)/metrics")
RPS_RE = re.compile(r"Requests/sec:\s+([\d.]+)")
REQUESTS_RE = re.compile(r"(\d+) requests in ")
ERRORS_RE = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
NON2XX_RE = re.compile(r"Non-2xx or 3xx responses: (\d+)")


class Server:
    """One ``supervisor run`` subprocess; its log is followed on a thread so we can wait for lines."""

    def __init__(self, label: str, config: Path, cpu: int | None) -> None:
        self.label = label
        cmd = [sys.executable, "-m", "supervisor", "run", str(config), "--log-level", "INFO"]
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu), *cmd]
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._follow, daemon=True).start()
        self.port = int(self.wait_for(LISTENING_RE)[1])
        self.wait_for(re.compile("supervisor ready:"))
        self.metrics_port: int | None = None
        if m := self.search(METRICS_RE):
            self.metrics_port = int(m[1])

    def _follow(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def search(self, regex: re.Pattern[str]) -> re.Match[str] | None:
        with self._cond:
            return next((m for line in self.lines if (m := regex.search(line))), None)

    def wait_for(self, regex: re.Pattern[str]) -> re.Match[str]:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        with self._cond:
            while True:
                if m := next((m for line in self.lines if (m := regex.search(line))), None):
                    return m
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise SystemExit(f"{self.label}: no {regex.pattern!r}:\n" + "\n".join(self.lines))
                self._cond.wait(min(left, 0.5))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@dataclass
class Scraper:
    """Scrapes ``/metrics`` every ``interval`` seconds on a thread until stopped; records each scrape's time."""

    port: int
    interval: float
    durations: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Scraper:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)

    def _run(self) -> None:
        request = urllib.request.Request(f"http://{HOST}:{self.port}/metrics", headers={"Accept": OPENMETRICS})
        while not self._stop.is_set():
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=5) as resp:
                resp.read()
            self.durations.append(time.perf_counter() - started)
            self._stop.wait(self.interval)


@dataclass(frozen=True)
class WrkResult:
    rps: float
    requests: int
    errors: int
    cpu: float = 0.0  # the server process's user+system CPU seconds during the run

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu / self.requests * 1e6 if self.requests else float("nan")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (``/proc/PID/stat`` fields 14 and 15), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(port: int, mode: str, args: argparse.Namespace, cpu: int | None) -> WrkResult:
    cmd = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s", *MODES[mode], f"http://{HOST}:{port}/"]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + WRK_GRACE, check=True).stdout
    rps, requests = RPS_RE.search(out), REQUESTS_RE.search(out)
    if rps is None or requests is None:
        raise SystemExit(f"cannot read wrk's output:\n{out}")
    errors = sum(int(n) for n in m.groups()) if (m := ERRORS_RE.search(out)) else 0
    errors += int(m[1]) if (m := NON2XX_RE.search(out)) else 0
    return WrkResult(float(rps[1]), int(requests[1]), errors)


def measure(server: Server, mode: str, args: argparse.Namespace, cpu: int | None) -> WrkResult:
    before = cpu_seconds(server.proc.pid)
    result = run_wrk(server.port, mode, args, cpu)
    return dataclasses.replace(result, cpu=cpu_seconds(server.proc.pid) - before)


def write_config(tmp: Path, name: str, metrics: bool, loop: str) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(
        f"supervisor: {{loop: {loop}, shutdown_timeout: 5s}}\n"
        f"metrics: {'{port: 0}' if metrics else '{enabled: false}'}\n"
        "console: {enabled: false}\n"
        "servers:\n"
        "  - {name: web, handler: 'supervisor.handlers.http:make', port: 0, backlog: 4096}\n"
    )
    return path


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--scrape-interval", type=float, default=1.0, help="seconds between scrapes of 'on'")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--modes", default="keep-alive,close", help="comma-separated: keep-alive, close")
    parser.add_argument("--no-pin", action="store_true", help="don't pin the server and wrk to separate CPUs")
    parser.add_argument("--aa", action="store_true", help="A/A run: 'on' has metrics off too (the noise floor)")
    parser.add_argument(
        "--single",
        action="store_true",
        help="one process with metrics enabled, scraped ('on') or not ('off'): no process-to-process bias",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := set(modes) - set(MODES):
        raise SystemExit(f"unknown mode(s): {', '.join(sorted(unknown))}")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    server_cpu, wrk_cpu = (0, 1) if pin else (None, None)
    results: dict[tuple[str, str], list[WrkResult]] = {}
    scrapes: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmpdir:
        tmp = Path(tmpdir)
        if args.single:  # one process: "off" is simply not scraped
            one = Server("on", write_config(tmp, "on", True, args.loop), server_cpu)
            servers = {"off": one, "on": one}
        else:
            servers = {
                "off": Server("off", write_config(tmp, "off", False, args.loop), server_cpu),
                "on": Server("on", write_config(tmp, "on", not args.aa, args.loop), server_cpu),
            }
        try:
            for name, server in servers.items():  # warm-up: first requests pay for imports and cold caches
                run_wrk(server.port, modes[0], argparse.Namespace(**{**vars(args), "duration": 1}), wrk_cpu)
                print(f"# {name}: web on {HOST}:{server.port}, metrics port {server.metrics_port}", file=sys.stderr)
            for r in range(args.rounds):
                order = ["off", "on"] if r % 2 == 0 else ["on", "off"]
                for mode in modes:
                    for name in order:
                        server = servers[name]
                        if server.metrics_port is not None and name == "on":
                            with Scraper(server.metrics_port, args.scrape_interval) as scraper:
                                result = measure(server, mode, args, wrk_cpu)
                            scrapes += scraper.durations
                        else:
                            result = measure(server, mode, args, wrk_cpu)
                        results.setdefault((name, mode), []).append(result)
                        print(
                            f"# round {r + 1} {mode:<10} {name:<3} {result.rps:>10.0f} req/s "
                            f"{result.cpu_us_per_request:>7.1f} us CPU/request",
                            file=sys.stderr,
                        )
            total = _connections_total(servers["on"]) if servers["on"].metrics_port else "-"
        finally:
            for server in set(servers.values()):
                server.stop()
    print(render(args, modes, results, scrapes, total, pin))
    print(asyncio.run(scrape_cost()))
    return 0


async def scrape_cost(servers: int = 3, repeat: int = 300) -> str:
    """CPU time of one scrape, measured in-process: collect every family and encode it (what the handler does)."""
    from prometheus_client.exposition import generate_latest
    from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

    from supervisor.collector import make_registry
    from supervisor.config import load_config
    from supervisor.plan import make_plan
    from supervisor.supervisor import Supervisor

    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmpdir:
        entries = "".join(
            f"  - {{name: s{i}, handler: 'supervisor.handlers.echo:handle', port: 0}}\n" for i in range(servers)
        )
        path = Path(tmpdir) / "cost.yaml"
        path.write_text("servers:\n" + entries)
        registry = make_registry(Supervisor(make_plan(load_config(path))), "asyncio")
    timings = {}
    for label, encode in (("text", generate_latest), ("OpenMetrics", generate_openmetrics)):
        encode(registry)  # warm
        started = time.process_time()
        for _ in range(repeat):
            size = len(encode(registry))
        timings[label] = ((time.process_time() - started) / repeat * 1000, size)
    parts = ", ".join(f"{k} {ms:.2f} ms ({size:,} bytes)" for k, (ms, size) in timings.items())
    return f"one scrape with {servers} servers, CPU time in-process: {parts}"


def _connections_total(server: Server) -> str:
    assert server.metrics_port is not None
    with urllib.request.urlopen(f"http://{HOST}:{server.metrics_port}/metrics", timeout=5) as resp:
        body = resp.read().decode()
    m = re.search(r'^supervisor_connections_total\{server="web"\} (\S+)$', body, re.MULTILINE)
    return m[1] if m else "?"


def render(
    args: argparse.Namespace,
    modes: list[str],
    results: dict[tuple[str, str], list[WrkResult]],
    scrapes: list[float],
    total: str,
    pin: bool,
) -> str:
    title = "A/A (both metrics off: the noise floor)" if args.aa else "metrics on vs off"
    if args.single:
        title = "one process with metrics, scraped vs not scraped"
    lines = [
        f"{title}: wrk -t1 -c{args.connections} -d{args.duration}s, {args.rounds} interleaved rounds, "
        f"loop {args.loop}, Python {sys.version.split()[0]}, "
        f"{'server on CPU 0 and wrk on CPU 1' if pin else 'not pinned'}, 'on' scraped every {args.scrape_interval:g}s",
        "",
        "| mode | metrics off req/s (median, min-max) | metrics on req/s (median, min-max) | on/off of medians "
        "| on/off per round (median, min-max) | errors |",
        "|---|---|---|---|---|---|",
    ]
    for mode in modes:
        off, on = results[("off", mode)], results[("on", mode)]
        m_off, m_on = statistics.median(r.rps for r in off), statistics.median(r.rps for r in on)
        # each round ran 'on' and 'off' back to back: their ratio cancels the machine's slow drift
        paired = [b.rps / a.rps for a, b in zip(off, on, strict=True)]
        errors = sum(r.errors for r in off + on)
        lines.append(
            f"| {mode} | {m_off:,.0f} ({min(r.rps for r in off):,.0f}-{max(r.rps for r in off):,.0f}) "
            f"| {m_on:,.0f} ({min(r.rps for r in on):,.0f}-{max(r.rps for r in on):,.0f}) "
            f"| {m_on / m_off:.3f} | {statistics.median(paired):.3f} ({min(paired):.3f}-{max(paired):.3f}) "
            f"| {errors} |"
        )
    lines += [
        "",
        "| mode | server CPU per request, off (median) | on (median) | on/off per round (median, min-max) |",
        "|---|---|---|---|",
    ]
    for mode in modes:
        off, on = results[("off", mode)], results[("on", mode)]
        paired = [b.cpu_us_per_request / a.cpu_us_per_request for a, b in zip(off, on, strict=True)]
        lines.append(
            f"| {mode} | {statistics.median(r.cpu_us_per_request for r in off):.1f} us "
            f"| {statistics.median(r.cpu_us_per_request for r in on):.1f} us "
            f"| {statistics.median(paired):.3f} ({min(paired):.3f}-{max(paired):.3f}) |"
        )
    if scrapes:
        lines.append("")
        lines.append(
            f"{len(scrapes)} scrapes under load: median {statistics.median(scrapes) * 1000:.1f} ms, "
            f"max {max(scrapes) * 1000:.1f} ms (client-side, OpenMetrics); "
            f'supervisor_connections_total{{server="web"}} at the end: {total}'
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
