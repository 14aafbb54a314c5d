"""Prometheus ``/metrics``, ``/healthz`` and ``/readyz``, served by aiohttp on the supervisor's own loop.

A read-only view. Nothing here runs per connection: the runner already bumps plain ints in each
server's ``ServerStats``, and :class:`SupervisorCollector` turns those and the last ``TreeSnapshot``
into metric families only when Prometheus scrapes. The endpoint is entered before the servers start and
closed after the last one stopped, so the drain can be watched (``supervisor_shutting_down``).

Every series exists from the first scrape (all servers, all states, all restart reasons), so
``rate()`` and ``increase()`` see the first restart instead of a series appearing out of nowhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import platform
import socket
from collections.abc import AsyncIterator, Iterable

from aiohttp import web
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from supervisor import __version__
from supervisor.address import Address
from supervisor.errors import ViewError
from supervisor.loopguard import LAG_WINDOW
from supervisor.plan import Plan
from supervisor.state import DURATION_BUCKETS, ChildState, readiness
from supervisor.streams import CLIENT_REASONS
from supervisor.throttle import Throttle, folded
from supervisor.tree import TreeView

LOGGER = logging.getLogger("supervisor")

# The reasons the supervisor counts restarts under (supervisor.py, control.py); exported from the start.
RESTART_REASONS = ("failure", "exit", "strategy", "manual")
# The servers' default backlog: with aiohttp's 128, 200 concurrent scrapes waited 1 s for a SYN retry.
BACKLOG = 1024
# aiohttp waits this long for a scrape in progress when the endpoint closes (its default is 60 s).
CLOSE_TIMEOUT = 1.0


class SupervisorCollector(Collector):
    """Reads the tree at scrape time. Runs on the supervisor's loop (the aiohttp handler is a coroutine)."""

    def __init__(self, supervisor: TreeView, loop_name: str) -> None:
        self._sup = supervisor
        self._loop_name = loop_name

    def collect(self) -> Iterable[Metric]:
        snap = self._sup.snapshot()
        now = self._now()
        labels = ["server"]
        up = GaugeMetricFamily("supervisor_server_up", "1 if the server is accepting connections", labels=labels)
        state = GaugeMetricFamily(
            "supervisor_server_state", "1 for the state the server is in, 0 for the others", labels=["server", "state"]
        )
        uptime = GaugeMetricFamily(
            "supervisor_server_uptime", "Seconds the current generation has served", labels=labels, unit="seconds"
        )
        generation = GaugeMetricFamily(
            "supervisor_server_generation", "How many times the server has been started", labels=labels
        )
        restarts = CounterMetricFamily(
            "supervisor_server_restarts",
            "Restarts by reason: failure, exit (stopped itself), strategy (a sibling failed), manual",
            labels=["server", "reason"],
        )
        active = GaugeMetricFamily("supervisor_connections_active", "Open connections", labels=labels)
        total = CounterMetricFamily("supervisor_connections", "Connections accepted", labels=labels)
        errors = CounterMetricFamily(
            "supervisor_handler_errors", "Connections whose handler raised an exception", labels=labels
        )
        duration = HistogramMetricFamily(
            "supervisor_connection_duration", "How long connections stayed open", labels=labels, unit="seconds"
        )
        drain = GaugeMetricFamily(
            "supervisor_server_last_drain",
            "Seconds the last drain (restart or shutdown) of the server took",
            labels=labels,
            unit="seconds",
        )
        cancelled = CounterMetricFamily(
            "supervisor_connections_cancelled",
            "Connections cancelled because a drain ran out of time",
            labels=labels,
        )
        client = CounterMetricFamily(
            "supervisor_client_errors",
            "Connections ended by the client's doing, by reason: too_long (over read_limit), incomplete, reset, tls, "
            "idle_timeout, write_buffer (over max_write_buffer), other",
            labels=["server", "reason"],
        )
        rejected = CounterMetricFamily(
            "supervisor_connections_rejected", "Connections closed at once: max_connections reached", labels=labels
        )
        accept_errors = CounterMetricFamily(
            "supervisor_accept_errors",
            "Episodes of accept() failing for lack of resources (EMFILE: too many open files, ENFILE, ENOBUFS, "
            "ENOMEM); at most one is counted per 0.5 s",
            labels=labels,
        )
        statuses = {c.name: c for c in snap.children}
        for name, stats in self._sup.counters().items():
            status = statuses.get(name)
            current = status.state if status else ChildState.STOPPED
            running = current is ChildState.RUNNING
            up.add_metric([name], 1.0 if running else 0.0)
            for s in ChildState:
                state.add_metric([name, s.value], 1.0 if s is current else 0.0)
            started = status.started_at if status else None
            uptime.add_metric([name], max(0.0, now - started) if running and started is not None and now else 0.0)
            generation.add_metric([name], float(status.generation if status else 0))
            counts = dict(stats.restarts)  # a copy: the loop is ours now, but keep the read in one step
            for reason in (*RESTART_REASONS, *sorted(set(counts) - set(RESTART_REASONS))):
                restarts.add_metric([name, reason], float(counts.get(reason, 0)))
            active.add_metric([name], float(stats.active))
            total.add_metric([name], float(stats.total))
            errors.add_metric([name], float(stats.handler_errors))
            duration.add_metric([name], _buckets(stats.duration_counts), stats.duration_sum)
            drain.add_metric([name], stats.last_drain_seconds)
            cancelled.add_metric([name], float(stats.drain_cancelled))
            for reason in CLIENT_REASONS:
                client.add_metric([name, reason], float(stats.client_errors.get(reason, 0)))
            rejected.add_metric([name], float(stats.rejected))
            accept_errors.add_metric([name], float(stats.accept_errors))
        yield from (up, state, uptime, generation, restarts, active, total, errors, duration, drain, cancelled)
        yield from (client, rejected, accept_errors)
        yield GaugeMetricFamily(
            "supervisor_event_loop_lag_seconds",
            f"The longest the event loop was blocked in the last {LAG_WINDOW:g}s (a handler running blocking code)",
            value=self._sup.guard.worst_lag(),
        )
        ready, _ = readiness(snap)
        yield GaugeMetricFamily(
            "supervisor_ready", "1 when every permanent server serves and no shutdown is under way", value=ready
        )
        yield GaugeMetricFamily(
            "supervisor_shutting_down", "1 once the ordered shutdown has begun", value=float(snap.shutting_down)
        )
        info = InfoMetricFamily("supervisor_build", "Version of the supervisor, the Python and the event loop")
        info.add_metric([], {"version": __version__, "python": platform.python_version(), "loop": self._loop_name})
        yield info

    def _now(self) -> float:
        try:
            return self._sup.now()
        except RuntimeError:  # collected outside the loop (a test calling registry.collect())
            return 0.0


def _buckets(counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts (value <= bound) -> Prometheus's cumulative ``le`` buckets, ending with +Inf."""
    out: list[tuple[str, float]] = []
    running = 0
    for bound, n in zip((*DURATION_BUCKETS, float("inf")), counts, strict=True):
        running += n
        out.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(running)))
    return out


def make_registry(supervisor: TreeView, loop_name: str) -> CollectorRegistry:
    """A registry of its own per supervisor (tests run several in one process), with the process collectors."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SupervisorCollector(supervisor, loop_name))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


class MetricsServer:
    """The aiohttp endpoint: ``/metrics`` (text or OpenMetrics, by Accept), ``/healthz``, ``/readyz``."""

    def __init__(self, supervisor: TreeView, host: str, port: int) -> None:
        self.supervisor = supervisor
        self.host = host
        self.port = port  # the bound port once started (``port: 0`` picks a free one)
        self.registry = make_registry(supervisor, loop_name(asyncio.get_running_loop()))
        self._runner: web.AppRunner | None = None
        self._noise = _FoldBadRequests()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", make_aiohttp_handler(self.registry))
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        try:
            sock = _listen(self.host, self.port)
        except OSError as exc:
            raise ViewError(
                f"metrics: cannot listen on {self.host}:{self.port}: {exc.strerror or exc}; pick another metrics.port"
            ) from None
        self.port = sock.getsockname()[1]
        # no access log: Prometheus scrapes every few seconds
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=CLOSE_TIMEOUT)
        await runner.setup()
        try:
            await web.SockSite(runner, sock, backlog=BACKLOG).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner
        logging.getLogger("aiohttp.server").addFilter(self._noise)
        LOGGER.info("metrics listening on http://%s/metrics", Address(self.host, self.port))

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
            logging.getLogger("aiohttp.server").removeFilter(self._noise)
            LOGGER.info("metrics stopped")

    async def _healthz(self, request: web.Request) -> web.Response:
        # Answering at all is most of the check: a blocked loop does not answer, and the prober times out.
        # A loop blocked again and again for less than the probe's timeout answers late: that fails here.
        guard = self.supervisor.guard
        if guard.blocked():
            lag = round(guard.worst_lag(), 3)
            why = f"the event loop was blocked for {lag}s within {LAG_WINDOW:g}s (max_loop_lag {guard.max_lag:g}s)"
            return _json(503, {"status": "loop blocked", "reason": why, "lag_seconds": lag})
        return _json(200, {"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        snap = self.supervisor.snapshot()
        ready, why = readiness(snap)
        if ready:
            return _json(200, {"ready": True})
        servers = {c.name: c.state.value for c in snap.children}
        return _json(503, {"ready": False, "reason": why, "servers": servers})


class _FoldBadRequests(logging.Filter):
    """aiohttp logs an ERROR with an 11-line traceback per malformed request (300 requests: 3,300 lines).
    Anyone who can reach the port can send those: one line per interval, naming the last one, is enough."""

    def __init__(self) -> None:
        super().__init__()
        self._throttle = Throttle()

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Error handling request"):
            return True
        if (more := self._throttle("bad request")) is not None:
            exc = record.exc_info[1] if record.exc_info else None
            what = " ".join(str(exc).split())[:120] if exc else "?"
            LOGGER.warning("metrics: malformed HTTP request (%s: %s)%s", type(exc).__name__, what, folded(more))
        return False


def _json(status: int, body: object) -> web.Response:
    return web.Response(status=status, text=json.dumps(body) + "\n", content_type="application/json")


def _listen(host: str, port: int) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    sock = socket.create_server((host, port), family=family, backlog=BACKLOG)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def metrics_view(plan: Plan, supervisor: TreeView) -> AsyncIterator[MetricsServer]:
    """The view ``app.run_plan`` enters: serve metrics for the supervisor's whole life."""
    server = MetricsServer(supervisor, plan.metrics.host, plan.metrics.port)
    await server.start()
    try:
        yield server
    finally:
        await server.close()
