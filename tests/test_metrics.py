"""The metrics view in-process: /metrics series and values, content negotiation, /healthz, /readyz, promtool."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from supervisor.console import console_view
from supervisor.errors import ViewError
from supervisor.metrics import MetricsServer, metrics_view
from supervisor.plan import Plan
from supervisor.state import ChildState
from supervisor.supervisor import Supervisor
from supervisor.views import enabled_views
from tests.e2e_util import free_port, free_port_run, require_tool, write_config
from tests.helpers import DEADLINE, ask, eventually, plan_from, port_of, served, wait_state
from tests.proc import SupervisorProcess

CONFIG = """
    metrics: {port: 0}
    console: {enabled: false}
    servers:
      - {name: alpha, handler: "tests.apps:lines", port: 0}
      - {name: beta, handler: "tests.apps:lines", port: 0, restart: transient}
"""
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
# The contract as the README states it, written out here rather than imported from the code under test.
RESTART_REASONS = ("failure", "exit", "strategy", "manual")
DURATION_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0)


def _plan(tmp_path: Path, text: str = CONFIG) -> Plan:
    return plan_from(tmp_path, text)


@contextlib.asynccontextmanager
async def _serving(plan: Plan) -> AsyncIterator[tuple[Supervisor, MetricsServer]]:
    async with served(plan, metrics_view) as (sup, (server,)):
        assert isinstance(server, MetricsServer)
        yield sup, server


async def _get(server: MetricsServer, path: str, accept: str | None = None) -> tuple[int, str, str]:
    headers = {"Accept": accept} if accept else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{server.port}{path}", headers=headers) as resp,
    ):
        return resp.status, resp.headers["Content-Type"], await resp.text()


async def _samples(server: MetricsServer) -> Samples:
    status, _, body = await _get(server, "/metrics")
    assert status == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def _v(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def test_every_series_exists_before_any_traffic(tmp_path: Path) -> None:
    async with _serving(_plan(tmp_path)) as (_, server):
        s = await _samples(server)
    for name in ("alpha", "beta"):
        assert _v(s, "supervisor_server_up", server=name) == 1
        for state in ChildState:
            assert _v(s, "supervisor_server_state", server=name, state=state.value) == (state is ChildState.RUNNING)
        for reason in RESTART_REASONS:
            assert _v(s, "supervisor_server_restarts_total", server=name, reason=reason) == 0
        for metric in ("supervisor_connections_total", "supervisor_handler_errors_total"):
            assert _v(s, metric, server=name) == 0
        assert _v(s, "supervisor_connections_active", server=name) == 0
        assert _v(s, "supervisor_connection_duration_seconds_count", server=name) == 0
        for bound in (*DURATION_BUCKETS, float("inf")):
            le = "+Inf" if bound == float("inf") else repr(bound)
            assert _v(s, "supervisor_connection_duration_seconds_bucket", server=name, le=le) == 0
        assert _v(s, "supervisor_server_generation", server=name) == 1
        assert _v(s, "supervisor_connections_cancelled_total", server=name) == 0
    assert _v(s, "supervisor_ready") == 1
    assert _v(s, "supervisor_shutting_down") == 0
    info = next(k for k in s if k[0] == "supervisor_build_info")
    assert {k for k, _ in info[1]} == {"version", "python", "loop"}
    assert any(k[0] == "process_resident_memory_bytes" for k in s)  # the process collector


async def test_connections_errors_and_restarts_show_up(tmp_path: Path) -> None:
    async with _serving(_plan(tmp_path)) as (sup, server):
        port = port_of(sup, "alpha")
        for _ in range(3):
            assert await ask(port, b"hello") == b"hello\n"
        assert await ask(port, b"crash") == b""  # the handler raises: counted, connection closed
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # stays open while we scrape
        writer.write(b"who\n")
        await reader.readline()
        before = await _samples(server)
        assert (await sup.control("restart", "alpha")).text.startswith("restarted alpha")
        assert await reader.read() == b""  # the old generation drained the idle connection
        writer.close()
        s = await _samples(server)
    assert _v(before, "supervisor_connections_active", server="alpha") == 1
    assert _v(before, "supervisor_connection_duration_seconds_count", server="alpha") == 4
    assert _v(before, "supervisor_server_restarts_total", server="alpha", reason="manual") == 0
    assert _v(s, "supervisor_connections_total", server="alpha") == 5
    assert _v(s, "supervisor_connections_active", server="alpha") == 0
    assert _v(s, "supervisor_handler_errors_total", server="alpha") == 1
    assert _v(s, "supervisor_connection_duration_seconds_count", server="alpha") == 5
    assert _v(s, "supervisor_connection_duration_seconds_bucket", server="alpha", le="+Inf") == 5
    assert _v(s, "supervisor_server_restarts_total", server="alpha", reason="manual") == 1
    assert _v(s, "supervisor_server_restarts_total", server="alpha", reason="failure") == 0
    assert _v(s, "supervisor_server_generation", server="alpha") == 2
    assert _v(s, "supervisor_connections_total", server="beta") == 0


async def test_a_failure_restart_is_counted_with_its_reason(tmp_path: Path) -> None:
    plan = _plan(
        tmp_path,
        """
        metrics: {port: 0}
        servers:
          - name: fragile
            handler: "tests.apps:lines"
            port: 0
            on_handler_error: restart
            backoff: {initial: 0s}
        """,
    )
    async with _serving(plan) as (sup, server):
        await ask(port_of(sup, "fragile"), b"crash")
        await wait_state(sup, "fragile", ChildState.RUNNING, generation=2)
        s = await _samples(server)
    assert _v(s, "supervisor_server_restarts_total", server="fragile", reason="failure") == 1
    assert _v(s, "supervisor_server_up", server="fragile") == 1


async def test_openmetrics_is_negotiated(tmp_path: Path) -> None:
    async with _serving(_plan(tmp_path)) as (_, server):
        _, plain_type, _plain = await _get(server, "/metrics")
        _, om_type, om = await _get(server, "/metrics", "application/openmetrics-text; version=1.0.0")
    assert plain_type.startswith("text/plain; version=0.0.4")
    assert om_type.startswith("application/openmetrics-text; version=1.0.0")
    assert om.endswith("# EOF\n")
    assert "# UNIT supervisor_connection_duration_seconds seconds" in om
    assert "supervisor_server_restarts_total" in om
    assert "_created" not in om  # no extra series per counter


async def test_healthz_and_readyz(tmp_path: Path) -> None:
    plan = _plan(
        tmp_path,
        """
        metrics: {port: 0}
        servers:
          - {name: alpha, handler: "tests.apps:lines", port: 0, on_handler_error: restart,
             backoff: {initial: 30s, max: 30s}}
          - {name: beta, handler: "tests.apps:lines", port: 0, restart: transient, on_handler_error: restart,
             backoff: {initial: 30s, max: 30s}}
        """,
    )
    async with _serving(plan) as (sup, server):
        assert (await _get(server, "/healthz"))[0] == 200
        status, ctype, body = await _get(server, "/readyz")
        assert (status, json.loads(body)) == (200, {"ready": True})
        assert ctype.startswith("application/json")
        await ask(port_of(sup, "beta"), b"crash")
        await wait_state(sup, "beta", ChildState.BACKOFF)  # transient, in backoff: not needed for readiness
        assert (await _get(server, "/readyz"))[0] == 200
        assert sup.snapshot().ready  # the snapshot and /readyz apply the same rule
        await ask(port_of(sup, "alpha"), b"crash")
        await wait_state(sup, "alpha", ChildState.BACKOFF)  # permanent and not serving: not ready
        status, _, body = await _get(server, "/readyz")
        assert status == 503
        assert json.loads(body) == {
            "ready": False,
            "reason": "not serving: alpha (backoff: RuntimeError: crash requested)",
            "servers": {"alpha": "backoff", "beta": "backoff"},
        }
        assert _v(await _samples(server), "supervisor_ready") == 0
        assert not sup.snapshot().ready
        await sup.control("stop", "alpha")  # stopped on purpose: the operator's choice, not a fault
        assert (await _get(server, "/readyz"))[0] == 200
        await sup.control("start", "alpha")
        assert (await _get(server, "/readyz"))[0] == 200


async def test_metrics_are_served_during_the_drain(tmp_path: Path) -> None:
    """Metrics close after the servers: a scrape during the drain sees the shutdown and the busy connection."""
    async with _serving(_plan(tmp_path)) as (sup, server):
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(sup, "alpha"))
        writer.write(b"work 30\n")  # in flight: the drain waits for it
        assert await reader.readline() == b"working\n"
        sup.request_stop("test")
        await wait_state(sup, "alpha", ChildState.STOPPING)
        status, _, body = await _get(server, "/readyz")
        s = await _samples(server)
        sup.request_stop("test again")  # force: don't wait out the 30 s request
        writer.close()
    assert status == 503
    assert json.loads(body)["reason"] == "shutting down"
    assert _v(s, "supervisor_shutting_down") == 1
    assert _v(s, "supervisor_ready") == 0
    assert _v(s, "supervisor_connections_active", server="alpha") == 1
    assert _v(s, "supervisor_server_state", server="alpha", state="stopping") == 1


async def test_each_supervisor_has_its_own_registry(tmp_path: Path) -> None:
    async with (
        _serving(_plan(tmp_path)) as (sup1, one),
        _serving(_plan(tmp_path)) as (_, two),
    ):
        await ask(port_of(sup1, "alpha"), b"x")
        assert _v(await _samples(one), "supervisor_connections_total", server="alpha") == 1
        assert _v(await _samples(two), "supervisor_connections_total", server="alpha") == 0


async def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    port = free_port()
    plan = _plan(tmp_path, CONFIG.replace("port: 0}\n    console", f"port: {port}}}\n    console", 1))
    assert plan.metrics.port == port
    async with await asyncio.start_server(lambda r, w: None, "127.0.0.1", port):
        sup = Supervisor(plan)
        with pytest.raises(ViewError, match=rf"metrics: cannot listen on 127.0.0.1:{port}: .*pick another"):
            async with metrics_view(plan, sup):
                pass


def test_enabled_views_lists_metrics_first(tmp_path: Path) -> None:
    plan = _plan(tmp_path, CONFIG.replace("console: {enabled: false}", "console: {port: 20101}"))
    assert enabled_views(plan) == (metrics_view, console_view)
    off = _plan(tmp_path, CONFIG.replace("metrics: {port: 0}", "metrics: {enabled: false}"))
    assert enabled_views(off) == ()


async def test_metrics_open_first_and_close_last(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """In the order run_plan enters the views: metrics answer before any server starts and after the last stopped."""
    caplog.set_level(logging.INFO, "supervisor")
    port = free_port_run(2)
    plan = _plan(tmp_path, CONFIG.replace("console: {enabled: false}", f"console: {{port: {port}}}"))
    async with served(plan, *enabled_views(plan)):
        pass
    log = [r.getMessage() for r in caplog.records if r.name == "supervisor"]

    def first(prefix: str) -> int:
        return next(i for i, m in enumerate(log) if m.startswith(prefix))

    order = [
        first("metrics listening on http://127.0.0.1:"),
        first("console listening on telnet://"),
        first("server alpha listening on"),
        first("supervisor ready"),
        first("shutting down"),
        first("shutdown complete in"),
        first("console closed"),
        first("metrics stopped"),
    ]
    assert order == sorted(order), log


async def test_promtool_accepts_the_exposition(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    async with _serving(_plan(tmp_path)) as (sup, server):
        await ask(port_of(sup, "alpha"), b"x")
        await sup.control("restart", "beta")
        _, _, body = await _get(server, "/metrics")
    result = await asyncio.to_thread(
        subprocess.run, [promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=30
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.e2e
def test_run_exits_1_when_the_metrics_port_is_taken(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        config = write_config(
            tmp_path,
            f"""
            metrics: {{port: {port}}}
            console: {{enabled: false}}
            servers:
              - {{name: alpha, handler: "tests.apps:lines", port: 0}}
            """,
        )
        with SupervisorProcess(config) as sp:
            assert sp.wait(timeout=30) == 1
    sp.wait_for(rf"CRITICAL supervisor: exit 1: metrics: cannot listen on 127\.0\.0\.1:{port}: .*pick another")
    assert "listening on" not in sp.output  # no server was started


async def test_uptime_and_last_drain(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    async with _serving(_plan(tmp_path)) as (sup, server):
        assert await ask(port_of(sup, "alpha"), b"sleep 0.1") == b"slept\n"  # the first generation has served 0.1 s
        first = _v(await _samples(server), "supervisor_server_uptime_seconds", server="alpha")
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(sup, "alpha"))
        writer.write(b"work 0.3\n")  # in flight across the restart: the old generation drains it
        assert await reader.readline() == b"working\n"
        restarted = loop.time()
        await sup.control("restart", "alpha")
        after = _v(await _samples(server), "supervisor_server_uptime_seconds", server="alpha")
        assert await reader.readline() == b"done\n"
        assert await reader.read() == b""
        writer.close()
        async with asyncio.timeout(DEADLINE):
            while not (drain := _v(await _samples(server), "supervisor_server_last_drain_seconds", server="alpha")):
                pass  # the drain records its time as the old generation's task ends, just after the client's EOF
        since = loop.time() - restarted
    assert first >= 0.099  # uvloop's clock has millisecond steps
    assert 0 <= after <= since < first + since  # the new generation's uptime, not the first one's
    assert 0.1 < drain < 0.3 + 0.5  # the old generation drained for as long as its request still needed


CLIENT_REASONS = ("too_long", "incomplete", "reset", "tls", "idle_timeout", "write_buffer", "other")


async def test_client_errors_rejections_and_accept_errors_are_exported(tmp_path: Path) -> None:
    plan = _plan(tmp_path, CONFIG.replace("port: 0, restart: transient}", "port: 0, max_connections: 1}"))
    async with _serving(plan) as (sup, server):
        before = await _samples(server)
        assert await ask(port_of(sup, "alpha"), b"x" * 70_000) == b""  # over read_limit
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(sup, "beta"))
        writer.write(b"who\n")
        assert await reader.readline() == b"beta#1\n"  # beta's one slot is taken
        r2, w2 = await asyncio.open_connection("127.0.0.1", port_of(sup, "beta"))
        assert await r2.read() == b""  # closed at once
        after = await _samples(server)
        writer.close()
        w2.close()
    for name in ("alpha", "beta"):
        for reason in CLIENT_REASONS:
            assert _v(before, "supervisor_client_errors_total", server=name, reason=reason) == 0
        assert _v(before, "supervisor_connections_rejected_total", server=name) == 0
        assert _v(before, "supervisor_accept_errors_total", server=name) == 0
    assert _v(after, "supervisor_client_errors_total", server="alpha", reason="too_long") == 1
    assert _v(after, "supervisor_connections_rejected_total", server="beta") == 1


async def test_a_blocked_loop_is_logged_exported_and_fails_healthz(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plan = _plan(tmp_path, CONFIG.replace("metrics:", "supervisor: {max_loop_lag: 500ms}\n    metrics:"))
    async with _serving(plan) as (sup, server):
        s = await _samples(server)
        assert _v(s, "supervisor_event_loop_lag_seconds") < 0.5
        assert (await _get(server, "/healthz"))[0] == 200
        assert await ask(port_of(sup, "alpha"), b"block 0.8") == b"unblocked\n"  # time.sleep on the loop
        # measured when the watcher next wakes: the block less what was left of its 0.25 s sleep
        await eventually(lambda: sup.guard.worst_lag() > 0.5)
        status, _, body = await _get(server, "/healthz")
        lag = _v(await _samples(server), "supervisor_event_loop_lag_seconds")
    assert status == 503
    assert json.loads(body)["status"] == "loop blocked"
    assert 0.5 < lag < 0.8 + 0.3
    (line,) = [r.getMessage() for r in caplog.records if "event loop blocked" in r.getMessage()]
    assert re.fullmatch(
        r"event loop blocked for 0\.[5-9]\d?s: a handler or lifespan ran blocking code on the loop", line
    )


async def test_malformed_requests_to_the_metrics_port_log_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with _serving(_plan(tmp_path)) as (_, server):
        for _ in range(300):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n")
            assert (await reader.read()).startswith(b"HTTP/1.0 400 Bad Request")
            writer.close()
        assert (await _get(server, "/healthz"))[0] == 200
    lines = [r for r in caplog.records if r.name.startswith(("aiohttp", "supervisor")) and r.levelno >= logging.WARNING]
    assert [r.getMessage()[:58] for r in lines] == ["metrics: malformed HTTP request (BadHttpMessage: 400, mess"]
    assert not any(r.exc_info for r in lines)


async def test_the_metrics_port_has_the_servers_backlog(tmp_path: Path) -> None:
    ss = require_tool("ss")
    async with _serving(_plan(tmp_path)) as (_, server):
        out = await asyncio.to_thread(subprocess.run, [ss, "-Hltn"], capture_output=True, text=True, timeout=10)
    assert re.search(rf"^LISTEN\s+\d+\s+1024\s+127\.0\.0\.1:{server.port}\s", out.stdout, re.M), out.stdout
