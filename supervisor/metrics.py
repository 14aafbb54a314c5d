"""Prometheus ``/metrics``, ``/healthz`` and ``/readyz``, served by aiohttp on the supervisor's own loop.

A read-only view: the series themselves are collector.py's, read only when Prometheus scrapes. The endpoint is
entered before the servers start and closed after the last one stopped, so the drain can be watched
(``supervisor_shutting_down``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from supervisor.address import Address
from supervisor.collector import loop_name, make_registry
from supervisor.errors import ViewError
from supervisor.loopguard import LAG_WINDOW
from supervisor.plan import Plan
from supervisor.state import readiness
from supervisor.throttle import Fold, folded
from supervisor.tree import TreeView

LOGGER = logging.getLogger("supervisor")

# The servers' default backlog: with aiohttp's 128, 200 concurrent scrapes waited 1 s for a SYN retry.
BACKLOG = 1024
# aiohttp waits this long for a scrape in progress when the endpoint closes (its default is 60 s).
CLOSE_TIMEOUT = 1.0


class MetricsServer:
    """The aiohttp endpoint: ``/metrics`` (text or OpenMetrics, by Accept), ``/healthz``, ``/readyz``."""

    def __init__(self, supervisor: TreeView, host: str, port: int) -> None:
        self.supervisor = supervisor
        self.host = host
        self.port = port  # the bound port once started (``port: 0`` picks a free one)
        self.registry = make_registry(supervisor, loop_name(asyncio.get_running_loop()))
        self._runner: web.AppRunner | None = None
        # aiohttp logs an ERROR with an 11-line traceback per malformed request (300 requests: 3,300 lines), and
        # anyone who can reach the port can send those: one line per interval, naming the last one, is enough
        self._noise = Fold(_bad_request, _bad_request_line, logging.WARNING)

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


def _bad_request(record: logging.LogRecord) -> bool:
    return str(record.msg).startswith("Error handling request")


def _bad_request_line(record: logging.LogRecord, more: int) -> str:
    exc = record.exc_info[1] if record.exc_info else None
    what = " ".join(str(exc).split())[:120] if exc else "?"
    return f"metrics: malformed HTTP request ({type(exc).__name__}: {what}){folded(more)}"


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
