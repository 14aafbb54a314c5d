"""Core benchmark: our supervisor against the bare seed pattern, on the same handlers.

Contenders (each a subprocess, on the interpreter given by ``--python``):

* ``ours asyncio`` / ``ours uvloop``: ``python -m supervisor run <generated yaml>`` with ``supervisor.loop`` set;
* ``seed asyncio`` / ``seed uvloop``: ``python -m tests.bench.seed_server`` (``start_server`` + ``serve_forever``
  in a task; SIGTERM cancels it: ``close(); await wait_closed()``).

Measures (medians over interleaved rounds; loopback only; every wait has a deadline):

1. crash -> served again: a client sends ``crash`` to ``tests.bench.apps:crashy`` (ours: ``on_handler_error:
   restart``, ``backoff: {initial: 0}``; seed: the error ends the process and a parent starts it again at once),
   then a prober connects and sends ``ping`` until a *new* generation/process answers. Latency = crash sent ->
   that reply; refused = ECONNREFUSED seen meanwhile; dropped = connections closed or reset without a reply.
2. 50 in-flight ``GET /sleep?s=1`` (``supervisor.handlers.http:make``), SIGTERM 0.1 s later: responses
   completed and SIGTERM -> exit (``Popen.wait()`` on the child, in a thread).
3. the same with ``/sleep?s=10`` and the server's ``shutdown_timeout: 2s``.
4. N idle keep-alive connections (each served one ``GET /``), SIGTERM: exit time, and RSS per connection
   (``VmRSS`` before/after opening them).
5. throughput: ``wrk -t1 -c50 -dNs`` against ``GET /`` (HTTP/1.1 keep-alive hello), after a 1 s unmeasured
   warm-up; with two or more CPUs the server runs on one CPU and wrk on another (``taskset -c``). Requests per
   second as wrk reports them, and the server's CPU time (``/proc/PID/stat`` utime + stime) per request.

Run: ``.venv/bin/python -m tests.bench.bench_core [--rounds N] [--quick] [--python PATH] [--measures LIST]`` from
the repository.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import math
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tests import proc

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"

LISTENING_RE = re.compile(r"server (\S+) listening on (\S+):(\d+)")
OURS_READY = "supervisor ready:"
SEED_READY_RE = re.compile(r"seed ready: (\S+):(\d+) pid=(\d+)")
SHUTDOWN_RE = re.compile(r"shutdown complete in ([\d.]+)s")

STARTUP_TIMEOUT = 30.0  # a cold interpreter importing the supervisor on a busy 2-core box
READY_AGAIN_TIMEOUT = 10.0  # before each crash: the server must answer a ping within this
CRASH_DEADLINE = 5.0  # per crash: give up waiting for a new generation/process after this
PROBE_TIMEOUT = 1.0  # one probe's connect + reply
REFUSED_PAUSE = 0.001  # the prober retries 1 ms after ECONNREFUSED, so "refused" ~ milliseconds refused
MAX_PROBES = 100_000  # per crash
WARMUP_CRASHES = 2  # per run, not measured: the first crash pays for cold code paths (traceback, linecache)
IDLE_GAP = 0.05  # every other crash comes after this long idle
CONNECT_BATCH = 500  # idle connections opened concurrently (below the backlog, so no SYN retransmits)
BACKLOG = 4096  # net.core.somaxconn on these machines caps anything larger
INFLIGHT_CLIENTS = 50
SIGTERM_DELAY = 0.1  # in-flight requests are sent, then SIGTERM this much later
CLIENT_GRACE = 3.0  # after the server exited, how long clients may take to read what they got
WRK_CONNECTIONS = 50
WRK_WARMUP = 1  # seconds of unmeasured wrk before each measured run (first requests pay for cold caches)
WRK_GRACE = 15.0  # a wrk run must finish within its duration plus this, or it is killed

Kind = Literal["ours", "seed"]
Loop = Literal["asyncio", "uvloop"]


@dataclass(frozen=True, slots=True)
class Contender:
    kind: Kind
    loop: Loop

    @property
    def label(self) -> str:
        return f"{self.kind} {self.loop}"


CONTENDERS = (
    Contender("ours", "asyncio"),
    Contender("ours", "uvloop"),
    Contender("seed", "asyncio"),
    Contender("seed", "uvloop"),
)


@dataclass(frozen=True, slots=True)
class Settings:
    python: str
    rounds: int
    crashes: int
    idle: int
    inflight_bound: float
    long_bound: float
    idle_bound: float
    measures: tuple[str, ...]
    duration: int = 3  # seconds per measured wrk run
    cpus: tuple[int, int] | None = None  # (server, wrk) CPUs for the throughput measure; None: not pinned


# -- subprocesses ---------------------------------------------------------------------------------------------------


class ServerProcess:
    """One server subprocess; a thread follows its stderr (always drained, so the child never blocks on it)."""

    def __init__(self, cmd: list[str], label: str, *, group: bool = False) -> None:
        self.label = label
        self.group = group  # it starts children of its own (the respawning seed): signal them too when killing
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        if "supervisor" in cmd and "run" in cmd:
            proc.STARTED.append(" ".join(cmd))  # the suite's e2e marker check (tests/conftest.py)
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: a respawning parent and its child die together
        )  # fmt: skip
        self.tail: deque[str] = deque(maxlen=60)
        self.lines = 0
        self.tracebacks = 0
        self._seen: list[str] = []  # lines kept for wait_for (only until the server is ready)
        self._keep = True
        self._eof = False
        self._cond = threading.Condition()
        self._exited_at: float | None = None
        self._exited = threading.Event()
        threading.Thread(target=self._follow, daemon=True, name=f"stderr:{label}").start()
        # Popen.wait() without a timeout blocks in waitpid(): the exit time is taken the moment the child is reaped
        threading.Thread(target=self._wait, daemon=True, name=f"wait:{label}").start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _follow(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            with self._cond:
                self.lines += 1
                if line.startswith("Traceback"):
                    self.tracebacks += 1
                self.tail.append(line)
                if self._keep:
                    self._seen.append(line)
                self._cond.notify_all()
        self.proc.stderr.close()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _wait(self) -> None:
        self.proc.wait()
        self._exited_at = time.perf_counter()
        self._exited.set()

    def wait_for(self, regex: re.Pattern[str], timeout: float = STARTUP_TIMEOUT) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        index = 0
        with self._cond:
            while True:
                for line in self._seen[index:]:
                    if m := regex.search(line):
                        return m
                index = len(self._seen)
                if self._eof:
                    raise BenchError(f"{self.label} exited before printing {regex.pattern!r}:\n{self.output()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BenchError(f"{self.label}: no {regex.pattern!r} within {timeout:g}s:\n{self.output()}")
                self._cond.wait(remaining)

    def ready(self) -> None:
        """Stop keeping every line once readiness is known; only the tail is kept after that."""
        with self._cond:
            self._keep = False
            self._seen.clear()

    def output(self) -> str:
        return "\n".join(self.tail)

    def quiet(self, for_s: float = 0.2, bound: float = 5.0) -> None:
        """Wait until no line came for ``for_s`` seconds (at most ``bound`` seconds in all)."""
        deadline = time.monotonic() + bound
        with self._cond:
            while not self._eof:
                seen = self.lines
                left = deadline - time.monotonic()
                if left <= 0 or (not self._cond.wait(min(for_s, left)) and self.lines == seen):
                    return

    def own_shutdown(self) -> str:
        """What our supervisor logged as its shutdown time (the rest of the exit is interpreter teardown)."""
        with self._cond:
            self._cond.wait_for(lambda: self._eof, timeout=2)  # the last lines may still be in the pipe
            found = [m.group(1) for line in self.tail if (m := SHUTDOWN_RE.search(line))]
        return f", own log: shutdown {found[-1]} s" if found else ""

    def rss_kb(self) -> int:
        with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise BenchError(f"{self.label}: no VmRSS in /proc/{self.pid}/status")

    def sigterm_and_wait(self, bound: float) -> float | None:
        """Send SIGTERM; seconds until the child exited, or None if it did not within ``bound`` (then killed)."""
        sent = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        if self._exited.wait(bound):
            assert self._exited_at is not None
            return self._exited_at - sent
        self.kill()
        return None

    async def sigterm_and_wait_async(self, bound: float) -> float | None:
        """The same while the caller's event loop keeps serving its clients."""
        sent = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        if await asyncio.to_thread(self._exited.wait, bound):
            assert self._exited_at is not None
            return self._exited_at - sent
        self.kill()
        return None

    def kill(self) -> None:
        self._kill_group()
        if not self._exited.is_set():
            self.proc.kill()
        self._exited.wait(10)

    def _kill_group(self) -> None:
        if self.group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # the group this process leads (start_new_session)

    def stop(self, bound: float = 5.0) -> None:
        if not self._exited.is_set():
            self.proc.send_signal(signal.SIGTERM)
            if not self._exited.wait(bound):
                self.kill()
        self._kill_group()  # a respawned child the parent left behind, if any
        with self._cond:
            self._cond.wait_for(lambda: self._eof, timeout=5)

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode


class BenchError(RuntimeError):
    pass


def _yaml_config(tmp: Path, loop: Loop, server: str) -> Path:
    path = tmp / f"bench-{loop}.yaml"
    path.write_text(
        "supervisor:\n"
        f"  loop: {loop}\n"
        "  max_restarts: 1000000\n"  # the benchmark crashes on purpose, many times a second
        "  restart_window: 1s\n"
        "  shutdown_timeout: 30s\n"
        "metrics: {enabled: false}\n"
        "console: {enabled: false}\n"
        "servers:\n" + server,
        encoding="utf-8",
    )
    return path


CRASHY_SERVER = f"""\
  - name: crashy
    handler: tests.bench.apps:crashy
    host: 127.0.0.1
    port: 0
    on_handler_error: restart
    backoff: {{initial: 0}}
    backlog: {BACKLOG}
"""


def _http_server(shutdown_timeout: str) -> str:
    return f"""\
  - name: http
    handler: supervisor.handlers.http:make
    host: 127.0.0.1
    port: 0
    shutdown_timeout: {shutdown_timeout}
    backlog: {BACKLOG}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    """``cmd`` under ``taskset -c CPU`` (which execs it: the pid stays the command's, threads inherit the CPU)."""
    return cmd if cpu is None else ["taskset", "-c", str(cpu), *cmd]


@contextlib.contextmanager
def start(
    contender: Contender,
    settings: Settings,
    tmp: Path,
    app: Literal["http", "crashy"],
    shutdown_timeout: str = "5s",
    cpu: int | None = None,
) -> Iterator[tuple[ServerProcess, int]]:
    """Start a contender (on ``cpu`` if given) and wait for its ready line; yield it with its port; always stop
    it afterwards."""
    if contender.kind == "ours":
        server = CRASHY_SERVER if app == "crashy" else _http_server(shutdown_timeout)
        cfg = _yaml_config(tmp, contender.loop, server)
        sp = ServerProcess(pinned([settings.python, "-m", "supervisor", "run", str(cfg)], cpu), contender.label)
        try:
            listening = sp.wait_for(LISTENING_RE)
            sp.wait_for(re.compile(re.escape(OURS_READY)))
        except BaseException:
            sp.stop()
            raise
        port = int(listening.group(3))
    else:
        cmd = [settings.python, "-m", "tests.bench.seed_server", "--app", app, "--loop", contender.loop]
        cmd += ["--backlog", str(BACKLOG)]
        if app == "crashy":  # the naive restart needs a fixed port to come back on
            cmd += ["--port", str(free_port()), "--crash-exits", "--respawn"]
        sp = ServerProcess(pinned(cmd, cpu), contender.label, group=app == "crashy")
        try:
            port = int(sp.wait_for(SEED_READY_RE).group(2))
        except BaseException:
            sp.stop()
            raise
    sp.ready()
    try:
        yield sp, port
    finally:
        sp.stop()


# -- measure 1: crash -> served again -------------------------------------------------------------------------------

ProbeResult = Literal["ok", "refused", "dropped", "timeout"]


def probe(port: int) -> tuple[ProbeResult, bytes]:
    """One connection, one ``ping``; blocking, so nothing but the kernel sits between the prober and the server."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(PROBE_TIMEOUT)
    try:
        s.connect((HOST, port))
        s.sendall(b"ping\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(256)
            if not chunk:
                return "dropped", b""
            buf += chunk
        return "ok", buf.strip()
    except ConnectionRefusedError:
        return "refused", b""
    except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
        return "dropped", b""
    except TimeoutError:
        return "timeout", b""
    except OSError as exc:
        if exc.errno == errno.ECONNREFUSED:
            return "refused", b""
        raise
    finally:
        s.close()  # FIN, not RST: a reset would be a handler error, and restart the server under `restart`


@dataclass(slots=True)
class CrashSample:
    latency: float | None  # seconds; None: no new generation/process answered within CRASH_DEADLINE
    refused: int = 0
    dropped: int = 0
    timeouts: int = 0
    old_served: int = 0  # probes answered by the generation/process that was crashing


def serving_token(port: int) -> bytes:
    deadline = time.monotonic() + READY_AGAIN_TIMEOUT
    while time.monotonic() < deadline:
        result, token = probe(port)
        if result == "ok":
            return token
        time.sleep(REFUSED_PAUSE)
    raise BenchError(f"port {port} did not answer a ping within {READY_AGAIN_TIMEOUT:g}s")


def one_crash(port: int, gap: float) -> CrashSample:
    before = serving_token(port)
    if gap:
        time.sleep(gap)  # deliberate: the server sits idle before this crash, as a real one mostly does
    with socket.create_connection((HOST, port), timeout=PROBE_TIMEOUT) as c:
        c.sendall(b"crash\n")
        crashed = time.perf_counter()
    sample = CrashSample(latency=None)
    deadline = crashed + CRASH_DEADLINE
    for _ in range(MAX_PROBES):
        if time.perf_counter() > deadline:
            break
        result, token = probe(port)
        if result == "ok":
            if token != before:
                sample.latency = time.perf_counter() - crashed
                break
            sample.old_served += 1
        elif result == "refused":
            sample.refused += 1
            time.sleep(REFUSED_PAUSE)
        elif result == "dropped":
            sample.dropped += 1
        else:
            sample.timeouts += 1
    return sample


def measure_crash(contender: Contender, settings: Settings, tmp: Path) -> dict[str, list[float | None]]:
    with start(contender, settings, tmp, "crashy") as (sp, port):
        for _ in range(WARMUP_CRASHES):
            one_crash(port, 0.0)
        # alternate: back-to-back crashes (a warm process) and crashes after an idle gap (a cold one)
        samples = [(i % 2 == 1, one_crash(port, IDLE_GAP if i % 2 else 0.0)) for i in range(settings.crashes)]
        alive = sp.returncode is None
    got: dict[str, list[float | None]] = {"crash_ms": [], "crash_idle_ms": [], "crash_all_ms": []}
    for idle, s in samples:
        ms = s.latency * 1000 if s.latency is not None else None
        got["crash_idle_ms" if idle else "crash_ms"].append(ms)
        got["crash_all_ms"].append(ms)
    got["crash_refused"] = [float(s.refused) for _, s in samples]
    got["crash_dropped"] = [float(s.dropped + s.timeouts) for _, s in samples]
    hot = [x for x in got["crash_ms"] if x is not None]
    cold = [x for x in got["crash_idle_ms"] if x is not None]
    failed = got["crash_all_ms"].count(None)
    _progress(
        f"crash {contender.label}: p50 {_fmt(statistics.median(hot) if hot else None, 'ms')} back-to-back, "
        f"{_fmt(statistics.median(cold) if cold else None, 'ms')} after {IDLE_GAP * 1000:g} ms idle; "
        f"refused {sum(s.refused for _, s in samples)}, dropped {sum(s.dropped + s.timeouts for _, s in samples)}, "
        f"old served {sum(s.old_served for _, s in samples)}, not served again {failed}/{len(samples)}"
        f"{'' if alive else ', PROCESS EXITED'}"
    )
    return got


# -- measures 2 and 3: in-flight requests at SIGTERM ----------------------------------------------------------------


async def _request(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"GET %s HTTP/1.1\r\nHost: bench\r\n\r\n" % path.encode())
    await writer.drain()
    return reader, writer


async def _response(reader: asyncio.StreamReader) -> bool:
    """True for a whole ``200`` response (head and Content-Length body)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        m = re.search(rb"content-length:\s*(\d+)", head.lower())
        if m:
            await reader.readexactly(int(m.group(1)))
        return head.startswith(b"HTTP/1.1 200 ")
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        return False


async def _inflight(sp: ServerProcess, port: int, seconds: float, bound: float) -> tuple[float | None, int]:
    conns = await asyncio.gather(*(_request(port, f"/sleep?s={seconds:g}") for _ in range(INFLIGHT_CLIENTS)))
    readers = [asyncio.ensure_future(asyncio.wait_for(_response(r), bound + CLIENT_GRACE)) for r, _ in conns]
    try:
        await asyncio.sleep(SIGTERM_DELAY)  # deliberate: the requests are now being handled
        exit_s = await sp.sigterm_and_wait_async(bound)
        done, _ = await asyncio.wait(readers, timeout=CLIENT_GRACE)
        completed = sum(1 for t in done if not t.cancelled() and t.exception() is None and t.result())
        return exit_s, completed
    finally:
        for t in readers:
            t.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for _, w in conns:
            w.transport.abort()


def measure_inflight(
    contender: Contender, settings: Settings, tmp: Path, *, seconds: float, drain: str, bound: float, key: str
) -> dict[str, list[float | None]]:
    with start(contender, settings, tmp, "http", shutdown_timeout=drain) as (sp, port):
        exit_s, completed = asyncio.run(_inflight(sp, port, seconds, bound))
        rc, tracebacks, own = sp.returncode, sp.tracebacks, sp.own_shutdown()
    _progress(
        f"{key} {contender.label}: completed {completed}/{INFLIGHT_CLIENTS}, exit {_fmt(exit_s, 's', bound)}"
        f"{own}, rc {rc}, tracebacks logged {tracebacks}"
    )
    return {f"{key}_exit": [exit_s], f"{key}_completed": [float(completed)]}


# -- measure 4: idle keep-alive connections at SIGTERM --------------------------------------------------------------


async def _open_idle(port: int, n: int) -> list[asyncio.StreamWriter]:
    writers: list[asyncio.StreamWriter] = []

    async def one() -> None:
        reader, writer = await _request(port, "/")
        writers.append(writer)
        if not await _response(reader):
            raise BenchError("an idle connection's first request failed")

    for i in range(0, n, CONNECT_BATCH):
        async with asyncio.timeout(60):
            await asyncio.gather(*(one() for _ in range(min(CONNECT_BATCH, n - i))))
    return writers


async def _close_all(writers: Sequence[asyncio.StreamWriter], *, graceful: bool = False) -> None:
    """Abort (the server is gone) or close with FIN (a reset would count as a handler error on a live server)."""
    for w in writers:
        if graceful:
            w.close()
        else:
            w.transport.abort()
    if graceful:
        async with asyncio.timeout(10):
            await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
    await asyncio.sleep(0)


def measure_idle(contender: Contender, settings: Settings, tmp: Path) -> dict[str, list[float | None]]:
    n = settings.idle
    loop = asyncio.new_event_loop()
    try:
        with start(contender, settings, tmp, "http") as (sp, port):
            # first-use allocations are not per connection: warm up before the "before" reading
            warm = loop.run_until_complete(_open_idle(port, min(100, n)))
            loop.run_until_complete(_close_all(warm, graceful=True))
            before = sp.rss_kb()
            writers = loop.run_until_complete(_open_idle(port, n))
            after = sp.rss_kb()
            # the loop is not running now: the clients' side adds nothing while the server shuts down
            exit_s = sp.sigterm_and_wait(settings.idle_bound)
            rc, tracebacks, own = sp.returncode, sp.tracebacks, sp.own_shutdown()
            loop.run_until_complete(_close_all(writers))
    finally:
        loop.close()
    per_conn = (after - before) / n
    _progress(
        f"idle {contender.label}: {n} connections, RSS {before} -> {after} kB ({per_conn:.2f} kB each), "
        f"exit {_fmt(exit_s, 's', settings.idle_bound)}{own}, rc {rc}, tracebacks logged {tracebacks}"
    )
    return {"idle_exit": [exit_s], "idle_rss": [per_conn]}


# -- measure 5: keep-alive throughput (wrk) -------------------------------------------------------------------------

WRK_RPS_RE = re.compile(r"Requests/sec:\s+([\d.]+)")
WRK_REQUESTS_RE = re.compile(r"(\d+) requests in ")
WRK_ERRORS_RE = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
WRK_NON2XX_RE = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def pick_cpus() -> tuple[int, int] | None:
    """(server CPU, wrk CPU): CPUs 0 and 1 when this process may use them, else its two lowest; None with fewer
    than two CPUs or no ``taskset``."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2 or shutil.which("taskset") is None:
        return None
    return (allowed[0], allowed[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` (``/proc/PID/stat`` fields 14 and 15), in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class WrkResult:
    rps: float
    requests: int
    errors: int  # socket errors (connect, read, write, timeout) + non-2xx/3xx responses


def run_wrk(port: int, seconds: int, cpu: int | None) -> WrkResult:
    cmd = pinned(["wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", f"http://{HOST}:{port}/"], cpu)
    try:
        out = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=seconds + WRK_GRACE, check=False
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk did not finish within {seconds + WRK_GRACE:g}s (killed)") from None
    rps, requests = WRK_RPS_RE.search(out.stdout), WRK_REQUESTS_RE.search(out.stdout)
    if out.returncode != 0 or rps is None or requests is None:
        raise BenchError(f"wrk exited {out.returncode} or printed no result:\n{out.stdout}{out.stderr}")
    errors = sum(int(n) for n in m.groups()) if (m := WRK_ERRORS_RE.search(out.stdout)) else 0
    errors += int(m[1]) if (m := WRK_NON2XX_RE.search(out.stdout)) else 0
    return WrkResult(float(rps[1]), int(requests[1]), errors)


def measure_throughput(contender: Contender, settings: Settings, tmp: Path) -> dict[str, list[float | None]]:
    server_cpu, wrk_cpu = settings.cpus if settings.cpus else (None, None)
    with start(contender, settings, tmp, "http", cpu=server_cpu) as (sp, port):
        run_wrk(port, WRK_WARMUP, wrk_cpu)
        sp.quiet()  # the seed logs a traceback per connection wrk resets at its end: not in the measured run
        before = cpu_seconds(sp.pid)
        result = run_wrk(port, settings.duration, wrk_cpu)
        cpu = cpu_seconds(sp.pid) - before
        sp.quiet()
        alive, tracebacks, lines = sp.returncode is None, sp.tracebacks, sp.lines
    us = cpu / result.requests * 1e6 if result.requests else None
    _progress(
        f"throughput {contender.label}: {result.rps:,.0f} req/s ({result.requests:,} requests in "
        f"{settings.duration} s), server CPU {cpu:.2f} s = {_fmt(us, 'µs')}/request, wrk errors {result.errors}, "
        f"log lines {lines}, tracebacks logged {tracebacks}{'' if alive else ', PROCESS EXITED'}"
    )
    return {"rps": [result.rps], "cpu_us": [us], "wrk_errors": [float(result.errors)]}


# -- the table ------------------------------------------------------------------------------------------------------


Stat = Literal["p50", "p95", "max", "sum"]


@dataclass(frozen=True, slots=True)
class Row:
    key: str
    title: str
    target: str
    unit: str
    stat: Stat = "p50"
    ratio: bool = False  # print "ours / seed" next to ours
    base: str | None = None  # print "this / base" next to every other contender (base: a contender's label)
    bound: float | None = None  # for "timeout (>Ns, killed)"


BASE = "seed asyncio"  # what the throughput rows are relative to (as the anchors are)


def rows(settings: Settings) -> list[Row]:
    n = settings.idle
    return [
        Row("crash_ms", "crash → served again by a new generation/process, p50, back-to-back crashes", "≤ 2 ms",
            "ms", ratio=True),
        Row("crash_idle_ms", f"… p50, crash after {IDLE_GAP * 1000:g} ms idle", "≤ 2 ms", "ms", ratio=True),
        Row("crash_all_ms", "… p95, all crashes", "—", "ms", stat="p95", ratio=True),
        Row("crash_refused", "refused connections per crash, median (max)", "0", "n"),
        Row("crash_dropped", "probes closed/reset without a reply, total", "0", "n", stat="sum"),
        Row("inflight_completed", f"{INFLIGHT_CLIENTS} x 1 s in flight at SIGTERM: completed", "50/50", "n"),
        Row("inflight_exit", "… SIGTERM → exit", "≤ 1.2 s", "s", bound=settings.inflight_bound),
        Row("long_exit", f"{INFLIGHT_CLIENTS} x 10 s, shutdown_timeout 2 s: SIGTERM → exit", "≤ 2.2 s", "s",
            bound=settings.long_bound),
        Row("long_completed", "… completed", "0 (cancelled)", "n"),
        Row("idle_exit", f"{n:,} idle keep-alive connections: SIGTERM → exit", "≤ 0.3 s", "s", ratio=True,
            bound=settings.idle_bound),
        Row("idle_rss", f"… RSS per connection ({n:,} connections)", "—", "kB", ratio=True),
        Row("rps", f"keep-alive hello, wrk -t1 -c{WRK_CONNECTIONS} -d{settings.duration}s: req/s, median "
            f"(x {BASE})", "—", "req/s", base=BASE),
        Row("cpu_us", f"… server CPU per request, median (x {BASE})", "—", "µs", base=BASE),
        Row("wrk_errors", "… wrk socket errors + non-2xx responses, total", "0", "n", stat="sum"),
    ]  # fmt: skip


def _value(samples: Sequence[float | None], stat: Stat) -> float | None:
    """None (a timeout) ranks above every value: a median of mostly timeouts is a timeout."""
    if stat == "sum":
        return sum(x for x in samples if x is not None)
    values = sorted(math.inf if x is None else x for x in samples)
    if not values:
        return None
    if stat == "p50":
        lo, hi = values[(len(values) - 1) // 2], values[len(values) // 2]
        value = hi if math.isinf(hi) else (lo + hi) / 2
    elif stat == "p95":
        value = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
    else:
        value = values[-1]
    return None if math.isinf(value) else value


def _fmt(value: float | None, unit: str, bound: float | None = None) -> str:
    if value is None:
        return f"timeout (>{bound:g} s, killed)" if bound is not None else "none"
    if unit == "ms":
        return f"{value:.3g} ms" if value < 100 else f"{value:,.0f} ms"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "kB":
        return f"{value:.2f} kB"
    if unit == "req/s":
        return f"{value:,.0f} req/s"
    if unit == "µs":
        return f"{value:.1f} µs"
    return f"{value:g}"


def cell(row: Row, samples: Sequence[float | None]) -> str:
    if not samples:
        return "—"
    value = _value(samples, row.stat)
    if value is None and row.bound is None:
        return f"never (none within {CRASH_DEADLINE:g} s)"
    text = _fmt(value, row.unit, row.bound)
    if value is not None and row.key == "crash_refused":
        text += f" ({_value(samples, 'max'):g})"
    if value is not None and row.stat == "sum":
        text += f" in {len(samples)} {'crashes' if row.key.startswith('crash') else 'runs'}"
    missing = sum(1 for x in samples if x is None)
    if missing:
        what = "crashes not served again" if row.key.startswith("crash") else "rounds timed out"
        text += f" ({missing}/{len(samples)} {what})"
    return text


def render(settings: Settings, results: dict[tuple[str, str], list[float | None]], header: str) -> str:
    labels = [c.label for c in CONTENDERS]
    lines = [header, "", "| measure | target | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for row in rows(settings):
        if not any(results.get((row.key, label)) for label in labels):
            continue
        cells = []
        for c in CONTENDERS:
            samples = results.get((row.key, c.label), [])
            text = cell(row, samples)
            if row.ratio and c.kind == "ours":
                ours = _value(samples, row.stat)
                seed = _value(results.get((row.key, f"seed {c.loop}"), []), row.stat)
                if ours is not None and seed:
                    text += f" ({ours / seed:.2g}x seed)"
                elif ours is not None and (row.key, f"seed {c.loop}") in results:
                    text += " (seed: n/a)"
            if row.base and c.label != row.base:
                this = _value(samples, row.stat)
                base = _value(results.get((row.key, row.base), []), row.stat)
                if this is not None and base:
                    text += f" ({this / base:.2f}x)"
            cells.append(text)
        lines.append(f"| {row.title} | {row.target} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


NOTES = """\
Notes:
- Medians over interleaved rounds (contender order rotates each round); crash rows pool every crash of every round
  (after 2 unmeasured warm-up crashes per run). Crashes alternate: back-to-back (warm process) and after 50 ms idle
  (CPU caches and power states cool down: typically ~1 ms slower on this box).
- Crash, ours: `on_handler_error: restart`, `backoff: {initial: 0}`; the supervisor keeps the listening socket, so
  the kernel queues connections while the next generation starts. Crash, seed: a handler error in the bare
  pattern is only logged and the server keeps serving, so there is no restart to time; to compare restarts the
  seed's handler error ends the process (exit 1) and a parent starts it again at once (the naive
  `while true; do python server.py; done`, no poll delay). The port is closed in between: ECONNREFUSED.
- "Served again" = the first reply from a *new* generation (ours) or process (seed); replies from the crashing
  one do not count. The prober retries 1 ms after each ECONNREFUSED, so refused ≈ milliseconds refused.
- Quoted, not measured (anchors.md §5, 3.11.7): supervisord 4.3 restarting a crashed process serves again after
  1.07 s or 2.07 s with ~1,400 refused connections per crash; circus with its own socket: 0 refused, ~4.7 s.
- Exit times are SIGTERM → `Popen.wait()` returning on the child itself (a thread blocked in waitpid).
  "timeout (>N s, killed)": still running N s after SIGTERM, then SIGKILLed. The clients are HTTP/1.1 keep-alive
  clients: after their response they keep the connection open, so on 3.12+ the seed's `wait_closed()` waits for
  them forever even when every request completed. Seed exits that are fast because requests were dropped
  (3.11, uvloop) are not comparable: read them with the completed counts.
- RSS per connection: VmRSS of the serving process after opening the idle connections minus before, divided by
  their number (each connection served one `GET /` first).
- Throughput: one wrk thread, 50 keep-alive connections, `GET /` of `supervisor.handlers.http:make` (both
  contenders serve that handler), after 1 s of unmeasured wrk; ratios are to seed asyncio. Server CPU per request
  = the server process's utime + stime (all threads; ours includes its log thread) over the measured run, divided
  by the requests wrk counted (in 10 ms clock ticks: under 1% of a run). When wrk stops it resets
  connections with requests in flight; the seed then logs one `ConnectionResetError` traceback per connection
  (~50 per run; ours logs none): the measured run starts once the warm-up's lines have stopped coming.
- Quoted, not measured (anchors.md §5, their rig: 2 cores, 3.11.7, server and wrk on separate cores): the bare
  seed pattern ~118k req/s, the same under uvloop ~151k (1.27x). This machine is slower: compare ratios, not
  absolute req/s."""


# -- main -----------------------------------------------------------------------------------------------------------


def _progress(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)


def check_python(python: str) -> str:
    """The interpreter's version; exits with a clear message if the package or its deps do not import there."""
    code = (
        "import sys, supervisor, yaml, uvloop, aiomonitor, prometheus_client; "
        "print(sys.version.split()[0], 'uvloop', uvloop.__version__)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        out = subprocess.run([python, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SystemExit(f"bench: cannot run {python}: {exc}") from None
    if out.returncode != 0:
        raise SystemExit(
            f"bench: {python} cannot import the supervisor or its dependencies "
            f"(pyyaml, aiomonitor, prometheus_client, uvloop); install them there, e.g. "
            f"`{python} -m pip install -e {REPO}`:\n{out.stderr.strip().splitlines()[-1] if out.stderr else ''}"
        )
    return out.stdout.strip()


def raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < need:
        raise SystemExit(f"bench: RLIMIT_NOFILE is {soft}, {need} needed; lower --idle")


MEASURES = ("crash", "inflight", "long", "idle", "throughput")


def run_round(settings: Settings, tmp: Path, r: int, results: dict[tuple[str, str], list[float | None]]) -> None:
    order = CONTENDERS[r % len(CONTENDERS) :] + CONTENDERS[: r % len(CONTENDERS)]
    jobs: dict[str, Callable[[Contender], dict[str, list[float | None]]]] = {
        "crash": lambda c: measure_crash(c, settings, tmp),
        "inflight": lambda c: measure_inflight(
            c, settings, tmp, seconds=1, drain="5s", bound=settings.inflight_bound, key="inflight"
        ),
        "long": lambda c: measure_inflight(
            c, settings, tmp, seconds=10, drain="2s", bound=settings.long_bound, key="long"
        ),
        "idle": lambda c: measure_idle(c, settings, tmp),
        "throughput": lambda c: measure_throughput(c, settings, tmp),
    }
    for name in settings.measures:
        for contender in order:
            try:
                got = jobs[name](contender)
            except BenchError as exc:
                _progress(f"{name} {contender.label}: FAILED: {exc}")
                continue
            for key, values in got.items():
                results.setdefault((key, contender.label), []).extend(values)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, --quick 1)")
    parser.add_argument(
        "--quick", action="store_true", help="1 round, 10 crashes, 1,000 idle connections, 2 s throughput runs"
    )
    parser.add_argument("--python", default=sys.executable, help="interpreter for the servers (default: this one)")
    parser.add_argument("--crashes", type=int, default=None, help="crashes per contender per round (default 30)")
    parser.add_argument("--idle", type=int, default=None, help="idle connections (default 5,000)")
    parser.add_argument("--duration", type=int, default=None, help="seconds per throughput run (default 3, --quick 2)")
    parser.add_argument(
        "--measures", default=",".join(MEASURES), help=f"comma-separated subset of {','.join(MEASURES)}"
    )
    args = parser.parse_args(argv)
    unknown = set(args.measures.split(",")) - set(MEASURES)
    if unknown:
        parser.error(f"unknown measure(s) {', '.join(sorted(unknown))}; expected some of {', '.join(MEASURES)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings(
        python=args.python,
        rounds=max(1, args.rounds if args.rounds is not None else (1 if args.quick else 3)),
        crashes=max(1, args.crashes if args.crashes is not None else (10 if args.quick else 30)),
        idle=max(1, args.idle if args.idle is not None else (1000 if args.quick else 5000)),
        inflight_bound=3.0,
        long_bound=4.0,
        idle_bound=6.0,  # 3.11's seed logs a traceback per connection: 2.5-4 s on this box
        measures=tuple(m for m in MEASURES if m in args.measures.split(",")),
        duration=max(1, args.duration if args.duration is not None else (2 if args.quick else 3)),
        cpus=pick_cpus(),
    )
    throughput = ""
    if "throughput" in settings.measures:
        if shutil.which("wrk") is None:
            print("bench: wrk is not installed (apt-get install wrk): throughput skipped", file=sys.stderr)
            settings = dataclasses.replace(settings, measures=tuple(m for m in settings.measures if m != "throughput"))
            throughput = ", throughput skipped (no wrk)"
        elif settings.cpus:
            throughput = f", throughput: server on CPU {settings.cpus[0]}, wrk on CPU {settings.cpus[1]}"
        else:
            why = "no taskset" if shutil.which("taskset") is None else "fewer than 2 CPUs"
            throughput = f", throughput: server and wrk NOT pinned ({why})"
        if not settings.measures:
            raise SystemExit("bench: nothing to measure")
    raise_nofile(settings.idle + 1000)
    version = check_python(settings.python)
    header = (
        f"bench_core: servers on Python {version} ({settings.python}), {settings.rounds} round(s), "
        f"{settings.crashes} crashes/contender/round, {settings.idle:,} idle connections, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f} at start{throughput}"
    )
    print(header, file=sys.stderr, flush=True)
    results: dict[tuple[str, str], list[float | None]] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-core-") as tmp:
        for r in range(settings.rounds):
            print(f"round {r + 1}/{settings.rounds}", file=sys.stderr, flush=True)
            run_round(settings, Path(tmp), r, results)
    took = f"took {time.monotonic() - started:.0f} s, load average {os.getloadavg()[0]:.2f} at the end"
    print(render(settings, results, f"{header}; {took}"))
    print()
    print(NOTES)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
